"""`python -m sft_sweeps.evaluate eval.model_path=<dir>`: score a saved model, no training.

Composes the same config as training (`conf/config.yaml`, same overrides), loads the model and tokenizer
saved in `eval.model_path`, rebuilds the test split with `sft_sweeps.data.load_splits` (the call the
training pipeline makes, so the conversations are the same), runs the benchmarks of `eval.benchmarks`,
prints a table and writes `eval_result.json` in the Hydra run dir.

    python -m sft_sweeps.evaluate eval.model_path=multirun/default/masking-all__seed-0/model
    python -m sft_sweeps.evaluate eval.model_path=<dir> dataset=synthetic_suite \\
        eval.benchmarks=[synthetic,nll,lm_eval] eval.lm_eval_tasks=[sft_sweeps_suite]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from sft_sweeps.cli import USER_ERRORS, errors_reported, in_multirun
from sft_sweeps.config import Config, ConfigError, register_configs, validate
from sft_sweeps.identity import job_dirname
from sft_sweeps.metrics import lower_is_better, short_name, sort_keys

log = logging.getLogger(__name__)
RESULT_NAME = "eval_result.json"

OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
register_configs()


def run_evaluation(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Evaluate the saved model of `cfg.eval.model_path` and write `<out_dir>/eval_result.json`.

    Args:
        cfg: the composed config; `eval.model_path` must be set.
        out_dir: where the result goes.

    Returns:
        The record written: `model_path`, `metrics`, `by_depth`, `eval_items`, `lm_eval`, `data`, `config`.

    Raises:
        ConfigError: `eval.model_path` is missing, not a directory, or holds no model or tokenizer.
        DataValidationError: an invalid record with `dataset.on_invalid=error` (before the model loads).
    """
    settings: Config = validate(cfg)
    model_path = settings.eval.model_path
    if model_path is None or not Path(model_path).is_dir():
        raise ConfigError(f"eval.model_path must be a saved model directory, got {model_path!r}")
    from sft_sweeps.data import load_splits
    from sft_sweeps.evaluation.benchmarks import EvalContext, run_benchmarks
    from sft_sweeps.modeling import load_pretrained_model
    from sft_sweeps.pipeline import check_before_work, model_window
    from sft_sweeps.record import write_json_atomic
    from sft_sweeps.tokenizer import load_pretrained_tokenizer

    check_before_work(settings)
    # The data first: a bad record is named before a model, possibly large, is loaded for nothing.
    splits = load_splits(settings.dataset)
    key = "eval.model_path"
    tokenizer = load_pretrained_tokenizer(model_path, settings.model.trust_remote_code, key)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {
        "dtype": settings.model.dtype
        if settings.model.dtype == "auto"
        else getattr(torch, settings.model.dtype),
        "trust_remote_code": settings.model.trust_remote_code,
    }
    if settings.model.attn_implementation is not None:
        kwargs["attn_implementation"] = settings.model.attn_implementation
    model = load_pretrained_model(model_path, kwargs, key)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    log.info(
        "evaluating %s on %d test conversations (data fingerprint %s)",
        model_path,
        len(splits.test),
        splits.fingerprint[:12],
    )
    context = EvalContext(
        model, tokenizer, splits, settings, model_window(model, settings), model_path=str(model_path)
    )
    evaluated = run_benchmarks(context)
    record = {
        "model_path": str(model_path),
        **evaluated,
        "data": {"fingerprint": splits.fingerprint, "stats": splits.stats},
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }
    write_json_atomic(Path(out_dir) / RESULT_NAME, record)
    print_result(record)
    return record


def print_result(record: dict[str, Any], console: Console | None = None) -> None:
    """Tables of every metric (overall and per task) and of the metrics by assistant turn."""
    console = console or Console()
    metrics, by_depth = record["metrics"], record["by_depth"]
    table = Table(title=f"{record['model_path']}: held-out evaluation")
    for column in ("metric", "key", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for key in sort_keys(list(metrics)):
        table.add_row(f"{short_name(key)} {'↓' if lower_is_better(key) else '↑'}", key, _fmt(metrics[key]))
    console.print(table)

    names = [key for key in sort_keys(list(by_depth)) if key.count("/") == 1]
    depths = sorted({int(d) for key in names for d in by_depth[key]})
    if depths:
        table = Table(title="by assistant turn")
        for column in ["turn", *(short_name(key) for key in names)]:
            table.add_column(column, justify="right")
        for depth in depths:
            table.add_row(str(depth), *(_fmt(by_depth[key].get(str(depth))) for key in names))
        console.print(table)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    with errors_reported(*USER_ERRORS, enabled=not in_multirun()):
        record = run_evaluation(cfg, HydraConfig.get().runtime.output_dir)
    from sft_sweeps.evaluation.benchmarks import optimized_metric

    return record["metrics"].get(optimized_metric(validate(cfg)))


if __name__ == "__main__":
    main()
