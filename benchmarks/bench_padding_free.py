"""Benchmark: padded against padding-free batches of our trainer, on a ShareGPT-like mix of lengths.

Sample lengths are drawn from a long-tailed (log-normal) distribution clipped to 20..`--max-length`
tokens, as real chat data is: most conversations are short and a few are long, so a padded batch is
mostly padding. Tokens are random, weights mark alternating "user" / "assistant" segments (as `masking=all`
would). Three settings train the same model init on the same samples with the same seed:

- padded: `WeightedCollator` pads every batch to its longest sample (random order);
- padded, grouped: the same, with `train_sampling_strategy=group_by_length` (batches of similar length);
- padding-free: `train.padding_free=true`, one row per batch with position ids restarting at 0 (no
  padding; transformers builds a block-diagonal mask, or flash-attention varlen kernels on GPU).

Tokens per second counts real (non-pad) tokens, so the three are comparable; runs alternate, `--repeats`
times, and the median is reported. The last line is the gain of padding-free over padded.

    python benchmarks/bench_padding_free.py                     # tiny default model, CPU, ~1-2 min
    python benchmarks/bench_padding_free.py --steps 30 --batch-size 16 --median-length 400
"""

from __future__ import annotations

import argparse
import atexit
import math
import shutil
import statistics
import tempfile

import datasets
import torch
from bench_trainer import (
    add_model_arguments,
    arch_of,
    flops_line,
    model_and_tokenizer,
    tokens_per_second,
    train_config,
)
from datasets import Dataset

from sft_sweeps.modeling import count_parameters
from sft_sweeps.training import build_trainer

SETTINGS = {
    "padded": {},
    "padded, grouped": {"train_sampling_strategy": "group_by_length"},
    "padding-free": {"padding_free": True},
}


def sharegpt_like(num: int, median: int, sigma: float, max_length: int, vocab: int, seed: int) -> list[dict]:
    """Samples with log-normal lengths in [20, max_length] and 0/1 weights on alternating segments."""
    g = torch.Generator().manual_seed(seed)
    lengths = (
        torch.exp(math.log(median) + sigma * torch.randn(num, generator=g)).round().clamp(20, max_length)
    )
    rows = []
    for n in lengths.int().tolist():
        ids = torch.randint(10, vocab, (n,), generator=g).tolist()
        # turns of 8..128 tokens, every other one supervised
        turn = torch.randint(8, 129, (n,), generator=g).tolist()
        weights, pos, supervised = [], 0, False
        while pos < n:
            step = min(turn[pos], n - pos)
            weights += [float(supervised)] * step
            pos, supervised = pos + step, not supervised
        weights[-1] = 1.0  # every sample supervises something
        rows.append({"input_ids": ids, "weights": weights})
    return rows


class _CountPadding:
    """Wraps a collator and counts the real and the padded tokens of every batch it builds."""

    def __init__(self, collate):
        self.collate, self.real, self.total = collate, 0, 0

    def __call__(self, examples):
        batch = self.collate(examples)
        self.real += sum(len(e["input_ids"]) for e in examples)
        self.total += batch["input_ids"].numel()
        return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--median-length", type=int, default=250, help="median tokens per sample")
    parser.add_argument(
        "--sigma", type=float, default=0.9, help="log-normal spread (longer tail when larger)"
    )
    parser.set_defaults(steps=6, warmup=2, batch_size=8)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()

    model, tokenizer = model_and_tokenizer(args.pretrained, arch_of(args), args.bf16)
    rows = sharegpt_like(
        args.samples, args.median_length, args.sigma, args.max_length, len(tokenizer), seed=0
    )
    data = Dataset.from_list(rows)
    lengths = torch.tensor([len(r["input_ids"]) for r in rows], dtype=torch.float32)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"device {device}; model {args.pretrained or 'tiny Llama'} "
        f"{count_parameters(model) / 1e6:.2f}M params, "
        f"attention {model.config._attn_implementation}; batch {args.batch_size}, {args.warmup} warm-up + "
        f"{args.steps} measured steps, {args.repeats} repeats"
    )
    print(
        f"{len(rows)} samples, tokens per sample: median {lengths.median():.0f}, mean {lengths.mean():.0f}, "
        f"p90 {lengths.quantile(0.9):.0f}, max {lengths.max():.0f}"
    )
    out = tempfile.mkdtemp(prefix="bench_padding_free_")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    results: dict[str, list[float]] = {name: [] for name in SETTINGS}
    padding: dict[str, float] = {}
    for repeat in range(args.repeats):
        names = (
            list(SETTINGS) if repeat % 2 == 0 else list(reversed(SETTINGS))
        )  # drift hits every setting alike
        for name in names:
            model, _ = model_and_tokenizer(args.pretrained, arch_of(args), args.bf16)
            cfg = train_config(args, **SETTINGS[name])
            trainer = build_trainer(model, tokenizer, data, cfg, seed=0, output_dir=f"{out}/{repeat}")
            counter = trainer.data_collator = _CountPadding(trainer.data_collator)
            rate = tokens_per_second(trainer, args.warmup)
            results[name].append(rate)
            padding[name] = 1 - counter.real / counter.total
            print(f"  repeat {repeat + 1} {name:<16} {rate:10.0f} tokens/s", flush=True)
    median = {name: statistics.median(rates) for name, rates in results.items()}
    num_params = count_parameters(model)
    for name in SETTINGS:
        spread = f"{min(results[name]):.0f}-{max(results[name]):.0f}"
        print(
            f"{name:<16} {median[name]:10.0f} tokens/s (median; range {spread}); "
            f"padding {padding[name]:.0%} of batch tokens"
        )
        print(f"{'':<16} {flops_line(num_params, median[name], args.peak_tflops)}")
    print(
        f"padding-free gain over padded: {median['padding-free'] / median['padded']:.2f}x tokens/s "
        f"({median['padding-free'] / median['padded, grouped']:.2f}x over padded, grouped)"
    )


if __name__ == "__main__":
    main()
