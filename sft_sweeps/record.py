"""The run record on disk: `result.json` in each run dir, written atomically, and the run-dir lock.

The record's schema and what identifies a run live in `sft_sweeps.identity`; this module reads and
writes it. A killed run never leaves a half-written file: records are written to a temporary file and
renamed over the old one. A run holds `RunLock` on its directory while it runs, so a second process
fails fast, and a `running` record whose lock nobody holds is known to be `interrupted`.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.metadata
import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from sft_sweeps.config import ConfigError
from sft_sweeps.files import create_temp
from sft_sweeps.identity import RecordError, RunRecord

log = logging.getLogger(__name__)

RECORD_NAME = "result.json"
PACKAGES = (
    "sft_sweeps",
    "torch",
    "transformers",
    "trl",
    "datasets",
    "peft",
    "accelerate",
    "hydra-core",
    "omegaconf",
    "wandb",
    "lm_eval",
    "tokenizers",
)
LOCK_NAME = ".lock"


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON to `path` via a temporary file in the same directory and an atomic rename.

    The file gets the permissions of a normal file under the umask (0644 under 022), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The raw record in `run_dir`, or None when there is none (or it is unreadable)."""
    path = Path(run_dir) / RECORD_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def load_run_record(run_dir: str | Path) -> RunRecord | None:
    """The record in `run_dir` for resume, or None when there is none.

    An unreadable or invalid record is moved aside to `result.json.unreadable-<time>` (kept, never
    overwritten in place) with a warning, and None is returned so the run starts afresh.
    """
    path = Path(run_dir) / RECORD_NAME
    try:
        return RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
    except FileNotFoundError:
        return None
    except OSError as e:  # a directory or an unreadable file where the record goes: the user's to move
        raise ConfigError(f"{path}: cannot read the run's record ({e.strerror}); move it away") from e
    except (json.JSONDecodeError, UnicodeDecodeError, RecordError, TypeError) as e:
        aside = _aside_name(path)
        os.replace(path, aside)
        log.warning("%s is unreadable (%s); moved it to %s and starting the run afresh", path, e, aside)
        return None


def _aside_name(path: Path) -> Path:
    """`result.json.unreadable-<time>`, with `-2`, `-3`... when that name is taken: a second unreadable
    record within the same second must not replace the first one kept aside."""
    base = path.with_name(f"{RECORD_NAME}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    aside, n = base, 1
    while aside.exists():
        n += 1
        aside = base.with_name(f"{base.name}-{n}")
    return aside


def write_record(run_dir: str | Path, record: RunRecord) -> None:
    write_json_atomic(Path(run_dir) / RECORD_NAME, record.to_dict())


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """An exclusive `flock` on `<run_dir>/.lock`, held while a run runs; the kernel drops it when the
    process dies, however it dies, so a lock can never be left stale.

    Raises:
        RunLockedError: on enter, when another process holds it (its host and pid named).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{self.path.parent} is in use by another run ({holder}); wait for it or use another "
                    "hydra.run.dir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host={socket.gethostname()} pid={os.getpid()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def is_locked(run_dir: str | Path) -> bool:
    """True when a live process holds `run_dir`'s lock (a `running` record there is really running)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def effective_status(record: RunRecord) -> str:
    """The record's status, with `running` turned into `interrupted` when no live process holds its run
    directory (a record left by a killed job). Records read from W&B keep their status."""
    if record.status != "running" or not record.run_dir or not Path(record.run_dir).is_dir():
        return record.status
    return "running" if is_locked(record.run_dir) else "interrupted"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The commit of the source tree that ran, with `+dirty` when it had uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit
