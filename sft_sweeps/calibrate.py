"""`python -m sft_sweeps.calibrate [--steps N] [--out FILE] [--eval] <overrides>`: measure throughput.

Trains the configured model on the configured data for a few optimizer steps, exactly as a sweep job would
(same tokenization, masking, trainer, `train=` settings), and writes `calibration.json`: real (non-pad)
tokens per second over the steps after the warm-up, the mean tokens per training sample after truncation,
and what was measured (model, dataset, train settings, device). Every sweep reads it before its first job
to estimate each job's wall time (`sft_sweeps.estimate`, printed by the `SweepEstimate` callback).

    python -m sft_sweeps.calibrate model=qwen2_5_0_5b dataset=ultrachat_200k train=gpu
    python -m sft_sweeps.calibrate --steps 10 --eval eval.benchmarks=[nll,multi_if]   # also time evaluation

`--eval` also runs the configured benchmarks once on the briefly trained model and records their wall
time: the estimate then adds it to every job.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from sft_sweeps.cli import errors_reported
from sft_sweeps.config import Config, ConfigError
from sft_sweeps.files import check_writable_dir
from sft_sweeps.job import Job, make_job

# Where sweeps look for the calibration (the folder a sweep is started from), unless the variable says.
CALIBRATION_ENV = "SFT_SWEEPS_CALIBRATION"
DEFAULT_PATH = "calibration.json"


def calibration_path() -> Path:
    """The calibration file sweeps read: `$SFT_SWEEPS_CALIBRATION`, else `calibration.json` here."""
    return Path(os.environ.get(CALIBRATION_ENV, DEFAULT_PATH))


class StepClock(TrainerCallback):
    """(time, real tokens seen) at the end of every optimizer step, from the trainer's own token count."""

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.marks = trainer, []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # time the work, not its queueing
        self.marks.append((time.perf_counter(), self.trainer._total_train_tokens))


def train_signature(settings: Config) -> dict[str, Any]:
    """What throughput depends on, as recorded and compared: model, sequence shape, precision, tricks."""
    t = settings.train
    return {
        "model": settings.model.pretrained
        or f"{settings.model.name}(hidden={settings.model.arch.hidden_size})",
        "dtype": settings.model.dtype,
        "train": t.name,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_length": t.max_length,
        "padding_free": t.padding_free,
        "bf16": t.bf16,
        "gradient_checkpointing": t.gradient_checkpointing,
        "lora": t.lora is not None,
    }


def data_signature(settings: Config) -> dict[str, Any]:
    """What the mean tokens per sample depends on: data, tokenizer, truncation, turn expansion."""
    return {
        "dataset": settings.dataset.name,
        "dataset_path": settings.dataset.path,
        "tokenizer": settings.model.tokenizer,
        "max_length": settings.train.max_length,
        "expand_turns": settings.masking.expand_turns,
    }


def calibrate(job: Job, steps: int, warmup: int, with_eval: bool = False) -> dict[str, Any]:
    """Train `steps` optimizer steps and measure tokens/s over the last `steps - warmup` of them: the stages
    of a sweep's job (`sft_sweeps.stages`), shortened.

    Args:
        job: the job to measure (its `train.max_steps` is replaced by `steps`; nothing is saved).
        steps: optimizer steps to run (> warmup).
        warmup: first steps left out of the rate (compilation, allocator, data loader start-up).
        with_eval: also score the briefly trained model once, as a job does, and record the wall time.

    Returns:
        The calibration record (what `calibration.json` holds).
    """
    from sft_sweeps import stages
    from sft_sweeps.data import load_splits

    settings = job.settings
    setup_start = time.perf_counter()  # what every job pays before training: data, tokenizing, model
    splits = load_splits(settings.dataset)
    prepared = stages.prepare(settings, splits)
    model = stages.init_model(prepared)
    train = dataclasses.replace(settings.train, max_steps=steps, save_model=False, logging_steps=steps)
    with tempfile.TemporaryDirectory(prefix="sft_sweeps_calibrate_") as scratch:
        trainer = stages.make_trainer(prepared, model, scratch, train_settings=train)
        clock = StepClock(trainer)
        trainer.add_callback(clock)
        start = time.perf_counter()
        setup_s = start - setup_start
        trainer.train()
        train_s = time.perf_counter() - start
    (t0, n0), (t1, n1) = clock.marks[warmup - 1], clock.marks[-1]
    stats_dict = prepared.masking_stats.to_dict()
    record: dict[str, Any] = {
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "mean_tokens_per_sample": stats_dict["tokens"] / max(1, stats_dict["samples"]),
        "steps": steps,
        "warmup_steps": warmup,
        "train_wall_s": round(train_s, 2),
        "setup_wall_s": round(setup_s, 2),
        "train_signature": train_signature(settings),
        "data_signature": data_signature(settings),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if with_eval:
        eval_start = time.perf_counter()
        stages.score(
            trainer.model, prepared.tokenizer, splits, settings, job.optimized_metric, progress=False
        )
        record["eval_wall_s"] = round(time.perf_counter() - eval_start, 2)
        record["eval_benchmarks"] = list(settings.eval.benchmarks)
    return record


def compose(overrides: list[str]) -> Any:
    """`conf/config.yaml` composed with `overrides`, as `python -m sft_sweeps` composes a job."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sft_sweeps.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    conf_dir = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(version_base="1.3", config_dir=conf_dir):
        return hydra_compose("config", overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sft_sweeps.calibrate",
        description="Measure training tokens/s for sweep cost estimates; other arguments: config overrides.",
    )
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps to train (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps not timed (default 3)")
    parser.add_argument(
        "--out", default=None, help=f"output file (default ${CALIBRATION_ENV} or {DEFAULT_PATH})"
    )
    parser.add_argument("--eval", action="store_true", help="also time one run of eval.benchmarks")
    args, overrides = parser.parse_known_args(argv)
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error("need --warmup >= 1 and --steps > --warmup")
    out = Path(args.out) if args.out else calibration_path()
    with errors_reported(ConfigError, FileNotFoundError):
        # Where the measurement goes is checked before the minutes it takes.
        key = "--out" if args.out else f"${CALIBRATION_ENV}"
        check_writable_dir(out.parent, key, f"set --out or ${CALIBRATION_ENV} to a writable path")
        if out.is_dir():
            raise ConfigError(f"{key}: '{out}' is a directory; name a file, e.g. {out / DEFAULT_PATH}")
        job = make_job(compose(overrides), evaluation=args.eval)
        record = calibrate(job, args.steps, args.warmup, args.eval)
    record["overrides"] = overrides
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    extra = f", evaluation {record['eval_wall_s']:.0f} s" if "eval_wall_s" in record else ""
    print(
        f"{record['tokens_per_s']:.0f} tokens/s over steps {args.warmup + 1}-{args.steps} "
        f"on {record['device']}, "
        f"{record['mean_tokens_per_sample']:.0f} tokens per sample{extra}. Wrote {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
