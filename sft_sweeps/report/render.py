"""Text outputs of the report: Markdown, LaTeX (booktabs) and CSV, each a pure function of the analysis.

Tables a paper takes as they are: the main results table holds the headline metrics of the registry
(`sft_sweeps.metrics`, one or a few per benchmark) under their short names, with a legend; metrics where every
strategy ties with no variance are left out of it and listed; other metrics, per-task and per-depth
breakdowns and bookkeeping (counts, times, the training loss) go to tables of their own and to
`summary.csv` / `by_depth.csv`. Markdown tables have at most 8 columns (`tabulate`); LaTeX tables are
booktabs tabulars (pandas' `Styler.to_latex`) set at their natural width, shrunk to `\linewidth` only
when wider (a two-column page), so none overflows.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from sft_sweeps.metrics import arrow, fmt, headline_keys, lookup, lower_is_better, short_name
from sft_sweeps.report.analysis import Pick, SettingReport, SweepReport, display_source
from sft_sweeps.report.cells import fmt_ci, md_table  # noqa: F401 (used here and re-exported)
from sft_sweeps.report.records import RUN_COLUMNS
from sft_sweeps.report.stats import ALPHA, CONFIDENCE, MAX_SEEDS, PERMUTATIONS, MeanCI

METHOD = f"""\
Each cell is mean ± {CONFIDENCE:.0%} confidence interval over seeds (t-distribution, n-1 degrees of
freedom; with one seed there is no interval and the cell says n=1). Only runs with status `done` enter an
average; failed and missing runs are listed under Hygiene.

