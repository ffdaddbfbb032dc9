"""Paper tables from sweep records: `python -m sft_sweeps.report <sweep dir or glob> --out DIR`.

Writes `report.md` (hygiene, method, results, picks, tests, plots), `table.md` (the README snippet),
`tables.tex` (booktabs), `runs.csv` (every run), `summary.csv` (every metric's mean and CI, with the table
it belongs to), `by_depth.csv`, `tests.csv` (raw and Holm p-values), `data.csv` (what each strategy trained
on) and PNG plots.
The same records give byte-identical outputs.

Example:
    >>> from sft_sweeps.report import load_records, write_report
    >>> write_report(load_records("multirun/masking_seeds"), "reports/masking_seeds")   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sft_sweeps.identity import file_slug
from sft_sweeps.report.analysis import Selection, SweepReport, analyze, is_eval_metric
from sft_sweeps.report.console import print_sweep_table
from sft_sweeps.report.records import RecordError, fetch_wandb_records, load_records, record_from_wandb_run

__all__ = [
    "RecordError",
    "analyze",
    "fetch_wandb_records",
    "load_records",
    "print_sweep_table",
    "record_from_wandb_run",
    "write_report",
]

OUTPUTS = (
    "report.md",
    "table.md",
    "tables.tex",
    "runs.csv",
    "summary.csv",
    "by_depth.csv",
    "tests.csv",
    "data.csv",
)


def write_report(
    records: list[dict[str, Any]],
    out_dir: str | Path,
    command: str = "python -m sft_sweeps.report",
    selection: Selection | None = None,
) -> SweepReport:
    """Analyze `records` and write every output into `out_dir` (created; files there are overwritten).

    Args:
        records: run records (`load_records`, `fetch_wandb_records`).
        out_dir: output folder.
        command: the command line printed in the outputs as the way to regenerate them.
        selection: select each strategy's setting on validation before comparing on test (`analyze`).

    Returns:
        The analysis the files were written from.
    """
    from sft_sweeps.report.accounting import accounting_csv
    from sft_sweeps.report.plots import plot_by_depth, plot_prompt_weight
    from sft_sweeps.report.render import (
        by_depth_csv,
        readme_table_md,
        report_md,
        report_tex,
        runs_csv,
        summary_csv,
        tests_csv,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = analyze(records, selection)
    plots: dict[str, list[str]] = {}
    for setting in report.settings:
        # File names from the setting's short label, bounded (`file_slug`): a long setting (dataset paths,
        # many overrides) never makes a name the file system refuses.
        slug = file_slug(setting.label, 48)
        made = []
        # Per-task breakdowns (`task/metric`) and counts stay in the records; plots show the overall metrics.
        for metric in sorted(m for m in setting.by_depth if m.count("/") <= 1 and is_eval_metric(m)):
            name = f"depth_{file_slug(metric, 48)}_{slug}.png"
            if plot_by_depth(setting, metric, out / name):
                made.append(name)
        if plot_prompt_weight(setting, out / f"prompt_weight_{slug}.png"):
            made.append(f"prompt_weight_{slug}.png")
        plots[setting.name] = made
    (out / "report.md").write_text(report_md(report, command, plots))
    (out / "table.md").write_text(readme_table_md(report, command))
    (out / "tables.tex").write_text(report_tex(report))
    (out / "runs.csv").write_text(runs_csv(report))
    (out / "summary.csv").write_text(summary_csv(report))
    (out / "by_depth.csv").write_text(by_depth_csv(report))
    (out / "tests.csv").write_text(tests_csv(report))
    (out / "data.csv").write_text(accounting_csv(report.runs))
    return report
