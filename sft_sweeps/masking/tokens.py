"""From character layouts to per-token labels: which message each token belongs to, and what it is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from sft_sweeps.masking.spans import Layout

# What a token is. The assistant's end-of-turn token is ASSISTANT: the model must learn to stop. TOOL_CALL is
# assistant output too (the text of its `tool_calls`); every kind >= ASSISTANT is written by the assistant.
# Which prompt a SCAFFOLD or CONTENT token belongs to (system, user, tool result) is its message's role.
SCAFFOLD, CONTENT, ASSISTANT, TOOL_CALL = 0, 1, 2, 3
KIND_NAMES = ("scaffold", "content", "assistant", "tool_call")


@dataclass
class Annotated:
    """One tokenized sample: ids and, per token, its message index (-1: none), kind and character offsets."""

    input_ids: np.ndarray  # int64
    message: np.ndarray  # int32
    kind: np.ndarray  # int8: SCAFFOLD, CONTENT, ASSISTANT or TOOL_CALL
    offsets: np.ndarray  # int64, shape (tokens, 2): the token's characters in the layout's text


def special_strings(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """The tokenizer's special tokens as strings, longest first (for greedy matching)."""
    found = set(tokenizer.all_special_tokens)
    found.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    """Character offsets come from fast (Rust) tokenizers only."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; masking needs character offsets "
            "(load it with AutoTokenizer.from_pretrained(..., use_fast=True))"
        )


def label_tokens(offsets: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Per-token message index and kind from the tokens' character offsets.

    A token belongs to the message whose segment holds its first character. A token that overlaps a
    message's content is CONTENT, and one that overlaps an assistant span is ASSISTANT; both as
    `return_assistant_tokens_mask` does (from the token holding the span's first character to the one
    holding its last); one that overlaps the text of the assistant's tool calls is TOOL_CALL.
    """
    starts, ends = offsets[:, 0], offsets[:, 1]
    message = (np.searchsorted(np.asarray(layout.starts), starts, side="right") - 1).astype(np.int32)
    kind = np.zeros(len(offsets), dtype=np.int8)

    def mark(a: int, b: int, k: int, value: int) -> None:
        if a >= b:
            return
        lo = int(np.searchsorted(ends, a, side="right"))
        hi = int(np.searchsorted(starts, b, side="left"))
        message[lo:hi] = k
        kind[lo:hi] = value

    for k, span in enumerate(layout.content):
        if span is not None:
            mark(span[0], span[1], k, CONTENT)
    for a, b, k in layout.assistant:
        mark(a, b, k, ASSISTANT)
    for a, b, k in layout.tool_calls:  # within what the template says the assistant writes
        for s, e, owner in layout.assistant:
            if owner == k:
                mark(max(a, s), min(b, e), k, TOOL_CALL)
    return message, kind


def tokenize_layouts(tokenizer: PreTrainedTokenizerBase, layouts: list[Layout]) -> list[Annotated]:
    """Tokenize the layouts' texts in one batch, as `apply_chat_template` does (no added special tokens)."""
    require_fast(tokenizer)
    if not layouts:
        return []
    encoded = tokenizer(
        [layout.text for layout in layouts], add_special_tokens=False, return_offsets_mapping=True
    )
    out = []
    for layout, ids, offsets in zip(layouts, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        message, kind = label_tokens(offsets, layout)
        out.append(Annotated(np.asarray(ids, dtype=np.int64), message, kind, offsets))
    return out
