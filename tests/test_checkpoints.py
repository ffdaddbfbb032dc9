"""Checkpoints and continuation (`sft_sweeps.checkpoints`): an interrupted run goes on from its last
checkpoint to the same final model as an uninterrupted run; another config or data starts from step 0.

The slow test kills a real `python -m sft_sweeps` process with SIGKILL in the middle of its second epoch
(length-grouped batches, the default's sampler), starts the same command again, and compares the final
weights, bit for bit, and the metrics with those of a run never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from sft_sweeps.checkpoints import MARKER, Continuation, checkpoint_identity, checkpoints, write_marker
from sft_sweeps.config import validate
from sft_sweeps.training import build_trainer
from tests.conftest import TINY_OVERRIDES, compose_config
from tests.test_training import TOKENIZER, _model, _samples

ROOT = Path(__file__).resolve().parents[1]
# 64 conversations, batches of 8: 8 steps an epoch, so 16 steps cross an epoch boundary and the kill at
# step >= 10 falls inside the second epoch, whose first batches the continued run must skip.
STEPS = 16
KILL_AT = 10


def _settings(*overrides: str):
    return validate(compose_config([*TINY_OVERRIDES, "logger=none", *overrides]))


def _trainer_in(tmp_path: Path, settings):
    return build_trainer(
        _model(), TOKENIZER, Dataset.from_list(_samples()), settings.train, seed=0, output_dir=str(tmp_path)
    )


def _fake_checkpoint(output_dir: Path, step: int, identity: str | None) -> Path:
    """A checkpoint folder as the trainer leaves it; `identity` None: killed before its marker."""
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    if identity is not None:
        write_marker(path, identity, loss_sum=1.5 * step, step=step)
    return path


def test_continues_from_the_newest_complete_checkpoint_of_the_same_config_and_data(tmp_path: Path) -> None:
    settings = _settings("train.save_steps=2")
    identity = checkpoint_identity(settings, "f" * 64)
    _fake_checkpoint(tmp_path, 2, identity)
    _fake_checkpoint(tmp_path, 4, identity)
    _fake_checkpoint(tmp_path, 6, None)  # killed while saving: never used, deleted
    continuation = Continuation.prepare(_trainer_in(tmp_path, settings), settings, "f" * 64)
    assert continuation.checkpoint == str(tmp_path / "checkpoint-4")
    assert continuation.resumed_from_step == 4 and continuation.loss_sum == 6.0
    assert [step for step, _ in checkpoints(tmp_path)] == [2, 4]


def test_checkpoint_settings_do_not_change_the_identity() -> None:
    a = checkpoint_identity(_settings("train.save_steps=2"), "f" * 64)
    assert a == checkpoint_identity(_settings("train.save_steps=3", "train.save_total_limit=1"), "f" * 64)
    assert a != checkpoint_identity(_settings("train.save_steps=2", "train.learning_rate=1e-3"), "f" * 64)
    assert a != checkpoint_identity(_settings("train.save_steps=2"), "e" * 64)


@pytest.mark.parametrize("change", ["config", "data"])
def test_changed_config_or_data_deletes_the_checkpoints_and_starts_from_step_0(
    change: str, tmp_path: Path
) -> None:
    old = _settings("train.save_steps=2")
    _fake_checkpoint(tmp_path, 4, checkpoint_identity(old, "f" * 64))
    new = _settings("train.save_steps=2", "train.learning_rate=1e-3") if change == "config" else old
    fingerprint = "e" * 64 if change == "data" else "f" * 64
    continuation = Continuation.prepare(_trainer_in(tmp_path, new), new, fingerprint)
    assert continuation.checkpoint is None and continuation.resumed_from_step is None
    assert checkpoints(tmp_path) == []


def _command(run_dir: Path, cache: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "sft_sweeps", *TINY_OVERRIDES, "logger=none", f"train.max_steps={STEPS}",
        "train.train_sampling_strategy=group_by_length", "num_threads=1", f"hydra.run.dir={run_dir}",
        f"cache_dir={cache}", *overrides,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _kill_after_checkpoint(command: list[str], trainer_dir: Path, step: int) -> int:
    """Start `command`, SIGKILL it once a complete checkpoint at `step` or later exists; that step."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            done = [s for s, path in checkpoints(trainer_dir) if s >= step and (path / MARKER).exists()]
            if done:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return done[0]
            if process.poll() is not None:
                error = process.stderr.read().decode()[-3000:]
                pytest.fail(f"the run ended before its checkpoint {step}: {error}")
            time.sleep(0.02)
        pytest.fail(f"no checkpoint {step} within 300 s")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.slow
def test_a_killed_run_continues_to_the_same_final_model_bit_for_bit(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    plain = tmp_path / "plain"
    # The same config, never interrupted (checkpoints on, so the same length-grouped batch order).
    subprocess.run(
        _command(plain, cache, "train.save_steps=2"), cwd=ROOT, env=_env(), check=True, capture_output=True
    )

    run_dir = tmp_path / "interrupted"
    command = _command(run_dir, cache, "train.save_steps=2")
    killed_at = _kill_after_checkpoint(command, run_dir / "trainer", KILL_AT)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "running"  # died mid-training

    again = subprocess.run(
        command, cwd=ROOT, env=_env(), check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "done"
    assert KILL_AT <= record["resumed_from_step"] < STEPS and record["resumed_from_step"] >= killed_at
    assert f"continuing from {run_dir / 'trainer'}/checkpoint-{record['resumed_from_step']}" in again.stdout

    reference = json.loads((plain / "result.json").read_text())
    assert reference["resumed_from_step"] is None
    a, b = _weights(plain), _weights(run_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the continued run's weights differ from the plain run's"
    # Evaluation of the same weights gives the same metrics; train_loss sums the steps before the kill
    # (from the checkpoint) and after it, in another order than one run does: equal up to float rounding.
    timing = {"train_runtime_s", "train_loss"}
    assert {k: v for k, v in record["metrics"].items() if k not in timing} == {
        k: v for k, v in reference["metrics"].items() if k not in timing
    }
    assert record["metrics"]["train_loss"] == pytest.approx(reference["metrics"]["train_loss"], rel=1e-9)
    assert checkpoints(run_dir / "trainer") == []  # done: deleted (train.keep_checkpoints=false)
