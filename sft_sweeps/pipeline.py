"""One run, top to bottom: check, load data, tokenize and weight, train, evaluate, record.

`run(cfg)` is what `python -m sft_sweeps` calls for every job of a sweep. A job that fails is recorded
as `failed` with its traceback and does not stop the other jobs of a sweep; a job whose `result.json`
already says `done` for the same config hash and data is skipped, so rerunning a sweep resumes it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from transformers import set_seed

from sft_sweeps.cli import USER_ERRORS, full_error
from sft_sweeps.config import Config, ConfigError, validate
from sft_sweeps.data import Splits, load_splits
from sft_sweeps.evaluation.benchmarks import (
    EvalContext,
    check_benchmarks,
    get_benchmark,
    optimized_metric,
    run_benchmarks,
)
from sft_sweeps.identity import RunRecord, masking_label
from sft_sweeps.masking import build_dataset
from sft_sweeps.metrics import VALIDATION_PREFIX
from sft_sweeps.modeling import build_model, count_parameters
from sft_sweeps.record import (
    RunLock,
    RunLockedError,
    git_commit,
    load_run_record,
    package_versions,
    write_record,
)
from sft_sweeps.tokenizer import load_tokenizer
from sft_sweeps.tracking import Tracker, make_tracker
from sft_sweeps.training import ProgressCallback, build_trainer

log = logging.getLogger(__name__)


def check_before_work(settings: Config) -> None:
    """Everything that can fail on the config alone fails here, before data, model or training.

    Raises:
        ConfigError: a listed benchmark cannot run (BenchmarkUnavailable says how to fix it), or
            `optimized_metric` belongs to no listed benchmark.
    """
    check_benchmarks(settings)
    optimized_metric(settings)
    if settings.eval.generation_backend == "vllm" and not settings.train.save_model:
        raise ConfigError(
            "eval.generation_backend=vllm serves the trained model from disk: set train.save_model=true "
            "(or eval.generation_backend=hf)"
        )


def run(cfg: DictConfig, run_dir: str | None = None) -> RunRecord | None:
    """Run one job and return its record (also written to `<run_dir>/result.json`).

    Resume: a run whose record says `done` for the same config hash and the same data fingerprint is
    skipped; changed data reruns it, saying why. The run holds a lock on its directory while it runs.

    Args:
        cfg: the composed config (`conf/config.yaml` plus overrides).
        run_dir: where outputs go; defaults to Hydra's output dir for this job.

    Returns:
        The record; None on a DDP rank other than 0, or when another process holds the run directory
        in a multirun (logged).

    Raises:
        ConfigError: a config value is out of range or a benchmark cannot run (before any work starts).
        RunLockedError: another process is running in `run_dir` (single run).
        Exception: whatever failed, when not in a multirun (in a multirun it is recorded, not raised).
    """
    settings = validate(cfg)
    check_before_work(settings)
    run_dir = run_dir or HydraConfig.get().runtime.output_dir
    if not _is_main_process():  # DDP (accelerate launch / torchrun): rank 0 records, tracks and evaluates
        _train_and_evaluate(settings, load_splits(settings.dataset), run_dir, Tracker(None))
        return None
    try:
        with RunLock(run_dir):
            return _run_locked(cfg, settings, run_dir)
    except RunLockedError as e:
        if not _in_multirun():
            raise
        log.error("not run: %s", e)
        return None


def _run_locked(cfg: DictConfig, settings: Config, run_dir: str) -> RunRecord:
    previous = load_run_record(run_dir)
    record = RunRecord.start(
        cfg,
        overrides=_overrides(),
        run_dir=str(run_dir),
        versions=package_versions(),
        git_commit=git_commit(),
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        owner={"host": socket.gethostname(), "pid": os.getpid()},
        optimized_metric=optimized_metric(settings),
    )
    try:
        splits = load_splits(settings.dataset)
    except Exception as e:  # data that cannot be read: a failed job the sweep table names, not a missing one
        _record_failure(record, e, run_dir)
        write_record(run_dir, record)
        if not _in_multirun():
            raise
        return record
    record.data = {"fingerprint": splits.fingerprint, "stats": splits.stats}
    if (
        cfg.resume
        and previous is not None
        and previous.status == "done"
        and previous.config_hash == record.config_hash
    ):
        if previous.data_fingerprint == splits.fingerprint:
            log.info(
                "skipping %s: result.json says done for config %s (resume=false reruns it)",
                run_dir,
                record.config_hash,
            )
            return previous
        log.warning(
            "rerunning %s: done for this config, but its data changed (fingerprint %s -> %s)",
            run_dir,
            str(previous.data_fingerprint)[:12],
            splits.fingerprint[:12],
        )

    previous_wandb = (previous.wandb if previous else None) or {}
    tracker = make_tracker(cfg, run_dir, run_id=previous_wandb.get("run_id"))
    record.wandb = {
        "run_id": tracker.run_id,
        "mode": cfg.logger.mode if cfg.logger.backend == "wandb" else None,
    }
    write_record(run_dir, record)

    start = time.monotonic()
    try:
        outputs = _train_and_evaluate(settings, splits, run_dir, tracker)
        for key, value in outputs.items():
            setattr(record, key, value)
        record.status = "done"
    except Exception as e:
        _record_failure(record, e, run_dir)
        if not _in_multirun():
            raise
    finally:
        record.wall_time_s = round(time.monotonic() - start, 2)
        if record.status == "running":  # interrupted by KeyboardInterrupt or SystemExit
            record.status = "interrupted"
        write_record(run_dir, record)
        tracker.finish(record.status if record.status in ("done", "failed") else "failed")
    return record


def _record_failure(record: RunRecord, error: Exception, run_dir: str) -> None:
    """Mark `record` failed with the traceback; log it (one line for a user error in a single run)."""
    record.status = "failed"
    record.error = traceback.format_exc()  # the record keeps the traceback, whatever the log says
    if isinstance(error, USER_ERRORS) and not _in_multirun() and not full_error():
        # The entry point prints this message as its one `error:` line; a traceback would bury it.
        log.error("run failed: %s: %s", run_dir, error)
    else:
        log.error("run failed: %s\n%s", run_dir, record.error)


def _train_and_evaluate(settings: Config, splits: Splits, run_dir: str, tracker: Tracker) -> dict[str, Any]:
    label = f"{masking_label(settings.masking.__dict__)} seed={settings.seed}"
    _set_threads(settings.num_threads)
    set_seed(settings.seed)
    tokenizer = load_tokenizer(settings.model.tokenizer, settings.model.trust_remote_code)
    log.info(
        "data: %s train / %s validation / %s test conversations, fingerprint %s",
        len(splits.train),
        len(splits.validation),
        len(splits.test),
        splits.fingerprint[:12],
    )
    train_dataset, masking_stats = training_data(settings, tokenizer, splits)
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
        try:
            trainer.save_model(model_path)
            tokenizer.save_pretrained(model_path)
        except OSError as e:  # a full disk: name the path, and free what the unusable partial model took,
            shutil.rmtree(model_path, ignore_errors=True)  # so the failed record still fits
            raise OSError(e.errno, f"cannot save the model to {model_path}: {e.strerror or e}") from e

    model.eval()
    context = EvalContext(
        model, tokenizer, splits, settings, window=model_window(model, settings), model_path=model_path
    )
    evaluated = run_benchmarks(context)
    metrics = {
        **evaluated["metrics"],
        **validation_metrics(context),
        "train_loss": float(train_output.training_loss),
        "train_runtime_s": float(train_output.metrics["train_runtime"]),
        "train_steps": float(train_output.global_step),
        "num_parameters": float(count_parameters(model)),
    }
    tracker.log_summary(metrics)
    tracker.log_summary(
        {
            f"by_depth/{name}/{depth}": value
            for name, values in evaluated["by_depth"].items()
            for depth, value in values.items()
        }
    )
    for benchmark, items in evaluated["eval_items"].items():
        tracker.log_table(f"eval_items/{benchmark}", items)
    log.info("%s: %s", label, {k: round(v, 4) for k, v in metrics.items()})
    return {
        "metrics": metrics,
        "by_depth": evaluated["by_depth"],
        "eval_items": evaluated["eval_items"],
        "benchmarks": evaluated["benchmarks"],
        "data": {
            "fingerprint": splits.fingerprint,
            "stats": splits.stats,
            "masking": masking_stats.to_dict(),
        },
        "model_path": model_path,
    }


def validation_metrics(context: EvalContext) -> dict[str, float]:
    """The benchmark of `optimized_metric` scored on the validation split, keys `validation/<benchmark>/...`.

    Only that benchmark runs (selection needs the main metric, cheaply): the report picks hyperparameters
    on these (`--select-key`) and compares the picks on test, so no choice is ever made on test.
    Empty when the metric comes from no benchmark (`run/...`), from a benchmark with data of its own
    (multi_if, judge: its items are its test set, so scoring them again would select on test), or there
    is no validation split.
    """
    settings = context.settings
    benchmark = optimized_metric(settings).split("/", 1)[0]
    if benchmark not in settings.eval.benchmarks or not context.splits.validation:
        return {}
    if not getattr(get_benchmark(benchmark), "scores_dataset_splits", False):
        return {}
    result = get_benchmark(benchmark).run(dataclasses.replace(context, split="validation", progress=False))
    return {f"{VALIDATION_PREFIX}{benchmark}/{k}": v for k, v in result.metrics.items()}


def _set_threads(num_threads: int | None) -> None:
    """Intra-op threads of this job. A tiny model gains little from a second thread, so parallel jobs of
    one thread each (the joblib launcher sizes them to the cores) finish a sweep sooner than one job at a
    time on every core; None keeps torch's default (the launcher's limit, or all cores)."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    log.info("torch threads: %d", torch.get_num_threads())


def training_data(settings: Config, tokenizer: Any, splits: Splits) -> tuple[Any, Any]:
    """The train split tokenized and weighted as `settings` say (cached): what a job trains on, and its
    masking statistics. The calibration run calls it too, so it measures the same work."""
    return build_dataset(
        tokenizer,
        splits.train,
        settings.masking,
        settings.train.max_length,
        settings.train.truncation_mode,
        cache_dir=settings.cache_dir,
    )


def model_window(model: Any, settings: Config) -> int:
    """The longest sequence evaluation feeds the model: the training length, or the model's context if
    shorter (what it was trained to see; memory stays bounded on conversations of any length)."""
    context = getattr(model.config, "max_position_embeddings", None)
    return min(settings.train.max_length, context) if context else settings.train.max_length


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
