"""Sweeps at scale: the submitit local launcher for real, a sweep killed midway, W&B ids on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import open_dict

from sft_sweeps.pipeline import run
from sft_sweeps.record import RECORD_NAME, read_record, write_json_atomic
from tests.conftest import CONF_DIR, TINY_OVERRIDES

ROOT = Path(CONF_DIR).parent


def _sweep_command(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sft_sweeps",
        "-m",
        *args,
        *TINY_OVERRIDES,
        "logger=none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def _statuses(sweep_dir: Path) -> dict[str, str]:
    return {r["strategy"]: r["status"] for r in map(read_record, sweep_dir.glob("*/")) if r}


@pytest.mark.slow
def test_submitit_local_launcher_runs_jobs_in_their_own_processes(tmp_path: Path) -> None:
    out = subprocess.run(
        _sweep_command(
            tmp_path, "masking=last,all", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert _statuses(tmp_path / "sweep") == {"last": "done", "all": "done"}
    # submitit ran each job as its own process and kept its logs.
    job_logs = list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 2
    assert all("step 4/4" in p.read_text() for p in job_logs)


def test_a_sweep_killed_midway_loses_nothing_and_resumes(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    command = _sweep_command(tmp_path, "masking=full,last,all")
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while "done" not in _statuses(sweep_dir).values():
        assert process.poll() is None and time.monotonic() < deadline, "the first job never finished"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    finished = {
        p: p.read_bytes()
        for p in sweep_dir.glob(f"*/{RECORD_NAME}")
        if read_record(p.parent)["status"] == "done"
    }
    assert finished, "a done record must survive the kill"
    for path in sweep_dir.glob(f"*/{RECORD_NAME}"):
        json.loads(path.read_text())  # every record on disk is whole, killed or not

    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _statuses(sweep_dir) == {"full": "done", "last": "done", "all": "done"}
    assert {p: p.read_bytes() for p in finished} == finished  # done runs were skipped, not redone
    assert "skipping" in out.stdout + out.stderr


def test_a_rerun_reuses_its_wandb_run_id(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    with open_dict(tiny_cfg):
        tiny_cfg.logger.backend = "wandb"
        tiny_cfg.logger.mode = "offline"
    run_dir = tmp_path / "job"
    first = run(tiny_cfg, run_dir=str(run_dir))
    assert first.status == "done" and first.wandb["run_id"]

    # The same run found failed (e.g. killed) is rerun under the same W&B id, not a duplicate.
    write_json_atomic(run_dir / RECORD_NAME, {**first.to_dict(), "status": "failed"})
    second = run(tiny_cfg, run_dir=str(run_dir))
    assert second.status == "done"
    assert second.wandb["run_id"] == first.wandb["run_id"]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2
