"""The sweep's W&B dashboard, built from the records and offline W&B files of a tiny real sweep.

Nothing here reaches a server: the report object is checked as built, and saving is checked to fail with
one line when there is no login.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import wandb_workspaces.reports.v2 as wr
from omegaconf import open_dict

from sft_sweeps.metrics import headline_keys, lookup
from sft_sweeps.pipeline import run as run_job
from sft_sweeps.report import load_records, record_from_wandb_run, write_report
from sft_sweeps.report.__main__ import main as report_main
from sft_sweeps.report.dashboard import (
    SPEC_NAME,
    STRATEGY_KEY,
    DashboardError,
    build_dashboard,
    offline_runs,
    parse_entity_project,
    read_spec,
    runsets,
    sync_command,
    write_spec,
)
from sft_sweeps.tracking import masking_label
from tests.conftest import TINY_OVERRIDES, compose_config
from tests.wandb_records import find_run_files, read_run

SWEEP = "dash"
ENTITY, PROJECT = "my-team", "sft_sweeps"
STRATEGIES = ("all", "weighted")


def _isolate_wandb(mp: pytest.MonkeyPatch, home: Path) -> None:
    """wandb's folders, settings and credentials under `home`: no login, nothing in the user's home."""
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        mp.setenv(var, str(home / var.lower()))
    mp.setenv("HOME", str(home))  # no ~/.netrc
    mp.delenv("WANDB_API_KEY", raising=False)
    mp.delenv("WANDB_MODE", raising=False)  # logger.mode decides


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two real tiny jobs (`all`, `weighted`) of sweep `dash`, logged offline to W&B."""
    root = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as mp:
        _isolate_wandb(mp, root / "home")
        for strategy in STRATEGIES:
            cfg = compose_config(
                [*TINY_OVERRIDES, f"masking={strategy}", f"sweep_name={SWEEP}", "logger=wandb"]
                + ["logger.mode=offline", f"logger.project={PROJECT}"]
            )
            with open_dict(cfg):
                cfg.cache_dir = str(root / "cache")
            assert run_job(cfg, str(root / "multirun" / SWEEP / strategy)).status == "done"
        yield root / "multirun" / SWEEP


@pytest.fixture
def no_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _isolate_wandb(monkeypatch, tmp_path / "home")


def _wandb_files(sweep: Path) -> list[Path]:
    """The `.wandb` files of the sweep's jobs (one per job here: none was resumed)."""
    return [path for run_dir in sorted(sweep.iterdir()) for path in find_run_files(run_dir)]


def _wandb_runs(sweep: Path) -> list:
    return [read_run(path) for path in _wandb_files(sweep)]


def _name(metric: str | wr.Metric) -> str:
    """A panel's metric as built (a string) or as read back (`wr.Metric`)."""
    return metric if isinstance(metric, str) else metric.name


def _built(sweep: Path, out: Path) -> tuple[list[dict], object, wr.Report]:
    records = load_records(str(sweep))
    report = write_report(records, out)
    return records, report, build_dashboard(report, (out / "table.md").read_text(), ENTITY, PROJECT, "cmd")


def test_runs_log_their_masking_label_and_records_from_wandb_ignore_it(sweep: Path) -> None:
    records = {r.wandb["run_id"]: r for r in load_records(str(sweep))}
    runs = _wandb_runs(sweep)
    assert sorted(run.config[STRATEGY_KEY] for run in runs) == sorted(
        masking_label(r.config["masking"]) for r in records.values()
    )
    for run in runs:
        record = records[run.run_id]
        # Read back as from the public API: the derived key stays out of the config, so the group is the same.
        api_run = SimpleNamespace(
            id=run.run_id,
            path=[ENTITY, PROJECT, run.run_id],
            group=run.group,
            state="finished",
            config=run.config,
            summary=run.summary,
        )
        from_wandb = record_from_wandb_run(api_run)
        assert STRATEGY_KEY not in from_wandb.config and from_wandb.config == record.config
        assert run.group == record.group


