"""Per-token loss weights from per-token labels: the one weight function behind every strategy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sft_sweeps.config import MaskingConfig
from sft_sweeps.masking.strategies import STRATEGIES
from sft_sweeps.masking.tokens import ASSISTANT, TOOL_CALL

# A message with `train: false` is never supervised, whatever `masking.message_weight_field` names: data that
# says "do not train on this" (Axolotl's per-message field) must never be trained on by default.
EXCLUSION_FIELD = "train"


class MessageWeightError(ValueError):
    """A message's weight field holds something other than a bool or a finite number >= 0."""


def message_weights(
    messages: list[dict[str, Any]], field: str | None, where: str = "the conversation"
) -> np.ndarray:
    """Each message's weight: its `field` (1 without it; a bool as 0/1, else a number >= 0), times its
    `train` field when it has one (Axolotl's exclusion, honoured whatever `field` names).

    Example:
        >>> message_weights([{"role": "user"}, {"role": "assistant", "train": False}], "weight").tolist()
        [1.0, 0.0]
    """
    out = np.ones(len(messages), dtype=np.float64)
    read = [f for f in dict.fromkeys((field, EXCLUSION_FIELD)) if f is not None]
    for i, message in enumerate(messages):
        for key in read:
            value = message.get(key)
            if value is None:
                continue
            if isinstance(value, bool):
                out[i] *= float(value)
            elif isinstance(value, int | float) and math.isfinite(value) and value >= 0:
                out[i] *= float(value)
            else:
                raise MessageWeightError(
                    f"{where}, message {i}, field {key!r}: expected a bool or a number >= 0, got {value!r}"
                )
    return out


def assistant_turns(roles: list[str]) -> list[int]:
    """Assistant-turn index of each message (0 for the first assistant message), -1 for other roles."""
    turns, t = [], 0
    for role in roles:
        turns.append(t if role == "assistant" else -1)
        t += role == "assistant"
    return turns


def message_factors(
    roles: list[str], weights: np.ndarray, masking: MaskingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Weight of each message's assistant tokens and of its other tokens; index -1 is for unowned tokens.

    Returns:
        `(assistant, other)`, each of length `len(roles) + 1`: the weight of the tokens of message k that the
        assistant writes (content, tool calls before `tool_call_weight`, end-of-turn) and of the rest of
        message k (headers; system, user and tool-result text: the strategy's prompt weight, or the role's
        own weight when `masking.<role>_weight` is set). The last entry is for template text outside every
        message.
    """
    weights_of = STRATEGIES[masking.name](masking)
    n = len(roles)
    turns = assistant_turns(roles)
    last_turn = max(turns, default=-1)
    last_user = max((k for k, role in enumerate(roles) if role == "user"), default=-1)
    is_assistant = np.array([r == "assistant" for r in roles] + [False])
    schedule = np.zeros(n + 1)
    for k, t in enumerate(turns):
        if t >= 0 and not (weights_of.last_round and k < last_user):
            schedule[k] = weights_of.turn(t, last_turn)
    role_weights = {
        "system": masking.system_weight,
        "user": masking.user_weight,
        "tool": masking.tool_result_weight,
    }
    prompt = np.array(
        [
            weights_of.prompt if role_weights.get(r) is None else float(role_weights[r])  # type: ignore[arg-type]
            for r in roles
        ]
        + [weights_of.prompt]
    )
    w = np.append(weights, 1.0)
    assistant = np.where(is_assistant, schedule * w, 0.0)
    other = prompt * w
    return assistant, other


def token_weights(
    message: np.ndarray,
    kind: np.ndarray,
    assistant: np.ndarray,
    other: np.ndarray,
    target: int | None = None,
    dtype: type = np.float32,
    tool_call_weight: float = 1.0,
) -> np.ndarray:
    """Weights of one sample's tokens from their labels and `message_factors`.

    Args:
        message, kind: per-token labels (`Annotated.message`, `Annotated.kind`).
        assistant, other: `message_factors` of the whole conversation.
        target: for a per-turn sample, the one assistant message it supervises.
        dtype: float32 to store, float64 to return exact Python floats.
        tool_call_weight: factor on TOOL_CALL tokens (`masking.tool_call_weight`).
    """
    if target is not None:
        only = np.zeros_like(assistant)
        only[target] = assistant[target]
        assistant = only
    written = assistant[message] * np.where(kind == TOOL_CALL, tool_call_weight, 1.0)
    return np.where(kind >= ASSISTANT, written, other[message]).astype(dtype)
