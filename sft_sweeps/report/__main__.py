"""`python -m sft_sweeps.report <sweep dir or glob> ... [--wandb E/P] [--dashboard E/P] --out DIR`.

`--select-key train.learning_rate`: a tuning sweep (`experiment=lr_tuning`); per strategy, the learning rate
with the best mean validation metric over seeds is kept and the kept cells are compared on test.

Also `python -m sft_sweeps.report --dashboard-from <out>/wandb_report.json`: save a dashboard built earlier.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sft_sweeps.cli import errors_reported
from sft_sweeps.report import RecordError, fetch_wandb_records, load_records, write_report
from sft_sweeps.report.analysis import OptionError, Selection, SelectionError, check_selection

if TYPE_CHECKING:  # the dashboard's imports (wandb-workspaces) load only with --dashboard
    import wandb_workspaces.reports.v2 as wr

    from sft_sweeps.identity import RunRecord
    from sft_sweeps.report.analysis import SweepReport


def _entity_project(text: str) -> tuple[str, str]:
    from sft_sweeps.report.dashboard import DashboardError, parse_entity_project

    try:
        return parse_entity_project(text)
    except DashboardError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sft_sweeps.report",
        description="Tables (Markdown, LaTeX), tests, plots and a CSV from the records of sweeps.",
    )
    parser.add_argument(
        "paths", nargs="*", help="sweep dirs, run dirs, result.json files or globs ('multirun/*')"
    )
    parser.add_argument(
        "--wandb", metavar="ENTITY/PROJECT", help="also read runs from W&B (needs `wandb login`)"
    )
    parser.add_argument("--out", default="reports/latest", help="output folder (default: reports/latest)")
    parser.add_argument(
        "--dashboard",
        metavar="ENTITY/PROJECT",
        type=_entity_project,
        help="also build the sweep's W&B report there (spec: <out>/wandb_report.json; needs `wandb login`)",
    )
    parser.add_argument(
        "--dashboard-from",
        metavar="FILE",
        help="save the W&B report a --dashboard run wrote to FILE (wandb_report.json); nothing else",
    )
    parser.add_argument(
        "--select-key",
        metavar="KEY",
        action="append",
        default=[],
        help="a config key varied within each strategy (e.g. train.learning_rate; repeatable): per strategy, "
        "keep the value with the best mean validation metric over seeds, then compare strategies on test",
    )
    parser.add_argument(
        "--select-on",
        choices=["validation"],
        default="validation",
        help="the split --select-key selects on (validation only: selecting on test biases the comparison)",
    )
    parser.add_argument(
        "--select-metric",
        metavar="METRIC",
        help="the selection metric (default: validation/<optimized_metric> of the records)",
    )
    args = parser.parse_args(argv)
    if args.select_metric and not args.select_key:
        parser.error("--select-metric needs --select-key")
    if args.select_metric and not args.select_metric.startswith(f"{args.select_on}/"):
        parser.error(f"--select-metric must be a {args.select_on}/... metric, got {args.select_metric!r}")
    if args.dashboard_from:
        if args.paths or args.wandb or args.dashboard:
            parser.error("--dashboard-from FILE takes no sweep dirs, --wandb or --dashboard")
        return _save_spec(args.dashboard_from)
    if not args.paths and not args.wandb:
        parser.error("give sweep dirs/globs, --wandb ENTITY/PROJECT, or both")

    try:
        records = load_records(args.paths) if args.paths else []
    except (FileNotFoundError, RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.wandb:
        records += fetch_wandb_records(args.wandb)
    command = shlex.join(["python", "-m", "sft_sweeps.report", *(argv if argv is not None else sys.argv[1:])])
    selection = (
        Selection(tuple(args.select_key), args.select_metric, args.select_on) if args.select_key else None
    )
    if selection is not None:
        try:  # a usage error: one line and exit 2, as argparse's own, before anything is written
            check_selection(records, selection)
        except OptionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        report = write_report(records, args.out, command=command, selection=selection)
    except SelectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    h = report.hygiene
    print(
        f"{len(records)} records, {len(report.settings)} setting(s): {h.done}/{h.expected} runs done, "
        f"{len(h.not_done)} not done, {len(h.missing)} missing. Wrote {args.out}/report.md"
    )
    if args.dashboard:
        return _dashboard(report, records, Path(args.out), *args.dashboard, command)
    return 0


def _dashboard(
    report: SweepReport, records: list[RunRecord], out: Path, entity: str, project: str, command: str
) -> int:
    """Build the sweep's W&B report; save it, or say what to sync first. Returns the exit code."""
    from sft_sweeps.report.dashboard import (
        SPEC_NAME,
        DashboardError,
        build_dashboard,
        foreign_projects,
        offline_runs,
        sync_command,
        write_spec,
    )

    try:
        dashboard = build_dashboard(report, (out / "table.md").read_text(), entity, project, command)
    except DashboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    spec = write_spec(dashboard, out / SPEC_NAME)
    print(f"Wrote the W&B report's spec to {spec}")
    for where in foreign_projects(records, entity, project):
        print(f"warning: some runs were logged to {where}; the report shows runs of {entity}/{project}")
    unsynced, missing = offline_runs(records)
    for source in missing:
        print(f"warning: {source} is an offline W&B run with no wandb/offline-run-* folder next to it")
    if unsynced:
        print(f"{len(unsynced)} offline W&B run folder(s) not synced yet. Sync them, then save the report:")
        print(f"  {sync_command(unsynced, entity, project)}")
        print(f"  {shlex.join(['python', '-m', 'sft_sweeps.report', '--dashboard-from', str(spec)])}")
        return 0
    return _save(dashboard)


def _save_spec(path: str) -> int:
    from sft_sweeps.report.dashboard import DashboardError, read_spec

    try:
        dashboard = read_spec(path)
    except DashboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return _save(dashboard)


def _save(dashboard: wr.Report) -> int:
    from sft_sweeps.report.dashboard import DashboardError, save_dashboard

    try:
        url = save_dashboard(dashboard)
    except DashboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"W&B report: {url}")
    return 0


if __name__ == "__main__":
    # A missing, torn or malformed result.json: one line naming the file.
    with errors_reported(RecordError, FileNotFoundError):
        sys.exit(main())
