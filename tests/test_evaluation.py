"""Multi-turn evaluation: scoring against an oracle, a random model, batched generation, NLL spans."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM

from sft_sweeps.config import EvalConfig
from sft_sweeps.evaluation import EvalResult, evaluate, generate, prompt_ids
from sft_sweeps.evaluation.generation import stop_token_ids
from sft_sweeps.evaluation.nll import assistant_spans, turn_nlls
from sft_sweeps.tasks import make_splits
from sft_sweeps.tokenizer import build_embedded_tokenizer
from tests.conftest import tiny_llama


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared CPU: torch's extra threads stall behind other processes (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return build_embedded_tokenizer()


@pytest.fixture(scope="module")
def test_split():
    return make_splits(["state_tracking"], {"train": 20, "test": 6}, min_turns=2, max_turns=4, seed=0)["test"]


def overfit_llama(tok, records: list[dict], steps: int = 150, seed: int = 0) -> LlamaForCausalLM:
    """A tiny Llama trained on `records` (assistant tokens only) until it knows them by heart."""
    model = tiny_llama(tok, seed).train()
    batch = tok.apply_chat_template(
        [r["messages"] for r in records],
        return_dict=True,
        return_assistant_tokens_mask=True,
        padding=True,
        return_tensors="pt",
    )
    labels = batch["input_ids"].masked_fill(batch["assistant_masks"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        ).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


class Oracle(torch.nn.Module):
    """Knows a set of conversations by heart: continues any prefix of one of them with its next tokens.

    `generate` and `forward` have the shapes of a transformers causal LM; a history it does not know
    (e.g. one holding its own wrong answer) gets `junk` tokens and no end of turn.
    """

    def __init__(self, tok, conversations: list[list[dict]], wrong_first_turn: set[int] = frozenset()):
        super().__init__()
        self.vocab = len(tok)
        self.eos = tok.eos_token_id
        self.pad = tok.pad_token_id
        self.junk = tok.convert_tokens_to_ids("x")
        self.generation_config = SimpleNamespace(eos_token_id=None)
        self.next_token: dict[tuple[int, ...], int] = {}
        for index, messages in enumerate(conversations):
            ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
            self._learn(ids, start=1)
            if index in wrong_first_turn:  # answers turn 1 wrongly, so its own history leaves the gold one
                first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
                prompt = tok.apply_chat_template(
                    messages[:first], add_generation_prompt=True, return_dict=False
                )
                self._learn(prompt + tok.encode("wrong") + [self.eos], start=len(prompt))

    def _learn(self, ids: list[int], start: int) -> None:
        for p in range(start, len(ids)):
            self.next_token[tuple(ids[:p])] = ids[p]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **_):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            context = [t for t, m in zip(ids, mask, strict=True) if m]
            new = []
            while len(new) < max_new_tokens:
                token = self.next_token.get(tuple(context + new), self.junk)
                new.append(token)
                if token in eos_token_id:
                    break
            rows.append(ids + new + [pad_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)

    def forward(self, input_ids, attention_mask, logits_to_keep):
        logits = torch.zeros(input_ids.shape[0], len(logits_to_keep), self.vocab)
        for row, ids in enumerate(input_ids.tolist()):
            for column, p in enumerate(logits_to_keep.tolist()):
                logits[row, column, self.next_token.get(tuple(ids[: p + 1]), self.junk)] = 50.0
        return SimpleNamespace(logits=logits)


def eval_cfg(**overrides) -> EvalConfig:
    return EvalConfig(**{"max_conversations": None, "batch_size": 4, "max_new_tokens": 24, **overrides})


def test_oracle_scores_one(tok, test_split):
    oracle = Oracle(tok, [r["messages"] for r in test_split])
    result = evaluate(oracle, tok, test_split, eval_cfg(), progress=False)
    m = result.metrics
    assert m["turn_exact_match"] == 1.0
    assert m["own_history_exact_match"] == 1.0
    assert m["conversation_success"] == 1.0
    assert m["stop_rate"] == 1.0
    assert m["state_tracking/turn_exact_match"] == 1.0
    assert m["assistant_nll"] < 1e-6
    assert m["num_conversations"] == len(test_split)
    num_turns = sum(1 for r in test_split for msg in r["messages"] if msg["role"] == "assistant")
    assert len(result.items) == m["num_turns"] == num_turns
    assert all(item["prediction"] == item["gold"] for item in result.items)
    assert set(result.by_depth["turn_exact_match"]) == {1, 2, 3, 4}


def test_model_trained_on_the_conversations_scores_one(tok, test_split):
    model = overfit_llama(tok, test_split[:4])
    result = evaluate(model, tok, test_split[:4], eval_cfg(), progress=False)
    m = result.metrics
    assert (m["turn_exact_match"], m["conversation_success"], m["stop_rate"]) == (1.0, 1.0, 1.0)
    assert m["assistant_nll"] < 0.05
    # Conversations it never saw: not memorized, so not all right.
    assert (
        evaluate(model, tok, test_split[4:], eval_cfg(), progress=False).metrics["conversation_success"] < 1.0
    )


def test_own_history_errors_compound(tok, test_split):
    """Wrong at turn 1 of two conversations: gold-history turns after it stay right, own-history ones fail."""
    oracle = Oracle(tok, [r["messages"] for r in test_split], wrong_first_turn={0, 1})
    result = evaluate(oracle, tok, test_split, eval_cfg(), progress=False)
    for item in result.items:
        broken = item["id"] in (test_split[0]["id"], test_split[1]["id"])
        assert item["correct"] == (not broken or item["turn"] > 1)
        assert item["own_correct"] == (not broken)
    assert result.metrics["conversation_success"] == pytest.approx((len(test_split) - 2) / len(test_split))
    assert result.by_depth["turn_exact_match"][2] == 1.0
    assert result.by_depth["own_history_exact_match"][2] == pytest.approx(
        (len(test_split) - 2) / len(test_split)
    )
    assert result.metrics["stop_rate"] == 1.0  # "wrong" ends with the end-of-turn token too


def test_random_model_scores_zero(tok, test_split):
    result = evaluate(tiny_llama(tok), tok, test_split, eval_cfg(max_new_tokens=12), progress=False)
    assert result.metrics["turn_exact_match"] == 0.0
    assert result.metrics["conversation_success"] == 0.0
    # A random model is close to uniform over the vocabulary.
    assert result.metrics["assistant_nll"] == pytest.approx(
        torch.log(torch.tensor(float(len(tok)))).item(), rel=0.05
    )
    json.dumps(result.to_dict())  # JSON-serializable


def test_batched_generation_matches_one_at_a_time(tok, test_split):
    model = tiny_llama(tok, seed=1)
    histories = [
        r["messages"][:i] for r in test_split for i, m in enumerate(r["messages"]) if m["role"] == "assistant"
    ]
    prompts = prompt_ids(tok, histories[::3])
    assert len({len(p) for p in prompts}) > 1  # lengths differ, so left padding is exercised
    batched = generate(model, tok, prompts, batch_size=8, max_new_tokens=8)
    single = [generate(model, tok, [p], batch_size=1, max_new_tokens=8)[0] for p in prompts]
    assert batched == single


def test_turn_nll_matches_transformers_loss(tok, test_split):
    """Our span NLL equals the model's own loss with labels masked to that assistant turn."""
    model = tiny_llama(tok, seed=2)
    messages = test_split[0]["messages"]
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    turns = [messages[:i] for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = assistant_spans(ids, prompt_ids(tok, turns), stop_token_ids(model, tok), "test-0")
    assert tok.decode(ids[spans[0].start : spans[0].end]) == messages[2]["content"] + "<|im_end|>"
    # Another conversation in the batch pads this one: padding must not change its NLL.
    other = tok.apply_chat_template(test_split[1]["messages"], tokenize=True, return_dict=False)
    other_turns = [
        test_split[1]["messages"][:i]
        for i, m in enumerate(test_split[1]["messages"])
        if m["role"] == "assistant"
    ]
    other_spans = assistant_spans(other, prompt_ids(tok, other_turns), [tok.eos_token_id], "test-1")
    nlls = turn_nlls(model, [ids, other], [spans, other_spans], tok.pad_token_id, batch_size=2)[0]
    for span, (nll_sum, count) in zip(spans, nlls, strict=True):
        labels = torch.full((1, len(ids)), -100)
        labels[0, span.start : span.end] = torch.tensor(ids[span.start : span.end])
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        assert count == span.end - span.start
        assert nll_sum / count == pytest.approx(expected, rel=1e-4)


def test_records_without_task_get_nll_only(tok, test_split):
    chat = {
        "id": "real-0",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    }
    result = evaluate(tiny_llama(tok), tok, [chat], eval_cfg(), progress=False)
    assert "turn_exact_match" not in result.metrics and "conversation_success" not in result.metrics
    assert result.metrics["num_nll_only_conversations"] == 1.0
    assert result.items[0]["correct"] is None and result.items[0]["nll"] > 0
    mixed = evaluate(tiny_llama(tok), tok, [chat, *test_split[:2]], eval_cfg(), progress=False)
    assert mixed.metrics["num_nll_only_conversations"] == 1.0
    assert mixed.metrics["num_turns"] == sum(1 for i in mixed.items if i["task"] == "state_tracking")


def test_no_conversations(tok):
    result = evaluate(tiny_llama(tok), tok, [], eval_cfg(), progress=False)
    assert result.metrics == {
        "num_conversations": 0.0,
        "num_nll_conversations": 0.0,
        "num_nll_only_conversations": 0.0,
    }
    assert not result.items


def test_max_conversations(tok, test_split):
    oracle = Oracle(tok, [r["messages"] for r in test_split])
    result = evaluate(oracle, tok, test_split, eval_cfg(max_conversations=2), progress=False)
    assert {item["id"] for item in result.items} == {test_split[0]["id"], test_split[1]["id"]}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "r1"}, "'r1', field 'messages'"),
        (
            {"id": "r2", "messages": [{"role": "user", "content": "hi"}]},
            "'r2': field 'messages' has no assistant",
        ),
        ({"id": "r3", "messages": [{"content": "hi"}]}, r"'r3', message 0, field 'role'"),
    ],
)
def test_bad_records_name_record_and_field(tok, record, message):
    with pytest.raises(ValueError, match=message):
        evaluate(tiny_llama(tok), tok, [record], eval_cfg(), progress=False)


