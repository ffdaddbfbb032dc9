"""Benchmark: training throughput of our WeightedSFTTrainer against TRL SFTTrainer(assistant_only_loss=True).

Both train the same model init on the same conversations (the synthetic tasks of `sft_sweeps.tasks`),
with the same batch size, sampler and seed: ours with `masking=all` weights from
`sft_sweeps.masking.build_dataset`, TRL with its own tokenization of the `messages` and its assistant
mask (the two are checked to give the same tokens and the same supervised tokens). Each run trains
`--warmup` + `--steps` optimizer steps; tokens per second counts the non-pad tokens of the measured steps
(the trainers' own `num_tokens` count) over their wall time. Runs alternate between the two trainers,
`--repeats` times; the median is reported. Goal: ours at most 3% slower, i.e. a ratio >= 0.97 on the
last line.

    python benchmarks/bench_trainer.py                          # tiny default model, CPU, ~1-2 min
    python benchmarks/bench_trainer.py --steps 50 --repeats 5 --batch-size 16
    python benchmarks/bench_trainer.py --pretrained HuggingFaceTB/SmolLM2-135M-Instruct --bf16 \
        --peak-tflops 989                                       # on a GPU: also model FLOPs utilisation
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import shutil
import statistics
import tempfile
import time

import datasets
import torch
from datasets import Dataset
from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback
from trl import SFTTrainer

from sft_sweeps.config import MaskingConfig, ModelConfig, TinyArchConfig, TrainConfig
from sft_sweeps.masking import build_dataset
from sft_sweeps.modeling import build_model, count_parameters
from sft_sweeps.tasks import make_splits
from sft_sweeps.tokenizer import load_tokenizer
from sft_sweeps.training import build_trainer, make_sft_config


class _StepClock(TrainerCallback):
    """(time, tokens seen so far) at the end of every optimizer step, from the trainer's own token count."""

    def __init__(self, trainer):
        self.trainer, self.marks = trainer, []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # time the work, not its queueing
        self.marks.append((time.perf_counter(), self.trainer._total_train_tokens))


def tokens_per_second(trainer, warmup: int) -> float:
    """Train to `trainer.args.max_steps`; non-pad tokens/s over the steps after the first `warmup` ones."""
    clock = _StepClock(trainer)
    trainer.add_callback(clock)
    trainer.train()
    (t0, n0), (t1, n1) = clock.marks[warmup - 1], clock.marks[-1]
    return (n1 - n0) / (t1 - t0)


def model_and_tokenizer(pretrained: str | None, arch: TinyArchConfig, bf16: bool):
    """A fresh model with the same init on every call (seeded), and its tokenizer."""
    tokenizer = load_tokenizer(pretrained or "embedded")
    set_seed(0)
    cfg = ModelConfig(
        pretrained=pretrained, arch=arch, dtype="bfloat16" if bf16 and pretrained else "float32"
    )
    return build_model(cfg, tokenizer), tokenizer


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pretrained", help="hub id or local path of a causal LM (default: the tiny random Llama)"
    )
    parser.add_argument("--hidden-size", type=int, default=TinyArchConfig.hidden_size)
    parser.add_argument("--layers", type=int, default=TinyArchConfig.num_hidden_layers)
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps run before measuring")
    parser.add_argument("--repeats", type=int, default=3, help="runs per trainer; the median is reported")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU only)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="(GPU only)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, to print MFU")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a busy machine)")


def arch_of(args: argparse.Namespace) -> TinyArchConfig:
    return TinyArchConfig(hidden_size=args.hidden_size, num_hidden_layers=args.layers)


def train_config(args: argparse.Namespace, **overrides) -> TrainConfig:
    return TrainConfig(
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=1e-4,
        warmup_ratio=0.0,
        logging_steps=10**6,  # no logging inside the measured steps
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        save_model=False,
        **overrides,
    )


