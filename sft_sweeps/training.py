"""Training with per-token loss weights inside TRL.

TRL's `SFTTrainer` supports 0/1 masks only (labels at -100). Every strategy here is a per-token weight, so
the trainer is extended in two narrow places:

- `compute_loss`: sum over tokens of weight x NLL, from TRL's fused LM head (no full logits), divided by
  the normalizer of the whole optimizer step.
- `_get_num_items_in_batch`: that normalizer, counted over all micro-batches of the step (and all ranks),
  the way transformers counts label tokens for `num_items_in_batch`. This keeps gradient accumulation and
  data parallelism exact: accumulation 4 x batch 1 gives the gradients of 1 x batch 4.

Normalizers (`train.loss_normalizer`): `weight_sum` (for 0/1 masks, TRL's token mean), `tokens` (non-pad
tokens: a fixed scale, so a strategy that supervises fewer tokens gets smaller gradients), `sequences`.
`weight_sum` and `tokens` count prediction positions: from the second token of each sequence on.

Like TRL's, the loss logs `entropy`, `mean_token_accuracy` (over supervised tokens) and `num_tokens`.
Padding-free batches (`train.padding_free`) keep conversations apart: transformers builds a block-diagonal
mask from the position ids (or flash-attention uses varlen kernels), because the forward passes no KV cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from sft_sweeps.checkpoints import write_marker
from sft_sweeps.config import LossNormalizer, TrainConfig


@dataclass
class WeightedCollator(DataCollatorForLanguageModeling):
    """TRL's collator, plus a float `weights` tensor aligned with `labels`.

    Labels are -100 where the weight is 0, so TRL's fused head skips those positions; weights are 0
    wherever labels are -100 (padding, and the first token of each sequence when padding-free).

    Example:
        >>> collate = WeightedCollator(pad_token_id=0)
        >>> batch = collate([
        ...     {"input_ids": [5, 6, 7], "weights": [0.0, 0.5, 1.0]},
        ...     {"input_ids": [8, 9], "weights": [1.0, 1.0]},
        ... ])
        >>> batch["labels"].tolist(), batch["weights"].tolist()
        ([[-100, 6, 7], [8, 9, -100]], [[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]])
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [torch.tensor(example["weights"], dtype=torch.float32) for example in examples]
        for i, (example, w) in enumerate(zip(examples, weights, strict=True)):
            # A misaligned or negative weight would train silently on the wrong tokens
            if len(w) != len(example["input_ids"]):
                raise ValueError(
                    f"sample {i} of the batch: {len(w)} weights for {len(example['input_ids'])} input_ids"
                )
            if not (torch.isfinite(w).all() and (w >= 0).all()):
                raise ValueError(
                    f"sample {i} of the batch: weights must be finite and >= 0, got {w.tolist()}"
                )
        batch = super().torch_call(
            [
                {
                    "input_ids": example["input_ids"],
                    "labels": [
                        t if w > 0 else -100
                        for t, w in zip(example["input_ids"], example["weights"], strict=True)
                    ],
                }
                for example in examples
            ]
        )
        if self.padding_free:
            weights = [torch.cat(weights)]
        padded = torch.zeros(batch["labels"].shape, dtype=torch.float32)
        for row, w in enumerate(weights):
            padded[row, : len(w)] = w
        batch["weights"] = padded.masked_fill(batch["labels"] == -100, 0.0)
        return batch


