"""The weighted-loss trainer, checked against direct computation and against TRL itself.

Every test drives the real code path (`build_trainer`, the collator, `get_batch_samples`, `training_step`,
`compute_loss`) on a tiny random Llama and the embedded tokenizer, and compares with a reference
computed here from the model's plain logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf
from torch.testing import assert_close
from transformers import set_seed
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from sft_sweeps.config import LoraConfig, LossNormalizer, ModelConfig, TinyArchConfig, TrainConfig
from sft_sweeps.modeling import build_model
from sft_sweeps.tokenizer import build_embedded_tokenizer
from sft_sweeps.training import WeightedCollator, build_trainer, make_sft_config, step_normalizer
from tests.conftest import compose_config

TOKENIZER = build_embedded_tokenizer()
ARCH = TinyArchConfig(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64
)
LENGTHS = (7, 12, 5, 9)  # unequal, so padding and padding-free differ in layout


def _model(attn: str | None = None, seed: int = 0) -> torch.nn.Module:
    set_seed(seed)  # every call gives the same init
    model = build_model(ModelConfig(arch=ARCH), TOKENIZER)
    if attn is not None:
        model.set_attn_implementation(attn)
    return model


def _samples(lengths=LENGTHS, binary: bool = False, seed: int = 0) -> list[dict]:
    """Random tokens with fractional (or 0/1) weights; about a third of the tokens weigh 0."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(10, 250, (n,), generator=g)
        weights = torch.ones(n) if binary else torch.rand(n, generator=g) + 0.05
        weights[torch.rand(n, generator=g) < 0.3] = 0.0
        weights[-1] = weights[-1] or 1.0  # every sample supervises something
        rows.append({"input_ids": ids.tolist(), "weights": weights.tolist()})
    return rows


def _cfg(**overrides) -> TrainConfig:
    base = dict(max_steps=1, max_length=64, train_sampling_strategy="sequential", logging_steps=1)
    return TrainConfig(**{**base, **overrides})


