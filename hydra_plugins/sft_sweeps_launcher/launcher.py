"""The launcher itself; hydra_plugins/sft_sweeps_launcher/__init__.py says what it does and why."""

import logging
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import cloudpickle
import joblib
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# joblib's list (ParallelBackendBase.MAX_NUM_THREADS_VARS): the thread pools its workers are limited to.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
# How long the jobs get to record `interrupted` when the sweep itself is stopped, before SIGKILL.
STOP_GRACE_S = 30.0
# A job that dies of these was stopped from outside: `interrupted` (resume reruns it), not `failed`.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGHUP)


class JobTerminated(BaseException):
    """Raised in a job by SIGTERM, so the run unwinds like on Ctrl-C and records `interrupted`."""


def effective_n_jobs(n_jobs: Any) -> int:
    """How many jobs run at once for `hydra.launcher.n_jobs`, with joblib's meaning of negative values.

    Raises:
        sft_sweeps.config.ConfigError: 0 or not an integer; the message names the key.
    """
    import joblib

    from sft_sweeps.config import ConfigError

    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
        raise ConfigError(
            f"hydra.launcher.n_jobs must be a positive number of jobs at once, or negative as in joblib "
            f"(-1: one per core, -2: all cores but one), got {n_jobs!r}; launcher=sequential runs one at once"
        )
    return joblib.effective_n_jobs(n_jobs)


