"""Held-out NLL of each assistant turn's tokens (its content and end-of-turn token), teacher-forced.

A turn's tokens are found by rendering the history before it with the generation prompt (the same ids the
turn's generation starts from): they begin where that prefix ends and run to the first end-of-turn token.

Memory is bounded by the window (the training `max_length`, or the model's context if shorter), not by
the longest held-out conversation: a conversation that fits is scored in one forward pass; one that does
not is scored turn by turn, each turn in the `window` tokens that end with it. Tokens of a turn longer
than the window that fall before it are not scored and are counted (`cut_tokens`), as are turns whose
history was cut (`windowed`).

The logits are bounded too: a forward pass takes at most `eval.batch_size` rows, and fewer when rows x width
x vocabulary would pass `MAX_LOGITS` (a 150k-token vocabulary at width 2048 is 311M logits per row: a batch
of 32 would need 20 GB in bf16), down to one row; only the rows' span logits are cast to float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from sft_sweeps.evaluation.generation import pad_rows

# Logits one NLL forward pass may hold (2**27 = 512 MiB in float32), unless a single row needs more.
MAX_LOGITS = 2**27


@dataclass
class TurnSpan:
    """Tokens `[start, end)` of one assistant turn in a conversation's ids."""

    start: int
    end: int


def assistant_spans(
    conversation_ids: list[int], turn_prompts: list[list[int]], stops: list[int], record_id: str
) -> list[TurnSpan]:
    """Locate every assistant turn in a conversation's token ids.

    Args:
        conversation_ids: the whole conversation rendered by the chat template and tokenized.
        turn_prompts: for each assistant turn, the ids of the history before it plus the generation prompt.
        stops: end-of-turn token ids; each span ends with (and includes) the first one after its start.
        record_id: named in errors.

    Raises:
        ValueError: the chat template does not render a history as a prefix of the longer conversation
            (some templates drop earlier reasoning), or a turn has no end-of-turn token.
    """
    spans = []
    for turn, prompt in enumerate(turn_prompts, start=1):
        start = len(prompt)
        if conversation_ids[:start] != prompt:
            raise ValueError(
                f"record {record_id!r}, assistant turn {turn}: the chat template does not render the history "
                "as a prefix of the whole conversation, so the turn's tokens cannot be located"
            )
        end = next((i + 1 for i in range(start, len(conversation_ids)) if conversation_ids[i] in stops), None)
        if end is None:
            raise ValueError(
                f"record {record_id!r}, assistant turn {turn}: no end-of-turn token after the turn"
            )
        spans.append(TurnSpan(start, end))
    return spans


@dataclass
class TurnNLL:
    """NLL of one assistant turn: summed nats over `num_tokens` scored tokens."""

    nll_sum: float
    num_tokens: int
    cut_tokens: int  # tokens of the turn before the window's second token: not scored
    windowed: bool  # scored in a window that does not start at the conversation's start


def windowed_turn_nlls(
    model: PreTrainedModel,
    conversations: list[list[int]],
    spans: list[list[TurnSpan]],
    pad_id: int,
    batch_size: int,
    window: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[TurnNLL]]:
    """`turn_nlls` with every forward pass at most `window` tokens long.

    Args:
        conversations, spans, pad_id, batch_size: as for `turn_nlls`.
        window: the longest row fed to the model (>= 2).
        on_batch: called with the number of conversations finished after each batch.

    Returns:
        One `TurnNLL` per span, per conversation.
    """
    if window < 2:
        raise ValueError(f"the NLL window must be at least 2 tokens, got {window}")
    rows: list[list[int]] = []
    row_spans: list[list[TurnSpan]] = []
    owner: list[tuple[int, list[int], list[int], bool]] = []  # conversation, turn indices, cuts, windowed
    for ci, (ids, conv_spans) in enumerate(zip(conversations, spans, strict=True)):
        if len(ids) <= window:
            rows.append(ids)
            row_spans.append(conv_spans)
            owner.append((ci, list(range(len(conv_spans))), [0] * len(conv_spans), False))
            continue
        for t, span in enumerate(conv_spans):
            begin = max(0, span.end - window)
            first = max(span.start, begin + 1)  # the window's first token has no context to predict it
            rows.append(ids[begin : span.end])
            row_spans.append([TurnSpan(first - begin, span.end - begin)])
            owner.append((ci, [t], [first - span.start], begin > 0))
    sums = turn_nlls(model, rows, row_spans, pad_id, batch_size)
    results: list[list[TurnNLL | None]] = [[None] * len(s) for s in spans]
    for (ci, turns, cuts, windowed), row in zip(owner, sums, strict=True):
        for t, cut, (nll_sum, count) in zip(turns, cuts, row, strict=True):
            results[ci][t] = TurnNLL(nll_sum, count, cut, windowed)
    if on_batch is not None:
        on_batch(len(conversations))
    return results  # type: ignore[return-value]