def flops_line(num_params: int, tokens_per_s: float, peak_tflops: float | None) -> str:
    """Model FLOP/s as 6 x parameters x tokens/s (attention FLOPs left out), and MFU when a peak is given."""
    achieved = 6 * num_params * tokens_per_s / 1e12
    mfu = f", MFU {achieved / peak_tflops:.1%} of {peak_tflops:g} TFLOP/s" if peak_tflops else ""
    return f"{achieved:.3f} TFLOP/s (6 x {num_params / 1e6:.1f}M params x tokens/s){mfu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--conversations", type=int, default=512, help="synthetic training conversations")
    parser.add_argument("--tasks", default="state_tracking,fact_recall,format_persistence")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()

    _, tokenizer = model_and_tokenizer(args.pretrained, arch_of(args), args.bf16)
    conversations = make_splits(args.tasks.split(","), {"train": args.conversations}, 2, 6, seed=1234)[
        "train"
    ]
    ours_data, _ = build_dataset(tokenizer, conversations, MaskingConfig(name="all"), args.max_length)
    trl_data = Dataset.from_list([{"messages": c["messages"]} for c in conversations])
    out = tempfile.mkdtemp(prefix="bench_trainer_")
    atexit.register(shutil.rmtree, out, ignore_errors=True)

    def ours():
        model, _ = model_and_tokenizer(args.pretrained, arch_of(args), args.bf16)
        return build_trainer(
            model, tokenizer, ours_data, train_config(args), seed=0, output_dir=f"{out}/ours"
        )

    def trl():
        model, _ = model_and_tokenizer(args.pretrained, arch_of(args), args.bf16)
        sft_args = dataclasses.replace(
            make_sft_config(train_config(args), seed=0, output_dir=f"{out}/trl"),
            assistant_only_loss=True,
            dataset_kwargs=None,
            remove_unused_columns=True,
        )
        trainer = SFTTrainer(model=model, args=sft_args, train_dataset=trl_data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # as build_trainer does for ours
        return trainer

    # Same data for both: the tokens, and which of them are supervised.
    reference = trl()
    trl_rows, our_rows = reference.train_dataset[:], ours_data[:]
    trl_ids = trl_rows["input_ids"]
    same_tokens = trl_ids == our_rows["input_ids"]
    same_mask = same_tokens and all(
        [w > 0 for w in ws] == [label != -100 for label in labels]
        for ws, labels in zip(our_rows["weights"], trl_rows["labels"], strict=True)
    )
    num_params = count_parameters(reference.model)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"device {device}; model {args.pretrained or 'tiny Llama'} {num_params / 1e6:.2f}M params; "
        f"{len(conversations)} conversations, {sum(map(len, trl_ids))} tokens; batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.steps} measured steps, {args.repeats} repeats"
    )
    print(f"same tokens as TRL: {same_tokens}; same supervised tokens as TRL's assistant mask: {same_mask}")

    results: dict[str, list[float]] = {"ours": [], "trl": []}
    builders = {"ours": ours, "trl": trl}
    for repeat in range(args.repeats):
        order = ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours")  # alternate, so drift hits both alike
        for name in order:
            rate = tokens_per_second(builders[name](), args.warmup)
            results[name].append(rate)
            print(f"  repeat {repeat + 1} {name:<4} {rate:10.0f} tokens/s", flush=True)
    median = {name: statistics.median(rates) for name, rates in results.items()}
    for name, label in (
        ("ours", "WeightedSFTTrainer (masking=all)"),
        ("trl", "TRL SFTTrainer assistant_only"),
    ):
        spread = f"{min(results[name]):.0f}-{max(results[name]):.0f}"
        print(f"{label:<34} {median[name]:10.0f} tokens/s (median; range {spread})")
        print(f"{'':<34} {flops_line(num_params, median[name], args.peak_tflops)}")
    print(f"ratio ours/TRL tokens/s: {median['ours'] / median['trl']:.3f}")


if __name__ == "__main__":
    main()
