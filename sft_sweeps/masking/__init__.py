"""The masking engine: per-token loss weights for multi-turn chat SFT, from any chat template.

A conversation is rendered with the tokenizer's chat template (with its `tools`) and tokenized once; every
token learns its message, role, assistant turn and kind (template scaffolding, message content, assistant
text including the end-of-turn token, or the text of the assistant's tool calls); with the role, a prompt
token is system, user or tool-result text. Strategies then only compute weights from those labels, so a
sweep over strategies tokenizes once (`build_dataset` caches the tokenization on disk).

Public surface:
    loss_weights: `(input_ids, weights)` of one conversation under one strategy.
    build_dataset: a training dataset of `input_ids` and `weights`, with counts (`MaskingStats`).
    annotate: the per-token labels themselves (for inspection and tests).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from sft_sweeps.config import MaskingConfig
from sft_sweeps.data.validate import ROLES, ConversationError, check_messages
from sft_sweeps.masking.dataset import MaskingStats, build_dataset, tokenizer_fingerprint
from sft_sweeps.masking.render import TemplateError
from sft_sweeps.masking.sample import Annotator, Conversation
from sft_sweeps.masking.strategies import check_strategy
from sft_sweeps.masking.tokens import ASSISTANT, CONTENT, KIND_NAMES, SCAFFOLD, TOOL_CALL
from sft_sweeps.masking.weights import (
    MessageWeightError,
    assistant_turns,
    message_factors,
    message_weights,
    token_weights,
)

__all__ = [
    "ASSISTANT",
    "CONTENT",
    "KIND_NAMES",
    "ROLES",
    "SCAFFOLD",
    "Annotator",
    "Conversation",
    "ConversationError",
    "MaskingStats",
    "MessageWeightError",
    "TOOL_CALL",
    "TemplateError",
    "annotate",
    "assistant_turns",
    "build_dataset",
    "check_messages",
    "loss_weights",
    "masking_config",
    "sample_weights",
    "tokenizer_fingerprint",
]

_WEIGHT_PARAMS = {f.name for f in fields(MaskingConfig)} - {"name", "expand_turns"}


def masking_config(strategy: str, **params: Any) -> MaskingConfig:
    """A validated MaskingConfig from a strategy name and its weight parameters.

    Raises:
        TypeError: a parameter is not a weight parameter of MaskingConfig.
        ConfigError: a value is out of range, or `strategy` is no registered strategy.
    """
    check_strategy(str(strategy))
    unknown = set(params) - _WEIGHT_PARAMS
    if unknown:
        raise TypeError(
            f"unknown masking parameters {sorted(unknown)}; expected some of {sorted(_WEIGHT_PARAMS)}"
        )
    return MaskingConfig(name=str(strategy), **params)


def annotate(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    tools: list[dict] | None = None,
    use_markers: bool | None = None,
) -> Conversation:
    """Render and tokenize one conversation, labelling every token with its message and kind.

    Args:
        tokenizer: a fast tokenizer with a chat template.
        messages: `[{"role", "content", ...}]`, roles system, user, assistant, tool.
        tools: tool schemas passed to the template.
        use_markers: take assistant spans from `{% generation %}` blocks; None uses them when present.
    """
    return Annotator(tokenizer, use_markers).annotate(messages, tools)


def sample_weights(
    conversation: Conversation, messages: list[dict[str, Any]], masking: MaskingConfig
) -> list[float]:
    """Per-token weights of an annotated conversation (or per-turn sample of `messages`) under `masking`.

    See `loss_weights` for what each strategy weighs.
    """
    weights = message_weights(messages, masking.message_weight_field)
    assistant, other = message_factors([m["role"] for m in messages], weights, masking)
    tokens = conversation.tokens
    return token_weights(
        tokens.message,
        tokens.kind,
        assistant,
        other,
        conversation.target,
        np.float64,
        tool_call_weight=masking.tool_call_weight,
    ).tolist()


def loss_weights(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    strategy: str,
    *,
    tools: list[dict] | None = None,
    **params: Any,
) -> tuple[list[int], list[float]]:
    """Token ids of a conversation and the loss weight of each token under `strategy`.

    The weight of token t weighs the loss of predicting token t (the trainer shifts labels as usual).
    With `w(m)` the weight of message m (its `message_weight_field`, default `weight`: a number >= 0, or a
    bool; 1 when absent; times 0 when the message says `train: false`, Axolotl's exclusion) and "assistant
    text" meaning the content of an assistant message, the text of its tool calls and its end-of-turn
    token (not its header):

    - `full`: every token of message m weighs `w(m)`, tool results included; template text outside every
      message weighs 1.
    - `all`: assistant text of message m weighs `w(m)`; everything else 0.
    - `last`: like `all`, for the last assistant message only (in an agent trajectory: the final answer).
    - `last_round`: like `all`, for the assistant messages after the last user message (the final round of
      tool calls and the answer).
    - `weighted`: assistant text weighs `schedule(turn) * w(m)`, where the schedule is 1 (`constant`) or
      `turn_decay ** (turns after this one)` (`decay`); every other token of message m (system, user and
      tool text, and all headers) weighs `prompt_weight * w(m)`.

    On top of any strategy: tool-call tokens are multiplied by `tool_call_weight` (default 1), and
    `system_weight`, `user_weight`, `tool_result_weight` (default null) replace the strategy's prompt weight
    for every token of the messages of that role.

    So a message with `train: false` or `weight: 0` is never supervised, under any strategy (as in Axolotl).

    Args:
        tokenizer: a fast tokenizer with a chat template.
        messages: `[{"role", "content", ...}]`, roles system, user, assistant, tool.
        strategy: `full`, `last`, `last_round`, `all` or `weighted`.
        tools: tool schemas passed to the chat template.
        **params: MaskingConfig's weight fields: `prompt_weight`, `turn_schedule`, `turn_decay`,
            `message_weight_field`, `tool_call_weight`, `system_weight`, `user_weight`, `tool_result_weight`.

    Returns:
        `(input_ids, weights)`, equal lengths.

    Raises:
        TypeError: unknown parameter. ConfigError: a parameter is out of range.
        ConversationError, MessageWeightError, TemplateError: see `build_dataset`.

    Example:
        >>> from sft_sweeps.tokenizer import build_embedded_tokenizer
        >>> msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        >>> ids, w = loss_weights(build_embedded_tokenizer(), msgs, "weighted", prompt_weight=0.5)
        >>> w  # <|im_start|> user \\n h i <|im_end|> \\n <|im_start|> assistant \\n | y o <|im_end|> | \\n
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 0.5]
    """
    masking = masking_config(strategy, **params)
    conversation = annotate(tokenizer, messages, tools)
    return conversation.tokens.input_ids.tolist(), sample_weights(conversation, messages, masking)