@torch.no_grad()
def turn_nlls(
    model: PreTrainedModel,
    conversations: list[list[int]],
    spans: list[list[TurnSpan]],
    pad_id: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    max_logits: int = MAX_LOGITS,
) -> list[list[tuple[float, int]]]:
    """Summed NLL (nats) and token count of every span, per conversation.

    Rows are right-padded; only the logits that predict a span's tokens are computed (`logits_to_keep`),
    and a batch holds at most `max_logits` of them (`logit_batches`), so memory stays bounded for large
    vocabularies.
    """
    results: list[list[tuple[float, int]]] = [[] for _ in conversations]
    vocab = _vocab_size(model)
    for batch in logit_batches(conversations, spans, batch_size, vocab, max_logits):
        input_ids, attention_mask = pad_rows([conversations[i] for i in batch], pad_id, side="right")
        # Position p's logits predict token p + 1.
        positions = sorted({p - 1 for i in batch for span in spans[i] for p in range(span.start, span.end)})
        keep = torch.tensor(positions, dtype=torch.long, device=model.device)
        logits = model(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            logits_to_keep=keep,
        ).logits
        column = {p: c for c, p in enumerate(positions)}
        for row, i in enumerate(batch):
            for span in spans[i]:
                cols = torch.tensor(
                    [column[p - 1] for p in range(span.start, span.end)], device=logits.device
                )
                targets = input_ids[row, span.start : span.end].to(logits.device)
                nll = torch.nn.functional.cross_entropy(logits[row, cols].float(), targets, reduction="sum")
                results[i].append((float(nll), span.end - span.start))
        if on_batch is not None:
            on_batch(len(batch))
    return results


def _vocab_size(model: PreTrainedModel) -> int:
    """Rows of the output layer (the logits per position); 0 when the model does not say (no logit cap)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)


def logit_batches(
    conversations: list[list[int]], spans: list[list[TurnSpan]], batch_size: int, vocab: int, max_logits: int
) -> list[list[int]]:
    """Indices of the rows of each forward pass: sorted by length, at most `batch_size` per pass, and
    no more than fit `max_logits` logits (rows x kept positions x `vocab`); a row alone always fits.

    Example:
        >>> rows, spans = [[1] * 4, [1] * 6, [1] * 8], [[TurnSpan(1, 4)], [TurnSpan(1, 6)], [TurnSpan(1, 8)]]
        >>> logit_batches(rows, spans, batch_size=8, vocab=10, max_logits=120)
        [[0, 1], [2]]
    """
    order = sorted(range(len(conversations)), key=lambda i: len(conversations[i]))
    batches: list[list[int]] = []
    batch: list[int] = []
    positions: set[int] = set()
    for i in order:
        row_positions = {p - 1 for span in spans[i] for p in range(span.start, span.end)}
        wider = positions | row_positions
        if batch and (len(batch) == batch_size or (len(batch) + 1) * len(wider) * vocab > max_logits):
            batches.append(batch)
            batch, wider = [], row_positions
        batch.append(i)
        positions = wider
    if batch:
        batches.append(batch)
    return batches
