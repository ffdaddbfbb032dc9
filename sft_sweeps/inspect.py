"""`python -m sft_sweeps.inspect`: see what a strategy trains on, token by token, before training.

Takes the same Hydra overrides as training. Shows the first `inspect.num_samples` conversations of
`inspect.split`, each token coloured by its loss weight under the configured strategy, with the number of
supervised tokens under every strategy. Tool calls (on a blue background) and tool results (on grey) stand
out, and each sample says how many of their tokens are supervised, so the difference shows in a log file
too. `inspect.format=json` prints, per sample, tokens, ids, roles, turns, kinds, parts and weights instead.

    python -m sft_sweeps.inspect masking=weighted masking.prompt_weight=0.1
    python -m sft_sweeps.inspect masking=last inspect.format=json inspect.num_samples=1 | jq '.[0].weights'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from rich.console import Console
from rich.text import Text

from sft_sweeps.cli import errors_reported
from sft_sweeps.config import Config, MaskingConfig, register_configs, validate
from sft_sweeps.masking import (
    ASSISTANT,
    KIND_NAMES,
    TOOL_CALL,
    Annotator,
    Conversation,
    assistant_turns,
    sample_weights,
)
from sft_sweeps.masking.strategies import check_strategy, strategy_names

# What each token is, for the reader: assistant output (text or tool call), or the prompt part it lies in.
PARTS = ("assistant_text", "tool_call", "system", "user", "tool_result", "assistant_header", "template")
_ROLE_PARTS = {"system": "system", "user": "user", "tool": "tool_result", "assistant": "assistant_header"}
_PART_BACKGROUND = {"tool_call": " on dark_blue", "tool_result": " on grey23"}

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _style(weight: float) -> str:
    # Unsupervised text is dim; supervised goes from yellow (small weight) to green (1); above 1 is magenta.
    if weight <= 0:
        return "grey50"
    if weight > 1:
        return "bold magenta"
    if weight >= 1:
        return "bold green"
    return "yellow" if weight < 0.5 else "green"


def token_parts(conversation: Conversation) -> list[str]:
    """Each token's part (`PARTS`): assistant text, tool call, or the role of the prompt message it is in."""
    out = []
    for message, kind in zip(
        conversation.tokens.message.tolist(), conversation.tokens.kind.tolist(), strict=True
    ):
        if kind == TOOL_CALL:
            out.append("tool_call")
        elif kind >= ASSISTANT:
            out.append("assistant_text")
        else:
            out.append(_ROLE_PARTS[conversation.roles[message]] if message >= 0 else "template")
    return out


def _token_texts(conversation: Conversation) -> list[str]:
    # A character split over several byte tokens is shown once, on its first token.
    text, out, previous = conversation.layout.text, [], None
    for start, end in conversation.tokens.offsets.tolist():
        out.append("" if (start, end) == previous else text[start:end])
        previous = (start, end)
    return out


def sample_record(
    conversation: Conversation, messages: list[dict[str, Any]], masking: MaskingConfig, tokenizer, name: str
) -> dict[str, Any]:
    """One sample as plain data: per-token text, ids, message, role, turn, kind and weight, plus counts."""
    tokens = conversation.tokens
    turns = assistant_turns(conversation.roles)
    messages_of = tokens.message.tolist()
    weights = sample_weights(conversation, messages, masking)
    supervised = {}
    for strategy in strategy_names():
        other = masking.for_strategy(strategy)
        supervised[strategy] = sum(w > 0 for w in sample_weights(conversation, messages, other))
    parts = token_parts(conversation)
    by_part = {
        part: {
            "tokens": sum(p == part for p in parts),
            "supervised": sum(p == part and w > 0 for p, w in zip(parts, weights, strict=True)),
        }
        for part in PARTS
        if part in parts
    }
    return {
        "id": name,
        "strategy": masking.name,
        "text": _token_texts(conversation),
        "tokens": tokenizer.convert_ids_to_tokens(tokens.input_ids.tolist()),
        "ids": tokens.input_ids.tolist(),
        "messages": messages_of,
        "roles": [conversation.roles[m] if m >= 0 else None for m in messages_of],
        "turns": [turns[m] if m >= 0 and turns[m] >= 0 else None for m in messages_of],
        "kinds": [KIND_NAMES[k] for k in tokens.kind.tolist()],
        "parts": parts,
        "weights": weights,
        "by_part": by_part,
        "supervised_tokens": supervised,
        "weight_sum": round(sum(weights), 6),
    }


