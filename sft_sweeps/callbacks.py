"""Hydra callbacks: a writable output dir before a run starts; what a sweep prints when its jobs have run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sft_sweeps.cli import exit_with_error, full_error


class SweepSummary(Callback):
    """At the end of a multirun, print a table comparing the runs of that sweep (failed ones included)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sft_sweeps.report import print_sweep_table

        print_sweep_table(config.hydra.sweep.dir)


class CheckOutputDir(Callback):
    """Fail with `error: hydra.run.dir: ...` when the output dir cannot be written, before Hydra tries.

    Hydra creates the output dir and opens its log file before the task runs, so an unwritable dir ends in
    a traceback about "Unable to configure handler 'file'" that names neither the dir nor its key.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_writable(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_writable(config, "hydra.sweep.dir")


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
    os.close(fd)
    os.unlink(probe)