def thread_env(n_jobs: int) -> dict[str, str]:
    """What joblib sets in its workers: each thread pool at cores // n_jobs, unless the user set it."""
    import joblib

    threads = str(max(joblib.cpu_count() // n_jobs, 1))
    return {var: os.environ.get(var, threads) for var in THREAD_VARS}


def death_cause(exitcode: int | None) -> str:
    """A job process's exit status in words, with the likely cause of a signal."""
    if exitcode is None:
        return "did not exit"
    number = signal_of(exitcode)
    if number is None:
        return f"exited with status {exitcode} before recording a result (its error is printed above)"
    name = signal.Signals(number).name
    hint = {
        "SIGKILL": " (the kernel's out-of-memory killer sends it: see `dmesg`)",
        "SIGSEGV": " (a crash in native code)",
        "SIGBUS": " (a crash in native code, or a memory-mapped file that shrank or a full /dev/shm)",
        "SIGABRT": " (a crash in native code)",
    }.get(name, "")
    return f"killed by {name}{hint}"


def signal_of(exitcode: int | None) -> int | None:
    """The signal that ended a process: -N from multiprocessing, or 128+N from a job that handled it."""
    if exitcode is None:
        return None
    number = -exitcode if exitcode < 0 else exitcode - 128 if exitcode > 128 else None
    return number if number in {s.value for s in signal.Signals} else None


def _run_job(payload: bytes, conn: Connection) -> None:
    """A job's process: run it as the joblib launcher would, send back its JobReturn and outcomes."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        from hydra_plugins.hydra_joblib_launcher._core import execute_job

        from sft_sweeps.callbacks import job_outcomes

        args = cloudpickle.loads(payload)
        ret = execute_job(*args)
        if ret.status == JobStatus.FAILED:  # the task raised: print it here, where the traceback is
            error = ret._return_value
            print("".join(traceback.format_exception(error)), file=sys.stderr, flush=True)
            ret.return_value = RuntimeError(f"{type(error).__name__}: {error}")
        conn.send_bytes(cloudpickle.dumps((ret, job_outcomes())))
    except JobTerminated:
        os._exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        os._exit(128 + signal.SIGINT)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise JobTerminated(f"stopped by {signal.Signals(signum).name}")  # message: "the sweep was <it>"


@dataclass
class _Job:
    idx: int
    overrides: Sequence[str]
    process: Any
    conn: Connection
    result: tuple[JobReturn, dict[str, str | None]] | None = None


class ProcessPerJobLauncher(Launcher):
    """Runs each job of a multirun in its own process, at most `n_jobs` at once; see the module."""

    def __init__(self, n_jobs: int = -1) -> None:
        self.n_jobs = n_jobs
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from sft_sweeps.cli import errors_reported
        from sft_sweeps.config import ConfigError

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        with errors_reported(ConfigError):
            n_jobs = effective_n_jobs(self.n_jobs)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        cores = joblib.cpu_count()
        if n_jobs > cores:  # each job holds a model and its data: more at once than cores costs memory
            log.warning(f"hydra.launcher.n_jobs={self.n_jobs}: {n_jobs} jobs at once on {cores} cores")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            f"Launching {len(job_overrides)} jobs, {n_jobs} at a time, each in its own process; "
            f"sweep output dir : {sweep_dir}"
        )
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#{} : {}".format(initial_job_idx + idx, " ".join(filter_overrides(overrides))))
        singleton_state = Singleton.get_state()
        todo = [
            (
                initial_job_idx + idx,
                overrides,
                cloudpickle.dumps(
                    (
                        initial_job_idx + idx,
                        overrides,
                        self.hydra_context,
                        self.config,
                        self.task_function,
                        singleton_state,
                    )
                ),
            )
            for idx, overrides in enumerate(job_overrides)
        ]
        try:
            with _environ(thread_env(n_jobs)), _stop_on_sigterm():
                finished = self._run_all(todo, n_jobs, sweep_dir)
        except (JobTerminated, KeyboardInterrupt) as e:
            # The user stopped the sweep: its jobs were stopped too and recorded `interrupted`. A line, not
            # a traceback; the shell's status for a signal (143 for SIGTERM, 130 for Ctrl-C).
            number = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
            print(
                f"error: the sweep was stopped by {number.name}; its running jobs were stopped and recorded "
                "`interrupted`: rerunning the same command resumes it",
                file=sys.stderr,
            )
            raise SystemExit(128 + number) from None
        return [finished[initial_job_idx + idx] for idx in range(len(job_overrides))]

    def _run_all(
        self, todo: list[tuple[int, Sequence[str], bytes]], n_jobs: int, sweep_dir: Path
    ) -> dict[int, JobReturn]:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state forked mid-thread
        running: list[_Job] = []
        finished: dict[int, JobReturn] = {}
        try:
            while todo or running:
                while todo and len(running) < n_jobs:
                    idx, overrides, payload = todo.pop(0)
                    receive, send = context.Pipe(duplex=False)
                    process = context.Process(target=_run_job, args=(payload, send), name=f"job-{idx}")
                    process.start()
                    send.close()  # the job holds the only sending end: its death closes the pipe
                    running.append(_Job(idx, overrides, process, receive))
                ready = wait([job.conn for job in running] + [job.process.sentinel for job in running])
                for job in list(running):
                    if job.conn in ready or job.conn.poll():
                        try:
                            job.result = cloudpickle.loads(job.conn.recv_bytes())
                        except EOFError:
                            pass
                    if job.process.sentinel in ready or (job.conn in ready and job.result is None):
                        job.process.join()
                        job.conn.close()
                        running.remove(job)
                        finished[job.idx] = self._finish(job, sweep_dir)
        except BaseException as e:
            _stop(running)
            for job in running:  # what stopped them, in their records (`interrupted`: resume reruns them)
                why = str(e) if isinstance(e, JobTerminated) else type(e).__name__
                _mark_record(
                    sweep_dir, job.process.pid, "interrupted", f"the sweep was {why}; resume reruns it"
                )
            raise
        return finished

    def _finish(self, job: _Job, sweep_dir: Path) -> JobReturn:
        """The JobReturn of an ended job; a job that died gets its record marked and its outcome noted."""
        from sft_sweeps.callbacks import note_job_outcome

        if job.result is not None:
            ret, outcomes = job.result
            for run_dir, problem in outcomes.items():
                note_job_outcome(run_dir, problem)
                if problem is not None and problem.startswith(("running", "raised")):
                    # The job ended but left its record `running`: it could not write it (a full disk).
                    _mark_record(sweep_dir, job.process.pid, "failed", problem)
            if ret.status == JobStatus.FAILED:
                # Hydra's sweepers raise a failed job's exception, which would end the sweep without its
                # table: the job was noted failed where it ran (SweepExitStatus.on_job_end; the sweep
                # exits non-zero) and its traceback printed there.
                ret.status, ret.return_value = JobStatus.COMPLETED, None
            return ret
        cause = f"process {job.process.pid} {death_cause(job.process.exitcode)}"
        run_dir = _mark_dead_job(sweep_dir, job.process.pid, job.process.exitcode, cause)
        log.error(
            "job #%d (%s): %s; %s; the other jobs go on",
            job.idx,
            " ".join(filter_overrides(job.overrides)),
            cause,
            f"its run dir: {run_dir}" if run_dir else "it wrote no record",
        )
        note_job_outcome(run_dir or f"job #{job.idx} ({' '.join(filter_overrides(job.overrides))})", cause)
        ret = JobReturn(overrides=list(job.overrides), status=JobStatus.COMPLETED)
        ret.return_value = None  # like a run recorded `failed`: no metric
        return ret


def _mark_dead_job(sweep_dir: Path, pid: int, exitcode: int | None, cause: str) -> str | None:
    """Mark the record a dead job left `running` (or `interrupted` without a cause) with the cause.

    Returns:
        The job's run dir, or None when it wrote no record (it died before starting its run).
    """
    status = "interrupted" if signal_of(exitcode) in STOP_SIGNALS else "failed"
    return _mark_record(sweep_dir, pid, status, f"{cause}; resume reruns it")


def _mark_record(sweep_dir: Path, pid: int, status: str, error: str) -> str | None:
    """Set `status` and `error` on the record of process `pid` in the sweep, if it still says `running`
    (or `interrupted` without a cause): what the job could not write itself (killed, or a full disk).

    Returns:
        The job's run dir, or None when no record there belongs to `pid`.
    """
    import socket

    from sft_sweeps.record import RECORD_NAME, RunLock, RunLockedError, load_run_record, write_record

    for path in sorted(sweep_dir.glob(f"**/{RECORD_NAME}")):
        try:
            record = load_run_record(path.parent)
        except Exception:  # noqa: BLE001 - a record nobody can read is not this job's to mark
            continue
        owner = (record.owner or {}) if record is not None else {}
        if record is None or owner.get("pid") != pid or owner.get("host") != socket.gethostname():
            continue
        if record.status == "running" or (record.status == "interrupted" and not record.error):
            record.status, record.error = status, error
            try:
                with RunLock(path.parent):
                    try:
                        write_record(path.parent, record)
                    except OSError:  # a full disk: the same file, rewritten in the blocks it has
                        _overwrite_in_place(path, record.to_dict())
            except (RunLockedError, OSError) as e:
                log.warning("could not mark %s %s: %s", path, status, e)
        return str(path.parent)
    return None


def _overwrite_in_place(path: Path, data: dict[str, Any]) -> None:
    """Write `data` over the file at `path` without allocating: compact JSON padded with spaces to the
    file's size (JSON allows trailing blanks). For a full disk only, where the atomic write cannot get a
    temporary file; a job's `running` record, indented, is larger than its compact `failed` record.

    Raises:
        OSError: the compact record is larger than the file.
    """
    import json

    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    size = path.stat().st_size
    if len(text) > size:
        raise OSError(f"no space for the record ({len(text)} bytes, {size} in place)")
    with open(path, "r+b") as f:
        f.write(text + b" " * (size - len(text)))
        f.flush()
        os.fsync(f.fileno())


def _stop(jobs: list[_Job]) -> None:
    """Stop the jobs still running: SIGTERM (they record `interrupted`), then SIGKILL after a grace time."""
    for job in jobs:
        if job.process.is_alive():
            job.process.terminate()
    for job in jobs:
        job.process.join(STOP_GRACE_S)
        if job.process.is_alive():
            job.process.kill()
            job.process.join()


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the processes started inside (spawn copies os.environ)."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """The sweep's SIGTERM raises in the launcher, which stops its jobs (they record `interrupted`)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
