"""`python -m sft_sweeps.evaluate eval.model_path=<dir>`: score a saved model, no training.

Composes the same config as training (`conf/config.yaml`, same overrides), loads the model and tokenizer
saved in `eval.model_path`, rebuilds the test split with `sft_sweeps.data.load_splits` (the call the
training pipeline makes, so the conversations are the same), runs the multi-turn evaluation and any
`eval.lm_eval_tasks`, prints a table and writes `eval_result.json` in the Hydra run dir.

    python -m sft_sweeps.evaluate eval.model_path=outputs/default/<run>/model
    python -m sft_sweeps.evaluate eval.model_path=<dir> dataset=synthetic_suite \\
        eval.lm_eval_tasks=[sft_sweeps_suite]
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

from sft_sweeps.cli import errors_reported, in_multirun
from sft_sweeps.config import Config, ConfigError, job_dirname, register_configs, validate

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
    """
    settings: Config = validate(cfg)
    model_path = settings.eval.model_path
    if model_path is None or not Path(model_path).is_dir():
        raise ConfigError(f"eval.model_path must be a saved model directory, got {model_path!r}")
    from sft_sweeps.data import load_splits
    from sft_sweeps.evaluation import evaluate, run_configured_lm_eval
    from sft_sweeps.modeling import load_pretrained_model
    from sft_sweeps.record import write_json_atomic
    from sft_sweeps.tokenizer import load_pretrained_tokenizer

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

    splits = load_splits(settings.dataset)
    log.info(
        "evaluating %s on %d test conversations (data fingerprint %s)",
        model_path,
        len(splits.test),
        splits.fingerprint[:12],
    )
    result = evaluate(model, tokenizer, splits.test, settings.eval)
    lm_eval_results = run_configured_lm_eval(model, tokenizer, settings.eval)
    data = result.to_dict()
    record = {
        "model_path": str(model_path),
        "metrics": data["metrics"],
        "by_depth": data["by_depth"],
        "eval_items": data["items"],
        "lm_eval": lm_eval_results,
        "data": {"fingerprint": splits.fingerprint, "stats": splits.stats},
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }
    write_json_atomic(Path(out_dir) / RESULT_NAME, record)
    print_result(record)
    return record


def print_result(record: dict[str, Any], console: Console | None = None) -> None:
    """Tables of the headline metrics per task, accuracy by turn depth, and lm-eval's scores."""
    console = console or Console()
    metrics, by_depth = record["metrics"], record["by_depth"]
    prefixes = [""] + sorted({key.split("/")[0] + "/" for key in metrics if "/" in key})
    table = Table(title=f"{record['model_path']}: held-out multi-turn evaluation")
    for column in ["task", *_COLUMNS.values(), "convs"]:
        table.add_column(column, justify="left" if column == "task" else "right")
    for prefix in prefixes:
        cells = [_fmt(metrics.get(prefix + name)) for name in _COLUMNS]
        table.add_row(prefix.rstrip("/") or "all", *cells, _fmt(metrics.get(prefix + "num_conversations"), 0))
    console.print(table)

    depths = sorted(by_depth.get("assistant_nll", {}), key=int)
    depth_names = [name for name in _COLUMNS if name in by_depth]
    table = Table(title="by assistant turn")
    for column in ["turn", *(_COLUMNS[name] for name in depth_names)]:
        table.add_column(column, justify="right")
    for depth in depths:
        table.add_row(str(depth), *(_fmt(by_depth[name].get(depth)) for name in depth_names))
    console.print(table)

    if record.get("lm_eval"):
        table = Table(title="lm-eval")
        for column in ("task", "metric", "value"):
            table.add_column(column)
        for task, values in record["lm_eval"].get("results", {}).items():
            for metric, value in values.items():
                if isinstance(value, float) and "stderr" not in metric:
                    table.add_row(task, metric, _fmt(value))
        console.print(table)


# Metric -> short column header, so the tables fit a terminal.
_COLUMNS = {
    "turn_exact_match": "exact (gold hist.)",
    "own_history_exact_match": "exact (own hist.)",
    "conversation_success": "success",
    "stop_rate": "stop",
    "assistant_nll": "nll",
}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    with errors_reported(ConfigError, FileNotFoundError, enabled=not in_multirun()):
        record = run_evaluation(cfg, HydraConfig.get().runtime.output_dir)
    return record["metrics"].get("turn_exact_match")


if __name__ == "__main__":
    main()
