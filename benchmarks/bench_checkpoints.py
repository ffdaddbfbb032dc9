"""Benchmark: what training checkpoints (`train.save_steps`) cost the tiny CPU default.

Trains the embedded default (its model, data and `train=default` settings, `masking=all`) for `--steps`
optimizer steps twice per repeat, runs alternating: without checkpoints, and with one every
`--save-steps` steps (transformers' checkpoint: model, optimizer, scheduler, RNG; plus the project's
marker; the newest 2 kept). Prints the median wall time of each, the time per checkpoint, and, last, the
overhead as a share of the run's training time.

    python benchmarks/bench_checkpoints.py                      # ~1-2 min on 2 cores
    python benchmarks/bench_checkpoints.py --steps 150 --save-steps 25 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from transformers import set_seed

from sft_sweeps.checkpoints import Continuation
from sft_sweeps.config import register_configs, validate
from sft_sweeps.data import load_splits
from sft_sweeps.modeling import build_model
from sft_sweeps.pipeline import training_data
from sft_sweeps.tokenizer import load_tokenizer
from sft_sweeps.training import build_trainer

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def train_once(settings, tokenizer, dataset, fingerprint: str, save_steps: int | None) -> tuple[float, int]:
    """Seconds to train `settings.train.max_steps` steps, and the checkpoints saved."""
    train = dataclasses.replace(settings.train, save_steps=save_steps, keep_checkpoints=True)
    run = dataclasses.replace(settings, train=train)
    with tempfile.TemporaryDirectory() as out:
        set_seed(settings.seed)
        trainer = build_trainer(
            build_model(settings.model, tokenizer), tokenizer, dataset, train, settings.seed, output_dir=out
        )
        Continuation.prepare(trainer, run, fingerprint)
        saved = []
        original = trainer._save_checkpoint

        def counting(*args, **kwargs):
            saved.append(trainer.state.global_step)
            return original(*args, **kwargs)

        trainer._save_checkpoint = counting
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start, len(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a sweep's jobs use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose("config", overrides=["logger=none", f"train.max_steps={args.steps}"])
    settings = validate(cfg)
    splits = load_splits(settings.dataset)
    tokenizer = load_tokenizer(settings.model.tokenizer, settings.model.trust_remote_code)
    dataset, _ = training_data(settings, tokenizer, splits)

    plain, saving, saves = [], [], 0
    for _ in range(args.repeats):
        plain.append(train_once(settings, tokenizer, dataset, splits.fingerprint, None)[0])
        seconds, saves = train_once(settings, tokenizer, dataset, splits.fingerprint, args.save_steps)
        saving.append(seconds)
    a, b = statistics.median(plain), statistics.median(saving)
    print(f"default model, {args.steps} steps, {args.threads} thread(s), median of {args.repeats}")
    print(f"no checkpoints:                 {a:.1f} s")
    print(f"checkpoint every {args.save_steps:>3} steps:    {b:.1f} s ({saves} checkpoints)")
    print(f"per checkpoint:                 {(b - a) / max(saves, 1):.2f} s")
    print(f"checkpoint overhead: {100 * (b - a) / a:+.1f}% of training time")


if __name__ == "__main__":
    main()
