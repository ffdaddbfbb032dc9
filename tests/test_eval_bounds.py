"""Evaluation in bounded memory: no NLL forward row longer than the window, logits per pass capped."""

from __future__ import annotations

import pytest
import torch

from sft_sweeps.config import EvalConfig
from sft_sweeps.evaluation.generation import stop_token_ids
from sft_sweeps.evaluation.multiturn import _turn_prompts, evaluate_nll, parse_conversations
from sft_sweeps.evaluation.nll import assistant_spans, turn_nlls
from sft_sweeps.tasks import make_splits
from sft_sweeps.tokenizer import build_embedded_tokenizer
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def tok():
    return build_embedded_tokenizer()


@pytest.fixture(scope="module")
def long_chats():
    """Synthetic chats of 5-6 turns: 145-169 tokens each, over twice a 48-token window."""
    return make_splits(["state_tracking"], {"train": 1, "test": 6}, min_turns=5, max_turns=6, seed=0)["test"]


class ShapeRecorder:
    """A real tiny Llama whose forward passes record (rows, width, kept logit positions)."""

    def __init__(self, tok) -> None:
        self.model = tiny_llama(tok, seed=0, hidden_size=32, num_hidden_layers=1, intermediate_size=64)
        self.calls: list[tuple[int, int, int]] = []
        self.model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        rows, width = kwargs["input_ids"].shape
        keep = kwargs.get("logits_to_keep")
        kept = width if keep is None else (len(keep) if isinstance(keep, torch.Tensor) else keep)
        self.calls.append((rows, width, kept))


def test_nll_never_feeds_a_row_longer_than_the_window(tok, long_chats) -> None:
    recorder = ShapeRecorder(tok)
    window = 48
    rendered = tok.apply_chat_template([c["messages"] for c in long_chats], return_dict=False)
    assert min(len(ids) for ids in rendered) > 2 * window  # every conversation needs windows

    result = evaluate_nll(recorder.model, tok, long_chats, EvalConfig(batch_size=4), False, window)

    assert recorder.calls and max(width for _, width, _ in recorder.calls) <= window
    assert result.metrics["num_windowed_turns"] > 0
    assert result.metrics["num_scored_tokens"] > 0


def test_logits_per_pass_are_capped_and_scores_do_not_change(tok, long_chats) -> None:
    recorder = ShapeRecorder(tok)
    convs = parse_conversations(long_chats, EvalConfig(max_conversations=None))
    ids = tok.apply_chat_template([c.messages for c in convs], return_dict=False)
    stops = stop_token_ids(recorder.model, tok)
    prompts = _turn_prompts(tok, convs)
    spans = [assistant_spans(i, p, stops, c.id) for i, p, c in zip(ids, prompts, convs, strict=True)]
    vocab = len(tok)
    longest = max(len(i) for i in ids)
    budget = longest * vocab  # the logits of one whole row: a few rows' span positions per pass

    unbounded = turn_nlls(recorder.model, ids, spans, tok.pad_token_id, batch_size=8, max_logits=10**12)
    assert recorder.calls[0][0] == len(ids)  # one pass held every row
    recorder.calls.clear()
    bounded = turn_nlls(recorder.model, ids, spans, tok.pad_token_id, batch_size=8, max_logits=budget)

    assert len(recorder.calls) > 1
    assert all(rows * kept * vocab <= budget for rows, _, kept in recorder.calls)
    for a_row, b_row in zip(unbounded, bounded, strict=True):
        for (a_nll, a_n), (b_nll, b_n) in zip(a_row, b_row, strict=True):
            assert a_n == b_n and a_nll == pytest.approx(b_nll, rel=1e-4)
