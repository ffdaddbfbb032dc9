"""Tables a paper takes as they are (issue 23): the main table holds the registry's headline metrics
under short names, breakdowns and bookkeeping go to their own tables, constant columns are left out and
listed, Markdown tables stay narrow, and every LaTeX table compiles without an overfull box."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sft_sweeps.identity import RunRecord
from sft_sweeps.report import write_report
from tests.test_report import BASE, make_record
from tests.test_report_settings import _long_setting_records

TABLE_ROW = re.compile(r"^\|.*\|$")


@pytest.fixture(scope="module")
def base_config() -> dict:
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    return OmegaConf.to_container(compose_config(["masking=weighted"]), resolve=True, enum_to_str=True)


def _records(base: dict) -> list[RunRecord]:
    """4 strategies x 3 seeds with per-task breakdowns and counts beside the headline metrics."""
    records = []
    for strategy in BASE:
        for seed in (0, 1, 2):
            record = make_record(base, strategy, seed)
            metrics = record["metrics"]
            for task, shift in (("fact_recall", 0.05), ("format_persistence", -0.05)):
                metrics[f"synthetic/{task}/turn_exact_match"] = metrics["turn_exact_match"] + shift
                metrics[f"nll/{task}/assistant_nll"] = metrics["assistant_nll"] - shift
                metrics[f"nll/{task}/num_conversations"] = 100.0
            metrics.update({"synthetic/num_turns": 400.0, "nll/num_scored_tokens": 5000.0})
            metrics["synthetic/own_history_exact_match"] = metrics["turn_exact_match"] - 0.1
            records.append(RunRecord.from_dict(record, f"{strategy}-{seed}"))
    return records


def _md_tables(text: str) -> list[list[str]]:
    """The header row of every Markdown table in `text`, split into cells."""
    lines = text.splitlines()
    return [
        [c.strip() for c in line.strip("|").split(" | ")]
        for i, line in enumerate(lines)
        if TABLE_ROW.match(line) and (i == 0 or not TABLE_ROW.match(lines[i - 1]))
    ]


def test_main_table_holds_headline_metrics_with_short_names(base_config: dict, tmp_path: Path) -> None:
    write_report(_records(base_config), tmp_path)
    table = (tmp_path / "table.md").read_text()
    (header,) = _md_tables(table)
    # turn EM, conversation success and NLL: the registry's headline metrics; stop rate (1.000 for every
    # strategy and seed) is left out and listed; per-task breakdowns and counts are not in it.
    assert header == ["strategy", "n", "turn EM ↑", "conv ↑", "nll ↓"]
    assert (
        "Left out (every strategy ties on every seed, no variance): `stop` 1.000 (`synthetic/stop_rate`)"
        in table
    )
    assert "`turn EM`: `synthetic/turn_exact_match`" in table  # the legend names each short column

    report = (tmp_path / "report.md").read_text()
    headers = _md_tables(report)
    assert all(len(h) <= 8 for h in headers), [h for h in headers if len(h) > 8]
    assert ["strategy", "n", "fact_recall", "format_persistence"] in headers  # by task
    assert ["strategy", "turn 1", "turn 2"] in headers  # by turn depth
    bookkeeping = report.split("### Bookkeeping", 1)[1]
    assert (
        "train loss" in bookkeeping and "turns" in bookkeeping and "fact_recall conversations" in bookkeeping
    )
    results = report.split("### Results", 1)[1].split("###", 1)[0]
    assert "fact_recall" not in results and "num_" not in results and "train" not in results

    summary = (tmp_path / "summary.csv").read_text().splitlines()
    kinds = {line.split(",")[1] for line in summary[1:]}
    assert kinds == {"main", "constant", "task", "bookkeeping", "other"}
    assert "synthetic/fact_recall/turn_exact_match" in (tmp_path / "summary.csv").read_text()
    assert (tmp_path / "by_depth.csv").read_text().count("\n") == 1 + 4 * 2  # 4 strategies x 2 turns


def _compile(tex_dir: Path, documentclass: str, name: str) -> str:
    (tex_dir / f"{name}.tex").write_text(
        f"\\documentclass{documentclass}{{article}}\n\\usepackage{{booktabs}}\n\\usepackage{{graphicx}}\n"
        "\\begin{document}\n\\input{tables}\n\\end{document}\n"
    )
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
        cwd=tex_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tex_dir / f"{name}.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    return log


@pytest.mark.skipif(
    shutil.which("pdflatex") is None or shutil.which("kpsewhich") is None,
    reason="pdflatex not installed (scripts/install_tex.sh installs it; CI runs it)",
)
def test_tex_tables_fit_linewidth(base_config: dict, tmp_path: Path) -> None:
    """Every generated table, in a one-column and a two-column article: no `Overfull \\hbox`."""
    if subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True).returncode != 0:
        pytest.skip("booktabs.sty not installed (scripts/install_tex.sh installs texlive-latex-recommended)")
    long = [RunRecord.from_dict(r, f"long{i}") for i, r in enumerate(_long_setting_records(base_config))]
    for name, records in (("plain", _records(base_config)), ("long", long)):
        out = tmp_path / name
        write_report(records, out)
        for documentclass, doc in (("", "onecolumn"), ("[twocolumn]", "twocolumn")):
            log = _compile(out, documentclass, doc)
            assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)
            assert "tables.tex" in log  # the generated file was typeset


# --- the README's numbers are the shipped report's, and `make paper` writes the shipped report ----------

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "reports" / "lr_tuning"
PAPER_COMMAND = (
    "python -m sft_sweeps.report reports/lr_tuning/runs.csv --select-key train.learning_rate "
    "--out reports/lr_tuning"
)


def test_readme_quotes_the_shipped_table_and_its_numbers() -> None:
    readme = (ROOT / "README.md").read_text()
    quoted = re.search(
        r"<!-- reports/lr_tuning/table.md [^>]*-->\n(.*?)\n"
        r"<!-- end of reports/lr_tuning/table.md -->",
        readme,
        re.S,
    )
    assert quoted, "README: no quoted reports/lr_tuning/table.md block"
    assert quoted.group(1) == (SHIPPED / "table.md").read_text().rstrip("\n")
    # The prose after it quotes numbers of the report: each is in the shipped files.
    prose = readme[quoted.end() :].split("\n\n", 2)[1]
    shipped = (SHIPPED / "table.md").read_text() + (SHIPPED / "report.md").read_text()
    numbers = re.findall(r"\d+\.\d{3}", prose)
    assert len(numbers) >= 5, prose
    assert [n for n in numbers if n not in shipped] == []
    for seeds in re.findall(r"~(\d+) are needed", prose):
        assert f"needs ~{seeds} seeds" in shipped


def test_shipped_report_is_what_make_paper_writes(tmp_path: Path) -> None:
    """`make paper` (its recipe is PAPER_COMMAND) rebuilds reports/lr_tuning byte for byte; its runs come
    from one clean commit."""
    from sft_sweeps.report import OUTPUTS, load_records

    assert (
        PAPER_COMMAND
        in subprocess.run(["make", "-n", "paper"], cwd=ROOT, capture_output=True, text=True).stdout
    )
    from sft_sweeps.report.analysis import Selection

    selection = Selection(("train.learning_rate",))
    report = write_report(load_records(str(SHIPPED / "runs.csv")), tmp_path, PAPER_COMMAND, selection)
    # Every run from one commit, none with uncommitted changes: the table can be reproduced from it.
    assert len(report.hygiene.commits) == 1 and "+dirty" not in report.hygiene.commits[0]
    # 4 strategies x 3 rates on seeds 0-2, the chosen rates on seeds 3-9: all done, none missing.
    assert report.hygiene.done == report.hygiene.expected == 4 * 3 * 3 + 4 * 7
    (setting,) = report.settings
    assert all(seeds == [0, 1, 2] for seeds in setting.selection_seeds.values())
    assert all(len(seeds) == 10 for seeds in setting.seeds.values())
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), f"{name}: run `make paper`"
