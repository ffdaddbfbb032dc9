"""`python -m sft_sweeps.report <sweep dir or glob> ... [--wandb entity/project] --out DIR`."""

from __future__ import annotations

import argparse
import shlex
import sys

from sft_sweeps.cli import errors_reported
from sft_sweeps.report import fetch_wandb_records, load_records, write_report
from sft_sweeps.report.records import RecordError


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
    args = parser.parse_args(argv)
    if not args.paths and not args.wandb:
        parser.error("give sweep dirs/globs, --wandb ENTITY/PROJECT, or both")

    records = load_records(args.paths) if args.paths else []
    if args.wandb:
        records += fetch_wandb_records(args.wandb)
    command = shlex.join(["python", "-m", "sft_sweeps.report", *(argv if argv is not None else sys.argv[1:])])
    report = write_report(records, args.out, command=command)
    h = report.hygiene
    print(
        f"{len(records)} records, {len(report.settings)} setting(s): {h.done}/{h.expected} runs done, "
        f"{len(h.not_done)} not done, {len(h.missing)} missing. Wrote {args.out}/report.md"
    )
    return 0


if __name__ == "__main__":
    # A missing, torn or malformed result.json: one line naming the file.
    with errors_reported(RecordError, FileNotFoundError):
        sys.exit(main())
