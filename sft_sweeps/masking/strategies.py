"""The masking strategies, by name: how each weighs assistant turns and everything else.

A strategy is a function of the masking config returning a `StrategyWeights`: the factor of each
assistant turn (by its index and the last turn's) and the weight of every other token (system, user and
tool text, headers, template text). Parameters shared by every strategy apply on top: per-role prompt
weights (`masking.system_weight`, `user_weight`, `tool_result_weight`) and a factor on tool-call tokens
(`masking.tool_call_weight`). `sft_sweeps.masking.weights.message_factors` applies it; per-message
weights from the data (`weight`/`train` fields) multiply in there, for every strategy.

Adding a strategy is this registry entry and its YAML, nothing else. For example, supervising only the
first assistant turn (as some instruction-following recipes do):

    @strategy("first")
    def first(masking):
        return StrategyWeights(turn=lambda t, last: float(t == 0), prompt=0.0)

and `conf/masking/first.yaml`:

    defaults:
      - masking_schema
      - _self_
    name: first

then `python -m sft_sweeps -m masking=full,last,all,weighted,first`. A parameter of its own goes into
`MaskingConfig` with `masking_param(..., used_by=("first",))`, which gives it a label and its validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sft_sweeps.config import MaskingConfig


@dataclass(frozen=True)
class StrategyWeights:
    """How a strategy weighs one conversation.

    Attributes:
        turn: factor of assistant turn `t` (0-based) when the conversation's last assistant turn is `last`.
            Every assistant message is a turn, a message that only calls tools included.
        prompt: weight of every token the assistant does not write (the per-role `masking.system_weight`,
            `user_weight`, `tool_result_weight` replace it for their role when set).
        last_round: only the assistant messages after the last user message (the final round of tool calls
            and the answer) get their `turn` factor; earlier ones get 0.
    """

    turn: Callable[[int, int], float]
    prompt: float
    last_round: bool = False


STRATEGIES: dict[str, Callable[[MaskingConfig], StrategyWeights]] = {}


def strategy_names() -> tuple[str, ...]:
    """The registered strategies: the values `masking.name` takes."""
    return tuple(STRATEGIES)


def check_strategy(name: str) -> None:
    """Raise ConfigError naming `masking.name` when `name` is no registered strategy."""
    from sft_sweeps.config import ConfigError

    if name not in STRATEGIES:
        raise ConfigError(f"masking.name must be one of {strategy_names()}, got {name!r}")


def strategy(name: str) -> Callable:
    """Register a strategy function under `name` (the value of `masking.name`)."""

    def register(
        fn: Callable[[MaskingConfig], StrategyWeights],
    ) -> Callable[[MaskingConfig], StrategyWeights]:
        STRATEGIES[name] = fn
        return fn

    return register


@strategy("full")
def full(masking: MaskingConfig) -> StrategyWeights:
    """Every token: system, user, template scaffolding and assistant (TRL's default)."""
    return StrategyWeights(turn=lambda t, last: 1.0, prompt=1.0)


@strategy("last")
def last(masking: MaskingConfig) -> StrategyWeights:
    """The last assistant message only (LLaMA-Factory's `mask_history`, open-instruct's last turn): in an
    agent trajectory the final answer, every tool call before it masked."""
    return StrategyWeights(turn=lambda t, last_turn: float(t == last_turn), prompt=0.0)


@strategy("last_round")
def last_round(masking: MaskingConfig) -> StrategyWeights:
    """Every assistant message after the last user message: the final tool calls and the answer (ms-swift)."""
    return StrategyWeights(turn=lambda t, last: 1.0, prompt=0.0, last_round=True)


@strategy("all")
def all_turns(masking: MaskingConfig) -> StrategyWeights:
    """Every assistant message (TRL's `assistant_only_loss`)."""
    return StrategyWeights(turn=lambda t, last: 1.0, prompt=0.0)


@strategy("weighted")
def weighted(masking: MaskingConfig) -> StrategyWeights:
    """Assistant turns at 1 (or `turn_decay ** turns-after-it`), everything else at `prompt_weight`."""
    if masking.turn_schedule == "decay":
        return StrategyWeights(
            turn=lambda t, last: masking.turn_decay ** (last - t), prompt=masking.prompt_weight
        )
    return StrategyWeights(turn=lambda t, last: 1.0, prompt=masking.prompt_weight)
