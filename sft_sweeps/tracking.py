"""Experiment tracking, the W&B adapter: every run is a W&B run (offline by default), or nothing.

One code path serves offline, online and none: the pipeline logs through a `Tracker`, and the trainer
reports its curves through `Tracker.callback()` (TRL's own `report_to="wandb"` stays off).

What reaches W&B: the resolved config; a group naming everything but the seed
(`sft_sweeps.identity.run_group`), so the seeds of one setting sit together; tags for model, dataset and
masking; training curves against `train/global_step`; evaluation metrics in the summary; per-item results
of each benchmark as a `wandb.Table`.

Example:
    >>> tracker = make_tracker(cfg, run_dir)           # doctest: +SKIP
    >>> tracker.log_train({"loss": 1.2}, step=10)       # doctest: +SKIP
    >>> tracker.finish("done")                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from sft_sweeps.identity import as_dict as _as_dict
from sft_sweeps.identity import masking_label, masking_params, run_group, run_name, run_tags

log = logging.getLogger(__name__)

# Re-exported: what names a run lives in sft_sweeps.identity; this module only talks to W&B.
__all__ = ["Tracker", "make_tracker", "masking_label", "masking_params", "run_group", "run_name", "run_tags"]


class Tracker:
    """Logs one run to W&B; with no W&B run (`logger=none`) every method does nothing.

    Args:
        run: a `wandb.Run`, or None for a tracker that does nothing.
    """

    def __init__(self, run: Any | None = None) -> None:
        self._run = run
        self._finished = False

    @property
    def run_id(self) -> str | None:
        """The W&B run id (store it to resume the same W&B run), or None without tracking."""
        return self._run.id if self._run is not None else None

    @property
    def active(self) -> bool:
        return self._run is not None and not self._finished

    def log_train(self, metrics: Mapping[str, float], step: int) -> None:
        """Log training curves at optimizer step `step`.

        Keys are prefixed `train/` unless they already carry a `train/` or `eval/` prefix; all plot
        against `train/global_step`. Non-finite and non-numeric values are dropped with a warning.
        """
        if not self.active:
            return
        row: dict[str, float] = {}
        for key, value in metrics.items():
            if not _is_number(value):
                log.warning("tracking: dropped non-numeric train metric %s=%r at step %d", key, value, step)
                continue
            row[key if key.startswith(("train/", "eval/")) else f"train/{key}"] = float(value)
        row["train/global_step"] = step
        self._run.log(row)

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        """Put (evaluation) metrics into the run summary, the values W&B tables and comparisons show."""
        if not self.active:
            return
        self._run.summary.update(dict(metrics))

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Log rows of dicts (e.g. one per evaluated turn) as a `wandb.Table` under `name`.

        Columns are the keys of the first row, then any new keys in order of appearance; a row lacking
        a column gets None. Dicts and lists become JSON strings. An empty list logs nothing (and says so).
        """
        if not self.active:
            return
        if not rows:
            log.warning("tracking: table %r has no rows; not logged", name)
            return
        import wandb

        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        data = [[_table_cell(row.get(col)) for col in columns] for row in rows]
        self._run.log({name: wandb.Table(columns=columns, data=data)})

    def finish(self, status: str) -> None:
        """End the W&B run: `done` exits 0, anything else (`failed`) exits 1. Safe to call twice."""
        if not self.active:
            return
        self._finished = True
        self._run.summary["status"] = status
        self._run.finish(exit_code=0 if status == "done" else 1)

    def callback(self) -> Any | None:
        """A `transformers.TrainerCallback` forwarding the Trainer's logs here, or None without tracking."""
        if self._run is None:
            return None
        return _make_callback(self)


def make_tracker(cfg: DictConfig | Mapping[str, Any], run_dir: str, run_id: str | None = None) -> Tracker:
    """Start tracking one run as `cfg.logger` says.

    `logger.backend=none` (or `logger.mode=disabled`) gives a tracker that does nothing. Otherwise a W&B
    run starts in `logger.mode` (`offline` needs no account: its `.wandb` file lands under
    `<run_dir>/wandb/`; sync it later with `wandb sync`).

    Args:
        cfg: the full config (a job's resolved dict, `Job.config`, or a composed DictConfig).
        run_dir: the run's output folder.
        run_id: a W&B id to resume (from a previous result.json), or None for a new run.

    Returns:
        The tracker; call `finish` when the run ends.
    """
    cfg = _as_dict(cfg)
    logger_cfg = cfg["logger"]
    if logger_cfg["backend"] == "none" or logger_cfg["mode"] == "disabled":
        return Tracker(None)
    if logger_cfg["mode"] == "offline":
        # wandb's error reporting resolves its collector's host name even offline; this is the only
        # network access an offline run attempts (checked with strace on wandb 0.31).
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    import wandb

    os.makedirs(run_dir, exist_ok=True)
    run = wandb.init(
        mode=logger_cfg["mode"],
        project=logger_cfg["project"],
        entity=logger_cfg["entity"],
        dir=run_dir,
        config={**cfg, "strategy": masking_label(cfg["masking"])},  # W&B groups by config keys
        group=run_group(cfg),
        name=run_name(cfg),
        tags=run_tags(cfg),
        id=run_id,
        resume="allow",
        # A new run per job even if a previous job of a multirun left one open.
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off"),
    )
    run.define_metric("train/global_step")
    run.define_metric("train/*", step_metric="train/global_step")
    run.define_metric("eval/*", step_metric="train/global_step")
    return Tracker(run)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _table_cell(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _make_callback(tracker: Tracker) -> Any:
    from transformers import TrainerCallback

    class _TrackerCallback(TrainerCallback):
        """Forwards `Trainer.log` calls: step logs become curves, the end-of-training log the summary."""

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (Trainer's signature)
            if not logs or not state.is_world_process_zero:
                return
            if "train_runtime" in logs:  # the Trainer's final log: totals, not a point on a curve
                tracker.log_summary({k: float(v) for k, v in logs.items() if _is_number(v)})
                return
            renamed = {(f"eval/{k[5:]}" if k.startswith("eval_") else k): v for k, v in logs.items()}
            tracker.log_train(renamed, step=state.global_step)

    return _TrackerCallback()
