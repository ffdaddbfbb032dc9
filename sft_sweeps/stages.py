"""The stages of a job, as plain functions over typed values. Read top to bottom, they are a job:

    splits = load_splits(settings.dataset)             # sft_sweeps.data: validated, disjoint splits
    prepared = prepare(settings, splits)              # tokenizer, training data tokenized and weighted
    model = init_model(prepared)                      # the same init for every strategy
    trained = train(prepared, model, output_dir)      # TRL's SFTTrainer (make_trainer), from a checkpoint
    model_path = save_model(trained, prepared.tokenizer, run_dir)
    scores = score(trained.model, prepared.tokenizer, splits, settings, optimized_metric)

Three entry points call them and nothing else of each other: `sft_sweeps.pipeline` (a sweep's job: wraps
the stages in a lock, resume, a record and a tracker), `sft_sweeps.calibrate` (prepare, init, train for a
few timed steps, optionally score) and `sft_sweeps.evaluate` (`load_trained`, then `score`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, set_seed

from sft_sweeps.checkpoints import Continuation
from sft_sweeps.config import Config, ConfigError, TrainConfig
from sft_sweeps.data import Splits
from sft_sweeps.evaluation.base import EvalContext
from sft_sweeps.evaluation.benchmarks import get_benchmark, run_benchmarks
from sft_sweeps.masking import MaskingStats, build_dataset
from sft_sweeps.metrics import VALIDATION_PREFIX
from sft_sweeps.modeling import build_model, count_parameters, load_pretrained_model
from sft_sweeps.tokenizer import load_pretrained_tokenizer, load_tokenizer
from sft_sweeps.training import build_trainer

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """What training needs besides the model: the settings, the data, the tokenizer, the weighted samples.

    Attributes:
        train_dataset: the train split tokenized, with a loss weight per token (`input_ids`, `weights`).
        masking_stats: what the masking kept, cut and supervised (logged and recorded).
    """

    settings: Config
    splits: Splits
    tokenizer: PreTrainedTokenizerBase
    train_dataset: Any
    masking_stats: MaskingStats


@dataclass
class Trained:
    """A trained model, the trainer that trained it, its `TrainOutput`, and the checkpoint it continued
    from (`continuation.resumed_from_step`; `continuation.finish()` removes the checkpoints of a done run)."""

    model: PreTrainedModel
    trainer: Any
    output: Any
    continuation: Continuation


@dataclass
class Scores:
    """What the benchmarks measured, as the record stores it.

    Attributes:
        metrics: `<benchmark>/<metric>` (and `validation/<benchmark>/<metric>`) -> value.
        by_depth: `<benchmark>/<metric>` -> {turn depth (string) -> value}.
        eval_items: benchmark -> per-item records.
        benchmarks: benchmark -> what identifies how it scored.
    """

    metrics: dict[str, float]
    by_depth: dict[str, dict[str, float]]
    eval_items: dict[str, list[dict[str, Any]]]
    benchmarks: dict[str, Any]


def prepare(settings: Config, splits: Splits) -> Prepared:
    """Threads and seed, the tokenizer, and the train split tokenized and weighted as `settings` say
    (cached on disk, shared by the strategies of a sweep)."""
    set_threads(settings.num_threads)
    set_seed(settings.seed)
    tokenizer = load_tokenizer(settings.model.tokenizer, settings.model.trust_remote_code)
    log.info(
        "data: %s train / %s validation / %s test conversations, fingerprint %s",
        len(splits.train),
        len(splits.validation),
        len(splits.test),
        splits.fingerprint[:12],
    )
    train_dataset, stats = build_dataset(
        tokenizer,
        splits.train,
        settings.masking,
        settings.train.max_length,
        settings.train.truncation_mode,
        cache_dir=settings.cache_dir,
    )
    return Prepared(settings, splits, tokenizer, train_dataset, stats)


def init_model(prepared: Prepared) -> PreTrainedModel:
    """The model of `model=`, seeded again so every strategy starts from the same init, whatever data
    preparation consumed of the RNGs."""
    set_seed(prepared.settings.seed)
    return build_model(prepared.settings.model, prepared.tokenizer)


def make_trainer(
    prepared: Prepared,
    model: PreTrainedModel,
    output_dir: str,
    callbacks: list[TrainerCallback] | None = None,
    train_settings: TrainConfig | None = None,
) -> Any:
    """The trainer of a job (`sft_sweeps.training.WeightedSFTTrainer`) for the prepared samples.

    Args:
        prepared: from `prepare`.
        model: from `init_model`.
        output_dir: the trainer's folder.
        callbacks: progress, tracking, timing.
        train_settings: replaces `settings.train` (the calibration run shortens it); None keeps it.
    """
    return build_trainer(
        model,
        prepared.tokenizer,
        prepared.train_dataset,
        train_settings or prepared.settings.train,
        prepared.settings.seed,
        output_dir=output_dir,
        callbacks=callbacks,
    )


def train(
    prepared: Prepared,
    model: PreTrainedModel,
    output_dir: str,
    callbacks: list[TrainerCallback] | None = None,
) -> Trained:
    """Train `model` on the prepared samples with the job's `train` settings, continuing from the last
    checkpoint of the same config and data in `output_dir` when an earlier attempt was interrupted
    (`sft_sweeps.checkpoints`; only with `train.save_steps`)."""
    trainer = make_trainer(prepared, model, output_dir, callbacks)
    continuation = Continuation.prepare(trainer, prepared.settings, prepared.splits.fingerprint)
    try:
        output = trainer.train(resume_from_checkpoint=continuation.checkpoint)
    except SafetensorError as e:  # a checkpoint that cannot be written (a full disk)
        failed = _as_os_error(e, f"cannot save a checkpoint under {output_dir}")
        if failed is None:
            raise
        raise failed from e
    return Trained(trainer.model, trainer, output, continuation)


def _as_os_error(error: OSError | SafetensorError, what: str) -> OSError | None:
    """A failed write as an OSError that says `what` failed, with the errno; None: `error` is no failed write.

    safetensors reports one as `SafetensorError: ... I/O error: No space left on device (os error 28)`, not
    as an OSError: made one with its errno, so that a full disk is named as such (the sweep's `bytes free`
    hint) and handled like any failed write.
    """
    if isinstance(error, OSError):
        return OSError(error.errno, f"{what}: {error.strerror or error}")
    found = re.search(r"\(os error (\d+)\)", str(error))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, f"{what}: {os.strerror(code)}")


def save_model(trained: Trained, tokenizer: PreTrainedTokenizerBase, run_dir: str | Path) -> str:
    """Save the trained model and its tokenizer to `<run_dir>/model` (`save_pretrained`); returns the path.

    Raises:
        OSError: it cannot be written (a full disk): the path named, the unusable partial model removed
            so that the failed record still fits.
    """
    model_path = str(Path(run_dir) / "model")
    try:
        trained.trainer.save_model(model_path)
        tokenizer.save_pretrained(model_path)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(model_path, ignore_errors=True)
        failed = _as_os_error(e, f"cannot save the model to {model_path}")
        if failed is None:
            raise
        raise failed from e
    return model_path


def training_metrics(trained: Trained) -> dict[str, float]:
    """What the run's training itself says: final loss, runtime, steps, parameters."""
    return {
        # A continued run's mean over all its steps, the interrupted attempts' included.
        "train_loss": trained.continuation.train_loss(trained.output),
        "train_runtime_s": float(trained.output.metrics["train_runtime"]),
        "train_steps": float(trained.output.global_step),
        "num_parameters": float(count_parameters(trained.model)),
    }


