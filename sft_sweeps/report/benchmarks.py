"""The report's benchmark tables, laid out as each benchmark's own paper or tool shows its results.

* Multi-IF (`multi_if_md`): one table per language (all languages pooled first), strategies as rows and
  turns as columns, each cell Multi-IF's `overall` (the mean of prompt- and instruction-level accuracy,
  strict and loose), as the paper's tables show it.
* MT-Bench (`judge_md`): FastChat's `show_result` columns, first turn, second turn (every turn the questions
  have), the average over all graded turns, then the average per question category; and how many grades are
  missing (judge requests that failed: a rerun asks again; judgments without a grade).

Cells: with one seed, the value and its 95% bootstrap interval over items where the record has one
(`[low, high]`, Multi-IF's); with several, mean ± 95% CI over seeds, as everywhere in the report.
"""

from __future__ import annotations

import re

from sft_sweeps.metrics import MULTI_IF_CELL, fmt
from sft_sweeps.report.analysis import SettingReport
from sft_sweeps.report.cells import fmt_ci, md_table
from sft_sweeps.report.stats import MeanCI

ALL_LANGUAGES = "all_languages"
_ORDINALS = ("First", "Second", "Third", "Fourth", "Fifth")


def _cell(setting: SettingReport, key: str, strategy: str) -> str:
    value = setting.summary.get(key, {}).get(strategy)
    if value is None:
        return "—"
    if value.half_width is None:  # one seed: the record's own bootstrap interval over items, where it has one
        low = setting.summary.get(f"{key}_ci_low", {}).get(strategy)
        high = setting.summary.get(f"{key}_ci_high", {}).get(strategy)
        if low is not None and high is not None:
            return f"{fmt(value.mean)} [{fmt(low.mean)}, {fmt(high.mean)}]"
    return fmt_ci(value)


def multi_if_md(setting: SettingReport) -> str:
    """Multi-IF as its paper reports it: per language, strategies x turns, `overall` in each cell; "" when the
    setting has no Multi-IF results."""
    cells: dict[str, dict[int, str]] = {}  # language -> turn -> key
    for key in setting.summary:
        name = key.rsplit("/", 1)[-1]
        match = MULTI_IF_CELL.fullmatch(name)
        if key.startswith("multi_if/") and match and match.group(3) == "overall" and match.group(4) is None:
            cells.setdefault(match.group(2), {})[int(match.group(1))] = key
    if not cells:
        return ""
    languages = sorted(cells, key=lambda lang: (lang != ALL_LANGUAGES, lang))
    out = [
        "Multi-IF's `overall` (mean of prompt- and instruction-level accuracy, strict and loose) per turn, "
        "as the paper's tables show it; the headline is turn 3, all languages. One seed: value [95% "
        "bootstrap interval over answers]; several: mean ± 95% CI over seeds. The four rates of every cell "
        "are in result.json and W&B (`multi_if/turn_<k>_<language>_<rate>`).\n"
    ]
    for language in languages:
        turns = sorted(cells[language])
        rows = [[s, *(_cell(setting, cells[language][t], s) for t in turns)] for s in setting.strategies]
        title = "All languages" if language == ALL_LANGUAGES else language
        out.append(f"\n**{title}**\n\n" + md_table(["strategy", *(f"Turn {t}" for t in turns)], rows))
    return "".join(out)


def _sum_over_seeds(setting: SettingReport, key: str, strategy: str) -> int:
    return int(sum(setting.by_seed.get(key, {}).get(strategy, {}).values()))


def missing_grades(setting: SettingReport) -> int:
    """Judge requests that failed, over every done run of the setting (a rerun asks again)."""
    return sum(_sum_over_seeds(setting, "judge/num_request_failures", s) for s in setting.strategies)


def judge_md(setting: SettingReport) -> str:
    """MT-Bench as FastChat's `show_result` shows it, with the average per category; "" without judge runs."""
    if not any(key.startswith("judge/") for key in setting.summary):
        return ""
    depth = setting.by_depth.get("judge/mean_grade", {})
    turns = sorted({t for per_strategy in depth.values() for t in per_strategy})
    categories = sorted(
        m.group(1) for key in setting.summary if (m := re.fullmatch(r"judge/(.+)/mean_grade", key))
    )
    headers = [
        "strategy",
        *(f"{_ORDINALS[t - 1] if t <= len(_ORDINALS) else f'Turn {t}'} turn" for t in turns),
        "Average",
        *categories,
        "missing grades",
    ]
    rows = []
    for s in setting.strategies:
        by_turn: dict[int, MeanCI] = depth.get(s, {})
        failed = _sum_over_seeds(setting, "judge/num_request_failures", s)
        unparsed = _sum_over_seeds(setting, "judge/num_parse_failures", s)
        rows.append(
            [
                s,
                *(fmt_ci(by_turn.get(t)) for t in turns),
                fmt_ci(setting.summary.get("judge/mean_grade", {}).get(s)),
                *(fmt_ci(setting.summary.get(f"judge/{c}/mean_grade", {}).get(s)) for c in categories),
                f"{failed} failed requests, {unparsed} without a grade" if failed or unparsed else "0",
            ]
        )
    text = (
        "MT-Bench single grading (1-10), as FastChat's `show_result` prints it: per turn, the average over "
        "all graded turns, then per question category; mean ± 95% CI over seeds. Only grades are "
        "averaged.\n\n" + md_table(headers, rows, "l" + "r" * (len(headers) - 1))
    )
    missing = missing_grades(setting)
    if missing:
        text += (
            f"\n**{missing} grades missing**: judge requests that failed (per item in `eval_items.judge`, "
            "`judge_error`); rerunning the sweep asks the judge again for exactly these, without training.\n"
        )
    return text


def benchmark_sections_md(setting: SettingReport) -> str:
    """The benchmark tables of one setting (Multi-IF, MT-Bench), each under its heading; "" when none."""
    parts = []
    if text := multi_if_md(setting):
        parts.append("### Multi-IF (as the paper reports it)\n\n" + text)
    if text := judge_md(setting):
        parts.append("### MT-Bench judge (as FastChat shows it)\n\n" + text)
    return "\n".join(parts)


def no_metric_md(setting: SettingReport) -> str:
    """What a setting without a comparable metric says: no run done, or runs done whose grades are missing."""
    done = sum(len(seeds) for seeds in setting.seeds.values())
    if not done:
        return "No completed run: nothing to summarize.\n"
    text = f"{done} run(s) done, but no metric to compare"
    missing = missing_grades(setting)
    if missing:
        text += f": {missing} judge grades missing (failed requests; rerunning the sweep asks again)"
    return text + ".\n\n" + benchmark_sections_md(setting)
