"""Synthetic multi-turn tasks, generated deterministically from a seed, with disjoint splits.

Example:
    >>> splits = make_splits(["state_tracking"], {"train": 2, "test": 1}, min_turns=2, max_turns=4, seed=0)
    >>> sorted(splits), len(splits["train"]), splits["test"][0]["task"]
    (['test', 'train'], 2, 'state_tracking')
"""

from __future__ import annotations

import hashlib
import json
import random

from sft_sweeps.tasks.base import Task
from sft_sweeps.tasks.state_tracking import StateTracking

TASKS: dict[str, Task] = {task.name: task for task in (StateTracking(),)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def _content_key(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def make_splits(
    task_names: list[str], sizes: dict[str, int], min_turns: int, max_turns: int, seed: int
) -> dict[str, list[dict]]:
    """Generate `sizes[split]` conversations per split, cycling over tasks; no conversation is in two splits.

    Splits are generated in the order of `sizes`; a conversation already generated for an earlier split is
    drawn again, so held-out splits never repeat training data. Each record is
    `{"id", "task", "split", "messages"}`.
    """
    tasks = [get_task(name) for name in task_names]
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in sizes.items():
        rng = random.Random(f"{seed}/{split}")
        records = []
        while len(records) < size:
            task = tasks[len(records) % len(tasks)]
            messages = task.generate(rng, rng.randint(min_turns, max_turns))
            key = _content_key(messages)
            if key in seen:
                continue
            seen.add(key)
            records.append({"id": f"{split}-{len(records)}", "task": task.name, "split": split, "messages": messages})
        splits[split] = records
    return splits
