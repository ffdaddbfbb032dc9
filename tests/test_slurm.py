"""On a real one-node Slurm cluster (scripts/slurm_cluster.sh): the Slurm template end to end, a
requeued job continuing from its checkpoint, DDP across the tasks of one job.

Marked `slurm`: not in the default suite; `.ci/run` starts the cluster and runs them
(`make test-slurm`). The sweep and the DDP job are the README's commands ("Running on Slurm") as printed,
in smoke mode; each is compared with the same jobs run locally. `num_threads=1` on both sides: the
same float sums, so the same metrics.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from sft_sweeps.checkpoints import MARKER, checkpoints
from sft_sweeps.identity import RunRecord
from tests.test_readme import readme_commands

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
# The README's CPU overrides of experiment=slurm (the test cluster has no GPU and 2 cores), for the
# sweeps below that are not the README's own commands.
SLURM_CPU = [
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
]
COMMON = ["debug=smoke", "logger=none", "num_threads=1", "sweep_name=slurm"]
# What differs between the same run on Slurm and locally: timing, host and process, where it ran.
NOT_COMPARED = {"wall_time_s", "owner", "run_dir", "source", "overrides", "model_path", "versions"}


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    """The one-node cluster, started if it is not up (idempotent); a clear failure when it cannot be."""
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        started = subprocess.run(
            [str(ROOT / "scripts" / "slurm_cluster.sh"), "start"], capture_output=True, text=True
        )
        if started.returncode != 0:
            pytest.fail(f"scripts/slurm_cluster.sh start failed:\n{started.stderr[-3000:]}")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def readme_command(*parts: str) -> list[str]:
    """The README command (section "Running on Slurm") holding all `parts`, as an argument list."""
    (command,) = [
        c for c in readme_commands() if c.startswith("python -m sft_sweeps") and all(p in c for p in parts)
    ]
    return shlex.split(command)


def _sweep(*overrides: str, command: list[str] | None = None) -> subprocess.CompletedProcess:
    """A sweep (the README's `command`, or `python -m sft_sweeps -m`) in smoke mode, `overrides` appended."""
    command = command or ["python", "-m", "sft_sweeps", "-m"]
    assert command[0] == "python"
    return subprocess.run(
        [sys.executable, *command[1:], *COMMON, *overrides],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=True,
        timeout=900,
    )


def _records(sweep_dir: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in sweep_dir.glob("*/result.json")}


def _comparable(record: dict) -> dict:
    kept = {k: v for k, v in record.items() if k not in NOT_COMPARED}
    kept["metrics"] = {k: v for k, v in record["metrics"].items() if k != "train_runtime_s"}
    kept["config"] = {k: v for k, v in record["config"].items() if k != "num_threads"}
    # Whichever side ran second read the tokenization from the shared cache: a fact of the cache.
    masking = {k: v for k, v in record["data"]["masking"].items() if k != "cache_hit"}
    kept["data"] = {**record["data"], "masking": masking}
    return kept


def test_slurm_sweep_writes_the_records_of_the_same_sweep_run_locally(tmp_path: Path) -> None:
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    out = _sweep(
        f"hydra.sweep.dir={on_slurm}", command=readme_command("partition=debug", "masking=full,last")
    )
    assert "2/2 runs done" in out.stdout, out.stdout[-3000:]
    _sweep("launcher=sequential", "masking=full,last", f"hydra.sweep.dir={local}")

    slurm_records, local_records = _records(on_slurm), _records(local)
    assert sorted(slurm_records) == ["masking-full__seed-0", "masking-last__seed-0"]
    assert slurm_records.keys() == local_records.keys()
    for name, record in slurm_records.items():
        assert record["status"] == "done"
        RunRecord.from_dict(record, name)  # a valid record, as the report reads it
        assert _comparable(record) == _comparable(local_records[name]), name
    # submitit's logs: <sweep dir>/.submitit/<array id>_<index>/, as the README says
    logs = sorted((on_slurm / ".submitit").glob("*_*/*_log.out"))
    assert len(logs) == 2 and all("Job completed successfully" in p.read_text() for p in logs)

    report = subprocess.run(
        [sys.executable, "-m", "sft_sweeps.report", str(on_slurm), "--out", str(tmp_path / "report")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert (tmp_path / "report" / "report.md").is_file(), report.stdout


def _job_id(sweep_dir: Path, deadline: float) -> str:
    """The Slurm id of the sweep's only job, from submitit's folder (named after it)."""
    while time.monotonic() < deadline:
        folders = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.is_dir()]
        if folders:
            return min(folders, key=len)  # the array's id (its one job: `<id>_0`)
        time.sleep(0.2)
    pytest.fail("the job was not submitted")


def _only_run(sweep_dir: Path) -> Path:
    """The folder of the sweep's only job."""
    (run_dir,) = [p.parent for p in sweep_dir.glob("*/.hydra")]
    return run_dir


def _wait_for_checkpoint(sweep_dir: Path, process: subprocess.Popen, deadline: float) -> int:
    while time.monotonic() < deadline:
        done = [
            step
            for trainer_dir in sweep_dir.glob("*/trainer")
            for step, path in checkpoints(trainer_dir)
            if (path / MARKER).exists()
        ]
        if done:
            return done[-1]
        if process.poll() is not None:
            pytest.fail(f"the sweep ended before a checkpoint: {process.stdout.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail("no checkpoint within the deadline")


# Long enough (smoke model, 1 thread, the whole train split in each step: ~10 s unloaded) that the job is
# still training when it dies (SIGKILL comes KillWait=2 s after the requeue); a checkpoint every 10 steps.
REQUEUE_TRAIN = [
    "masking=full",
    "train.max_steps=200",
    "train.save_steps=10",
    "train.per_device_train_batch_size=64",
]


@pytest.mark.parametrize(
    "interrupt",
    [
        # What Slurm sends `signal_delay_s` before the time limit: submitit calls the launcher's
        # checkpoint(), requeues the job (one of max_num_timeout) and exits.
        ["scancel", "--signal=USR2"],
        # Preemption, or an admin: Slurm kills the job (submitit ignores SIGTERM; SIGKILL follows) and
        # queues it again.
        ["scontrol", "requeue"],
    ],
    ids=["time_limit_signal", "scontrol_requeue"],
)
def test_an_interrupted_job_is_requeued_and_continues_to_the_same_result(
    interrupt: list[str], tmp_path: Path
) -> None:
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    command = [
        sys.executable, "-m", "sft_sweeps", "-m", *COMMON, "experiment=slurm", *SLURM_CPU,
        "hydra.launcher.max_num_timeout=2", *REQUEUE_TRAIN, f"hydra.sweep.dir={on_slurm}",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 600
        job = _job_id(on_slurm, deadline)
        step = _wait_for_checkpoint(on_slurm, process, deadline)
        subprocess.run([*interrupt, job], check=True)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            subprocess.run(["scancel", _job_id(on_slurm, time.monotonic() + 1)], check=False)
            process.wait(timeout=60)
    assert process.returncode == 0, output[-3000:]
    assert "1/1 runs done" in output, output[-3000:]
    record = json.loads((_only_run(on_slurm) / "result.json").read_text())
    assert record["status"] == "done"
    # continued mid-training (a job killed after its last step would continue from its last checkpoint too)
    assert record["resumed_from_step"] is not None and step <= record["resumed_from_step"] < 200
    log = "".join(p.read_text() for p in (on_slurm / ".submitit").glob("*/*_log.*"))
    if interrupt[0] == "scancel":
        assert "Caught signal SIGUSR2" in log and "timed-out" in log, log[-3000:]
    assert "continuing from" in log, log[-3000:]

    # The same run, never interrupted, locally: the same final model, the same metrics.
    _sweep("launcher=sequential", *REQUEUE_TRAIN, f"hydra.sweep.dir={local}")
    reference = json.loads((_only_run(local) / "result.json").read_text())
    a = load_file(str(_only_run(on_slurm) / "model" / "model.safetensors"))
    b = load_file(str(_only_run(local) / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    timing = {"train_runtime_s", "train_loss"}
    assert {k: v for k, v in record["metrics"].items() if k not in timing} == {
        k: v for k, v in reference["metrics"].items() if k not in timing
    }
    assert record["metrics"]["train_loss"] == pytest.approx(reference["metrics"]["train_loss"], rel=1e-9)


def test_a_job_of_two_tasks_trains_one_ddp_run_equal_to_one_process(tmp_path: Path) -> None:
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    out = _sweep(f"hydra.sweep.dir={on_slurm}", command=readme_command("partition=debug", "tasks_per_node=2"))
    assert "1/1 runs done" in out.stdout, out.stdout[-3000:]
    # 2 tasks x 8 samples per step = the 16 samples of one process's step (the same length-grouped order)
    _sweep(
        "launcher=sequential",
        "masking=full",
        "train.per_device_train_batch_size=16",
        f"hydra.sweep.dir={local}",
    )

    assert len(list(on_slurm.glob("*/result.json"))) == 1  # one record for the two tasks
    logs = "".join(p.read_text() for p in (on_slurm / ".submitit").glob("*/*_log.*"))
    assert "DDP over Slurm tasks: rank 0 of 2" in logs and "DDP over Slurm tasks: rank 1 of 2" in logs
    record = json.loads((_only_run(on_slurm) / "result.json").read_text())
    reference = json.loads((_only_run(local) / "result.json").read_text())
    assert (
        record["status"] == "done" and record["metrics"]["train_steps"] == reference["metrics"]["train_steps"]
    )
    # The same samples and the same normalizer per step; only the order of float sums differs (all-reduce).
    a = load_file(str(_only_run(on_slurm) / "model" / "model.safetensors"))
    b = load_file(str(_only_run(local) / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert record["metrics"]["train_loss"] == pytest.approx(reference["metrics"]["train_loss"], rel=1e-5)
