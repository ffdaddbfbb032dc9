"""Held-out NLL of each assistant turn's tokens (its content and end-of-turn token), teacher-forced.

One forward pass per conversation over its whole rendering. A turn's tokens are found by rendering the
history before it with the generation prompt (the same ids the turn's generation starts from): they begin
where that prefix ends and run to the first end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from sft_sweeps.evaluation.generation import pad_rows


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


@torch.no_grad()
def turn_nlls(
    model: PreTrainedModel,
    conversations: list[list[int]],
    spans: list[list[TurnSpan]],
    pad_id: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[tuple[float, int]]]:
    """Summed NLL (nats) and token count of every span, per conversation.

    Rows are right-padded; only the logits that predict a span's tokens are computed (`logits_to_keep`),
    which keeps memory small for large vocabularies.
    """
    results: list[list[tuple[float, int]]] = [[] for _ in conversations]
    order = sorted(range(len(conversations)), key=lambda i: len(conversations[i]))
    for begin in range(0, len(order), batch_size):
        batch = order[begin : begin + batch_size]
        input_ids, attention_mask = pad_rows([conversations[i] for i in batch], pad_id, side="right")
        # Position p's logits predict token p + 1.
        positions = sorted({p - 1 for i in batch for span in spans[i] for p in range(span.start, span.end)})
        keep = torch.tensor(positions, dtype=torch.long, device=model.device)
        logits = model(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            logits_to_keep=keep,
        ).logits.float()
        column = {p: c for c, p in enumerate(positions)}
        for row, i in enumerate(batch):
            for span in spans[i]:
                cols = torch.tensor(
                    [column[p - 1] for p in range(span.start, span.end)], device=logits.device
                )
                targets = input_ids[row, span.start : span.end].to(logits.device)
                nll = torch.nn.functional.cross_entropy(logits[row, cols], targets, reduction="sum")
                results[i].append((float(nll), span.end - span.start))
        if on_batch is not None:
            on_batch(len(batch))
    return results
