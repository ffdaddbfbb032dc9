"""`python -m sft_sweeps.evaluate eval.model_path=<dir>`: score a saved model, no training.

Composes the same config as training (`conf/config.yaml`, same overrides), loads the model and tokenizer
saved in `eval.model_path`, rebuilds the test split with `sft_sweeps.data.load_splits` (the call the
training pipeline makes, so the conversations are the same), scores it with the same stage as a sweep's job
(`sft_sweeps.stages.score`), prints a table and writes a `RunRecord` as `result.json` in the Hydra run dir,
which `python -m sft_sweeps.report` reads beside training runs.

When the model was saved by a sweep's job (`<run dir>/model`, its `result.json` beside it), the record keeps
that run's identity (model, data, masking, seed, training settings) with this evaluation's `eval` settings,
so the report labels it with the strategy that trained it; otherwise the composed config says it.

    python -m sft_sweeps.evaluate eval.model_path=multirun/default/masking-all__seed-0/model
    python -m sft_sweeps.evaluate eval.model_path=<dir> dataset=synthetic_suite \\
        eval.benchmarks=[synthetic,nll,lm_eval] eval.lm_eval_tasks=[sft_sweeps_suite]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from sft_sweeps.cli import USER_ERRORS, errors_reported, in_multirun, job_overrides
from sft_sweeps.config import ConfigError, register_configs
from sft_sweeps.identity import RunRecord, job_dirname
from sft_sweeps.job import Job, make_job
from sft_sweeps.metrics import arrow, fmt, short_name, sort_keys
from sft_sweeps.record import RECORD_NAME

log = logging.getLogger(__name__)
RESULT_NAME = RECORD_NAME  # a RunRecord, read by the report like a training run's

OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
register_configs()


def run_evaluation(cfg: DictConfig | Job, out_dir: str | Path) -> RunRecord:
    """Evaluate the saved model of `eval.model_path` and write `<out_dir>/result.json`.

    Args:
        cfg: the job, or the composed config (made into one); `eval.model_path` must be set.
        out_dir: where the record goes.

    Returns:
        The record written (status `done`): metrics, by_depth, eval_items, benchmarks, data, model_path.

    Raises:
        ConfigError: `eval.model_path` is missing, not a directory, or holds no model or tokenizer.
        DataValidationError: an invalid record with `dataset.on_invalid=error` (before the model loads).
    """
    job = cfg if isinstance(cfg, Job) else make_job(cfg)
    settings = job.settings
    model_path = settings.eval.model_path
    if model_path is None or not Path(model_path).is_dir():
        raise ConfigError(f"eval.model_path must be a saved model directory, got {model_path!r}")
    from sft_sweeps import stages
    from sft_sweeps.data import load_splits
    from sft_sweeps.record import git_commit, package_versions, write_record

    start = time.monotonic()
    # The data first: a bad record is named before a model, possibly large, is loaded for nothing.
    splits = load_splits(settings.dataset)
    model, tokenizer = stages.load_trained(settings)
    log.info(
        "evaluating %s on %d test conversations (data fingerprint %s)",
        model_path,
        len(splits.test),
        splits.fingerprint[:12],
    )
    scores = stages.score(model, tokenizer, splits, settings, job.optimized_metric, str(model_path))
    record = RunRecord.start(
        _identity(job.config, Path(model_path)),
        overrides=job_overrides(),
        run_dir=str(out_dir),
        versions=package_versions(),
        git_commit=git_commit(),
        device=str(model.device),
        optimized_metric=job.optimized_metric,
        metrics=scores.metrics,
        by_depth=scores.by_depth,
        eval_items=scores.eval_items,
        benchmarks=scores.benchmarks,
        data={"fingerprint": splits.fingerprint, "stats": splits.stats},
        model_path=str(model_path),
    )
    record.status = "done"
    record.wall_time_s = round(time.monotonic() - start, 2)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_record(out_dir, record)
    print_result(record)
    return record


def _identity(config: dict[str, Any], model_path: Path) -> dict[str, Any]:
    """The config the record stores: the training run's (when `model_path` is a run's `model/`) with this
    evaluation's `eval` settings, else the composed one."""
    from sft_sweeps.record import load_run_record

    try:
        trained_by = load_run_record(model_path.parent)
    except Exception as e:  # an unreadable record beside the model: the composed config says it
        log.warning("not using %s: %s", model_path.parent / RECORD_NAME, e)
        trained_by = None
    if trained_by is None or trained_by.status != "done":
        return config
    log.info("identity from the run that trained it: %s (%s)", model_path.parent, trained_by.label)
    return {**trained_by.config, "eval": config["eval"]}


def print_result(record: RunRecord, console: Console | None = None) -> None:
    """Tables of every metric (overall and per task) and of the metrics by assistant turn."""
    console = console or Console()
    metrics, by_depth = record.metrics, record.by_depth
    table = Table(title=f"{record.model_path}: held-out evaluation")
    for column in ("metric", "key", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for key in sort_keys(list(metrics)):
        table.add_row(f"{short_name(key)} {arrow(key)}", key, fmt(metrics[key], dash="-"))
    console.print(table)

    names = [key for key in sort_keys(list(by_depth)) if key.count("/") == 1]
    depths = sorted({int(d) for key in names for d in by_depth[key]})
    if depths:
        table = Table(title="by assistant turn")
        for column in ["turn", *(short_name(key) for key in names)]:
            table.add_column(column, justify="right")
        for depth in depths:
            table.add_row(str(depth), *(fmt(by_depth[key].get(str(depth)), dash="-") for key in names))
        console.print(table)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    with errors_reported(ConfigError):
        job = make_job(cfg)  # validated once, here
    with errors_reported(*USER_ERRORS, enabled=not in_multirun()):
        record = run_evaluation(job, HydraConfig.get().runtime.output_dir)
    return record.metric(job.optimized_metric)


if __name__ == "__main__":
    main()
