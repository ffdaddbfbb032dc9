"""How the entry points report a user's mistake: `error: <message>` on stderr and exit status 1.

A wrong setting (a tokenizer path, an out-of-range value, a missing file) is the user's to fix, and its
message names the key and the path; a traceback would only bury it. `HYDRA_FULL_ERROR=1` keeps the
traceback, as it does for Hydra's own errors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sft_sweeps.config import ConfigError
from sft_sweeps.data.validate import DataValidationError
from sft_sweeps.record import RunLockedError

# The errors whose message is the whole story: it names the key, the file (and record and field) or the
# run directory to fix. A single run reports them as one `error:` line and logs no traceback for them.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    FileNotFoundError,
    DataValidationError,
    RunLockedError,
)


def full_error() -> bool:
    """Whether the user asked for full tracebacks (Hydra's own test of `HYDRA_FULL_ERROR`)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_with_error(message: str) -> None:
    """Print `error: <message>` to stderr and exit with status 1."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


@contextmanager
def errors_reported(*kinds: type[BaseException], enabled: bool = True) -> Iterator[None]:
    """Report an exception of one of `kinds` raised inside as `error: <message>` and exit 1.

    Args:
        kinds: the exceptions whose message is the whole story (it names the key or file).
        enabled: False lets them propagate, e.g. in a multirun, where each job's failure is recorded.

    Example:
        >>> with errors_reported(ValueError):  # doctest: +SKIP
        ...     raise ValueError("model.tokenizer: no tokenizer at '/x'")  # prints error: ..., exits 1
    """
    try:
        yield
    except kinds as e:
        if not enabled or full_error():
            raise
        exit_with_error(str(e))


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> list[str]:
    """The overrides of this Hydra job as typed (the record keeps them); none outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
