"""One run, top to bottom: load data, tokenize and weight, train, evaluate, record.

`run(cfg)` is what `python -m sft_sweeps` calls for every job of a sweep. A job that fails is recorded
as `failed` with its traceback and does not stop the other jobs of a sweep; a job whose `result.json`
already says `done` for the same config hash is skipped, so rerunning a sweep resumes it.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from sft_sweeps.config import Config, validate
from sft_sweeps.data import load_splits
from sft_sweeps.evaluation import evaluate, run_configured_lm_eval
from sft_sweeps.masking import build_dataset
from sft_sweeps.modeling import build_model, count_parameters
from sft_sweeps.record import (
    RECORD_NAME,
    config_hash,
    git_commit,
    package_versions,
    read_record,
    write_json_atomic,
)
from sft_sweeps.tokenizer import load_tokenizer
from sft_sweeps.tracking import Tracker, make_tracker, run_group
from sft_sweeps.training import ProgressCallback, build_trainer

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: str | None = None) -> dict[str, Any]:
    """Run one job and return its record (also written to `<run_dir>/result.json`).

    Args:
        cfg: the composed config (`conf/config.yaml` plus overrides).
        run_dir: where outputs go; defaults to Hydra's output dir for this job.

    Raises:
        ConfigError: a config value is out of range (before any work starts).
        Exception: whatever failed, when not in a multirun (in a multirun it is recorded, not raised).
    """
    settings = validate(cfg)
    run_dir = run_dir or HydraConfig.get().runtime.output_dir
    if not _is_main_process():  # DDP (accelerate launch / torchrun): rank 0 records, tracks and evaluates
        _train_and_evaluate(settings, run_dir, Tracker(None))
        return {}
    chash = config_hash(cfg)
    previous = read_record(run_dir)
    if cfg.resume and previous and previous.get("status") == "done" and previous.get("config_hash") == chash:
        log.info("skipping %s: result.json says done for config %s (resume=false reruns it)", run_dir, chash)
        return previous

    record: dict[str, Any] = {
        "status": "running",
        "error": None,
        "config_hash": chash,
        "group": run_group(cfg),
        "seed": settings.seed,
        "strategy": settings.masking.name.value,
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "overrides": _overrides(),
        "run_dir": str(run_dir),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    previous_wandb = (previous or {}).get("wandb") or {}
    tracker = make_tracker(cfg, run_dir, run_id=previous_wandb.get("run_id"))
    record["wandb"] = {
        "run_id": tracker.run_id,
        "mode": cfg.logger.mode if cfg.logger.backend == "wandb" else None,
    }
    write_json_atomic(Path(run_dir) / RECORD_NAME, record)

    start = time.monotonic()
    try:
        record.update(_train_and_evaluate(settings, run_dir, tracker))
        record["status"] = "done"
    except Exception:
        record["status"] = "failed"
        record["error"] = traceback.format_exc()
        log.error("run failed: %s\n%s", run_dir, record["error"])
        if not _in_multirun():
            raise
    finally:
        record["wall_time_s"] = round(time.monotonic() - start, 2)
        write_json_atomic(Path(run_dir) / RECORD_NAME, record)
        tracker.finish(record["status"] if record["status"] in ("done", "failed") else "failed")
    return record


def _train_and_evaluate(settings: Config, run_dir: str, tracker) -> dict[str, Any]:
    label = f"{settings.masking.name.value} seed={settings.seed}"
    set_seed(settings.seed)
    tokenizer = load_tokenizer(settings.model.tokenizer, settings.model.trust_remote_code)

    splits = load_splits(settings.dataset)
    log.info(
        "data: %s train / %s validation / %s test conversations, fingerprint %s",
        len(splits.train),
        len(splits.validation),
        len(splits.test),
        splits.fingerprint[:12],
    )
    train_dataset, masking_stats = build_dataset(
        tokenizer,
        splits.train,
        settings.masking,
        settings.train.max_length,
        settings.train.truncation_mode,
        cache_dir=settings.cache_dir,
    )
    log.info("masking %s: %s", label, masking_stats.to_dict())
    tracker.log_summary({f"data/{k}": float(v) for k, v in masking_stats.to_dict().items()})

    set_seed(settings.seed)  # the same init for every strategy, whatever data preparation consumed
    model = build_model(settings.model, tokenizer)
    trainer = build_trainer(
        model,
        tokenizer,
        train_dataset,
        settings.train,
        settings.seed,
        output_dir=str(Path(run_dir) / "trainer"),
        callbacks=[cb for cb in (ProgressCallback(label), tracker.callback()) if cb is not None],
    )
    train_output = trainer.train()
    model = trainer.model
    if not _is_main_process():
        return {}

    model_path = None
    if settings.train.save_model:
        model_path = str(Path(run_dir) / "model")
        trainer.save_model(model_path)
        tokenizer.save_pretrained(model_path)

    model.eval()
    eval_result = evaluate(model, tokenizer, splits.test, settings.eval)
    metrics = {
        **eval_result.metrics,
        "train_loss": float(train_output.training_loss),
        "train_runtime_s": float(train_output.metrics["train_runtime"]),
        "train_steps": float(train_output.global_step),
        "num_parameters": float(count_parameters(model)),
    }
    lm_eval_results = run_configured_lm_eval(model, tokenizer, settings.eval)
    tracker.log_summary(metrics)
    tracker.log_summary(
        {
            f"by_depth/{name}/{depth}": value
            for name, values in eval_result.by_depth.items()
            for depth, value in values.items()
        }
    )
    tracker.log_table("eval_items", eval_result.items)
    log.info("%s: %s", label, {k: round(v, 4) for k, v in metrics.items()})
    return {
        "metrics": metrics,
        "by_depth": {
            name: {str(d): v for d, v in values.items()} for name, values in eval_result.by_depth.items()
        },
        "eval_items": eval_result.items,
        "lm_eval": lm_eval_results,
        "data": {
            "fingerprint": splits.fingerprint,
            "stats": splits.stats,
            "masking": masking_stats.to_dict(),
        },
        "model_path": model_path,
    }


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # called outside a Hydra app (tests, notebooks)
        return []


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False
