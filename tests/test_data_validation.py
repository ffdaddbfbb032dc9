"""Validating chat records: each kind of bad input names file, record and field, or is skipped and counted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sft_sweeps.config import DatasetConfig
from sft_sweeps.data import DataValidationError, load_splits, to_record

FIXTURES = Path(__file__).parent / "fixtures" / "data"
INVALID = FIXTURES / "invalid.jsonl"


def local(path: Path | str, **overrides) -> DatasetConfig:
    values = dict(name="local", source="local", path=str(path), num_train=100, num_validation=0, num_test=0)
    values.update(overrides)
    return DatasetConfig(**values)


def user(content: str = "Hi") -> dict:
    return {"role": "user", "content": content}


def assistant(content: str = "Hello") -> dict:
    return {"role": "assistant", "content": content}


def error_for(raw, fmt: str = "auto") -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        to_record(raw, fmt, "chat.jsonl", 4)
    return info.value


@pytest.mark.parametrize(
    ("messages", "field", "reason", "detail"),
    [
        ([user(), {"role": "bot", "content": "x"}], "messages[1].role", "unknown_role", "unknown role 'bot'"),
        ([user(), assistant(" \n")], "messages[1].content", "empty_content", "empty content"),
        (
            [user(), {"role": "assistant", "content": None}],
            "messages[1].content",
            "non_string_content",
            "NoneType",
        ),
        ([user(), {"role": "assistant", "content": 3}], "messages[1].content", "non_string_content", "int"),
        ([{"role": "system", "content": "s"}, user()], "messages", "no_assistant", "no assistant message"),
        ([user(), user(), assistant()], "messages[1].role", "broken_alternation", "'user' after 'user'"),
        ([assistant(), user(), assistant()], "messages[0].role", "broken_alternation", "after 'the start'"),
        ([user(), assistant(), user()], "messages[2].role", "broken_alternation", "ends on 'user'"),
        (
            [user(), assistant(), {"role": "system", "content": "s"}],
            "messages[2].role",
            "broken_alternation",
            "",
        ),
        (
            [user(), {"role": "tool", "content": "t"}, assistant()],
            "messages[1].role",
            "broken_alternation",
            "'tool' after 'user'",
        ),
        ([user(), assistant() | {"weight": -1}], "messages[1].weight", "bad_weight", "-1"),
        ([user(), assistant() | {"train": "yes"}], "messages[1].train", "bad_weight", "'yes'"),
        ([user(), "hello"], "messages[1]", "not_an_object", "got str"),
        ([user(), {"content": "x"}], "messages[1].role", "missing_field", "no 'role' or 'from'"),
    ],
)
def test_each_error_names_origin_record_field(messages, field, reason, detail) -> None:
    error = error_for({"id": "abc", "messages": messages})
    assert (error.origin, error.index, error.record_id, error.field, error.reason) == (
        "chat.jsonl",
        4,
        "abc",
        field,
        reason,
    )
    assert str(error).startswith(f"chat.jsonl: record 4 (id=abc): {field}: ")
    assert detail in str(error)


def test_record_level_errors() -> None:
    assert error_for([1, 2]).reason == "not_an_object"
    assert error_for({"text": "hi"}).reason == "missing_field"
    missing = error_for({"messages": [user(), assistant()]}, fmt="sharegpt")
    assert (missing.field, missing.reason) == ("conversations", "missing_field")
    assert error_for({"messages": "hi"}).reason == "missing_field"
    assert error_for({"prompt": "hi"}, fmt="prompt_completion").field == "completion"


def test_sharegpt_roles_and_keys_are_normalised() -> None:
    raw = {
        "id": 7,
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "q"},
            {"from": "function_call", "value": '[{"name": "f", "arguments": {}}, {"name": "g"}]'},
            {"from": "observation", "value": "result"},
            {"from": "function", "value": "more"},
            {"from": "bard", "value": "a"},
            {"from": "user", "value": "q2"},
            {"from": "GPT", "value": "a2"},
        ],
    }
    record = to_record(raw, "auto", "x.json", 0)
    assert record["id"] == "7"
    assert [m["role"] for m in record["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert error_for({"conversations": [{"from": "bing", "value": "x"}]}).reason == "unknown_role"


def test_weights_tools_and_task_are_kept() -> None:
    raw = {
        "messages": [user(), assistant("a") | {"weight": 0.5}, user(), assistant("b") | {"train": False}],
        "tools": [{"name": "calc"}],
        "task": "demo",
        "extra": "dropped",
    }
    record = to_record(raw, "messages", "x.jsonl", 2)
    assert record["id"] == "x.jsonl#2"  # no id of its own: where it was read
    assert record["messages"][1] == {"role": "assistant", "content": "a", "weight": 0.5}
    assert record["messages"][3]["train"] is False
    # LLaMA-Factory's bare functions come out as OpenAI function schemas.
    assert record["tools"] == [{"type": "function", "function": {"name": "calc"}}]
    assert record["task"] == "demo" and "extra" not in record


def test_on_invalid_error_stops_at_the_first_bad_record_with_its_line() -> None:
    with pytest.raises(DataValidationError) as info:
        load_splits(local(INVALID))
    assert str(info.value) == (
        f"{INVALID}:2: record 1 (id=bad-role): messages[1].role: unknown role 'bot'; known: "
        + re.search(r"known: (.*)$", str(info.value)).group(1)
    )
    assert info.value.index == 1 and info.value.field == "messages[1].role"


def test_on_invalid_skip_counts_every_reason_and_keeps_the_valid() -> None:
    splits = load_splits(local(INVALID, on_invalid="skip"))
    assert [r["id"] for r in splits.train] == ["ok-1", "ok-2"]
    stats = splits.stats["train"]
    assert stats["read"] == 8 and stats["loaded"] == 2
    assert stats["skipped"] == {
        "unknown_role": 1,
        "empty_content": 1,
        "non_string_content": 1,
        "no_assistant": 1,
        "broken_alternation": 1,
        "bad_json": 1,
    }
    assert stats["examples"]["bad_json"].startswith(f"{INVALID}:7: record 6: <line>: invalid JSON")


def test_bad_json_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"messages": [user(), assistant()]}) + "\n\n{not json}\n")
    with pytest.raises(DataValidationError, match=r"broken.jsonl:3: record 1: <line>: invalid JSON"):
        load_splits(local(path))


def test_truncated_json_array_keeps_complete_records(tmp_path: Path) -> None:
    text = (FIXTURES / "sharegpt.json").read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: text.index('"s3_0"') + 40])  # inside the fourth record
    with pytest.raises(DataValidationError) as info:
        load_splits(local(cut))
    assert (info.value.index, info.value.reason, info.value.field) == (3, "truncated", "<file>")
    splits = load_splits(local(cut, on_invalid="skip"))
    assert [r["id"] for r in splits.train] == ["s0_0", "s1_0", "s2_0"]
    assert splits.stats["train"]["skipped"] == {"truncated": 1}


def test_all_invalid_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [user()]}) + "\n")
    with pytest.raises(ValueError, match="train split is empty"):
        load_splits(local(path, on_invalid="skip"))
