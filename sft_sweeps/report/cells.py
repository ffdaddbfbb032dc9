"""Cells and Markdown tables as every report table shows them: a mean with its confidence interval, and a
GitHub Markdown table (`tabulate`'s pipe format). Apart from `render` so that the benchmark sections
(`report.benchmarks`), which `render` includes, build on them without importing `render`.
"""

from __future__ import annotations

from tabulate import tabulate

from sft_sweeps.metrics import fmt
from sft_sweeps.report.stats import MeanCI


def fmt_ci(m: MeanCI | None, pm: str = "±") -> str:
    if m is None:
        return "—"
    if m.half_width is None:
        return f"{fmt(m.mean)} (n=1)"
    return f"{fmt(m.mean)} {pm} {fmt(m.half_width)}"


def md_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A GitHub Markdown table (`tabulate`'s pipe format); `align` is one letter per column (l or r),
    default l then r. Cells are taken as they are (no number parsing), `|` escaped."""
    align = align or "l" + "r" * (len(headers) - 1)
    colalign = tuple("right" if a == "r" else "left" for a in align)
    cells = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    if not cells:  # tabulate drops the alignment row of an empty table
        cells = [["" for _ in headers]]
    return tabulate(cells, headers=headers, tablefmt="pipe", colalign=colalign, disable_numparse=True) + "\n"
