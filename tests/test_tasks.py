"""Synthetic tasks: deterministic, well-formed, disjoint splits, each task checking its own skill."""

from __future__ import annotations

import doctest
import hashlib
import json
import random

import pytest

import sft_sweeps.tasks as tasks_pkg
from sft_sweeps.tasks import TASKS, fact_recall, format_persistence, get_task, make_splits, state_tracking
from sft_sweeps.tasks.format_persistence import FORMATS

SUITE = ["state_tracking", "fact_recall", "format_persistence"]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def content(records: list[dict]) -> set[str]:
    return {digest(r["messages"]) for r in records}


def test_single_task_splits_use_the_stream_they_had_before_tasks_had_their_own():
    """A run on state_tracking alone (the embedded default) draws what it drew before mixtures existed."""
    sizes = {"train": 300, "validation": 20, "test": 20}
    seen, expected = set(), {}
    for split, size in sizes.items():  # the loop make_splits had, with one stream per split
        rng, records = random.Random(f"9/{split}"), []
        while len(records) < size:
            messages = TASKS["state_tracking"].generate(rng, rng.randint(1, 4))
            if digest(messages) not in seen:
                seen.add(digest(messages))
                records.append(messages)
        expected[split] = records
    splits = make_splits(["state_tracking"], sizes, 1, 4, seed=9)
    assert {split: [r["messages"] for r in records] for split, records in splits.items()} == expected


@pytest.mark.parametrize("name", SUITE)
@pytest.mark.parametrize("num_turns", [1, 2, 5])
def test_task_is_deterministic_and_well_formed(name, num_turns):
    task = get_task(name)
    messages = task.generate(random.Random(7), num_turns)
    assert messages == task.generate(random.Random(7), num_turns)
    body = messages[1:] if messages[0]["role"] == "system" else messages
    assert [m["role"] for m in body] == ["user", "assistant"] * num_turns
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)


def test_splits_disjoint_and_cycle_tasks():
    splits = make_splits(SUITE, {"train": 300, "validation": 30, "test": 30}, 1, 6, seed=3)
    assert [r["task"] for r in splits["test"][:6]] == SUITE * 2
    train, validation, test = (content(splits[s]) for s in ("train", "validation", "test"))
    assert len(train) == 300 and not (train & test) and not (train & validation) and not (validation & test)


def test_mixture_trains_on_a_prefix_of_each_task_so_single_task_test_stays_held_out():
    sizes = {"train": 150, "validation": 10, "test": 20}
    mixture = make_splits(SUITE, sizes, 1, 4, seed=5)
    for name in SUITE:
        alone = make_splits([name], sizes, 1, 4, seed=5)
        mixed_train = [r["messages"] for r in mixture["train"] if r["task"] == name]
        assert mixed_train == [r["messages"] for r in alone["train"][: len(mixed_train)]]
        assert not content(alone["test"]) & content(mixture["train"])


def test_exhausted_task_raises():
    # format_persistence has 3 formats x 2 placements x 12 words = 72 one-turn conversations.
    with pytest.raises(ValueError, match="'format_persistence' has too few distinct conversations"):
        make_splits(["format_persistence"], {"train": 100}, 1, 1, seed=0)


def test_unknown_task():
    with pytest.raises(KeyError, match="known tasks"):
        make_splits(["nope"], {"train": 1}, 1, 2, seed=0)


def test_fact_recall_asks_about_first_message_facts():
    rng = random.Random(11)
    for _ in range(50):
        messages = TASKS["fact_recall"].generate(rng, rng.randint(2, 6))
        facts = dict(pair.split("=") for pair in messages[1]["content"].split())
        assert messages[2]["content"] == "ok"
        assert messages[-2]["content"].endswith("?")  # the last turn always recalls
        for user, answer in zip(messages[3::2], messages[4::2], strict=True):
            if user["content"].endswith("?"):
                assert answer["content"] == facts[user["content"][:-1]]
            else:
                a, b = user["content"].split("+")
                assert answer["content"] == str(int(a) + int(b))


def test_format_persistence_instruction_given_once_and_followed_every_turn():
    rng = random.Random(12)
    placements = set()
    for _ in range(50):
        messages = TASKS["format_persistence"].generate(rng, rng.randint(2, 6))
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        users = [m["content"] for m in messages if m["role"] == "user"]
        instruction = system or users[0].rsplit(" say ", 1)[0]
        placements.add("system" if system else "first user")
        assert instruction in FORMATS
        assert all(u.startswith("say ") for u in users[1:])  # nothing later repeats the instruction
        words = [u.rsplit("say ", 1)[1] for u in users]
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        assert answers == [FORMATS[instruction](w) for w in words]
    assert placements == {"system", "first user"}


@pytest.mark.parametrize("module", [tasks_pkg, state_tracking, fact_recall, format_persistence])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
