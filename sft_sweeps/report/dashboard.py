"""A W&B report (dashboard) for a sweep: its strategies side by side, built with `wandb-workspaces`.

`python -m sft_sweeps.report <sweep dir> --dashboard ENTITY/PROJECT` writes the usual report, then builds a
`wandb_workspaces.reports.v2.Report`: one run set per setting, filtered to the sweep's runs (config key
`sweep_name`) and grouped by the masking label (config key `strategy`, logged by
`sft_sweeps.tracking.make_tracker`); bars and curves show the mean over seeds with a standard-error band.
Its panels: the headline metric(s) of every benchmark the runs carry (`sft_sweeps.metrics.headline_keys`),
those metrics by turn depth, and the training loss against the optimizer step; then the report's
`table.md` and its best picks as Markdown.

The report's specification (the library's own model, as JSON) is written to `<out>/wandb_report.json`
without any server: the run sets name no project until the report is saved (saving looks the project up),
so the file can be built later, from any machine, with `python -m sft_sweeps.report --dashboard-from FILE`.

Example:
    >>> report = write_report(records, "reports/x")                           # doctest: +SKIP
    >>> dashboard = build_dashboard(report, table_md, "my-team", "sft_sweeps")  # doctest: +SKIP
    >>> write_spec(dashboard, "reports/x/wandb_report.json")                    # doctest: +SKIP
    >>> print(save_dashboard(dashboard))                                        # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import wandb_workspaces.reports.v2 as wr
from pydantic import ValidationError
from wandb_workspaces import expr
from wandb_workspaces.reports.v2 import internal

from sft_sweeps.identity import RunRecord
from sft_sweeps.metrics import headline_keys, lookup, lower_is_better, short_name
from sft_sweeps.report.analysis import Run, SettingReport, SweepReport
from sft_sweeps.report.render import pick_line

SPEC_NAME = "wandb_report.json"
# The config key holding the masking label (`sft_sweeps.tracking.masking_label`); W&B groups by it.
STRATEGY_KEY = "strategy"
# What `sft_sweeps.tracking.Tracker.log_train` logs: the Trainer's loss against the optimizer step.
TRAIN_LOSS, TRAIN_STEP = "train/loss", "train/global_step"
# How a panel aggregates the runs (seeds) of a strategy: their mean, and a standard-error band.
AGG, BAND = "mean", "stderr"
# Characters W&B does not accept in entity or project names.
_NAME = re.compile(r"^[^/\s\\#?%:]+$")


class DashboardError(ValueError):
    """The dashboard cannot be built or saved; the message names what and why, in one line."""


def parse_entity_project(text: str) -> tuple[str, str]:
    """Split `ENTITY/PROJECT`.

    Raises:
        DashboardError: not two non-empty names separated by one `/` (or a name W&B would refuse).
    """
    parts = text.split("/")
    if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
        raise DashboardError(f"expected ENTITY/PROJECT (e.g. my-team/sft_sweeps), got {text!r}")
    return parts[0], parts[1]


def _tracked(runs: Iterable[Run]) -> list[Run]:
    """Runs that are W&B runs (a `logger=none` run has no W&B run id)."""
    return [run for run in runs if (run.record.wandb or {}).get("run_id")]


def panel_metrics(records: Iterable[RunRecord]) -> list[str]:
    """The headline metric keys the done records carry, overall only (no per-task breakdown).

    A breakdown key (`synthetic/state_tracking/turn_exact_match`, or `state_tracking/turn_exact_match`
    in records without a benchmark prefix) is left out: only a metric's own name or `<benchmark>/<name>`
    count as overall.
    """
    keys = set()
    for record in records:
        if record.status == "done":
            keys.update(record.metrics)
    overall = {k for k in keys if (m := lookup(k)) is not None and k in (m.name, m.key)}
    return headline_keys(overall)


def _depths(records: Iterable[RunRecord], key: str) -> list[str]:
    depths = {d for record in records for d in (record.by_depth.get(key) or {})}
    return sorted(depths, key=lambda d: (not d.isdigit(), int(d) if d.isdigit() else 0, d))


def _title(key: str) -> str:
    metric = lookup(key)
    benchmark = metric.benchmark if metric is not None else key.split("/")[0]
    return f"{short_name(key)} ({benchmark}, {'lower' if lower_is_better(key) else 'higher'} is better)"


def _grouped(**kwargs: Any) -> dict[str, Any]:
    return {"groupby": wr.Config(STRATEGY_KEY), "groupby_aggfunc": AGG, "groupby_rangefunc": BAND, **kwargs}


def panels(records: list[RunRecord]) -> list[Any]:
    """The panels of one setting: headline metrics, the same by turn depth, and the training loss.

    Args:
        records: the records of the setting's W&B runs.
    """
    heads = panel_metrics(records)
    grid: list[Any] = [
        wr.BarPlot(title=_title(key), metrics=[key], layout=wr.Layout(w=8, h=6), **_grouped())
        for key in heads
    ]
    for key in heads:
        depths = _depths(records, key)
        if depths:  # the W&B summary holds them as `by_depth/<metric>/<depth>` (sft_sweeps.pipeline)
            grid.append(
                wr.BarPlot(
                    title=f"{_title(key)} by turn depth {depths[0]}..{depths[-1]}",
                    metrics=[f"by_depth/{key}/{d}" for d in depths],
                    orientation="v",
                    layout=wr.Layout(w=12, h=8),
                    **_grouped(),
                )
            )
    grid.append(
        wr.LinePlot(
            title="training loss (each strategy over its own tokens: not comparable across strategies)",
            x=TRAIN_STEP,
            y=[TRAIN_LOSS],
            title_x="optimizer step",
            layout=wr.Layout(w=24, h=8),
            **_grouped(),
        )
    )
    return grid


def runset(sweeps: list[str], name: str, run_ids: list[str] | None = None) -> wr.Runset:
    """The runs of `sweeps` (config `sweep_name`), grouped by masking label; only `run_ids` when given.

    No entity or project: `save_dashboard` sets them (naming one makes the library ask the server).

    Raises:
        DashboardError: a sweep name the library's filter syntax would change (it rewrites `=`).
    """
    sweep = expr.Config("sweep_name")
    filters = [sweep == sweeps[0] if len(sweeps) == 1 else sweep.isin(sweeps)]
    if run_ids:
        filters.append(expr.Metric("ID").isin(run_ids))
    runs = wr.Runset(name=name, filters=filters, groupby=[f"config.{STRATEGY_KEY}"])
    kept = runs._to_model().filters["filters"][0]["value"]
    if kept != (sweeps[0] if len(sweeps) == 1 else sweeps):
        raise DashboardError(
            f"sweep name(s) {sweeps} cannot be filtered on in W&B as written (became {kept})"
        )
    return runs


def _picks_md(settings: list[SettingReport]) -> str:
    parts = []
    for setting in settings:
        lines = "".join(pick_line(p) for p in setting.picks) or "- no metric has results\n"
        parts.append(f"**{setting.name}**\n\n{lines}" if len(settings) > 1 else lines)
    return "\n".join(parts)


def build_dashboard(
    report: SweepReport, table_md: str, entity: str, project: str, command: str = ""
) -> wr.Report:
    """The W&B report of a sweep, built from its records (no server needed).

    Args:
        report: the analysis `write_report` returned.
        table_md: the `table.md` it wrote.
        entity: W&B entity of the report (and of the runs it shows).
        project: W&B project of the report (and of the runs it shows).
        command: the command that built it, quoted in the report.

    Returns:
        The report, unsaved (`save_dashboard` saves it).

    Raises:
        DashboardError: no record is a W&B run (all ran with `logger=none`).
    """
    tracked = _tracked(report.runs)
    if not tracked:
        raise DashboardError(
            f"none of the {len(report.runs)} records is a W&B run (they ran with logger=none); "
            "rerun the sweep with logger=wandb"
        )
    sweeps = sorted({run.sweep for run in tracked})
    settings = [s for s in report.settings if any(run.setting == s.name for run in tracked)]
    intro = (
        f"Runs of sweep {', '.join(f'`{s}`' for s in sweeps)} in `{entity}/{project}`, grouped by masking "
        f"strategy (config key `{STRATEGY_KEY}`). Bars and curves: the {AGG} over seeds; error bars and "
        f"bands: the standard error ({BAND}). Tables and tests: `report.md` of the command below."
    )
    blocks: list[Any] = [wr.MarkdownBlock(text=intro + (f"\n\n`{command}`" if command else ""))]
    for setting in settings:
        runs = [run for run in tracked if run.setting == setting.name]
        ids = sorted(run.record.wandb["run_id"] for run in runs) if len(settings) > 1 else None
        if len(settings) > 1:
            blocks.append(wr.H2(text=setting.name))
        blocks.append(
            wr.PanelGrid(
                runsets=[runset(sweeps, setting.name, ids)], panels=panels([run.record for run in runs])
            )
        )
    blocks += [
        wr.H2(text="Results (table.md)"),
        wr.MarkdownBlock(text=table_md),
        wr.H2(text="Best pick"),
        wr.MarkdownBlock(text=_picks_md(settings)),
    ]
    title = f"{', '.join(sweeps)}: loss masking strategies"[:128]
    return wr.Report(entity=entity, project=project, title=title, description=command, blocks=blocks)


def runsets(dashboard: wr.Report) -> list[wr.Runset]:
    """Every run set of the report's panel grids."""
    return [rs for block in dashboard.blocks if isinstance(block, wr.PanelGrid) for rs in block.runsets]