def _trainer(rows: list[dict], tmp_path: Path, model=None, **overrides):
    return build_trainer(
        model if model is not None else _model(),
        TOKENIZER,
        Dataset.from_list(rows),
        _cfg(**overrides),
        seed=0,
        output_dir=str(tmp_path / "trainer"),
    )


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _token_nll(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """NLL of tokens 1..n-1 of one unpadded sequence, from the model's own logits (no fused head, no mask)."""
    input_ids = torch.tensor([ids])
    logits = model(input_ids=input_ids).logits[0, :-1].float()
    return -logits.log_softmax(-1).gather(-1, input_ids[0, 1:, None])[:, 0]


def _reference_loss(model: torch.nn.Module, rows: list[dict], normalizer: LossNormalizer) -> torch.Tensor:
    """sum(w * nll) / normalizer over the whole batch, one sequence at a time."""
    weighted = sum((torch.tensor(r["weights"][1:]) * _token_nll(model, r["input_ids"])).sum() for r in rows)
    denominator = {
        LossNormalizer.weight_sum: sum(sum(r["weights"][1:]) for r in rows),
        LossNormalizer.tokens: sum(len(r["input_ids"]) - 1 for r in rows),
        LossNormalizer.sequences: len(rows),
    }[normalizer]
    return weighted / denominator


def _one_optimizer_step_grads(trainer, accumulation: int) -> dict[str, torch.Tensor]:
    """Gradients of one optimizer step, through the Trainer's own batching, normalizer and training_step."""
    batches, num_items = trainer.get_batch_samples(
        iter(trainer.get_train_dataloader()), accumulation, trainer.args.device
    )
    assert len(batches) == accumulation
    trainer.model.zero_grad()
    for batch in batches:
        trainer.training_step(trainer.model, batch, num_items)
    return _grads(trainer.model)


@pytest.mark.parametrize("normalizer", list(LossNormalizer))
@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
def test_accumulation_4x1_equals_1x4_equals_direct_computation(
    normalizer: LossNormalizer, padding_free: bool, tmp_path: Path
) -> None:
    rows = _samples()
    one_batch = _trainer(
        rows, tmp_path, per_device_train_batch_size=4, loss_normalizer=normalizer, padding_free=padding_free
    )
    accumulated = _trainer(
        rows,
        tmp_path,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=4,
        loss_normalizer=normalizer,
        padding_free=padding_free,
    )
    grads_one = _one_optimizer_step_grads(one_batch, accumulation=1)
    grads_acc = _one_optimizer_step_grads(accumulated, accumulation=4)

    reference_model = _model()
    _reference_loss(reference_model, rows, normalizer).backward()
    grads_ref = _grads(reference_model)

    assert grads_ref.keys() == grads_one.keys() == grads_acc.keys()
    assert any(g.abs().sum() > 0 for g in grads_ref.values())
    for name in grads_ref:
        assert_close(grads_acc[name], grads_one[name], rtol=1e-4, atol=1e-6, msg=name)
        assert_close(grads_one[name], grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("normalizer", list(LossNormalizer))
def test_step_normalizer_is_the_same_padded_and_padding_free(normalizer: LossNormalizer) -> None:
    rows = _samples()
    padded = WeightedCollator(pad_token_id=TOKENIZER.pad_token_id)(rows)
    packed = WeightedCollator(pad_token_id=TOKENIZER.pad_token_id, padding_free=True)(rows)
    expected = {
        LossNormalizer.weight_sum: sum(sum(r["weights"][1:]) for r in rows),
        LossNormalizer.tokens: sum(len(r["input_ids"]) - 1 for r in rows),
        LossNormalizer.sequences: len(rows),
    }[normalizer]
    assert step_normalizer(padded, normalizer).item() == pytest.approx(expected, rel=1e-6)
    assert step_normalizer(packed, normalizer).item() == pytest.approx(expected, rel=1e-6)


def test_collator_aligns_weights_with_labels_token_by_token() -> None:
    rows = _samples()
    for padding_free in (False, True):
        batch = WeightedCollator(pad_token_id=TOKENIZER.pad_token_id, padding_free=padding_free)(rows)
        if padding_free:
            flat_ids = [t for r in rows for t in r["input_ids"]]
            # the first token of each sequence is never a target: nothing precedes it in its own conversation
            firsts = {sum(LENGTHS[:i]) for i in range(len(LENGTHS))}
            flat_w = [0.0 if i in firsts else w for i, w in enumerate(w for r in rows for w in r["weights"])]
            expected_ids, expected_w = [flat_ids], [flat_w]
        else:
            width = max(LENGTHS)
            expected_ids = [
                r["input_ids"] + [TOKENIZER.pad_token_id] * (width - len(r["input_ids"])) for r in rows
            ]
            expected_w = [r["weights"] + [0.0] * (width - len(r["weights"])) for r in rows]
        assert batch["input_ids"].tolist() == expected_ids
        assert_close(batch["weights"], torch.tensor(expected_w))
        expected_labels = torch.where(torch.tensor(expected_w) > 0, torch.tensor(expected_ids), -100)
        if not padding_free:  # column 0 is never predicted, so its label does not matter to the loss
            expected_labels[:, 0] = batch["labels"][:, 0]
        assert batch["labels"].tolist() == expected_labels.tolist()


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
def test_binary_weights_give_trls_own_loss_and_gradients(padding_free: bool, tmp_path: Path) -> None:
    rows = _samples(binary=True)
    ours = _trainer(rows, tmp_path, per_device_train_batch_size=4, padding_free=padding_free)
    trl_rows = [
        {
            "input_ids": r["input_ids"],
            "labels": [t if w else -100 for t, w in zip(r["input_ids"], r["weights"], strict=True)],
        }
        for r in rows
    ]
    plain = SFTTrainer(
        model=_model(),
        args=make_sft_config(_cfg(per_device_train_batch_size=4), seed=0, output_dir=str(tmp_path / "trl")),
        train_dataset=Dataset.from_list(trl_rows),
        processing_class=TOKENIZER,
        data_collator=DataCollatorForLanguageModeling(
            pad_token_id=TOKENIZER.pad_token_id, padding_free=padding_free
        ),
    )
    batch = next(iter(ours.get_train_dataloader()))
    trl_batch = next(iter(plain.get_train_dataloader()))
    assert set(batch) - set(trl_batch) == {"weights"}
    for key in trl_batch:
        assert torch.equal(torch.as_tensor(batch[key]), torch.as_tensor(trl_batch[key])), key

    # The training normalizer (counted by each trainer) and the evaluation one (None: within the batch).
    n_ours = ours._get_num_items_in_batch([batch], ours.args.device)
    n_trl = plain._get_num_items_in_batch([trl_batch], plain.args.device)
    assert n_ours.item() == n_trl.item() > 0
    for num_items in (n_ours, None):
        ours.model.zero_grad()
        plain.model.zero_grad()
        loss_ours = ours.compute_loss(ours.model, dict(batch), num_items_in_batch=num_items)
        loss_trl = plain.compute_loss(
            plain.model, dict(trl_batch), num_items_in_batch=None if num_items is None else n_trl
        )
        assert_close(loss_ours, loss_trl, rtol=1e-6, atol=1e-7)
        loss_ours.backward()
        loss_trl.backward()
        grads_ours, grads_trl = _grads(ours.model), _grads(plain.model)
        for name in grads_trl:
            assert_close(grads_ours[name], grads_trl[name], rtol=1e-5, atol=1e-7, msg=name)


def _packed_log_probs(trainer, rows: list[dict]) -> torch.Tensor:
    """Per-token log-probs of one padding-free batch, as `compute_loss` computes them for the loss."""
    with torch.no_grad():
        _, outputs = trainer.compute_loss(trainer.model, trainer.data_collator(rows), return_outputs=True)
    return outputs.log_probs[0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_never_attends_across_conversations(attn: str, tmp_path: Path) -> None:
    # transformers builds the block-diagonal mask from position ids only when no KV cache is passed: a plain
    # `model(**packed_batch)` with the default use_cache=True attends across conversations. compute_loss
    # (and TRL's fused head) pass use_cache=False.
    rows = [{**r, "weights": [1.0] * len(r["weights"])} for r in _samples()]  # score every position
    trainer = _trainer(rows, tmp_path, model=_model(attn), per_device_train_batch_size=4, padding_free=True)
    trainer.model.eval()
    changed = [{**rows[0], "input_ids": [(t + 17) % 240 + 10 for t in rows[0]["input_ids"]]}, *rows[1:]]
    before, after = _packed_log_probs(trainer, rows), _packed_log_probs(trainer, changed)
    first = LENGTHS[0]
    # log_probs[t] scores token t+1; from t = first on, what is scored and seen is conversations 2.. only
    assert not torch.allclose(before[: first - 1], after[: first - 1])  # the change reached conversation 1
    assert_close(after[first:], before[first:], rtol=0, atol=1e-6)
    # and each conversation scores as it does alone; its first token is not scored (nothing precedes it)
    start = 0
    for r in rows:
        n = len(r["input_ids"])
        with torch.no_grad():
            alone = -_token_nll(_model(attn), r["input_ids"])
        assert_close(before[start : start + n - 1], alone, rtol=1e-5, atol=1e-5)
        if start > 0:
            assert before[start - 1] == 0.0
        start += n


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("normalizer", list(LossNormalizer))
def test_padding_free_loss_equals_padded_loss(attn: str, normalizer: LossNormalizer, tmp_path: Path) -> None:
    rows = _samples()
    losses = {}
    for padding_free in (False, True):
        trainer = _trainer(
            rows,
            tmp_path,
            model=_model(attn),
            per_device_train_batch_size=4,
            loss_normalizer=normalizer,
            padding_free=padding_free,
        )
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.eval()
        with torch.no_grad():
            losses[padding_free] = trainer.compute_loss(trainer.model, batch)
    assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert_close(losses[True], _reference_loss(_model(attn), rows, normalizer), rtol=1e-5, atol=1e-6)


def test_loss_normalizer_is_part_of_the_recorded_config() -> None:
    cfg = compose_config(["train.loss_normalizer=tokens"])
    # what the pipeline writes to result.json as `config`
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert resolved["train"]["loss_normalizer"] == "tokens"
    assert compose_config([]).train.loss_normalizer == LossNormalizer.weight_sum


def _seen_order(weights_of, tmp_path: Path, sampling: str) -> list[list[tuple[int, int]]]:
    """Train a few steps; return each collated batch's samples, identified by length and first token."""
    rows = [{"input_ids": r["input_ids"], "weights": weights_of(r)} for r in _samples(lengths=range(5, 13))]
    trainer = _trainer(
        rows, tmp_path, max_steps=6, per_device_train_batch_size=2, train_sampling_strategy=sampling
    )
    collate, seen = trainer.data_collator, []

    def recording(examples: list[dict]) -> dict:
        seen.append([(len(e["input_ids"]), e["input_ids"][0]) for e in examples])
        return collate(examples)

    trainer.data_collator = recording  # the dataloader is built in train(), from this attribute
    trainer.train()
    return seen


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_same_seed_gives_every_strategy_the_same_data_order(sampling: str, tmp_path: Path) -> None:
    order_a = _seen_order(lambda r: r["weights"], tmp_path / "a", sampling)
    order_b = _seen_order(lambda r: [1.0] * len(r["weights"]), tmp_path / "b", sampling)
    assert len(order_a) >= 6  # the loop may collate one batch ahead
    assert order_a == order_b
    flat = [x for batch in order_a for x in batch]
    assert flat[:8] != sorted(flat[:8])  # shuffled, so the test would see a difference in order


def test_lora_trains_the_adapters_and_leaves_the_base_weights(tmp_path: Path) -> None:
    rows = _samples()
    trainer = _trainer(
        rows,
        tmp_path,
        max_steps=3,
        per_device_train_batch_size=2,
        warmup_ratio=0.0,
        lora=LoraConfig(r=4, alpha=8, dropout=0.0),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    adapters = [n for n in before if "lora_" in n]
    assert adapters and all(after[n].requires_grad for n in adapters)
    # lora_B starts at zero, so lora_A gets its first gradient in the second step
    assert all(not torch.equal(before[n], after[n].detach()) for n in adapters if "lora_B" in n)
    assert any(not torch.equal(before[n], after[n].detach()) for n in adapters if "lora_A" in n)
    base = [n for n in before if "lora_" not in n]
    assert base and all(torch.equal(before[n], after[n].detach()) for n in base)


def test_training_logs_trls_token_metrics(tmp_path: Path) -> None:
    rows = _samples()
    trainer = _trainer(rows, tmp_path, max_steps=2, per_device_train_batch_size=2)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["num_tokens"] for entry in logs] == [sum(LENGTHS[:2]), sum(LENGTHS)]  # non-pad tokens seen
    assert all(0.0 <= entry["mean_token_accuracy"] <= 1.0 and entry["entropy"] > 0 for entry in logs)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"input_ids": [5, 6, 7], "weights": [1.0, 1.0]}, "sample 1 of the batch: 2 weights for 3 input_ids"),
        (
            {"input_ids": [5, 6, 7], "weights": [1.0, -0.5, 1.0]},
            "sample 1 of the batch: weights must be finite",
        ),
        ({"input_ids": [5, 6, 7], "weights": [1.0, float("nan"), 1.0]}, "weights must be finite and >= 0"),
    ],
)
def test_collator_rejects_misaligned_or_invalid_weights(bad: dict, message: str) -> None:
    good = {"input_ids": [1, 2], "weights": [0.0, 1.0]}
    with pytest.raises(ValueError, match=message):
        WeightedCollator(pad_token_id=TOKENIZER.pad_token_id)([good, bad])
