"""`print_sweep_table`: the table a multirun prints when its jobs are done."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sft_sweeps.identity import RunRecord
from sft_sweeps.metrics import headline_keys, lower_is_better, short_name
from sft_sweeps.report.analysis import analyze
from sft_sweeps.report.records import load_records
from sft_sweeps.report.render import fmt

_STATUS_STYLE = {"done": "green", "failed": "bold red", "missing": "yellow", "interrupted": "bold red"}


def sweep_table(records: list[RunRecord]) -> tuple[Table, list[str]]:
    """A rich table of a sweep's runs, missing grid points included (strategy, seed, status, headline
    metrics, wall time), and one note per run not done (its error or the overrides that would run it)
    and per setting whose data source had records skipped as invalid."""
    report = analyze(records)
    metrics = headline_keys({m for r in report.runs for m in r.record.metrics})
    several = len(report.settings) > 1
    table = Table(
        title=f"{report.hygiene.done}/{report.hygiene.expected} runs done",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    if several:
        table.add_column("setting")
    # Labels such as `weighted(pw=0.1)` say what ran: the metric headers wrap before they do.
    table.add_column("strategy", min_width=min(24, max(len(r.strategy) for r in report.runs)))
    table.add_column("seed", justify="right")
    table.add_column("status", min_width=7)
    for m in metrics:
        table.add_column(f"{short_name(m)}{'↓' if lower_is_better(m) else '↑'}", justify="right")
    table.add_column("wall s", justify="right")
    rows = [
        (
            r.setting,
            r.strategy_key,
            r.seed,
            r.strategy,
            r.status,
            [fmt(r.metric(m)) for m in metrics],
            fmt(r.record.wall_time_s, 0),
            r.error_line() or "no error recorded",
        )
        for r in report.runs
    ]
    keys = {r.strategy: r.strategy_key for r in report.runs}
    rows += [
        (
            m.setting,
            keys[m.strategy],
            m.seed,
            m.strategy,
            "missing",
            ["" for _ in metrics],
            "",
            f"run {m.overrides}",
        )
        for m in report.hygiene.missing
    ]
    notes = []
    for setting, _, seed, strategy, status, values, wall, note in sorted(rows, key=lambda x: x[:3]):
        style = _STATUS_STYLE.get(status, "red")
        cells = values if status == "done" else ["" for _ in values]
        table.add_row(
            *([setting] if several else []), strategy, str(seed), f"[{style}]{status}[/{style}]", *cells, wall
        )
        if status != "done":
            where = f"{setting} " if several else ""
            notes.append(f"{where}{strategy} seed={seed} {status}: {note}")
    for r in report.runs:  # done, but judge requests failed: the grades are missing until a rerun
        missing = r.metric("judge/num_request_failures") if r.status == "done" else None
        if missing:
            where = f"{r.setting} " if several else ""
            notes.append(
                f"{where}{r.strategy} seed={r.seed}: {int(missing)} judge grades missing (failed requests); "
                "rerun the sweep to ask the judge again"
            )
    for setting, count in report.hygiene.skipped.items():
        where = f"{setting}: " if several else ""
        notes.append(f"{where}{count} source records skipped as invalid (reasons: data.stats in result.json)")
    return table, notes


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
    for note in notes:
        console.print(f"  [yellow]{escape(note)}[/yellow]")
    console.print(f"Full report: python -m sft_sweeps.report {sweep_dir} --out reports/<name>")
