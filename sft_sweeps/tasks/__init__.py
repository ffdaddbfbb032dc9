"""Synthetic multi-turn tasks, generated deterministically from a seed, with disjoint splits.

Each task is one small module with a class that follows `sft_sweeps.tasks.base.Task`; listing it in
`TASKS` makes it available to `dataset.tasks`, to the evaluation and to the lm-eval task files.

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
from sft_sweeps.tasks.fact_recall import FactRecall
from sft_sweeps.tasks.format_persistence import FormatPersistence
from sft_sweeps.tasks.state_tracking import StateTracking
from sft_sweeps.tasks.tool_use import ToolUse

TASKS: dict[str, Task] = {
    task.name: task for task in (StateTracking(), FactRecall(), FormatPersistence(), ToolUse())
}
# The tasks answered in text, scored turn by turn by exact match (`synthetic` benchmark, lm-eval tasks);
# the others are agent tasks (they declare `tools`), scored by the `agent` benchmark.
TEXT_TASKS: dict[str, Task] = {
    name: task for name, task in TASKS.items() if getattr(task, "tools", None) is None
}


def get_task(name: str) -> Task:
    """The registered task called `name`. Raises KeyError naming the known tasks."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


# Draws in a row that repeat an earlier conversation before a task counts as exhausted.
_MAX_REPEATS = 10_000


def _content_key(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def _stream(seed: int, split: str, task: str) -> random.Random:
    # One stream per task and split, so a task's conversations do not depend on which other tasks are listed:
    # a mixture's training split holds a prefix of each task's own training split, and a task's own test
    # split (the lm-eval data files) stays held out from it. state_tracking keeps the stream it had when
    # it was the only task, so the default data did not change.
    return random.Random(f"{seed}/{split}" if task == "state_tracking" else f"{seed}/{split}/{task}")


def make_splits(
    task_names: list[str], sizes: dict[str, int], min_turns: int, max_turns: int, seed: int
) -> dict[str, list[dict]]:
    """Generate `sizes[split]` conversations per split, cycling over tasks; no conversation is in two splits.

    Splits are generated in the order of `sizes`; a conversation already generated for an earlier split is
    drawn again, so held-out splits never repeat training data. Each task draws from its own random stream
    (see `_stream`). Each record is `{"id", "task", "split", "messages"}`.

    Args:
        task_names: names in `TASKS`; record i uses task `i % len(task_names)`.
        sizes: conversations per split, e.g. `{"train": 4000, "validation": 100, "test": 200}`.
        min_turns: fewest user/assistant pairs in a conversation.
        max_turns: most user/assistant pairs, drawn uniformly between the two.
        seed: the data seed (fixed across masking strategies and training seeds).

    Raises:
        KeyError: a task name is unknown.
        ValueError: a task cannot produce enough distinct conversations for the sizes asked.
    """
    tasks = [get_task(name) for name in task_names]
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in sizes.items():
        streams = {task.name: _stream(seed, split, task.name) for task in tasks}
        records = []
        repeats = 0
        while len(records) < size:
            task = tasks[len(records) % len(tasks)]
            rng = streams[task.name]
            messages = task.generate(rng, rng.randint(min_turns, max_turns))
            key = _content_key(messages)
            if key in seen:
                repeats += 1
                if repeats > _MAX_REPEATS:
                    raise ValueError(
                        f"task {task.name!r} has too few distinct conversations of {min_turns}-{max_turns} "
                        f"turns for {size} {split} conversations after {len(records)}: lower "
                        f"dataset.num_{split} or raise dataset.max_turns"
                    )
                continue
            repeats = 0
            seen.add(key)
            record = {
                "id": f"{split}-{len(records)}",
                "task": task.name,
                "split": split,
                "messages": messages,
            }
            if getattr(task, "tools", None) is not None:  # an agent task: its tool schemas, for the template
                record["tools"] = task.tools
            records.append(record)
        splits[split] = records
    return splits
