"""load_splits: synthetic and local sources, splitting, caps, disjointness, fingerprints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_sweeps.config import DatasetConfig
from sft_sweeps.data import Splits, load_splits
from sft_sweeps.data.splits import canonical_json

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def local(path: Path | str, **overrides) -> DatasetConfig:
    values = dict(
        name="local", source="local", path=str(path), num_train=1000, num_validation=100, num_test=100
    )
    values.update(overrides)
    return DatasetConfig(**values)


def content_keys(records: list[dict]) -> set[str]:
    return {canonical_json(r["messages"]) for r in records}


def assert_disjoint(splits: Splits) -> None:
    train, validation, test = (content_keys(s) for s in (splits.train, splits.validation, splits.test))
    assert not train & validation and not train & test and not validation & test


def test_synthetic_source_matches_make_splits() -> None:
    from sft_sweeps.tasks import make_splits

    cfg = DatasetConfig(num_train=6, num_validation=2, num_test=3, seed=5)
    splits = load_splits(cfg)
    expected = make_splits(["state_tracking"], {"train": 6, "validation": 2, "test": 3}, 2, 6, 5)
    assert (splits.train, splits.validation, splits.test) == (
        expected["train"],
        expected["validation"],
        expected["test"],
    )
    assert splits.stats["test"]["loaded"] == 3
    assert len(splits.fingerprint) == 64
    assert load_splits(cfg).fingerprint == splits.fingerprint
    assert (
        load_splits(DatasetConfig(num_train=6, num_validation=2, num_test=3, seed=6)).fingerprint
        != splits.fingerprint
    )


def test_local_jsonl_messages_carves_validation_and_test() -> None:
    cfg = local(FIXTURES / "messages.jsonl", validation_fraction=0.2, test_fraction=0.2)
    splits = load_splits(cfg)
    source = [json.loads(line) for line in (FIXTURES / "messages.jsonl").read_text().splitlines()]
    # Nothing lost, nothing added, nothing in two splits; records keep their ids and messages.
    assert len(splits.train) + len(splits.validation) + len(splits.test) == len(source) == 60
    assert_disjoint(splits)
    by_id = {r["id"]: r for r in source}
    for record in splits.train + splits.validation + splits.test:
        assert record["messages"] == by_id[record["id"]]["messages"]
    # Hash-carved fractions are binomial: about 12 each out of 60.
    assert 4 <= len(splits.validation) <= 20 and 4 <= len(splits.test) <= 20
    assert splits.stats["train"]["read"] == 60 and splits.stats["train"]["skipped"] == {}
    assert splits.stats["validation"]["origin"].startswith("carved from train")
    # Reading order is kept within a split.
    order = [r["id"] for r in source]
    assert [r["id"] for r in splits.train] == [i for i in order if i in {r["id"] for r in splits.train}]


def test_local_split_is_deterministic_and_seeded() -> None:
    cfg = local(FIXTURES / "messages.jsonl", validation_fraction=0.2, test_fraction=0.2)
    first, again = load_splits(cfg), load_splits(cfg)
    assert first.fingerprint == again.fingerprint and first.train == again.train
    other = load_splits(
        local(FIXTURES / "messages.jsonl", validation_fraction=0.2, test_fraction=0.2, seed=99)
    )
    assert other.fingerprint != first.fingerprint
    assert {r["id"] for r in other.test} != {r["id"] for r in first.test}


def test_caps_take_a_seeded_subset_of_each_split() -> None:
    fractions = dict(validation_fraction=0.2, test_fraction=0.2)
    splits = load_splits(
        local(FIXTURES / "messages.jsonl", num_train=10, num_validation=3, num_test=4, **fractions)
    )
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (10, 3, 4)
    assert splits.stats["train"]["available"] > 10 and splits.stats["train"]["loaded"] == 10
    uncapped = load_splits(local(FIXTURES / "messages.jsonl", **fractions))
    # The cap picks from the same split assignment, so a capped split is a subset of the uncapped one.
    assert {r["id"] for r in splits.train} < {r["id"] for r in uncapped.train}
    assert {r["id"] for r in splits.test} < {r["id"] for r in uncapped.test}
    other_seed = load_splits(
        local(FIXTURES / "messages.jsonl", num_train=10, num_validation=3, num_test=4, seed=3, **fractions)
    )
    assert {r["id"] for r in other_seed.train} != {r["id"] for r in splits.train}


def test_zero_sized_held_out_split_carves_nothing() -> None:
    splits = load_splits(local(FIXTURES / "messages.jsonl", num_validation=0, test_fraction=0.3))
    assert splits.validation == []
    assert len(splits.train) + len(splits.test) == 60


def test_duplicates_are_dropped_and_counted(tmp_path: Path) -> None:
    lines = (FIXTURES / "messages.jsonl").read_text().splitlines()
    duplicate = json.loads(lines[0]) | {"id": "copy-of-m0"}
    (tmp_path / "d.jsonl").write_text("\n".join(lines + [json.dumps(duplicate)]) + "\n")
    splits = load_splits(local(tmp_path / "d.jsonl"))
    ids = {r["id"] for r in splits.train + splits.validation + splits.test}
    assert "m0" in ids and "copy-of-m0" not in ids
    assert splits.stats["train"]["duplicates"] == 1


def test_named_local_splits_with_placeholder_drop_train_copies_of_test(tmp_path: Path) -> None:
    lines = (FIXTURES / "messages.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:50]) + "\n")
    # The test file repeats two training conversations: they must stay in test only.
    (tmp_path / "test.jsonl").write_text("\n".join(lines[50:] + lines[:2]) + "\n")
    cfg = local(tmp_path / "{split}.jsonl", test_split="test", validation_fraction=0.1)
    splits = load_splits(cfg)
    assert len(splits.test) == 12 and splits.stats["test"]["origin"] == str(tmp_path / "test.jsonl")
    assert splits.stats["train"]["duplicates"] == 2
    assert len(splits.train) + len(splits.validation) == 48
    assert_disjoint(splits)


def test_held_out_split_name_needs_placeholder() -> None:
    with pytest.raises(ValueError, match=r"\{split\} placeholder"):
        load_splits(local(FIXTURES / "messages.jsonl", test_split="test"))


def test_missing_file_names_the_pattern() -> None:
    with pytest.raises(FileNotFoundError, match="nope/\\*.jsonl"):
        load_splits(local("nope/*.jsonl"))


def test_empty_carved_split_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "one.jsonl").write_text((FIXTURES / "messages.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="split is empty"):
        load_splits(local(tmp_path / "one.jsonl", test_fraction=0.05))


def test_sharegpt_json_array_and_jsonl_and_directory(tmp_path: Path) -> None:
    as_array = load_splits(local(FIXTURES / "sharegpt.json", test_fraction=0.0, validation_fraction=0.0))
    as_lines = load_splits(local(FIXTURES / "sharegpt.jsonl", test_fraction=0.0, validation_fraction=0.0))
    assert as_array.train == as_lines.train and len(as_array.train) == 12
    first = json.loads((FIXTURES / "sharegpt.jsonl").read_text().splitlines()[0])
    mapped = {"system": "system", "human": "user", "gpt": "assistant"}
    assert [m["role"] for m in as_array.train[0]["messages"]] == [
        mapped[c["from"]] for c in first["conversations"]
    ]
    assert [m["content"] for m in as_array.train[0]["messages"]] == [
        c["value"] for c in first["conversations"]
    ]
    shutil.copy(FIXTURES / "sharegpt.json", tmp_path)
    shutil.copy(FIXTURES / "messages.jsonl", tmp_path)
    both = load_splits(local(tmp_path, test_fraction=0.0, validation_fraction=0.0))
    assert len(both.train) == 72


def test_parquet_matches_jsonl(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (FIXTURES / "messages.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet", row_group_size=16)
    from_parquet = load_splits(local(tmp_path / "m.parquet"))
    from_jsonl = load_splits(local(FIXTURES / "messages.jsonl"))
    assert from_parquet.fingerprint == from_jsonl.fingerprint


def test_prompt_completion_becomes_user_assistant() -> None:
    splits = load_splits(
        local(
            FIXTURES / "prompt_completion.jsonl",
            format="prompt_completion",
            test_fraction=0.0,
            validation_fraction=0.0,
        )
    )
    rows = [json.loads(line) for line in (FIXTURES / "prompt_completion.jsonl").read_text().splitlines()]
    assert len(splits.train) == 6
    plain, conversational = splits.train[0], splits.train[1]
    assert plain["messages"] == [
        {"role": "user", "content": rows[0]["prompt"]},
        {"role": "assistant", "content": rows[0]["completion"]},
    ]
    assert conversational["messages"] == rows[1]["prompt"] + rows[1]["completion"]


def test_hub_code_path_on_a_local_dataset_dir() -> None:
    pytest.importorskip("datasets")
    cfg = DatasetConfig(
        name="hub",
        source="hub",
        path=str(FIXTURES / "hub_dir"),
        test_split="test",
        num_train=100,
        num_validation=100,
        num_test=100,
        validation_fraction=0.25,
    )
    splits = load_splits(cfg)
    assert len(splits.test) == 5 and splits.stats["test"]["origin"] == f"{FIXTURES / 'hub_dir'}[test]"
    assert len(splits.train) + len(splits.validation) == 20
    assert splits.train[0]["id"].startswith(f"{FIXTURES / 'hub_dir'}[train]#")
    assert_disjoint(splits)


def test_max_records_stops_reading_early() -> None:
    cfg = local(FIXTURES / "messages.jsonl", test_fraction=0.0, validation_fraction=0.0)
    cfg.max_records = 10  # read with getattr until DatasetConfig has the field
    splits = load_splits(cfg)
    assert splits.stats["train"]["read"] == 10
    assert [r["id"] for r in splits.train] == [f"m{i}" for i in range(10)]


def test_carved_validation_fraction_beside_a_named_test_split(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(420)
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:400]) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[400:]) + "\n")
    # test_fraction does not apply (test is named): validation gets about 10% of train, not 10% + 40%.
    cfg = local(tmp_path / "{split}.jsonl", test_split="test", validation_fraction=0.1, test_fraction=0.4)
    splits = load_splits(cfg)
    assert len(splits.test) == 20
    assert 20 <= len(splits.validation) <= 60 and len(splits.train) + len(splits.validation) == 400