def load_trained(settings: Config) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The saved model and tokenizer of `eval.model_path`, on the GPU when there is one, in eval mode.

    Raises:
        ConfigError: `eval.model_path` is missing, not a directory, or holds no model or tokenizer.
    """
    model_path = settings.eval.model_path
    if model_path is None or not Path(model_path).is_dir():
        raise ConfigError(f"eval.model_path must be a saved model directory, got {model_path!r}")
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
    return model, tokenizer


def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: Splits,
    settings: Config,
    optimized_metric: str | None,
    model_path: str | None = None,
    progress: bool = True,
) -> Scores:
    """Every benchmark of `eval.benchmarks` on the test split, then the benchmark of `optimized_metric`
    on the validation split (`validation_metrics`; None skips it).

    Args:
        model: the trained model (put in eval mode here).
        tokenizer: its tokenizer.
        splits: the run's data.
        settings: the job's settings.
        optimized_metric: the job's resolved metric (`Job.optimized_metric`).
        model_path: the saved model, for `eval.generation_backend=vllm`.
        progress: progress bars.
    """
    model.eval()
    context = EvalContext(
        model,
        tokenizer,
        splits,
        settings,
        model_window(model, settings),
        model_path=model_path,
        progress=progress,
    )
    evaluated = run_benchmarks(context)
    validation = validation_metrics(context, optimized_metric) if optimized_metric is not None else {}
    return Scores(
        {**evaluated["metrics"], **validation},
        evaluated["by_depth"],
        evaluated["eval_items"],
        evaluated["benchmarks"],
    )


def validation_metrics(context: EvalContext, optimized_metric: str) -> dict[str, float]:
    """The benchmark of `optimized_metric` scored on the validation split, keys `validation/<benchmark>/...`.

    Only that benchmark runs (selection needs the main metric, cheaply): the report picks hyperparameters
    on these (`--select-key`) and compares the picks on test, so no choice is ever made on test.
    Empty when the metric comes from no benchmark (`run/...`), from a benchmark with data of its own
    (multi_if, judge: its items are its test set, so scoring them again would select on test), or there
    is no validation split.
    """
    benchmark = optimized_metric.split("/", 1)[0]
    if benchmark not in context.settings.eval.benchmarks or not context.splits.validation:
        return {}
    if not getattr(get_benchmark(benchmark), "scores_dataset_splits", False):
        return {}
    result = get_benchmark(benchmark).run(dataclasses.replace(context, split="validation", progress=False))
    return {f"{VALIDATION_PREFIX}{benchmark}/{k}": v for k, v in result.metrics.items()}


def model_window(model: Any, settings: Config) -> int:
    """The longest sequence evaluation feeds the model: the training length, or the model's context if
    shorter (what it was trained to see; memory stays bounded on conversations of any length)."""
    context = getattr(model.config, "max_position_embeddings", None)
    return min(settings.train.max_length, context) if context else settings.train.max_length


def set_threads(num_threads: int | None) -> None:
    """Intra-op threads of this job. A tiny model gains little from a second thread, so parallel jobs of
    one thread each (the joblib launcher sizes them to the cores) finish a sweep sooner than one job at a
    time on every core; None keeps torch's default (the launcher's limit, or all cores)."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    log.info("torch threads: %d", torch.get_num_threads())