def step_normalizer(batch: dict[str, torch.Tensor], normalizer: LossNormalizer) -> torch.Tensor:
    """The loss denominator contributed by one micro-batch (labels are predicted from position 1 on).

    Args:
        batch: a `WeightedCollator` batch, padded (`attention_mask`) or padding-free (`position_ids`).
        normalizer: `weight_sum` (sum of weights), `tokens` (non-pad prediction positions) or `sequences`.

    Returns:
        A scalar float tensor; the trainer sums it over the micro-batches (and ranks) of a step.

    Example:
        >>> batch = WeightedCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "weights": [0.0, 0.5, 1.0]}])
        >>> [step_normalizer(batch, n).item() for n in LossNormalizer]
        [1.5, 2.0, 1.0]
    """
    if normalizer == LossNormalizer.weight_sum:
        return batch["weights"][:, 1:].sum()
    if "attention_mask" in batch:
        if normalizer == LossNormalizer.tokens:
            return batch["attention_mask"][:, 1:].sum().float()
        return torch.tensor(float(batch["attention_mask"].size(0)))
    starts = batch["position_ids"] == 0  # padding-free: one row, sequences restart at position 0
    if normalizer == LossNormalizer.tokens:
        return (~starts).sum().float()
    return starts.sum().float()


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped sampler, its permutation drawn from `seed + epoch`, not the global RNG.

    transformers' own draws each epoch's permutation from the global torch RNG when the epoch's iterator is
    made; a run continued mid-epoch from a checkpoint makes that iterator before transformers restores the
    RNG, so it would see another epoch's batches. Seeded by epoch (as accelerate's random sampler is), the
    continued run sees the batches an uninterrupted run sees (tests/test_checkpoints.py).
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer (through accelerate's dataloader) at the start of every epoch."""
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class WeightedSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose loss is sum(weight x NLL) / normalizer; see the module docstring."""

    def __init__(
        self, *args: Any, loss_normalizer: LossNormalizer = LossNormalizer.weight_sum, **kwargs: Any
    ):
        self.loss_normalizer = LossNormalizer(loss_normalizer)
        super().__init__(*args, **kwargs)
        # Our loss is always divided by the normalizer of the whole step, so transformers must not divide
        # by the accumulation steps again.
        self.loss_is_scaled_for_ga = True
        # Set by `sft_sweeps.checkpoints.Continuation.prepare`: what the checkpoints saved belong to.
        self.checkpoint_identity: str | None = None

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # transformers' checkpoint, then our marker (written last: a checkpoint without it is incomplete)
        # with the loss summed so far, which transformers does not save.
        super()._save_checkpoint(model, trial)
        if self.args.should_save and self.checkpoint_identity is not None:
            step = self.state.global_step
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
            loss_sum = self._total_loss_scalar + float(self._tr_loss.item())
            write_marker(folder, self.checkpoint_identity, loss_sum, step)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(train_dataset)
        # With checkpoints, the same batches drawn from (seed, epoch), so a continued run sees what an
        # uninterrupted one does; without, transformers' own order (the default sweep's numbers unchanged).
        if isinstance(sampler, LengthGroupedSampler) and self.args.save_strategy != "no":
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        if not batch_samples:
            return None
        total = sum(step_normalizer(batch, self.loss_normalizer) for batch in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("weights")
        outputs = model(**inputs, fused_lm_head=True, use_cache=False)
        # outputs.log_probs[:, t] is the log-probability of token t+1, so it takes the weight of token t+1
        weighted_nll = -(outputs.log_probs * weights[:, 1:].to(outputs.log_probs.dtype)).sum()
        if num_items_in_batch is None:  # evaluation: normalize within the batch
            normalizer = step_normalizer({**inputs, "weights": weights}, self.loss_normalizer)
            loss = weighted_nll / normalizer.to(weighted_nll.device).clamp(min=1e-8)
        else:
            # Fractional weights can sum below 1, so clamp only against a step with nothing supervised
            normalizer = torch.as_tensor(num_items_in_batch, device=weighted_nll.device)
            loss = weighted_nll / normalizer.clamp(min=1e-8)
            # The normalizer sums over every rank while DDP averages gradients over ranks
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        self._log_token_metrics(inputs, outputs)
        return (loss, outputs) if return_outputs else loss

    def _log_token_metrics(self, inputs: dict[str, Any], outputs: Any) -> None:
        """What TRL's `compute_loss` logs: entropy and top-1 accuracy of supervised tokens, tokens seen."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(outputs.label_mask.sum()).sum()
        entropy = gather(outputs.entropy.detach().sum()).sum()
        correct = gather(outputs.is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append(
            (correct / num_valid).item() if num_valid > 0 else 0.0
        )
        if mode == "train":  # a padding-free batch has no attention mask, and no padding
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
            tokens = ids.new_tensor(ids.numel()) if mask is None else mask.sum()
            self._total_train_tokens += int(gather(tokens).sum().item())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


class ProgressCallback(TrainerCallback):
    """One line per logging step: step, loss, learning rate, elapsed time and ETA; readable in logs."""

    def __init__(self, label: str = ""):
        self.label = f"[{label}] " if label else ""
        self.start = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # one line per step, not one per rank
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
        print(
            f"{self.label}step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
            f"lr {logs.get('learning_rate', math.nan):.2e}  elapsed {elapsed:.0f}s  eta {eta:.0f}s",
            flush=True,
        )


def make_sft_config(cfg: TrainConfig, seed: int, output_dir: str) -> SFTConfig:
    """Build TRL's SFTConfig from the fields we expose."""
    on_gpu = torch.cuda.is_available()
    return SFTConfig(
        output_dir=output_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of max_steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        max_length=cfg.max_length,
        bf16=cfg.bf16 and on_gpu,
        activation_checkpointing=cfg.gradient_checkpointing and on_gpu,
        use_cpu=not on_gpu,
        seed=seed,
        data_seed=seed,
        # the same seed gives every strategy the same data order
        train_sampling_strategy=cfg.train_sampling_strategy,
        logging_steps=cfg.logging_steps,
        # Checkpoints to continue an interrupted run from (sft_sweeps.checkpoints); transformers also saves
        # one at the last step.
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="no",
        report_to="none",  # our own tracking callback logs, for every logger backend alike
        disable_tqdm=True,  # ProgressCallback prints instead
        remove_unused_columns=False,  # keep `weights`
        dataset_kwargs={"skip_prepare_dataset": True},  # samples arrive tokenized and weighted
        dataloader_num_workers=cfg.dataloader_num_workers,
    )


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    cfg: TrainConfig,
    seed: int,
    output_dir: str,
    callbacks: list[TrainerCallback] | None = None,
) -> WeightedSFTTrainer:
    """A `WeightedSFTTrainer` for samples with `input_ids` and `weights` columns.

    Args:
        model: the causal LM; wrapped with LoRA adapters when `cfg.lora` is set.
        tokenizer: its tokenizer (pad token id for the collator; saved with the model).
        train_dataset: `input_ids` and `weights` of equal lengths per sample; other columns are dropped.
        cfg: the training settings, `loss_normalizer` and `padding_free` included.
        seed: seeds initialisation and data order (the same seed gives every strategy the same order).
        output_dir: the Trainer's output directory.
        callbacks: extra `TrainerCallback`s (progress, tracking).
    """
    peft_config = None
    if cfg.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="CAUSAL_LM",
        )
    trainer = WeightedSFTTrainer(
        model=model,
        args=make_sft_config(cfg, seed, output_dir),
        train_dataset=train_dataset.select_columns(["input_ids", "weights"]),
        processing_class=tokenizer,
        data_collator=WeightedCollator(pad_token_id=tokenizer.pad_token_id, padding_free=cfg.padding_free),
        peft_config=peft_config,
        callbacks=callbacks,
        loss_normalizer=cfg.loss_normalizer,
    )
    trainer.remove_callback(PrinterCallback)  # ProgressCallback prints one readable line instead of a dict
    return trainer
