"""One run, top to bottom: lock, resume, record and tracker around the stages of a job.

`run(job)` is what `python -m sft_sweeps` calls for every job of a sweep; the work itself is
`sft_sweeps.stages` (prepare, init, train, save, score), which the calibration and the standalone
evaluation call too. A job that fails is recorded as `failed` with its traceback and does not stop the
other jobs of a sweep; a job whose `result.json` already says `done` for the same config hash and data is
skipped, so rerunning a sweep resumes it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sft_sweeps import stages
from sft_sweeps.cli import USER_ERRORS, full_error, in_multirun, job_overrides
from sft_sweeps.data import Splits, load_splits
from sft_sweeps.evaluation.judge import missing_grades, retry_request_failures
from sft_sweeps.identity import RunRecord, masking_label
from sft_sweeps.job import Job, make_job
from sft_sweeps.metrics import is_detail
from sft_sweeps.record import (
    RunLock,
    RunLockedError,
    git_commit,
    load_run_record,
    package_versions,
    write_record,
)
from sft_sweeps.tracking import Tracker, make_tracker
from sft_sweeps.training import ProgressCallback

log = logging.getLogger(__name__)


def run(job: Job | DictConfig, run_dir: str | None = None) -> RunRecord | None:
    """Run one job and return its record (also written to `<run_dir>/result.json`).

    Resume: a run whose record says `done` for the same config hash and the same data fingerprint is
    skipped; changed data reruns it, saying why. The run holds a lock on its directory while it runs.

    Args:
        job: the job (`sft_sweeps.job.make_job`); a composed config is made into one here.
        run_dir: where outputs go; defaults to Hydra's output dir for this job.

    Returns:
        The record; None on a DDP rank other than 0, or when another process holds the run directory
        in a multirun (logged).

    Raises:
        ConfigError: a config value is out of range or a benchmark cannot run (before any work starts).
        RunLockedError: another process is running in `run_dir` (single run).
        Exception: whatever failed, when not in a multirun (in a multirun it is recorded, not raised).
    """
    job = job if isinstance(job, Job) else make_job(job)
    run_dir = run_dir or HydraConfig.get().runtime.output_dir
    if not _is_main_process():  # DDP (accelerate launch / torchrun): rank 0 records, tracks and evaluates
        prepared = stages.prepare(job.settings, load_splits(job.settings.dataset))
        stages.train(prepared, stages.init_model(prepared), str(Path(run_dir) / "trainer"))
        return None
    try:
        with RunLock(run_dir):
            return _run_locked(job, run_dir)
    except RunLockedError as e:
        if not in_multirun():
            raise
        log.error("not run: %s", e)
        return None


def _run_locked(job: Job, run_dir: str) -> RunRecord:
    settings = job.settings
    previous = load_run_record(run_dir)
    record = RunRecord.start(
        job.config,
        overrides=job_overrides(),
        run_dir=str(run_dir),
        versions=package_versions(),
        git_commit=git_commit(),
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        owner={"host": socket.gethostname(), "pid": os.getpid()},
        optimized_metric=job.optimized_metric,
    )
    try:
        splits = load_splits(settings.dataset)
    except Exception as e:  # data that cannot be read: a failed job the sweep table names, not a missing one
        _record_failure(record, e, run_dir)
        write_record(run_dir, record)
        if not in_multirun():
            raise
        return record
    record.data = {"fingerprint": splits.fingerprint, "stats": splits.stats}
    if (
        settings.resume
        and previous is not None
        and previous.status == "done"
        and previous.config_hash == record.config_hash
    ):
        if previous.data_fingerprint == splits.fingerprint:
            if missing_grades(previous.items_for("judge")) and "judge" in settings.eval.benchmarks:
                return _retry_judge(job, previous, splits, run_dir)
            log.info(
                "skipping %s: result.json says done for config %s (resume=false reruns it)",
                run_dir,
                record.config_hash,
            )
            return previous
        log.warning(
            "rerunning %s: done for this config, but its data changed (fingerprint %s -> %s)",
            run_dir,
            str(previous.data_fingerprint)[:12],
            splits.fingerprint[:12],
        )

    previous_wandb = (previous.wandb if previous else None) or {}
    tracker = make_tracker(job.config, run_dir, run_id=previous_wandb.get("run_id"))
    record.wandb = {
        "run_id": tracker.run_id,
        "mode": settings.logger.mode if settings.logger.backend == "wandb" else None,
    }
    write_record(run_dir, record)

    start = time.monotonic()
    try:
        _train_and_score(job, splits, run_dir, tracker, record)
        record.status = "done"
    except Exception as e:
        _record_failure(record, e, run_dir)
        if not in_multirun():
            raise
    finally:
        record.wall_time_s = round(time.monotonic() - start, 2)
        if record.status == "running":  # interrupted by KeyboardInterrupt or SystemExit
            record.status = "interrupted"
        write_record(run_dir, record)
        tracker.finish(record.status if record.status in ("done", "failed") else "failed")
    return record


def _retry_judge(job: Job, record: RunRecord, splits: Splits, run_dir: str) -> RunRecord:
    """A done run whose judge requests failed: ask the judge again for exactly those (the record's answers,
    no training), and update the record and its W&B summary."""
    log.info(
        "%s: done, %d judge grades missing: asking the judge again",
        run_dir,
        missing_grades(record.items_for("judge")),
    )
    try:
        metrics, by_depth, items = retry_request_failures(
            record.items_for("judge") or [], job.settings, splits.test
        )
    except Exception as e:  # noqa: BLE001 - the run stays done, its grades still missing, for the next rerun
        log.error(
            "%s: asking the judge again failed, grades still missing: %s: %s", run_dir, type(e).__name__, e
        )
        return record
    record.metrics = {k: v for k, v in record.metrics.items() if not k.startswith("judge/")}
    record.metrics.update({f"judge/{k}": v for k, v in metrics.items()})
    record.by_depth = {k: v for k, v in record.by_depth.items() if not k.startswith("judge/")}
    record.by_depth.update(
        {f"judge/{k}": {str(d): v for d, v in values.items()} for k, values in by_depth.items()}
    )
    assert isinstance(record.eval_items, dict)
    record.eval_items["judge"] = items
    write_record(run_dir, record)
    tracker = make_tracker(job.config, run_dir, run_id=(record.wandb or {}).get("run_id"))
    try:
        tracker.log_summary({f"judge/{k}": v for k, v in metrics.items()})
        tracker.log_table("eval_items/judge", items)
    finally:
        tracker.finish("done")
    return record


def _record_failure(record: RunRecord, error: Exception, run_dir: str) -> None:
    """Mark `record` failed with the traceback; log it (one line for a user error in a single run)."""
    record.status = "failed"
    record.error = traceback.format_exc()  # the record keeps the traceback, whatever the log says
    if isinstance(error, USER_ERRORS) and not in_multirun() and not full_error():
        # The entry point prints this message as its one `error:` line; a traceback would bury it.
        log.error("run failed: %s: %s", run_dir, error)
    else:
        log.error("run failed: %s\n%s", run_dir, record.error)


def _train_and_score(job: Job, splits: Splits, run_dir: str, tracker: Tracker, record: RunRecord) -> None:
    """The stages of a job, their outputs logged to the tracker and filled into `record`."""
    settings = job.settings
    label = f"{masking_label(settings.masking.__dict__)} seed={settings.seed}"
    prepared = stages.prepare(settings, splits)
    masking_stats = prepared.masking_stats.to_dict()
    log.info("masking %s: %s", label, masking_stats)
    tracker.log_summary({f"data/{k}": float(v) for k, v in masking_stats.items()})

    callbacks = [cb for cb in (ProgressCallback(label), tracker.callback()) if cb is not None]
    trained = stages.train(prepared, stages.init_model(prepared), str(Path(run_dir) / "trainer"), callbacks)
    if settings.train.save_model:
        record.model_path = stages.save_model(trained, prepared.tokenizer, run_dir)

    scores = stages.score(
        trained.model, prepared.tokenizer, splits, settings, job.optimized_metric, record.model_path
    )
    metrics = {**scores.metrics, **stages.training_metrics(trained)}
    tracker.log_summary(metrics)
    tracker.log_summary(
        {
            f"by_depth/{name}/{depth}": value
            for name, values in scores.by_depth.items()
            for depth, value in values.items()
        }
    )
    for benchmark, items in scores.eval_items.items():
        tracker.log_table(f"eval_items/{benchmark}", items)
    # Multi-IF's turn x language cells (hundreds of keys) are in result.json and W&B, not in this line.
    log.info("%s: %s", label, {k: round(v, 4) for k, v in metrics.items() if not is_detail(k)})
    record.metrics, record.by_depth = metrics, scores.by_depth
    record.eval_items, record.benchmarks = scores.eval_items, scores.benchmarks
    record.data = {"fingerprint": splits.fingerprint, "stats": splits.stats, "masking": masking_stats}
    record.resumed_from_step = trained.continuation.resumed_from_step
    trained.continuation.finish()  # the run is done: its checkpoints go (unless train.keep_checkpoints)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
