"""The overnight paper run: its template composes into 15 valid jobs; every sweep prints its cost first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from sft_sweeps.callbacks import sweep_estimate_text
from sft_sweeps.config import register_configs, validate
from sft_sweeps.estimate import estimate_job, format_estimate, sweep_jobs
from sft_sweeps.identity import masking_label
from sft_sweeps.job import make_job
from tests.conftest import CONF_DIR, TINY_OVERRIDES

ROOT = Path(CONF_DIR).parent
PAPER = ["experiment=paper_run", "model=qwen2_5_0_5b", "dataset=ultrachat_200k"]


@pytest.fixture
def hydra_dir() -> Iterator[None]:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        yield
    GlobalHydra.instance().clear()


def _sweep_config(overrides: list[str]) -> DictConfig:
    return compose("config", overrides=overrides, return_hydra_config=True)


def _calibration(settings, tokens_per_s: float = 1000.0, **extra) -> dict:
    from sft_sweeps.calibrate import data_signature, train_signature

    return {
        "tokens_per_s": tokens_per_s,
        "mean_tokens_per_sample": 100.0,
        "train_signature": train_signature(settings),
        "data_signature": data_signature(settings),
        "device": "cpu",
        **extra,
    }


def test_paper_run_composes_into_15_valid_jobs(hydra_dir) -> None:
    cfg = _sweep_config(PAPER)
    params = {k: str(v) for k, v in cfg.hydra.sweeper.params.items()}
    jobs = sweep_jobs([f"{k}={v}" for k, v in params.items()] + list(cfg.hydra.overrides.task))
    configs = [compose("config", overrides=job) for job in jobs]
    settings = [validate(c) for c in configs]  # every range check of every job

    assert len(settings) == 15
    labels = {masking_label(c.masking) for c in configs}
    assert labels == {"full", "last", "all", "weighted(pw=0.1)", "weighted(pw=0.01)"}
    assert sorted(s.seed for s in settings) == sorted([0, 1, 2] * 5)
    for s in settings:
        assert s.model.pretrained == "Qwen/Qwen2.5-0.5B-Instruct"
        assert s.dataset.path == "HuggingFaceH4/ultrachat_200k"
        assert s.train.name == "gpu" and s.train.bf16 and s.train.save_model
        assert list(s.eval.benchmarks) == ["nll", "multi_if"]
        assert s.optimized_metric == "multi_if/if_prompt_strict" and s.sweep_name == "paper_run"
    # The benchmarks can run (builtin Multi-IF, offline) and the optimized metric is one of theirs.
    assert make_job(configs[0]).optimized_metric == "multi_if/if_prompt_strict"
    assert cfg.hydra.callbacks.paper_report._target_ == "sft_sweeps.callbacks.WriteReport"
    assert cfg.hydra.callbacks.paper_report.out_dir == "reports/paper_run"
    assert "sweep_estimate" in cfg.hydra.callbacks


def test_estimate_uses_calibrated_throughput_and_mean_length(hydra_dir) -> None:
    settings = validate(compose("config", overrides=PAPER))
    job = estimate_job(["masking=all"], settings, _calibration(settings, eval_wall_s=60.0, setup_wall_s=30.0))

    samples = 600 * 8 * 4
    assert (job.samples, job.max_tokens, job.tokens) == (samples, samples * 2048, samples * 100.0)
    assert job.seconds == pytest.approx(30 + samples * 100 / 1000 + 60)
    assert job.notes == []


def test_estimate_of_another_model_gives_no_time_and_says_how_to_calibrate(hydra_dir) -> None:
    settings = validate(compose("config", overrides=PAPER))
    tiny = validate(compose("config", overrides=[]))
    job = estimate_job(["masking=all"], settings, _calibration(tiny))
    text = format_estimate([job], ["masking"], _calibration(tiny), Path("calibration.json"), "python -m x")

    assert job.seconds is None and "another model" in job.notes[0]
    assert "Calibrate this sweep's model: python -m x" in text


def test_missing_calibration_names_the_command(hydra_dir, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SFT_SWEEPS_CALIBRATION", str(tmp_path / "none.json"))
    text = sweep_estimate_text(_sweep_config(PAPER), "config")

    assert text.startswith("Sweep of 15 jobs")
    assert "  #14 masking=weighted_pw001 seed=2: 19,200 samples, <= 39.32M tokens" in text
    assert "No calibration at" in text
    assert text.rstrip().endswith(
        "python -m sft_sweeps.calibrate --eval experiment=paper_run model=qwen2_5_0_5b dataset=ultrachat_200k"
    )


@pytest.mark.slow
def test_calibrate_then_a_sweep_prints_its_jobs_and_time_before_the_first(tmp_path: Path) -> None:
    """On the embedded model: a 4-step calibration, then a 2-job sweep that reads it, then its report."""
    env = {**os.environ, "SFT_SWEEPS_CALIBRATION": str(tmp_path / "calibration.json")}
    common = [*TINY_OVERRIDES, "logger=none", f"cache_dir={tmp_path / 'cache'}"]
    calibrate = [sys.executable, "-m", "sft_sweeps.calibrate", "--steps", "4", "--warmup", "1", *common]
    out = subprocess.run(calibrate, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    assert calibration["tokens_per_s"] > 0 and calibration["mean_tokens_per_sample"] > 0

    report = tmp_path / "report"
    sweep = [sys.executable, "-m", "sft_sweeps", "-m", "masking=full,all", *common]
    sweep += [
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "+hydra.callbacks.paper_report._target_=sft_sweeps.callbacks.WriteReport",
        f"+hydra.callbacks.paper_report.out_dir={report}",
    ]
    out = subprocess.run(sweep, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    estimate = out.stdout.index("Sweep of 2 jobs")
    assert estimate < out.stdout.index("#0 : masking=full")  # printed before the launcher starts job #0
    assert "  #0 masking=full: 32 samples, <= 32,768 tokens, ~" in out.stdout
    assert "Wall time: ~" in out.stdout
    assert (report / "report.md").is_file()