def write_spec(dashboard: wr.Report, path: str | Path) -> Path:
    """Write the report's specification (the library's `ReportViewspec` model, as JSON) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=1) + "\n")
    return path


def read_spec(path: str | Path) -> wr.Report:
    """The report `write_spec` wrote.

    Raises:
        DashboardError: the file is missing or not a report specification.
    """
    path = Path(path)
    try:
        return wr.Report._from_model(internal.ReportViewspec.model_validate_json(path.read_text()))
    except (OSError, ValidationError) as e:
        reason = " ".join(str(e).split())[:200]
        raise DashboardError(f"{path}: not a W&B report specification ({reason})") from e


def save_dashboard(dashboard: wr.Report) -> str:
    """Point the run sets at the report's entity/project, save it to W&B and return its URL.

    The only step that needs a server (and a `wandb login`).

    Raises:
        DashboardError: saving failed (no login, no network, no such entity); one line saying why.
    """
    for rs in runsets(dashboard):
        rs.entity, rs.project = dashboard.entity, dashboard.project
    try:
        dashboard.save()
        return dashboard.url
    except Exception as e:  # whatever the network, the server or the login raise: one line, not a traceback
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise DashboardError(
            f"could not save the W&B report to {dashboard.entity}/{dashboard.project}: {reason[:300]}"
        ) from e


def offline_runs(records: Iterable[RunRecord]) -> tuple[list[Path], list[str]]:
    """The offline W&B run folders of local records not synced yet, and records whose folder is gone.

    A record's folder is `<run dir>/wandb/offline-run-*-<run id>` (several when the run was resumed);
    `wandb sync` leaves a `<file>.wandb.synced` marker next to each file it uploaded.

    Returns:
        (unsynced folders, sorted; sources of offline records with no folder).
    """
    unsynced: set[Path] = set()
    missing: list[str] = []
    for record in records:
        tracking = record.wandb or {}
        source = str(record.source or "")
        if tracking.get("mode") != "offline" or not tracking.get("run_id") or source.startswith("wandb:"):
            continue
        folders = sorted((Path(source).parent / "wandb").glob(f"offline-run-*-{tracking['run_id']}"))
        if not folders:
            missing.append(source)
        for folder in folders:
            if any(not f.with_suffix(".wandb.synced").exists() for f in folder.glob("*.wandb")):
                unsynced.add(folder)
    return sorted(unsynced), missing


def sync_command(folders: list[Path], entity: str, project: str) -> str:
    """The `wandb sync` line uploading `folders` to `entity/project` (paths relative when below cwd)."""
    paths = []
    for folder in folders:
        rel = os.path.relpath(folder)
        paths.append(rel if not rel.startswith("..") else str(folder))
    return shlex.join(["wandb", "sync", "--entity", entity, "--project", project, *paths])


def foreign_projects(records: Iterable[RunRecord], entity: str, project: str) -> list[str]:
    """`entity/project` of online runs logged somewhere else than where the report looks for them."""
    found = set()
    for record in records:
        if (record.wandb or {}).get("mode") != "online":
            continue
        logger = record.config.get("logger") or {}
        if logger.get("project") != project or logger.get("entity") not in (None, entity):
            found.add(f"{logger.get('entity') or '(your default entity)'}/{logger.get('project')}")
    return sorted(found)
