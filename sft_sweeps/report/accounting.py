"""What each strategy trained on: the masking statistics of the runs (`data.masking` in result.json), per
setting and strategy, and a warning when strategies trained on sets of conversations that differ.

Strategies are compared as if only the mask differed; that holds only when they trained on the same
conversations. Truncation can break it (`train.truncation_mode=keep_start` cuts the final turn, which `last`
needs: its sample then supervises nothing and is dropped), and so can a strategy that leaves a conversation
nothing to supervise. The report and the sweep table say so, naming the cause.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from sft_sweeps.report.analysis import Run

# Strategies whose conversations trained on differ by more than this fraction of the most: a warning.
TOLERANCE = 0.02
COLUMNS = (
    "conversations",
    "conversations_kept",
    "dropped_zero_weight",
    "truncated",
    "truncated_turns",
    "truncated_tokens",
    "supervised_tokens",
    "weight_sum",
)


def accounting(runs: list[Run]) -> dict[str, dict[str, dict[str, Any]]]:
    """setting -> strategy -> the masking statistics of its first done run (every seed of a strategy
    prepares the same data), with the truncation mode it ran with."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: (r.setting, r.strategy_key, r.seed)):
        stats = ((run.record.data or {}).get("masking") or {}) if run.status == "done" else {}
        if not stats or run.strategy in out.get(run.setting, {}):
            continue
        kept = stats.get("conversations_kept", stats.get("kept"))  # records before the field: samples
        mode = ((run.record.config.get("train") or {}).get("truncation_mode")) or "keep_start"
        out.setdefault(run.setting, {})[run.strategy] = {
            **{k: stats.get(k) for k in COLUMNS},
            "conversations_kept": kept,
            "truncation_mode": mode,
        }
    return out


def warnings(runs: list[Run]) -> list[str]:
    """One line per setting whose strategies trained on sets of conversations differing by more than
    `TOLERANCE`, with the counts and the cause."""
    lines = []
    for setting, by_strategy in accounting(runs).items():
        kept = {
            s: v["conversations_kept"] for s, v in by_strategy.items() if v["conversations_kept"] is not None
        }
        if len(kept) < 2 or max(kept.values()) - min(kept.values()) <= TOLERANCE * max(kept.values()):
            continue
        counts = ", ".join(f"{s} {n}" for s, n in kept.items())
        fewest = min(kept, key=kept.get)
        stats = by_strategy[fewest]
        cause = (
            f"{stats['dropped_zero_weight']} of {fewest}'s samples had nothing left to supervise after "
            f"truncation (train.truncation_mode={stats['truncation_mode']}; `turns` keeps the final turn)"
            if stats.get("dropped_zero_weight")
            else "a strategy left some conversations nothing to supervise"
        )
        lines.append(f"{setting}: strategies trained on different conversations ({counts}): {cause}")
    return lines


def accounting_md(runs: list[Run], md_table: Any) -> str:
    """The Markdown table per setting (`md_table` renders it)."""
    parts = []
    for setting, by_strategy in accounting(runs).items():
        headers = [
            "strategy",
            "conversations",
            "trained on",
            "dropped",
            "truncated",
            "turns cut",
            "sup. tokens",
        ]
        rows = [
            [
                strategy,
                _int(v["conversations"]),
                _int(v["conversations_kept"]),
                _int(v["dropped_zero_weight"]),
                _int(v["truncated"]),
                _int(v["truncated_turns"]),
                _int(v["supervised_tokens"]),
            ]
            for strategy, v in by_strategy.items()
        ]
        parts.append(f"`{setting}` (truncation: {next(iter(by_strategy.values()))['truncation_mode']}):\n")
        parts.append(md_table(headers, rows, "lrrrrrr"))
    return "\n".join(parts)


def accounting_csv(runs: list[Run]) -> str:
    """`data.csv`: setting, strategy and every statistic."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["setting", "strategy", "truncation_mode", *COLUMNS])
    for setting, by_strategy in accounting(runs).items():
        for strategy, v in by_strategy.items():
            writer.writerow([setting, strategy, v["truncation_mode"], *(v[k] for k in COLUMNS)])
    return buffer.getvalue()


def _int(value: Any) -> str:
    return "—" if value is None else f"{int(value):,}"
