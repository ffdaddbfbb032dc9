"""`print_sweep_table`: the table a multirun prints when its jobs are done."""

from __future__ import annotations

import shlex
from pathlib import Path

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sft_sweeps.identity import RunRecord, file_slug
from sft_sweeps.metrics import arrow, fmt, headline_keys, short_name
from sft_sweeps.report.analysis import Run, analyze, short_setting_name
from sft_sweeps.report.records import load_records

_STATUS_STYLE = {"done": "green", "failed": "bold red", "missing": "yellow", "interrupted": "bold red"}


def _setting_table(
    runs: list[Run], missing: list, metrics: list[str], title: str | None
) -> tuple[Table, list]:
    """One setting's runs (and missing grid points) as a table; the rows that need a note."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
    # Labels such as `weighted(pw=0.1)` say what ran: the metric headers wrap before they do.
    table.add_column("strategy", min_width=min(24, max(len(r.strategy) for r in runs)))
    table.add_column("seed", justify="right")
    table.add_column("status", min_width=7)
    for m in metrics:
        table.add_column(f"{short_name(m)}{arrow(m)}", justify="right")
    table.add_column("wall s", justify="right")
    keys = {r.strategy: r.strategy_key for r in runs}
    rows = [
        (
            r.strategy_key,
            r.seed,
            r.strategy,
            r.status,
            [fmt(r.metric(m)) for m in metrics],
            fmt(r.record.wall_time_s, 0),
            r.error_line() or "no error recorded",
        )
        for r in runs
    ]
    rows += [
        (keys[m.strategy], m.seed, m.strategy, "missing", ["" for _ in metrics], "", f"rerun: {m.command}")
        for m in missing
    ]
    notes = []
    for _, seed, strategy, status, values, wall, note in sorted(rows, key=lambda x: x[:2]):
        style = _STATUS_STYLE.get(status, "red")
        cells = values if status == "done" else ["" for _ in values]
        table.add_row(strategy, str(seed), f"[{style}]{status}[/{style}]", *cells, wall)
        if status != "done":
            notes.append(f"{strategy} seed={seed} {status}: {note}")
    for r in runs:  # done, but judge requests failed: the grades are missing until a rerun
        failed = r.metric("judge/num_request_failures") if r.status == "done" else None
        if failed:
            notes.append(
                f"{r.strategy} seed={r.seed}: {int(failed)} judge grades missing (failed requests); "
                "rerun the sweep to ask the judge again"
            )
    return table, notes


def sweep_table(records: list[RunRecord]) -> tuple[RenderableType, list[str]]:
    """The runs of a sweep, missing grid points included (strategy, seed, status, headline metrics, wall
    time), and one note per run not done (its error or the command that runs it) and per setting whose
    data source had records skipped as invalid.

    Several settings (a sweep folder holding more than one): one table per setting, headed by a short
    label that names only the keys that differ between them (`analysis.short_setting_name`).
    """
    report = analyze(records)
    metrics = headline_keys({m for r in report.runs for m in r.record.metrics})
    several = len({r.setting for r in report.runs}) > 1
    labels = {r.setting: short_setting_name(r.setting, r.setting_overrides) for r in report.runs}
    parts: list[RenderableType] = [
        Text(f"{report.hygiene.done}/{report.hygiene.expected} runs done", style="bold")
    ]
    notes = []
    for setting in sorted(labels):
        runs = [r for r in report.runs if r.setting == setting]
        missing = [m for m in report.hygiene.missing if m.setting == setting]
        table, setting_notes = _setting_table(runs, missing, metrics, labels[setting] if several else None)
        parts.append(table)
        notes += [f"{labels[setting]}: {n}" if several else n for n in setting_notes]
    from sft_sweeps.report.accounting import warnings

    notes += warnings(report.runs)
    for setting, count in report.hygiene.skipped.items():
        where = f"{labels.get(setting, setting)}: " if several else ""
        notes.append(f"{where}{count} source records skipped as invalid (reasons: data.stats in result.json)")
    return Group(*parts), notes


def report_command(sweep_dir: str) -> str:
    """`python -m sft_sweeps.report multirun/x --out reports/x`: the report of a sweep folder, runnable."""
    out = f"reports/{file_slug(Path(sweep_dir).name or 'sweep')}"
    return shlex.join(["python", "-m", "sft_sweeps.report", sweep_dir, "--out", out])


def print_sweep_table(sweep_dir: str, console: Console | None = None) -> None:
    """Print the runs of the sweep in `sweep_dir` (strategy, seed, status, key metrics, wall time).

    Never raises: it runs at the end of every multirun, where a traceback would hide the jobs' results.
    """
    console = console or Console()
    try:
        table, notes = sweep_table(load_records([sweep_dir]))
    except Exception as e:  # noqa: BLE001 (a display step at the end of a sweep; say why, go on)
        console.print(
            f"[yellow]no sweep table for {escape(sweep_dir)}: {type(e).__name__}: {escape(str(e))}[/yellow]"
        )
        return
    console.print(table)
    # Commands print whole, never wrapped or cut, so they can be copied as they are.
    for note in notes:
        console.print(f"  {note}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    console.print(f"Full report: {report_command(sweep_dir)}", markup=False, highlight=False, soft_wrap=True)