def test_duplicate_ids_rejected(tok, test_split):
    with pytest.raises(ValueError, match="'id' must be unique"):
        evaluate(tiny_llama(tok), tok, [test_split[0], test_split[0]], eval_cfg(), progress=False)


def test_to_dict_round_trips(tok, test_split):
    oracle = Oracle(tok, [r["messages"] for r in test_split])
    result = evaluate(oracle, tok, test_split[:2], eval_cfg(), progress=False)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["metrics"] == result.metrics
    assert data["by_depth"]["turn_exact_match"]["1"] == 1.0
    assert isinstance(result, EvalResult)


def test_evaluate_app_scores_a_saved_model_on_the_pipeline_test_split(tok, tmp_path):
    """`python -m sft_sweeps.evaluate`: reloads the saved model and tokenizer, rebuilds the test split."""
    from sft_sweeps.config import validate
    from sft_sweeps.data import load_splits
    from sft_sweeps.evaluate import RESULT_NAME, run_evaluation
    from tests.conftest import TINY_OVERRIDES, compose_config

    cfg = compose_config(
        [*TINY_OVERRIDES, "logger=none", f"eval.model_path={tmp_path / 'model'}", "eval.max_conversations=2"]
    )
    test = load_splits(validate(cfg).dataset).test
    overfit_llama(tok, test[:2]).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    record = run_evaluation(cfg, tmp_path)
    assert record.status == "done"
    assert record.metrics["synthetic/turn_exact_match"] == 1.0
    assert record.metrics["synthetic/conversation_success"] == 1.0
    assert {item["id"] for item in record.eval_items["synthetic"]} == {test[0]["id"], test[1]["id"]}
    assert {item["id"] for item in record.eval_items["nll"]} == {test[0]["id"], test[1]["id"]}
    assert json.loads((tmp_path / RESULT_NAME).read_text())["metrics"] == record.metrics
    # A RunRecord the report reads beside training runs.
    from sft_sweeps.report import load_records
    from sft_sweeps.report.analysis import analyze

    (read,) = load_records(str(tmp_path))
    assert read.metrics == record.metrics and read.status == "done"
    assert analyze([read]).hygiene.done == 1


def test_evaluate_app_needs_a_model_dir(tmp_path):
    from sft_sweeps.config import ConfigError
    from sft_sweeps.evaluate import run_evaluation
    from tests.conftest import compose_config

    with pytest.raises(ConfigError, match="eval.model_path"):
        run_evaluation(compose_config([f"eval.model_path={tmp_path / 'missing'}"]), tmp_path)
