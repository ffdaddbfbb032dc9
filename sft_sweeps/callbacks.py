"""Hydra callbacks: a writable output dir before a run starts; a sweep's jobs and cost before they run;
what a sweep prints (and, with `WriteReport`, writes) when its jobs have run."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sft_sweeps.cli import exit_with_error, full_error

log = logging.getLogger(__name__)


# What this process learned about the jobs of the current multirun: run dir -> None (done) or why not. Filled
# by `SweepExitStatus.on_job_end` where a job runs (this process with `launcher=sequential`; the job's own
# process with the default launcher, which sends it back, and adds the jobs whose process died).
_JOB_OUTCOMES: dict[str, str | None] = {}


def note_job_outcome(run_dir: str, problem: str | None) -> None:
    """Note how a job of this multirun ended: `problem` None when its run is `done`."""
    _JOB_OUTCOMES[run_dir] = problem


def job_outcomes() -> dict[str, str | None]:
    """The jobs noted so far (`note_job_outcome`), run dir -> None or why the run is not done."""
    return dict(_JOB_OUTCOMES)


class SweepExitStatus(Callback):
    """A multirun whose jobs did not all finish exits non-zero, after its table, in one `error:` line.

    Listed first in `hydra.callbacks`, so its `on_multirun_end` runs last (Hydra calls them in reverse):
    the table and any report are written before it exits.
    """

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from sft_sweeps.record import read_record

        run_dir = str(OmegaConf.select(config, "hydra.runtime.output_dir"))
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            problem = f"raised {type(error).__name__}: {error}"
            first = error
            # What failed first (a record write on a full disk fails after it), up to an error that
            # re-raised it with more to say (`raise ... from e`).
            while first.__context__ is not None and first.__cause__ is None:
                first = first.__context__
            if first is not error:
                problem = f"raised {type(first).__name__}: {first}; then {problem}"
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                free = shutil.disk_usage(run_dir).free if os.path.isdir(run_dir) else "?"
                problem += f" ({free} bytes free under {run_dir}; free space there or move hydra.sweep.dir)"
            note_job_outcome(run_dir, problem)
            return
        try:
            record = read_record(run_dir) or {}
        except OSError as e:
            record = {"status": f"unreadable record ({e})"}
        status = record.get("status", "no result.json")
        errors = [line.strip() for line in str(record.get("error") or "").splitlines() if line.strip()]
        note_job_outcome(run_dir, None if status == "done" else ": ".join([status, *errors[-1:]]))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        outcomes = job_outcomes()
        problems = {run_dir: why for run_dir, why in outcomes.items() if why is not None}
        if not problems:
            return
        run_dir, why = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        exit_with_error(
            f"{len(problems)} of {len(outcomes)} jobs of this sweep did not finish: {run_dir}: {why}{more}; "
            "the table above lists them, and rerunning the same command reruns them (done runs are skipped)"
        )


class SweepSummary(Callback):
    """At the end of a multirun, print a table comparing the runs of that sweep (failed ones included)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sft_sweeps.report import print_sweep_table

        print_sweep_table(config.hydra.sweep.dir)


class SweepEstimate(Callback):
    """Before the first job of a multirun: list the jobs with their tokens and, calibrated, wall time.

    Reads `calibration.json` (`$SFT_SWEEPS_CALIBRATION`), or says which `python -m sft_sweeps.calibrate`
    command makes it. Only the basic sweeper's jobs are known in advance (an Optuna sweep is not listed).
    An estimate that cannot be made is logged as a warning: it never stops the sweep.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            text = sweep_estimate_text(config, kwargs.get("config_name") or "config")
        except Exception as e:  # noqa: BLE001 - an estimate is advice; the sweep goes on without it
            log.warning("no cost estimate for this sweep: %s", e)
            return
        print(text, flush=True)


def sweep_estimate_text(config: DictConfig, config_name: str) -> str:
    """The estimate `SweepEstimate` prints, for a multirun's config (its `hydra` node included)."""
    from hydra import compose

    from sft_sweeps.calibrate import calibration_path
    from sft_sweeps.config import validate
    from sft_sweeps.estimate import (
        calibration_hint,
        estimate_sweep,
        format_estimate,
        load_calibration,
        sweep_jobs,
    )

    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if not sweeper.endswith("BasicSweeper"):
        return f"Sweep with {sweeper or 'an unknown sweeper'}: its jobs are chosen as it runs; no estimate."
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    task = list(OmegaConf.select(config, "hydra.overrides.task") or [])
    overrides = [f"{k}={v}" for k, v in params.items()] + task
    jobs = sweep_jobs(overrides)
    varied = [o.split("=", 1)[0].lstrip("+~") for o in sweep_overrides(overrides)]
    path = calibration_path()
    calibration = load_calibration(path)
    estimates = estimate_sweep(jobs, lambda job: validate(compose(config_name, overrides=job)), calibration)
    return format_estimate(estimates, varied, calibration, path, calibration_hint(task))


def sweep_overrides(overrides: list[str]) -> list[str]:
    """The overrides that list several values (what the sweep varies)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if o.is_sweep_override()]


class WriteReport(Callback):
    """At the end of a multirun, write the paper report of its sweep dir, as `python -m sft_sweeps.report`.

    Args:
        out_dir: the report folder (e.g. `reports/${sweep_name}`).
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sft_sweeps.report import load_records, write_report

        sweep_dir = str(config.hydra.sweep.dir)
        command = f"python -m sft_sweeps.report {sweep_dir} --out {self.out_dir}"
        try:
            report = write_report(load_records([sweep_dir]), self.out_dir, command=command)
        except Exception as e:  # noqa: BLE001 - the runs are recorded; the report can be rerun by hand
            log.error("report not written (%s); rerun: %s", e, command)
            return
        h = report.hygiene
        print(
            f"{h.done}/{h.expected} runs done. Wrote {self.out_dir}/report.md (rerun: {command})", flush=True
        )


class CheckOutputDir(Callback):
    """Fail with `error: hydra.run.dir: ...` when the output dir cannot be written, before Hydra tries.

    Hydra creates the output dir and opens its log file before the task runs, so an unwritable dir ends in
    a traceback about "Unable to configure handler 'file'" that names neither the dir nor its key.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_writable(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_writable(config, "hydra.sweep.dir")


PROBE_BYTES = 64 * 1024  # what an output dir must take before a run starts: Hydra's configs and logs


def _check_writable(config: DictConfig, key: str) -> None:
    """Exit with an error naming `key` and its dir when a file cannot be created where the dir will be."""
    if full_error():  # the user wants Hydra's own traceback
        return
    directory = Path(str(OmegaConf.select(config, key)))
    # The deepest part that exists: the dir itself, or the ancestor Hydra will create it in. Nothing is
    # created here: `${now:...}` in the dir may resolve to another second when Hydra makes it.
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        exit_with_error(f"{key}: cannot create '{directory}': '{existing}' is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".sft_sweeps_write_check.")
    except OSError as e:
        exit_with_error(f"{key}: cannot write to '{directory}' ({e.strerror} in '{existing}')")
    try:
        # An empty file fits on a full disk; Hydra's config files (tens of KiB) do not.
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
    except OSError as e:
        free = shutil.disk_usage(existing).free
        exit_with_error(
            f"{key}: cannot write to '{directory}' ({e.strerror} in '{existing}', {free} bytes free); "
            "free space there or point it elsewhere"
        )
    finally:
        os.close(fd)
        os.unlink(probe)
