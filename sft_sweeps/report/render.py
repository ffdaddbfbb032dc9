"""Text outputs of the report: Markdown, LaTeX (booktabs) and CSV, each a pure function of the analysis."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import numpy as np

from sft_sweeps.metrics import headline_keys, lower_is_better
from sft_sweeps.report.analysis import Pick, SettingReport, SweepReport
from sft_sweeps.report.stats import ALPHA, CONFIDENCE, PERMUTATIONS, MeanCI

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


def fmt(x: float | None, digits: int = 3) -> str:
    """Fixed-point number; never `-0.000`."""
    if x is None:
        return "—"
    text = f"{x:.{digits}f}"
    return text[1:] if re.fullmatch(r"-0\.0*", text) else text


def fmt_signed(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    text = fmt(x, digits)
    return text if text.startswith("-") else f"+{text}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(m: MeanCI | None, pm: str = "±") -> str:
    if m is None:
        return "—"
    if m.half_width is None:
        return f"{fmt(m.mean)} (n=1)"
    return f"{fmt(m.mean)} {pm} {fmt(m.half_width)}"


def arrow(metric: str) -> str:
    return "↓" if lower_is_better(metric) else "↑"


def md_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A GitHub Markdown table; `align` is one letter per column (l or r), default l then r."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


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


def results_table_md(setting: SettingReport, metrics: list[str]) -> str:
    """Strategies x metrics, mean ± CI, best per column in bold, `n` = seeds done; with a selection, the
    value chosen on validation for each strategy after its name."""
    chosen = [f"{key} (chosen)" for key in selection_keys(setting)]
    headers = ["strategy", *chosen, "n", *[f"{m} {arrow(m)}" for m in metrics]]
    return md_table(
        headers, results_rows(setting, metrics), "l" * (1 + len(chosen)) + "r" * (1 + len(metrics))
    )


def selection_caption(setting: SettingReport) -> str:
    """`; train.learning_rate selected on validation ..., compared on test` (empty without a selection)."""
    keys = selection_keys(setting)
    if not keys:
        return ""
    return (
        f"; {', '.join(f'`{k}`' for k in keys)} per strategy selected on validation (best mean "
        f"`{setting.selection_metric}` over seeds), compared on test"
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
            p.metric,
            p.best,
            fmt(p.best_mean),
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
            "best",
            "mean",
            "runner-up",
            "margin",
            "test",
            "p (Holm)",
            "significant",
            "seeds for 80% power",
        ],
        rows,
        "llrlrlrlr",
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
                    metric,
                    f"{c.strategy} vs {best}",
                    fmt_signed(c.gap),
                    str(c.seeds.n),
                    fmt_p(c.seeds.p),
                    fmt_p(c.seeds_p_holm) + (f" ({c.seeds.note})" if c.seeds.note else ""),
                    str(items.n) if items else "—",
                    fmt_p(items.p) if items else "n/a",
                    fmt_p(c.items_p_holm) if items else "n/a",
                ]
            )
    if not rows:
        return "Only one strategy has results: nothing to compare.\n"
    return md_table(
        ["metric", "comparison", "gap", "seeds", "p", "p (Holm)", "items", "p", "p (Holm)"], rows, "llrrrrrrr"
    )


def _hygiene_md(report: SweepReport) -> str:
    h = report.hygiene
    out = [
        f"- Runs: {h.expected} expected by the grid (every setting × strategy × seed seen in a sweep), "
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
    text = "\n".join(out) + "\n"
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
    from sft_sweeps.report.benchmarks import benchmark_sections_md, no_metric_md  # it imports this module

    parts = [
        "# Loss-masking sweep report\n",
        f"Regenerate: `{command}`\n",
        "## Hygiene\n",
        _hygiene_md(report),
        "## Method\n",
        METHOD,
    ]
    for setting in report.settings:
        parts.append(f"## {setting.name}\n")
        if not setting.eval_metrics:
            parts.append(no_metric_md(setting))  # says so when runs are done but their grades are missing
            continue
        if setting.candidates:
            parts.append(f"### Selection on validation (never on test){selection_caption(setting)}\n")
            parts.append(_selection_md(setting))
            parts.append("")
        parts.append(
            f"### Results (mean ± {CONFIDENCE:.0%} CI over seeds; best in bold{selection_caption(setting)})\n"
        )
        parts.append(results_table_md(setting, setting.eval_metrics))
        if any(len(v) == 1 for v in setting.seeds.values()):
            parts.append("\nn=1: one seed, no confidence interval.\n")
        parts.append("\n### Seed spread\n")
        parts.append(_spread_md(setting))
        parts.append("\n### Best strategy per metric\n")
        parts.append(_picks_md(setting))
        parts.append("\n### Paired tests against the best\n")
        parts.append("`gap` is strategy minus best, in metric units.\n\n")
        parts.append(_comparisons_md(setting))
        if sections := benchmark_sections_md(setting):  # Multi-IF and MT-Bench as their papers show them
            parts.append("\n" + sections)
        if setting.train_metrics:
            parts.append(
                "\n### Training (not comparable across strategies: each minimizes a loss on other tokens)\n"
            )
            parts.append(results_table_md_plain(setting, setting.train_metrics))
        for png in plots.get(setting.name, []):
            parts.append(f"\n![{png}]({png})\n")
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


def results_table_md_plain(setting: SettingReport, metrics: list[str]) -> str:
    return md_table(["strategy", "n", *metrics], results_rows(setting, metrics, bold=""))


def readme_table_md(report: SweepReport, command: str) -> str:
    """The README snippet: key metrics per setting, and the command that regenerates it."""
    parts = []
    for setting in report.settings:
        metrics = headline_keys(setting.eval_metrics) or setting.eval_metrics
        n_seeds = sorted({len(v) for v in setting.seeds.values()})
        seeds = f"{'/'.join(map(str, n_seeds))} seed{'' if n_seeds == [1] else 's'}"
        parts.append(
            f"**{setting.name}**: mean ± {CONFIDENCE:.0%} CI over {seeds}; best in bold"
            f"{selection_caption(setting)}.\n"
        )
        parts.append(results_table_md(setting, metrics))
        parts.append("".join(pick_line(p) for p in setting.picks if p.metric in metrics))
        if metrics:
            parts.append(spread_line(setting, metrics[0]))
    h = report.hygiene
    parts.append(
        f"{h.done}/{h.expected} runs done; {len(h.not_done)} not done and {len(h.missing)} missing "
        "(listed in report.md, never averaged). Regenerate: `{command}`\n".replace("{command}", command)
    )
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


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
    """`needs ~12 seeds for 80% power`: how many seeds a paired t-test needs to detect this margin."""
    needed = p.seeds_needed
    if needed is None:
        return ""
    if needed.n is None:
        return f"seeds for 80% power: {needed.text()}"
    return f"needs ~{needed.text()} for 80% power"


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


def report_tex(report: SweepReport) -> str:
    """One booktabs table per setting (results, best in bold), then one of the picks."""
    out = ["% Generated by `python -m sft_sweeps.report`; needs \\usepackage{booktabs}.\n"]
    for i, setting in enumerate(report.settings):
        metrics = setting.eval_metrics
        if not metrics:
            continue
        header = " & ".join(["Strategy", "$n$", *[f"{tex_escape(m)} {_tex_arrow(m)}" for m in metrics]])
        rows = []
        for s in setting.strategies:
            cells = []
            for metric in metrics:
                text = _tex_ci(setting.summary.get(metric, {}).get(s))
                cells.append(f"\\textbf{{{text}}}" if _is_best(setting, metric, s) else text)
            label = s + "".join(f", {v}" for v in setting.chosen(s))  # the values chosen on validation
            rows.append(" & ".join([tex_escape(label), str(len(setting.seeds[s])), *cells]) + r" \\")
        has_n1 = any(len(v) == 1 for v in setting.seeds.values())
        confidence = tex_escape(f"{CONFIDENCE:.0%}")
        caption = (
            f"{tex_escape(setting.name)}: mean $\\pm$ {confidence} CI over seeds (t-distribution); "
            "best in bold"
            + tex_escape(selection_caption(setting).replace("`", ""))
            + "."
            + (r" $^\dagger$one seed, no interval." if has_n1 else "")
        )
        out += [
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            f"\\caption{{{caption}}}",
            f"\\label{{tab:masking-results-{i}}}",
            f"\\begin{{tabular}}{{l{'r' * (len(metrics) + 1)}}}",
            r"\toprule",
            header + r" \\",
            r"\midrule",
            *rows,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
        pick_rows = [
            " & ".join(
                [
                    tex_escape(p.metric),
                    tex_escape(p.best),
                    fmt(p.best_mean),
                    tex_escape(p.runner_up or "--"),
                    fmt(p.margin) if p.margin is not None else "--",
                    fmt_p(p.p_holm).replace("<", "$<$"),
                    "yes" if p.significant else "no",
                ]
            )
            + r" \\"
            for p in setting.picks
        ]
        out += [
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            f"\\caption{{{tex_escape(setting.name)}: best strategy per metric, margin over the runner-up, "
            f"Holm-adjusted paired p-value.}}",
            f"\\label{{tab:masking-picks-{i}}}",
            r"\begin{tabular}{llrlrrl}",
            r"\toprule",
            r"Metric & Best & Mean & Runner-up & Margin & $p$ (Holm) & Significant \\",
            r"\midrule",
            *pick_rows,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    return "\n".join(out)


CSV_FIELDS = (
    "setting",
    "sweep",
    "strategy",
    "seed",
    "status",
    "group",
    "config_hash",
    "wall_time_s",
    "git_commit",
    "data_fingerprint",
    "error",
    "source",
)


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
            r.source,
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
