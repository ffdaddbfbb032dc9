"""Conversations per second: our tokenize-and-mask against TRL's dataset preparation, same tokenizer and data.

Ours is `sft_sweeps.masking.build_dataset` with strategy `all` and no cache (render, tokenize, label,
weight, truncate, drop). TRL's is `SFTTrainer._prepare_dataset` with `assistant_only_loss=True` (tokenize
with `return_assistant_tokens_mask`, build labels, truncate, drop fully masked), called on its own so
that building a trainer and a model is not timed. Both run on one process; the best of `--repeats` runs
counts. The outputs are checked to be the same tokens and the same supervised tokens before timing.

    python benchmarks/bench_masking.py                          # embedded tokenizer, synthetic data
    python benchmarks/bench_masking.py --source sharegpt_package --conversations 500

The last line is the ratio (ours / TRL); the goal is >= 1.0.
"""

from __future__ import annotations

import argparse
import logging
import time

import datasets
from trl import SFTConfig, SFTTrainer

from sft_sweeps.config import DatasetConfig, MaskingConfig
from sft_sweeps.data import load_splits
from sft_sweeps.masking import build_dataset
from sft_sweeps.tokenizer import load_tokenizer


def trl_prepare(tokenizer, records: list[dict], max_length: int) -> datasets.Dataset:
    """TRL's own SFT preparation of `records` with assistant-only loss."""
    args = SFTConfig(
        output_dir="/tmp/bench_masking_trl",
        assistant_only_loss=True,
        max_length=max_length,
        report_to=[],
        use_cpu=True,
        bf16=False,
        dataset_num_proc=None,
    )
    # `_prepare_dataset` reads these three attributes of a trainer; set them instead of building a model.
    trainer = object.__new__(SFTTrainer)
    trainer._tokenizer, trainer.completion_only_loss, trainer.chat_template = tokenizer, False, None
    dataset = datasets.Dataset.from_list([{"messages": r["messages"]} for r in records])
    return trainer._prepare_dataset(dataset, tokenizer, args, False, None, "train")


def best_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokenizer", default="embedded", help="`embedded`, or a local path with a chat template"
    )
    parser.add_argument("--source", default="synthetic", choices=["synthetic", "sharegpt_package"])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    datasets.disable_progress_bars()

    tokenizer = load_tokenizer(args.tokenizer)
    splits = load_splits(
        DatasetConfig(
            source=args.source,
            num_train=args.conversations,
            num_validation=1,
            num_test=1,
            validation_fraction=0.0,
            test_fraction=0.0,
            on_invalid="skip",
        )
    )
    # TRL refuses a dataset with a conversation that has no assistant tokens; compare on what both accept.
    records = [r for r in splits.train if any(m["role"] == "assistant" for m in r["messages"])]
    masking = MaskingConfig(name="all")

    ours, _ = build_dataset(tokenizer, records, masking, args.max_length)
    theirs = trl_prepare(tokenizer, records, args.max_length)
    assert ours["input_ids"] == theirs["input_ids"], "different tokens"
    assert [[w > 0 for w in ws] for ws in ours["weights"]] == [
        [x != -100 for x in ls] for ls in theirs["labels"]
    ], "different supervised tokens"
    print(
        f"data: {args.source}, {len(records)} conversations, tokenizer {args.tokenizer}, "
        f"max_length {args.max_length}"
    )
    print(f"check: same input_ids and supervised tokens for all {len(ours)} samples")

    ours_rate = best_rate(
        lambda: build_dataset(tokenizer, records, masking, args.max_length), len(records), args.repeats
    )
    trl_rate = best_rate(lambda: trl_prepare(tokenizer, records, args.max_length), len(records), args.repeats)
    print(f"ours (build_dataset, strategy all, no cache): {ours_rate:,.0f} conversations/s")
    print(f"trl (SFTTrainer._prepare_dataset, assistant_only_loss=True): {trl_rate:,.0f} conversations/s")
    print(f"ratio ours/trl: {ours_rate / trl_rate:.2f}")


if __name__ == "__main__":
    main()