Tests compare every strategy with the best one of each metric (higher is better, except NLL and loss):
- **seeds**: paired t-test over the seeds both strategies completed (needs 2 or more pairs).
- **items**: where records hold per-item results, a paired sign-flip permutation test over evaluation items
  (a turn, or a conversation for `conversation_success`), each item averaged over the common seeds first
  ({PERMUTATIONS} seeded random flips, exact when fewer suffice; with one seed and 0/1 items it is a
  permutation form of McNemar's test). It measures the difference on these test items and does not
  account for training-seed variance; the seed test does.
- p-values are Holm-Bonferroni adjusted within each setting, metric and test (the family is the
  comparisons against the best).
- A pick is significant when the runner-up's adjusted p < {ALPHA} under the seed test, or under the item
  test when the seed test is not possible (fewer than 2 seed pairs, or differences without variance).
  Strategies tied for the best mean are all in bold, and a tie is never significant.
"""


def fmt_signed(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    text = fmt(x, digits)
    return text if text.startswith("-") else f"+{text}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# Markdown tables stay readable on a screen: at most this many metric columns beside the strategy and n.
MAX_METRIC_COLUMNS = 6


def _chunks(items: list[str], size: int = MAX_METRIC_COLUMNS) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def constant_metrics(setting: SettingReport, metrics: list[str]) -> list[str]:
    """Metrics where every strategy ties with no variance: one value on every seed of every strategy (e.g.
    a stop rate of 1.000 everywhere). They tell strategies apart by nothing, so the main table leaves them
    out and says so."""
    out = []
    for metric in metrics:
        values = [v for by_seed in setting.by_seed.get(metric, {}).values() for v in by_seed.values()]
        if len(setting.by_seed.get(metric, {})) > 1 and values and max(values) - min(values) <= 1e-12:
            out.append(metric)
    return out


@dataclass
class MetricTables:
    """The metrics of a setting, by the table they go to."""

    main: list[str]  # headline metrics of the registry that tell strategies apart
    constant: list[str]  # headline metrics where every strategy ties with no variance
    other: list[str]  # other compared metrics, over all tasks
    tasks: dict[str, dict[str, str]]  # `benchmark/metric` -> task -> key of its per-task breakdown
    bookkeeping: list[str]  # counts, times, the training loss: never compared


def metric_tables(setting: SettingReport) -> MetricTables:
    overall = [m for m in setting.eval_metrics if m.count("/") <= 1]
    heads = headline_keys(overall) or overall[:1]
    constant = constant_metrics(setting, heads)
    tasks: dict[str, dict[str, str]] = {}
    for key in setting.eval_metrics:
        parts = key.split("/")
        if len(parts) == 3:
            tasks.setdefault(f"{parts[0]}/{parts[2]}", {})[parts[1]] = key
    return MetricTables(
        main=[m for m in heads if m not in constant],
        constant=constant,
        other=[m for m in overall if m not in heads],
        tasks=tasks,
        bookkeeping=list(setting.train_metrics),
    )


def column_name(metric: str) -> str:
    """A metric's column header: its registry short name and direction (`turn EM ↑`)."""
    return f"{short_name(metric)} {arrow(metric)}"


def legend(metrics: list[str]) -> str:
    """`turn EM`: `synthetic/turn_exact_match`, per-turn exact match ...; one line per column."""
    lines = []
    for m in metrics:
        declared = lookup(m)
        about = f", {declared.description}" if declared is not None else ""
        lines.append(f"`{short_name(m)}`: `{m}`{about}")
    return ("Columns: " + "; ".join(lines) + ".\n") if lines else ""


def constant_value(setting: SettingReport, metric: str) -> float:
    """The one value of a metric of `constant_metrics`."""
    return next(iter(next(iter(setting.by_seed[metric].values())).values()))


def constant_line(setting: SettingReport, metrics: list[str]) -> str:
    """`Left out (every strategy ties, no variance): stop 1.000 (synthetic/stop_rate).`"""
    if not metrics:
        return ""
    cells = [f"`{short_name(m)}` {fmt(constant_value(setting, m))} (`{m}`)" for m in metrics]
    return f"Left out (every strategy ties on every seed, no variance): {', '.join(cells)}.\n"


def _is_best(setting: SettingReport, metric: str, strategy: str) -> bool:
    return any(p.metric == metric and strategy in p.tied for p in setting.picks)


def _best(setting: SettingReport, metric: str) -> str | None:
    return next((p.best for p in setting.picks if p.metric == metric), None)


def selection_keys(setting: SettingReport) -> list[str]:
    """The config keys selected on validation in this setting (empty without a selection)."""
    keys: list[str] = []
    for candidates in setting.candidates.values():
        for value in candidates[0].values if candidates else ():
            if (key := value.split("=", 1)[0]) not in keys:
                keys.append(key)
    return keys


def _chosen_cells(setting: SettingReport, strategy: str) -> list[str]:
    chosen = dict(v.split("=", 1) for v in setting.chosen(strategy))
    return [chosen.get(key, "—") for key in selection_keys(setting)]


def results_rows(setting: SettingReport, metrics: list[str], bold: str = "**") -> list[list[str]]:
    rows = []
    for s in setting.strategies:
        cells = []
        for metric in metrics:
            text = fmt_ci(setting.summary.get(metric, {}).get(s))
            cells.append(f"{bold}{text}{bold}" if bold and _is_best(setting, metric, s) else text)
        rows.append([s, *_chosen_cells(setting, s), str(len(setting.seeds[s])), *cells])
    return rows


def results_table_md(setting: SettingReport, metrics: list[str], bold: str = "**") -> str:
    """Strategies x metrics (short names), mean ± CI, best per column in bold, `n` = seeds done; with a
    selection, the value chosen on validation for each strategy after its name. More metrics than
    `MAX_METRIC_COLUMNS` make several tables."""
    chosen = [f"{key} (chosen)" for key in selection_keys(setting)]
    tables = []
    for chunk in _chunks(metrics):
        headers = ["strategy", *chosen, "n", *[column_name(m) for m in chunk]]
        align = "l" * (1 + len(chosen)) + "r" * (1 + len(chunk))
        tables.append(md_table(headers, results_rows(setting, chunk, bold), align))
    return "\n".join(tables)


def task_tables_md(setting: SettingReport, tasks: dict[str, dict[str, str]]) -> str:
    """One table per metric with per-task breakdowns: strategies x tasks, mean ± CI."""
    parts = []
    for metric, by_task in tasks.items():
        names = sorted(by_task)
        for chunk in _chunks(names):
            rows = [
                [
                    s,
                    str(len(setting.seeds[s])),
                    *[fmt_ci(setting.summary.get(by_task[t], {}).get(s)) for t in chunk],
                ]
                for s in setting.strategies
            ]
            parts.append(f"`{metric}` ({short_name(metric)} {arrow(metric)}) by task:\n")
            parts.append(md_table(["strategy", "n", *chunk], rows))
    return "\n".join(parts)


def depth_tables_md(setting: SettingReport, metrics: list[str]) -> str:
    """One table per metric with per-depth results: strategies x assistant turn, mean ± CI over seeds."""
    parts = []
    for metric in metrics:
        series = setting.by_depth.get(metric) or {}
        depths = sorted({d for by_depth in series.values() for d in by_depth})
        for chunk in _chunks([str(d) for d in depths], MAX_METRIC_COLUMNS + 1):
            rows = [
                [s, *[fmt_ci(series.get(s, {}).get(int(d))) for d in chunk]]
                for s in setting.strategies
                if s in series
            ]
            parts.append(f"`{metric}` ({short_name(metric)} {arrow(metric)}) by assistant turn:\n")
            parts.append(md_table(["strategy", *[f"turn {d}" for d in chunk]], rows))
    return "\n".join(parts)


def selection_caption(setting: SettingReport) -> str:
    """`; train.learning_rate selected on validation ..., compared on test` (empty without a selection)."""
    keys = selection_keys(setting)
    if not keys:
        return ""
    seed_lists = {tuple(seeds) for seeds in setting.selection_seeds.values()}
    (seeds,) = seed_lists if len(seed_lists) == 1 else ((),)
    over = f"seeds {', '.join(map(str, seeds))}" if seeds else "the seeds all of a strategy's candidates ran"
    return (
        f"; {', '.join(f'`{k}`' for k in keys)} per strategy selected on validation (best mean "
        f"`{setting.selection_metric}` over {over}), compared on test"
    )


def _selection_md(setting: SettingReport) -> str:
    """Every candidate of every strategy with its validation score; the chosen one marked."""
    rows = [
        [
            s,
            ", ".join(c.values) or "—",
            str(c.score.n if c.score else 0),
            fmt_ci(c.score),
            "yes" if c.chosen else "",
        ]
        for s in setting.strategies
        for c in setting.candidates.get(s, [])
    ]
    return md_table(
        [
            "strategy",
            "candidate",
            "n",
            f"{setting.selection_metric} {arrow(setting.selection_metric or '')}",
            "chosen",
        ],
        rows,
        "llrrl",
    )


def _picks_md(setting: SettingReport) -> str:
    rows = [
        [
            short_name(p.metric),
            f"{p.best} ({fmt(p.best_mean)})",
            p.runner_up or "—",
            fmt(p.margin),
            p.test or "—",
            fmt_p(p.p_holm),
            "tie" if len(p.tied) > 1 else ("yes" if p.significant else "no"),
            p.seeds_needed.text() if p.seeds_needed else "—",
        ]
        for p in setting.picks
    ]
    return md_table(
        [
            "metric",
            "best (mean)",
            "runner-up",
            "margin",
            "test",
            "p (Holm)",
            "significant",
            "seeds for 80% power",
        ],
        rows,
        "lllrlrlr",
    )


def _spread_md(setting: SettingReport) -> str:
    """Per strategy, the headline metrics seed by seed with their standard deviation and range: how much
    one seed can move a strategy (what the confidence intervals summarize)."""
    rows = []
    for metric in headline_keys(setting.eval_metrics) or setting.eval_metrics[:1]:
        for s in setting.strategies:
            values = setting.by_seed.get(metric, {}).get(s)
            if not values:
                continue
            x = np.asarray(list(values.values()))
            sd = fmt(float(x.std(ddof=1))) if x.size > 1 else "—"
            seeds = ", ".join(f"{seed}: {fmt(v)}" for seed, v in values.items())
            rows.append([metric, s, str(x.size), sd, fmt(float(x.max() - x.min())), seeds])
    return md_table(["metric", "strategy", "n", "sd", "range", "by seed"], rows, "llrrrl")


def _comparisons_md(setting: SettingReport) -> str:
    rows = []
    for metric in setting.eval_metrics:
        best = _best(setting, metric)
        for c in setting.comparisons.get(metric, []):
            items = c.items
            rows.append(
                [
                    short_name(metric),
                    f"{c.strategy} vs {best}",
                    fmt_signed(c.gap),
                    str(c.seeds.n),
                    fmt_p(c.seeds_p_holm) + (f" ({c.seeds.note})" if c.seeds.note else ""),
                    str(items.n) if items else "—",
                    fmt_p(c.items_p_holm) if items else "n/a",
                ]
            )
    if not rows:
        return "Only one strategy has results: nothing to compare.\n"
    return md_table(
        ["metric", "comparison", "gap", "seeds", "p seeds (Holm)", "items", "p items (Holm)"], rows, "llrrrrr"
    )


def _hygiene_md(report: SweepReport) -> str:
    h = report.hygiene
    grid = "each setting's strategies × its seeds"
    if any(s.candidates for s in report.settings):
        grid += "; a candidate not chosen on the seeds the candidates not chosen ran"
    out = [
        f"- Runs: {h.expected} expected by the grid ({grid}), "
        f"{h.done} done, {len(h.not_done)} not done, {len(h.missing)} missing."
    ]
    for setting in report.settings:
        prints = setting.fingerprints
        if len(prints) == 1:
            (fingerprint,) = prints
            same = (
                "unknown (records hold no data fingerprint)"
                if fingerprint == "unknown"
                else (f"yes, one data fingerprint `{fingerprint[:12]}`")
            )
        else:
            same = "**no**: " + "; ".join(f"`{fp[:12]}`: {', '.join(runs)}" for fp, runs in prints.items())
        seed_sets = {tuple(v) for v in setting.seeds.values()}
        seeds = (
            f"yes, {list(next(iter(seed_sets)))}"
            if len(seed_sets) == 1
            else "**no**: " + "; ".join(f"{s}: {v}" for s, v in setting.seeds.items())
        )
        out.append(f"- `{setting.name}`: same data across strategies: {same}. Same seeds done: {seeds}.")
    if report.runs and not any(r.record.eval_items or r.record.by_depth for r in report.runs):
        out.append(
            "- The records hold no per-item results and no turn-depth results (a runs.csv, or W&B runs): "
            "no item tests, no depth tables or plots; the result.json records have them."
        )
    if len(h.commits) > 1:
        out.append(
            f"- **Runs come from {len(h.commits)} code versions**: {', '.join(f'`{c}`' for c in h.commits)}."
        )
    elif h.commits:
        out.append(f"- Code: one version, `{h.commits[0]}`.")
    for setting, count in h.skipped.items():
        out.append(
            f"- {setting}: **{count} source records skipped as invalid** (by reason in result.json, "
            "`data.stats`)."
        )
    from sft_sweeps.report.accounting import accounting_md, warnings

    out += [f"- **{line}**" for line in warnings(report.runs)]
    text = "\n".join(out) + "\n"
    if table := accounting_md(report.runs, md_table):
        text += "\nWhat each strategy trained on (`data.masking` of the runs; data.csv):\n\n" + table
    if h.not_done:
        rows = [
            [r.setting, r.strategy, str(r.seed), r.status, r.error_line()[:120] or "—", r.source]
            for r in h.not_done
        ]
        text += "\nRuns not done (left out of every average):\n\n"
        text += md_table(["setting", "strategy", "seed", "status", "error", "record"], rows, "llrlll")
    if h.missing:
        rows = [[m.setting, m.strategy, str(m.seed), f"`{m.overrides}`"] for m in h.missing]
        text += "\nMissing runs (no record; the overrides that would run them):\n\n"
        text += md_table(["setting", "strategy", "seed", "overrides"], rows, "llrl")
    if h.duplicates:
        rows = [[r.setting, r.strategy, str(r.seed), r.status, r.source] for r in h.duplicates]
        text += "\nDuplicate records of a run already counted (ignored; a done one is kept):\n\n"
        text += md_table(["setting", "strategy", "seed", "status", "record"], rows, "llrll")
    return text


def report_md(report: SweepReport, command: str, plots: dict[str, list[str]]) -> str:
    """The full Markdown report: hygiene, method, then per setting results, picks, tests and plots."""
    from sft_sweeps.report.benchmarks import benchmark_sections_md, no_metric_md

    parts = [
        "# Loss-masking sweep report\n",
        f"Regenerate: `{command}`\n",
        "## Hygiene\n",
        _hygiene_md(report),
        "## Method\n",
        METHOD,
    ]
    for setting in report.settings:
        parts.append(f"## {setting.label}\n")
        if setting.label != setting.name:
            parts.append(f"Setting: `{setting.name}`\n")
        if not setting.eval_metrics:
            parts.append(no_metric_md(setting))  # says so when runs are done but their grades are missing
            continue
        tables = metric_tables(setting)
        if setting.candidates:
            parts.append(f"### Selection on validation (never on test){selection_caption(setting)}\n")
            parts.append(_selection_md(setting))
            parts.append("")
        parts.append(
            f"### Results (mean ± {CONFIDENCE:.0%} CI over seeds; best in bold{selection_caption(setting)})\n"
        )
        parts.append(results_table_md(setting, tables.main))
        parts.append(legend(tables.main))
        parts.append(constant_line(setting, tables.constant))
        if any(len(v) == 1 for v in setting.seeds.values()):
            parts.append("n=1: one seed, no confidence interval.\n")
        if tables.other:
            parts.append("### Other metrics\n")
            parts.append(results_table_md(setting, tables.other))
            parts.append(legend(tables.other))
        if tables.tasks:
            parts.append("### By task\n")
            parts.append(task_tables_md(setting, tables.tasks))
        depth = [m for m in [*tables.main, *tables.other] if setting.by_depth.get(m)]
        if depth:
            parts.append("### By turn depth\n")
            parts.append(depth_tables_md(setting, depth))
        parts.append("\n### Seed spread\n")
        parts.append(_spread_md(setting))
        parts.append("\n### Best strategy per metric\n")
        parts.append(_picks_md(setting))
        parts.append("\n### Paired tests against the best\n")
        parts.append(
            "`gap` is strategy minus best, in metric units; p-values Holm-adjusted (raw ones in "
            "tests.csv).\n\n"
        )
        parts.append(_comparisons_md(setting))
        if sections := benchmark_sections_md(setting):  # Multi-IF and MT-Bench as their papers show them
            parts.append("\n" + sections)
        if tables.bookkeeping:
            parts.append(
                "\n### Bookkeeping (not compared: counts, times, and the training loss, which each strategy "
                "computes over other tokens)\n"
            )
            parts.append(results_table_md(setting, tables.bookkeeping, bold=""))
        for png in plots.get(setting.name, []):
            parts.append(f"\n![{png}]({png})\n")
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


def readme_table_md(report: SweepReport, command: str) -> str:
    """The README snippet: the main table per setting, its legend, the picks, and the command."""
    parts = []
    for setting in report.settings:
        tables = metric_tables(setting)
        metrics = tables.main
        n_seeds = sorted({len(v) for v in setting.seeds.values()})
        seeds = f"{'/'.join(map(str, n_seeds))} seed{'' if n_seeds == [1] else 's'}"
        parts.append(
            f"**{setting.label}**: mean ± {CONFIDENCE:.0%} CI over {seeds}; best in bold"
            f"{selection_caption(setting)}.\n"
        )
        parts.append(results_table_md(setting, metrics))
        parts.append(legend(metrics))
        parts.append(constant_line(setting, tables.constant))
        parts.append("".join(pick_line(p) for p in setting.picks if p.metric in metrics))
        if metrics:
            parts.append(spread_line(setting, metrics[0]))
    h = report.hygiene
    parts.append(
        f"{h.done}/{h.expected} runs done; {len(h.not_done)} not done and {len(h.missing)} missing "
        "(listed in report.md, never averaged). Regenerate: `{command}`\n".replace("{command}", command)
    )
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


def spread_line(setting: SettingReport, metric: str) -> str:
    """`Seed spread of M (sd [min, max]): full 0.010 [0.13, 0.15], ...` for the README table."""
    cells = []
    for s in setting.strategies:
        values = list(setting.by_seed.get(metric, {}).get(s, {}).values())
        if len(values) > 1:
            sd = float(np.std(values, ddof=1))
            cells.append(f"`{s}` {fmt(sd)} [{fmt(min(values))}, {fmt(max(values))}]")
    return f"- seed spread of {metric} (sd [min, max] over seeds): {', '.join(cells)}\n" if cells else ""


def pick_line(p: Pick) -> str:
    if p.runner_up is None:
        return f"- {p.metric}: only `{p.best}` has results\n"
    if len(p.tied) > 1:
        return f"- {p.metric}: tie at {fmt(p.best_mean)} between {', '.join(f'`{s}`' for s in p.tied)}\n"
    p_text = fmt_p(p.p_holm)
    test = (
        f"{p.test} test, Holm p{p_text if p_text.startswith('<') else '=' + p_text}" if p.test else "untested"
    )
    verdict = "significant" if p.significant else "not significant"
    power = f"; {power_text(p)}" if p.seeds_needed else ""
    margin = f"ahead of `{p.runner_up}` by {fmt(p.margin)}"
    return f"- {p.metric}: best `{p.best}`, {margin} ({verdict}; {test}{power})\n"


def power_text(p: Pick) -> str:
    """`needs ~12 seeds for 80% power`: how many seeds a paired t-test needs to detect this margin, and,
    where the records hold per-item results, how many held-out items a paired test over items would."""
    needed = p.seeds_needed
    if needed is None:
        return ""
    text = (
        f"seeds for 80% power: {needed.text()}"
        if needed.n is None
        else f"needs ~{needed.text()} for 80% power"
    )
    items = p.items_needed
    if items is not None and items.n is not None and p.num_items is not None:
        many = f">{MAX_SEEDS}" if items.n > MAX_SEEDS else f"~{items.n}"
        small = " (**the held-out split is too small for this margin**)" if items.n > p.num_items else ""
        text += f", or {many} held-out items (it has {p.num_items}){small}"
    return text


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _tex_arrow(metric: str) -> str:
    return r"$\downarrow$" if lower_is_better(metric) else r"$\uparrow$"


def _tex_ci(m: MeanCI | None) -> str:
    if m is None:
        return "--"
    if m.half_width is None:
        return f"{fmt(m.mean)}$^\\dagger$"
    return f"{fmt(m.mean)} $\\pm$ {fmt(m.half_width)}"


# Sets a tabular at its natural width, or shrunk to \linewidth when wider (a two-column page): graphicx's
# \resizebox only where a table would overflow, so one-column tables keep their font size.
TEX_PREAMBLE = r"""% Generated by `python -m sft_sweeps.report`.
% Needs \usepackage{booktabs} and \usepackage{graphicx}.
% \sftfit{...}: the table at its natural width, scaled down to \linewidth only when it is wider.
\makeatletter
\@ifundefined{sftfitbox}{\newsavebox{\sftfitbox}}{}
\providecommand{\sftfit}[1]{\sbox{\sftfitbox}{#1}%
  \ifdim\wd\sftfitbox>\linewidth\resizebox{\linewidth}{!}{\usebox{\sftfitbox}}\else\usebox{\sftfitbox}\fi}
\makeatother
"""


def tex_table(headers: list[str], rows: list[list[str]], column_format: str, caption: str, label: str) -> str:
    """A booktabs table float: the tabular from pandas' `Styler.to_latex` (cells already LaTeX), fitted to
    `\linewidth` by `\sftfit`."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=pd.Index(headers))
    tabular = frame.style.hide(axis="index").to_latex(column_format=column_format, hrules=True).strip()
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            f"\\caption{{{caption}}}",
            f"\\label{{{label}}}",
            f"\\sftfit{{%\n{tabular}%\n}}",
            r"\end{table}",
            "",
        ]
    )


def _tex_column(metric: str) -> str:
    return f"{tex_escape(short_name(metric))} {_tex_arrow(metric)}"


def report_tex(report: SweepReport) -> str:
    """Per setting: the main results table (headline metrics, short names, best in bold) and the picks."""
    out = [TEX_PREAMBLE]
    for i, setting in enumerate(report.settings):
        if not setting.eval_metrics:
            continue
        tables = metric_tables(setting)
        metrics = tables.main
        rows = []
        for s in setting.strategies:
            cells = []
            for metric in metrics:
                text = _tex_ci(setting.summary.get(metric, {}).get(s))
                cells.append(f"\\textbf{{{text}}}" if _is_best(setting, metric, s) else text)
            label = s + "".join(f", {v}" for v in setting.chosen(s))  # the values chosen on validation
            rows.append([tex_escape(label), str(len(setting.seeds[s])), *cells])
        has_n1 = any(len(v) == 1 for v in setting.seeds.values())
        confidence = tex_escape(f"{CONFIDENCE:.0%}")
        names = "; ".join(f"{tex_escape(short_name(m))}: \\texttt{{{tex_escape(m)}}}" for m in metrics)
        left_out = "".join(
            f" {tex_escape(short_name(m))} is {fmt(constant_value(setting, m))} for every strategy and seed "
            "(left out)."
            for m in tables.constant
        )
        caption = (
            f"{tex_escape(setting.label)}: mean $\\pm$ {confidence} CI over seeds (t-distribution); "
            "best in bold"
            + tex_escape(selection_caption(setting).replace("`", ""))
            + f". {names}."
            + left_out
            + (r" $^\dagger$one seed, no interval." if has_n1 else "")
        )
        out.append(
            tex_table(
                ["Strategy", "$n$", *[_tex_column(m) for m in metrics]],
                rows,
                "l" + "r" * (len(metrics) + 1),
                caption,
                f"tab:masking-results-{i}",
            )
        )
        pick_rows = [
            [
                tex_escape(short_name(p.metric)),
                tex_escape(p.best),
                tex_escape(p.runner_up or "--"),
                fmt(p.margin) if p.margin is not None else "--",
                fmt_p(p.p_holm).replace("<", "$<$") + ("$^*$" if p.significant else ""),
            ]
            for p in setting.picks
            if p.metric in metrics or p.metric in tables.other
        ]
        out.append(
            tex_table(
                ["Metric", "Best", "Runner-up", "Margin", "$p$ (Holm)"],
                pick_rows,
                "lllrr",
                f"{tex_escape(setting.label)}: best strategy per metric, margin over the runner-up, "
                f"Holm-adjusted paired $p$-value ($^*$significant at {ALPHA}).",
                f"tab:masking-picks-{i}",
            )
        )
    return "\n".join(out)


CSV_FIELDS = RUN_COLUMNS


def runs_csv(report: SweepReport) -> str:
    """Every record (done or not, duplicates included) with its metrics; floats in repr, rows sorted."""
    from sft_sweeps.identity import run_group

    metrics = sorted({m for r in report.runs for m in r.record.metrics})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_FIELDS, *metrics])
    for r in report.runs:
        rec = r.record
        row = [
            r.setting,
            r.sweep,
            r.strategy,
            r.seed,
            r.status,
            rec.group or run_group(rec.config),
            rec.config_hash,
            _csv_value(rec.wall_time_s),
            rec.git_commit or "",
            rec.data_fingerprint or "",
            r.error_line(),
            display_source(r.source),  # relative to the working directory: a shipped table names no machine
            rec.main_metric or "",
        ]
        row += [_csv_value(rec.metrics.get(m)) for m in metrics]
        writer.writerow(row)
    return buffer.getvalue()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    return (
        repr(float(value)) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
    )


def summary_csv(report: SweepReport) -> str:
    """Every metric of every setting and strategy, mean and CI over seeds, with the table it belongs to
    (`main`, `constant`, `other`, `task`, `bookkeeping`); floats in repr."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["setting", "table", "metric", "strategy", "n", "mean", "ci_half_width"])
    for setting in report.settings:
        tables = metric_tables(setting)
        kind = {m: "main" for m in tables.main} | {m: "constant" for m in tables.constant}
        kind |= {m: "other" for m in tables.other} | {m: "bookkeeping" for m in tables.bookkeeping}
        kind |= {key: "task" for by_task in tables.tasks.values() for key in by_task.values()}
        for metric in [m for m in setting.summary if m in kind]:
            for strategy, m in setting.summary[metric].items():
                writer.writerow(
                    [
                        setting.name,
                        kind[metric],
                        metric,
                        strategy,
                        m.n,
                        _csv_value(m.mean),
                        _csv_value(m.half_width),
                    ]
                )
    return buffer.getvalue()


def by_depth_csv(report: SweepReport) -> str:
    """Per setting, metric, strategy and assistant turn: mean and CI over seeds."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["setting", "metric", "strategy", "turn", "n", "mean", "ci_half_width"])
    for setting in report.settings:
        for metric, series in setting.by_depth.items():
            for strategy, by_depth in series.items():
                for depth, m in by_depth.items():
                    writer.writerow(
                        [
                            setting.name,
                            metric,
                            strategy,
                            depth,
                            m.n,
                            _csv_value(m.mean),
                            _csv_value(m.half_width),
                        ]
                    )
    return buffer.getvalue()


def tests_csv(report: SweepReport) -> str:
    """Every paired test against the best: raw and Holm-adjusted p-values, seeds and items."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["setting", "metric", "strategy", "best", "gap", "seeds", "p_seeds", "p_seeds_holm"]
        + ["items", "p_items", "p_items_holm"]
    )
    for setting in report.settings:
        for metric, comparisons in setting.comparisons.items():
            for c in comparisons:
                items = c.items
                writer.writerow(
                    [
                        setting.name,
                        metric,
                        c.strategy,
                        _best(setting, metric),
                        _csv_value(c.gap),
                        c.seeds.n,
                        _csv_value(c.seeds.p),
                        _csv_value(c.seeds_p_holm),
                        items.n if items else "",
                        _csv_value(items.p) if items else "",
                        _csv_value(c.items_p_holm) if items else "",
                    ]
                )
    return buffer.getvalue()