def test_dashboard_of_a_real_sweep(sweep: Path, tmp_path: Path) -> None:
    records, report, dashboard = _built(sweep, tmp_path)
    assert (dashboard.entity, dashboard.project) == (ENTITY, PROJECT)
    assert SWEEP in dashboard.title

    # One run set: the sweep's runs, grouped by the config key every run logged its masking label under.
    (runs,) = runsets(dashboard)
    assert runs.groupby == [f"config.{STRATEGY_KEY}"]
    assert runs.filters == f"Config(\"sweep_name\") == '{SWEEP}'"
    model = runs._to_model()
    assert [(f["key"], f["op"], f["value"]) for f in model.filters["filters"]] == [
        ({"section": "config", "name": "sweep_name"}, "=", SWEEP)
    ]
    assert runs.entity == "" and model.project is None  # named at save time only: no server needed here
    wandb_runs = _wandb_runs(sweep)
    assert {run.config["sweep_name"] for run in wandb_runs} == {SWEEP}
    assert {run.config[STRATEGY_KEY] for run in wandb_runs} == set(report.settings[0].strategies)

    (grid,) = [b for b in dashboard.blocks if isinstance(b, wr.PanelGrid)]
    for panel in grid.panels:
        assert panel.groupby == wr.Config(STRATEGY_KEY)
        assert (panel.groupby_aggfunc, panel.groupby_rangefunc) == ("mean", "stderr")

    # Every panel plots keys the offline W&B runs actually hold: bars the summary, curves the history.
    bars = [p for p in grid.panels if isinstance(p, wr.BarPlot)]
    for panel in bars:
        for metric in panel.metrics:
            assert all(_name(metric) in run.summary for run in wandb_runs), metric
    (curve,) = [p for p in grid.panels if isinstance(p, wr.LinePlot)]
    assert all(
        any(_name(curve.x) in row and _name(curve.y[0]) in row for row in run.history) for run in wandb_runs
    )

    # Headline bars: one per headline metric of every benchmark in the records, from the registry.
    metric_keys = {k for r in records for k in r.metrics}
    heads = [_name(p.metrics[0]) for p in bars if len(p.metrics) == 1]
    # Overall keys only: `state_tracking/turn_exact_match` is a per-task breakdown, not a headline of its own.
    overall = {k for k in metric_keys if lookup(k) is not None and k in (lookup(k).name, lookup(k).key)}
    assert heads == headline_keys(overall)
    assert set(heads) == {k for k in overall if lookup(k).headline}
    assert heads and {lookup(k).benchmark for k in heads} == {
        lookup(k).benchmark for k in metric_keys if lookup(k) is not None and lookup(k).headline
    }
    # By depth: all depths of the records' by_depth, for each headline metric that has them.
    depth_panels = {
        _name(p.metrics[0]).removeprefix("by_depth/").rsplit("/", 1)[0]: p for p in bars if len(p.metrics) > 1
    }
    assert set(depth_panels) == {k for k in heads if any(k in r.by_depth for r in records)}
    for key, panel in depth_panels.items():
        depths = {d for r in records for d in r.by_depth[key]}
        assert {_name(m) for m in panel.metrics} == {f"by_depth/{key}/{d}" for d in depths}

    texts = [b.text for b in dashboard.blocks if isinstance(b, wr.MarkdownBlock)]
    assert (tmp_path / "table.md").read_text() in texts
    picks = report.settings[0].picks
    assert picks and all(any(f"- {p.metric}:" in t for t in texts) for p in picks)


def test_spec_file_round_trips(sweep: Path, tmp_path: Path) -> None:
    _, _, dashboard = _built(sweep, tmp_path)
    path = write_spec(dashboard, tmp_path / SPEC_NAME)
    spec = json.loads(path.read_text())
    assert spec["project"] == {"name": PROJECT, "entityName": ENTITY}
    again = read_spec(path)
    assert again._to_model() == dashboard._to_model()
    assert [type(b) for b in again.blocks] == [type(b) for b in dashboard.blocks]

    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(DashboardError, match="other.json: not a W&B report specification"):
        read_spec(tmp_path / "other.json")


def test_cli_offline_sweep_prints_what_to_sync(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert report_main([str(sweep), "--out", str(out), "--dashboard", f"{ENTITY}/{PROJECT}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    folders = sorted({p.parent for p in _wandb_files(sweep)})
    assert len(folders) == len(STRATEGIES) and all(f.name.startswith("offline-run-") for f in folders)
    assert offline_runs(load_records(str(sweep))) == (folders, [])
    sync = sync_command(folders, ENTITY, PROJECT)
    assert f"  {sync}" in lines
    assert f"  python -m sft_sweeps.report --dashboard-from {out / SPEC_NAME}" in lines
    assert read_spec(out / SPEC_NAME).title.startswith(SWEEP)
    # The printed line works as printed (dry run: it names what it would upload, uploads nothing).
    argv = shlex.split(sync)
    argv[2:2] = ["--dry-run"]
    wandb_cli = str(Path(sys.executable).with_name("wandb"))
    done = subprocess.run([wandb_cli, *argv[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(str(next(f.glob("*.wandb")).name) in done.stdout + done.stderr for f in folders)


def test_save_without_login_is_one_line(
    sweep: Path, tmp_path: Path, no_login: None, capsys: pytest.CaptureFixture
) -> None:
    # Synced runs: the command goes on to save, which needs a login this machine does not have.
    copy = shutil.copytree(sweep, tmp_path / SWEEP)
    for wandb_file in _wandb_files(copy):
        wandb_file.with_suffix(".wandb.synced").touch()
    assert offline_runs(load_records(str(copy)))[0] == []
    out = tmp_path / "out"
    assert report_main([str(copy), "--out", str(out), "--dashboard", f"{ENTITY}/{PROJECT}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: could not save the W&B report to {ENTITY}/{PROJECT}: " + err[0].split(": ", 2)[2]]
    assert "wandb login" in err[0] and "Traceback" not in err[0]
    assert report_main(["--dashboard-from", str(out / SPEC_NAME)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == err


def test_bad_input_is_named(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for bad in ("my-team", "a/b/c", "/x", "a b/c"):
        with pytest.raises(DashboardError, match="expected ENTITY/PROJECT"):
            parse_entity_project(bad)
    with pytest.raises(SystemExit):
        report_main([str(sweep), "--dashboard", "my-team"])
    assert "argument --dashboard: expected ENTITY/PROJECT" in capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty"), "--dashboard", f"{ENTITY}/{PROJECT}"]) == 1
    assert f"error: no result.json found under '{tmp_path / 'empty'}'" in capsys.readouterr().err

    records = [replace(r, wandb={"run_id": None, "mode": None}) for r in load_records(str(sweep))]
    report = write_report(records, tmp_path / "none")
    with pytest.raises(DashboardError, match="none of the 2 records is a W&B run .*logger=none"):
        build_dashboard(report, "", ENTITY, PROJECT)
