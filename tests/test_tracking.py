"""Tracking: what reaches W&B, read back from the offline `.wandb` file itself."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from transformers import TrainerControl, TrainerState

from sft_sweeps.tracking import Tracker, make_tracker, masking_label, run_group, run_name, run_tags
from tests.conftest import compose_config
from tests.wandb_records import find_run_files, read_run


@pytest.fixture(autouse=True)
def _wandb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep wandb's staging, cache and settings folders out of the user's home."""
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # logger.mode decides


def test_masking_label() -> None:
    assert masking_label({"name": "all", "prompt_weight": 0.0, "turn_decay": 1.0}) == "all"
    assert masking_label({"name": "weighted", "prompt_weight": 0.0}) == "weighted(pw=0)"
    assert (
        masking_label({"name": "weighted", "prompt_weight": 0.1, "turn_schedule": "decay", "turn_decay": 0.5})
        == "weighted(pw=0.1,sched=decay,decay=0.5)"
    )
    assert masking_label({"name": "last", "expand_turns": True}) == "last(expand=true)"


def test_run_group_names_everything_but_the_seed() -> None:
    base = compose_config(["masking=weighted", "sweep_name=s"])
    group = run_group(base)
    assert group.startswith("s/model=tiny,dataset=synthetic,masking=weighted(pw=0.1),cfg=")
    # Seed and logging do not change the group; masking params and any other key do.
    assert run_group(compose_config(["masking=weighted", "sweep_name=s", "seed=3", "logger=none"])) == group
    assert (
        run_group(compose_config(["masking=weighted", "sweep_name=s", "masking.prompt_weight=0.5"])) != group
    )
    assert (
        run_group(compose_config(["masking=weighted", "sweep_name=s", "model.arch.hidden_size=64"])) != group
    )
    # The report recomputes it from the `config` dict of result.json: same answer after a JSON round trip.
    as_json = json.loads(json.dumps(OmegaConf.to_container(base, resolve=True, enum_to_str=True)))
    assert run_group(as_json) == group
    assert run_name(base) == "weighted(pw=0.1)-seed0"
    assert run_tags(compose_config(["logger.tags=[paper]"])) == [
        "model:tiny",
        "dataset:synthetic",
        "masking:all",
        "paper",
    ]


def test_logger_none_does_nothing(tmp_path: Path) -> None:
    tracker = make_tracker(compose_config(["logger=none"]), str(tmp_path))
    assert isinstance(tracker, Tracker)
    assert tracker.run_id is None and tracker.callback() is None
    tracker.log_train({"loss": 1.0}, step=1)
    tracker.log_summary({"turn_exact_match": 0.5})
    tracker.log_table("eval_items", [{"id": "a"}])
    tracker.finish("done")
    tracker.finish("done")
    assert not (tmp_path / "wandb").exists()


def _trainer_log(callback, step: int, logs: dict) -> None:
    state = TrainerState()
    state.global_step = step
    callback.on_log(SimpleNamespace(), state, TrainerControl(), logs=logs)


def test_offline_run_reaches_the_wandb_file(tmp_path: Path) -> None:
    cfg = compose_config(["masking=weighted", "seed=2", "sweep_name=t", "logger.tags=[paper]"])
    assert cfg.logger.backend == "wandb" and cfg.logger.mode == "offline"
    tracker = make_tracker(cfg, str(tmp_path))
    run_id = tracker.run_id
    assert run_id

    callback = tracker.callback()
    _trainer_log(callback, 2, {"loss": 2.5, "learning_rate": 1e-3, "grad_norm": 1.5, "epoch": 0.1})
    _trainer_log(callback, 4, {"loss": 2.0, "learning_rate": 5e-4, "eval_loss": 2.2})
    _trainer_log(callback, 4, {"train_runtime": 12.5, "train_loss": 2.25, "epoch": 0.2})
    tracker.log_train({"loss": float("nan"), "note": "x"}, step=5)  # dropped values, step still logged
    tracker.log_summary({"turn_exact_match": 0.44, "assistant_nll": 0.8})
    items = [
        {"id": "test-0", "turn": 1, "correct": True, "nll": 0.5},
        {"id": "test-0", "turn": 2, "correct": False, "nll": 1.5, "extra": {"a": 1}},
    ]
    tracker.log_table("eval_items", items)
    tracker.finish("done")
    tracker.finish("done")  # second call is a no-op

    (path,) = find_run_files(tmp_path)
    run = read_run(path)
    assert run.run_id == run_id and run.project == "sft_sweeps"
    assert run.config["seed"] == 2 and run.config["masking"]["name"] == "weighted"
    assert run.config["masking"]["prompt_weight"] == 0.1 and run.config["sweep_name"] == "t"
    assert run.group == run_group(cfg) and run.name == "weighted(pw=0.1)-seed2"
    assert run.tags == ["model:tiny", "dataset:synthetic", "masking:weighted", "paper"]

    assert {"name": "", "glob_name": "train/*", "step_metric": "train/global_step"} in run.metrics
    curve = [
        (row["train/global_step"], row.get("train/loss")) for row in run.history if "train/global_step" in row
    ]
    assert curve == [(2, 2.5), (4, 2.0), (5, None)]
    assert run.history[0]["train/learning_rate"] == 1e-3 and run.history[0]["train/epoch"] == 0.1
    assert run.history[1]["eval/loss"] == 2.2

    assert run.summary["turn_exact_match"] == 0.44 and run.summary["assistant_nll"] == 0.8
    assert run.summary["train_runtime"] == 12.5 and run.summary["status"] == "done"
    table = run.table(tmp_path, "eval_items")
    assert table["columns"] == ["id", "turn", "correct", "nll", "extra"]
    assert table["data"] == [["test-0", 1, True, 0.5, None], ["test-0", 2, False, 1.5, '{"a": 1}']]
    assert run.exit_code == 0

    # A resumed run reuses the id (from result.json); failure exits 1. (Another folder: wandb names run
    # folders by the second, so a resume within the same second would share this one.)
    resumed = make_tracker(cfg, str(tmp_path / "again"), run_id=run_id)
    assert resumed.run_id == run_id
    resumed.finish("failed")
    (second_path,) = find_run_files(tmp_path / "again")
    second = read_run(second_path)
    assert second.run_id == run_id and second.exit_code == 1 and second.summary["status"] == "failed"