def collect(settings: Config) -> list[dict[str, Any]]:
    """The samples `inspect` shows, as `sample_record`s (per-turn samples too when `expand_turns`)."""
    from sft_sweeps.data import load_splits
    from sft_sweeps.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(settings.model.tokenizer, settings.model.trust_remote_code)
    splits = load_splits(settings.dataset)
    records = getattr(splits, settings.inspect.split, None)
    if records is None:
        raise ValueError(f"inspect.split must be train, validation or test, got {settings.inspect.split!r}")
    annotator = Annotator(tokenizer)
    out = []
    for i, record in enumerate(records[: settings.inspect.num_samples]):
        name = str(record.get("id", i))
        samples = annotator.samples(
            record["messages"],
            record.get("tools"),
            expand=settings.masking.expand_turns,
            where=f"conversation {name!r}",
        )
        if settings.masking.expand_turns:
            samples = samples[1:]
        for sample in samples:
            label = name if sample.target is None else f"{name}@{sample.target}"
            shown = sample_record(sample, record["messages"], settings.masking, tokenizer, label)
            turn = [w for w, m in zip(shown["weights"], shown["messages"], strict=True) if m == sample.target]
            if sample.target is not None and not any(turn):
                continue  # as in training: a turn the strategy does not supervise makes no sample
            out.append(shown)
    return out


def show(samples: list[dict[str, Any]], console: Console) -> None:
    """Print samples with rich: every token coloured by its weight, then the per-strategy counts."""
    if console.color_system is None:
        console.print("weights: ⟦w=<weight>: supervised text⟧, the rest unsupervised", highlight=False)
    else:
        console.print(
            Text.assemble(
                "weights: ",
                ("0 ", _style(0)),
                ("<0.5 ", _style(0.1)),
                ("<1 ", _style(0.7)),
                ("1 ", _style(1)),
                (">1", _style(2)),
                "; ",
                ("tool call", "on dark_blue"),
                " ",
                ("tool result", "on grey23"),
            )
        )
    for sample in samples:
        counts = ", ".join(f"{k}={v}" for k, v in sample["supervised_tokens"].items())
        console.rule(f"{sample['id']} ({sample['strategy']})")
        console.print(
            f"{len(sample['ids'])} tokens, weight sum {sample['weight_sum']:g}; supervised tokens by "
            f"strategy: {counts}",
            highlight=False,
        )
        tools = {p: c for p, c in sample["by_part"].items() if p in _PART_BACKGROUND}
        if tools:  # in words too: a log file has no colours
            console.print(
                "; ".join(
                    f"{p}: {c['supervised']}/{c['tokens']} tokens supervised" for p, c in tools.items()
                ),
                highlight=False,
            )
        if console.color_system is None:  # not a terminal (a pipe, a log file): weights in brackets
            console.print(plain_weights(sample), highlight=False, markup=False, soft_wrap=True)
            continue
        line = Text()
        for piece, weight, kind, part in zip(
            sample["text"], sample["weights"], sample["kinds"], sample["parts"], strict=True
        ):
            style = _style(weight) + (" underline" if kind == "scaffold" and weight > 0 else "")
            line.append(piece.replace("\n", "↵\n"), style=style + _PART_BACKGROUND.get(part, ""))
        console.print(line)


def plain_weights(sample: dict[str, Any]) -> str:
    """A sample's text with its weights in words: every run of supervised tokens of one weight inside
    `⟦w=<weight>: ...⟧`, unsupervised text as it is (no colour needed: pipes, log files).

    Example:
        >>> plain_weights({"text": ["a", "b", "c"], "weights": [0.0, 1.0, 1.0]})
        'a⟦w=1: bc⟧'
    """
    out, current = [], None
    for piece, weight in zip(sample["text"], sample["weights"], strict=True):
        if weight != current:
            if current:
                out.append("⟧")
            if weight > 0:
                out.append(f"⟦w={weight:g}: ")
            current = weight
        out.append(piece)
    if current:
        out.append("⟧")
    return "".join(out)


def run(cfg: DictConfig, console: Console | None = None) -> list[dict[str, Any]]:
    """Inspect a composed config: print rich or JSON (per `inspect.format`) and return the samples."""
    settings = validate(cfg)
    check_strategy(settings.masking.name)
    samples = collect(settings)
    if settings.inspect.format == "json":
        print(json.dumps(samples, ensure_ascii=False))
    else:
        show(samples, console or Console())
    return samples


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Compose `conf/config.yaml` with command-line overrides (as training does) and inspect it."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=list(sys.argv[1:] if argv is None else argv))
    return run(cfg)


if __name__ == "__main__":
    # Bad overrides, paths, data or template: one line saying which.
    with errors_reported(HydraException, ValueError, FileNotFoundError):
        main()
