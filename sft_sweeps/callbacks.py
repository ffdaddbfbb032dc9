"""Hydra callbacks: what a sweep prints when all its jobs have run."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    """At the end of a multirun, print a table comparing the runs of that sweep (failed ones included)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sft_sweeps.report import print_sweep_table

        print_sweep_table(config.hydra.sweep.dir)
