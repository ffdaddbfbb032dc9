"""The report: records in, tables, tests, plots and CSV out; byte-identical on a rerun."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf
from rich.console import Console
from scipy import stats as scipy_stats

from sft_sweeps.identity import RunRecord, run_group
from sft_sweeps.report import (
    RecordError,
    analyze,
    load_records,
    print_sweep_table,
    record_from_wandb_run,
    write_report,
)
from sft_sweeps.report.__main__ import main as report_main
from sft_sweeps.report.analysis import Selection
from sft_sweeps.report.render import selection_caption
from sft_sweeps.report.stats import (
    holm,
    mean_ci,
    paired_permutation,
    paired_t,
    paired_t_power,
    seeds_for_power,
)
from tests.conftest import compose_config

TEM = "synthetic/turn_exact_match"
# Per-strategy accuracy of turn k (1-based) in the fixtures: `all` best, `full` worst.
BASE = {"full": 0.30, "last": 0.45, "all": 0.60, "weighted": 0.55}
SEED_NOISE = {0: 0.00, 1: 0.03, 2: -0.02}
N_CONVERSATIONS = 30


@pytest.fixture(scope="module")
def base_config() -> dict:
    cfg = compose_config(["masking=weighted"])
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def _items(accuracy: float, seed: int) -> list[dict]:
    """Deterministic per-turn results whose mean correctness is close to `accuracy`."""
    rng = np.random.default_rng(seed + int(accuracy * 1000))
    items = []
    for c in range(N_CONVERSATIONS):
        for turn in (1, 2):
            p = accuracy + (0.1 if turn == 1 else -0.1)
            items.append(
                {
                    "id": f"test-{c}",
                    "task": "state_tracking",
                    "turn": turn,
                    "correct": (correct := bool(rng.random() < p)),
                    "own_correct": correct,
                    "stopped": True,
                    "nll": float(1.0 - p),
                }
            )
    return items


def make_record(
    base: dict,
    strategy: str,
    seed: int,
    *,
    sweep: str = "main",
    pw: float | None = None,
    status: str = "done",
    accuracy: float | None = None,
) -> dict:
    config = copy.deepcopy(base)
    config["sweep_name"], config["seed"] = sweep, seed
    config["masking"]["name"] = strategy
    config["masking"]["prompt_weight"] = pw if pw is not None else (0.1 if strategy == "weighted" else 0.0)
    record = {
        "status": status,
        "error": None,
        "config_hash": "x",
        "group": run_group(config),
        "seed": seed,
        "strategy": strategy,
        "config": config,
        "overrides": [f"masking={strategy}", f"seed={seed}"],
        "data": {"fingerprint": "f" * 64, "stats": {}, "masking": {}},
        "wall_time_s": 10.0 + seed,
        "git_commit": "abc123",
        "wandb": {"run_id": None, "mode": None},
    }
    if status != "done":
        record["error"] = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n"
        return record
    acc = (accuracy if accuracy is not None else BASE[strategy]) + SEED_NOISE[seed]
    items = _items(acc, seed)
    by_turn = {t: [i["correct"] for i in items if i["turn"] == t] for t in (1, 2)}
    conversations = [by_turn[1][c] and by_turn[2][c] for c in range(N_CONVERSATIONS)]
    record.update(
        metrics={
            "turn_exact_match": float(np.mean([i["correct"] for i in items])),
            "conversation_success": float(np.mean(conversations)),
            "stop_rate": 1.0,
            "assistant_nll": float(np.mean([i["nll"] for i in items])),
            "train_loss": 1.0 + seed / 10,
            "train_runtime_s": 9.0,
        },
        by_depth={"turn_exact_match": {str(t): float(np.mean(v)) for t, v in by_turn.items()}},
        eval_items=items,
    )
    return record


def squash(text: str) -> str:
    """Markdown with the padding of table cells collapsed: `|  all |   3 |` -> `| all | 3 |`."""
    return re.sub(r" {2,}", " ", text)


def write_sweep(root: Path, records: list[dict]) -> Path:
    for record in records:
        c = record["config"]
        run_dir = (
            root
            / c["sweep_name"]
            / f"masking={c['masking']['name']},pw={c['masking']['prompt_weight']},seed={c['seed']}"
        )
        run_dir.mkdir(parents=True)
        (run_dir / "result.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return root


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory, base_config: dict) -> Path:
    """`main`: 4 strategies x 3 seeds, `weighted` seed 2 failed, `last` seed 1 missing.
    `pw`: weighted with prompt weight 0, 0.1, 1 x 2 seeds."""
    records = [
        make_record(base_config, s, seed, status="failed" if (s, seed) == ("weighted", 2) else "done")
        for s in BASE
        for seed in (0, 1, 2)
        if (s, seed) != ("last", 1)
    ]
    records += [
        make_record(base_config, "weighted", seed, sweep="pw", pw=pw, accuracy=0.4 + pw / 5)
        for pw in (0.0, 0.1, 1.0)
        for seed in (0, 1)
    ]
    return write_sweep(tmp_path_factory.mktemp("multirun"), records)


def test_stats_known_values() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    m = mean_ci([0.4, 0.5, 0.6])
    assert m.mean == pytest.approx(0.5) and m.n == 3
    assert m.half_width == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    assert mean_ci([0.7]).half_width is None
    # 5 pairs all favouring a: exact sign-flip p = 2 / 2**5.
    assert paired_permutation([1.0] * 5, [0.0] * 5).p == pytest.approx(2 / 32)
    assert paired_permutation([1.0, 0.0], [1.0, 0.0]).p == 1.0
    assert paired_t([1.0], [0.0]).p is None
    assert paired_t([1.0, 2.0], [0.0, 1.0]).note == "differences have no variance"
    a, b = [0.5, 0.7, 0.6], [0.4, 0.5, 0.55]
    assert paired_t(a, b).p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)


def test_load_records(sweeps: Path, tmp_path: Path) -> None:
    main = load_records(str(sweeps / "main"))
    assert len(main) == 11
    assert [r.source for r in main] == sorted(r.source for r in main)
    # Written before benchmark prefixes: read under today's keys.
    assert main[0].metrics["synthetic/turn_exact_match"] == main[0].metric("synthetic/turn_exact_match")
    assert isinstance(main[0].items_for("synthetic"), list) and main[0].items_for("judge") is None
    assert len(load_records([str(sweeps / "*"), str(sweeps / "main")])) == 17  # read once each
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_records(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad" / "run"
    bad.mkdir(parents=True)
    (bad / "result.json").write_text("{not json")
    with pytest.raises(RecordError, match=r"bad/run/result.json: not valid JSON"):
        load_records(str(tmp_path / "bad"))
    (bad / "result.json").write_text(json.dumps({"status": "done", "seed": 0}))
    with pytest.raises(RecordError, match="result.json: record has no field 'config'"):
        load_records(str(bad))
    record = json.loads(Path(main[0].source).read_text())
    record["metrics"]["turn_exact_match"] = "high"
    (bad / "result.json").write_text(json.dumps(record))
    with pytest.raises(RecordError, match="field 'metrics.turn_exact_match' must be a number"):
        load_records(str(bad))


def test_analysis_of_a_sweep_with_a_failed_and_a_missing_run(sweeps: Path) -> None:
    report = analyze(load_records(str(sweeps / "main")))
    h = report.hygiene
    assert (h.expected, h.done, len(h.not_done), len(h.missing)) == (12, 10, 1, 1)
    assert (h.not_done[0].strategy, h.not_done[0].seed, h.not_done[0].status) == (
        "weighted(pw=0.1)",
        2,
        "failed",
    )
    assert h.not_done[0].error_line() == "RuntimeError: CUDA out of memory"
    assert (h.missing[0].strategy, h.missing[0].seed, h.missing[0].overrides) == (
        "last",
        1,
        "masking=last seed=1",
    )

    (setting,) = report.settings
    assert setting.name == "main"
    assert setting.strategies == ["full", "last", "all", "weighted(pw=0.1)"]
    assert setting.seeds == {"full": [0, 1, 2], "last": [0, 2], "all": [0, 1, 2], "weighted(pw=0.1)": [0, 1]}
    assert setting.eval_metrics[:4] == [
        "synthetic/turn_exact_match",
        "synthetic/conversation_success",
        "synthetic/stop_rate",
        "nll/assistant_nll",
    ]
    assert setting.train_metrics == ["train_loss", "train_runtime_s"]

    # Means and intervals over done runs only, checked against numpy/scipy on the raw records.
    records = {
        (r.config["masking"]["name"], r.seed): r.metrics
        for r in load_records(str(sweeps / "main"))
        if r.status == "done"
    }
    values = [records[("all", s)][TEM] for s in (0, 1, 2)]
    cell = setting.summary[TEM]["all"]
    assert cell.mean == pytest.approx(np.mean(values))
    assert cell.half_width == pytest.approx(
        scipy_stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    )
    weighted = [records[("weighted", s)][TEM] for s in (0, 1)]
    assert setting.summary[TEM]["weighted(pw=0.1)"].mean == pytest.approx(np.mean(weighted))

    picks = {p.metric: p for p in setting.picks}
    assert picks[TEM].best == "all" and picks[TEM].tied == ["all"]
    # stop_rate is 1.0 everywhere: a four-way tie, never significant.
    assert (
        sorted(picks["synthetic/stop_rate"].tied) == sorted(setting.strategies)
        and not picks["synthetic/stop_rate"].significant
    )
    # NLL: lower is better, so the best has the smallest mean.
    nll = setting.summary["nll/assistant_nll"]
    assert picks["nll/assistant_nll"].best == min(nll, key=lambda s: nll[s].mean)

    comparisons = {c.strategy: c for c in setting.comparisons[TEM]}
    full = comparisons["full"]
    a = [records[("all", s)][TEM] for s in (0, 1, 2)]
    b = [records[("full", s)][TEM] for s in (0, 1, 2)]
    assert full.seeds.n == 3 and full.seeds.p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert comparisons["last"].seeds.n == 2  # seeds paired: last has no seed 1
    assert full.gap == pytest.approx(np.mean(b) - np.mean(a))
    raw = [c.seeds.p for c in setting.comparisons[TEM]]
    adjusted = [c.seeds_p_holm for c in setting.comparisons[TEM]]
    assert adjusted == pytest.approx(holm(raw))
    # Items: 60 turns averaged over 3 seeds; all is far ahead of full.
    assert full.items.n == 2 * N_CONVERSATIONS and full.items.p < 0.01
    assert setting.comparisons["synthetic/conversation_success"][0].items.n == N_CONVERSATIONS
    assert picks[TEM].runner_up == "weighted(pw=0.1)"
    assert picks[TEM].test == "seeds"
    assert setting.by_depth[TEM]["all"][1].n == 3


def test_missing_weighted_run_names_its_overrides(sweeps: Path) -> None:
    records = [r for r in load_records(str(sweeps / "main")) if (r.strategy, r.seed) != ("weighted", 0)]
    missing = {(m.strategy, m.seed): m.overrides for m in analyze(records).hygiene.missing}
    assert missing[("weighted(pw=0.1)", 0)] == "masking=weighted masking.prompt_weight=0.1 seed=0"


def test_a_sweep_where_every_run_failed(base_config: dict, tmp_path: Path) -> None:
    records = [make_record(base_config, s, 0, status="failed") for s in ("full", "all")]
    report = write_report([RunRecord.from_dict(r, f"r{i}") for i, r in enumerate(records)], tmp_path)
    assert report.hygiene.done == 0 and len(report.hygiene.not_done) == 2
    assert "No completed run" in (tmp_path / "report.md").read_text()
    console = Console(record=True, width=200)
    print_sweep_table(str(write_sweep(tmp_path / "runs", records)), console=console)
    assert "0/2 runs done" in console.export_text()


def test_report_outputs_are_complete_and_byte_identical(sweeps: Path, tmp_path: Path) -> None:
    records = load_records([str(sweeps / "main"), str(sweeps / "pw")])
    write_report(records, tmp_path / "a", command="python -m sft_sweeps.report X")
    write_report(
        load_records([str(sweeps / "pw"), str(sweeps / "main")]),
        tmp_path / "b",
        command="python -m sft_sweeps.report X",
    )
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert {
        "report.md",
        "table.md",
        "tables.tex",
        "runs.csv",
        "depth_synthetic_turn_exact_match_main.png",
        "prompt_weight_pw.png",
    } <= set(files)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    png = (tmp_path / "a" / "prompt_weight_pw.png").read_bytes()
    assert png.startswith(b"\x89PNG") and b"matplotlib" not in png.lower()
    report = squash((tmp_path / "a" / "report.md").read_text())
    assert "RuntimeError: CUDA out of memory" in report
    assert "`masking=last seed=1`" in report
    assert "| all | 3 | **" in report  # the best turn_exact_match, in bold
    assert "Holm" in report and "![depth_synthetic_turn_exact_match_main.png]" in report
    table = squash((tmp_path / "a" / "table.md").read_text())
    # The headline metrics under their short names; the stop rate (1.000 everywhere) is left out, listed.
    assert "| strategy | n | turn EM ↑ | conv ↑ | nll ↓ |" in table
    assert "Left out (every strategy ties on every seed, no variance): `stop` 1.000" in table
    assert table.rstrip().endswith("never averaged). Regenerate: `python -m sft_sweeps.report X`")
    # The seed spread of each strategy: per seed in report.md, sd and range in table.md.
    assert "### Seed spread" in report and "| synthetic/turn_exact_match | all | 3 |" in report
    assert "- seed spread of synthetic/turn_exact_match (sd [min, max] over seeds): `full` " in table
    tex = (tmp_path / "a" / "tables.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"weighted(pw=0.1)" in tex
    assert r"turn EM $\uparrow$" in tex and r"\texttt{synthetic/turn\_exact\_match}" in tex
    rows = (tmp_path / "a" / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + len(records)
    assert rows[0].startswith("setting,sweep,strategy,seed,status,group,")
    assert sum(",failed," in row for row in rows) == 1


def test_cli(sweeps: Path, tmp_path: Path) -> None:
    assert report_main([str(sweeps / "main"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "table.md").read_text()
    assert f"Regenerate: `python -m sft_sweeps.report {sweeps / 'main'} --out {tmp_path / 'out'}`" in text
    with pytest.raises(SystemExit):
        report_main([])


@pytest.mark.slow
def test_module_entry_point(sweeps: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sft_sweeps.report", str(sweeps / "pw"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "6/6 runs done" in result.stdout and (tmp_path / "prompt_weight_pw.png").exists()


def test_print_sweep_table(sweeps: Path, tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    print_sweep_table(str(sweeps / "main"), console=console)
    text = console.export_text()
    assert "10/12 runs done" in text
    assert "masking=last seed=1" in text and "RuntimeError: CUDA out of memory" in text
    assert "turn EM↑" in text and "weighted(pw=0.1)" in text
    print_sweep_table(str(tmp_path / "empty"), console=console)  # never raises
    assert "no sweep table" in console.export_text()


def test_record_from_wandb_run(base_config: dict) -> None:
    config = copy.deepcopy(base_config)
    config["seed"] = 1
    run = SimpleNamespace(
        id="abc",
        path=["team", "proj", "abc"],
        group=run_group(config),
        state="finished",
        config={**config, "_wandb": {"x": 1}},
        summary={
            "turn_exact_match": 0.5,
            "train/loss": 1.0,
            "_runtime": 12.0,
            "status": "done",
            "by_depth/turn_exact_match/1": 0.7,
            "data/kept": 10.0,
            "eval_items": {"_type": "table-file"},
        },
    )
    record = record_from_wandb_run(run)
    assert record.status == "done" and record.seed == 1 and record.label == "weighted(pw=0.1)"
    assert record.metrics == {TEM: 0.5}
    assert record.by_depth == {TEM: {"1": 0.7}}
    assert record.source == "wandb:team/proj/abc" and "_wandb" not in record.config
    assert record.wall_time_s == 12.0
    crashed = record_from_wandb_run(SimpleNamespace(**{**vars(run), "state": "crashed", "summary": {}}))
    assert crashed.status == "failed" and crashed.error == "W&B run state: crashed"
    crashed.seed, crashed.config = 2, {**record.config, "seed": 2}
    report = analyze([record, crashed])
    assert report.hygiene.done == 1 and len(report.hygiene.not_done) == 1


def test_judge_grades_are_paired_over_items_graded_in_both_runs(base_config: dict) -> None:
    """An ungraded item (parse failure, `grade: None`) is left out of the pairing, not averaged in as a
    number, and does not switch the item test off."""

    def judged(strategy: str, seed: int, grades: list[float | None]) -> RunRecord:
        config = copy.deepcopy(base_config)
        config["masking"]["name"], config["seed"] = strategy, seed
        config["masking"]["prompt_weight"] = 0.1 if strategy == "weighted" else 0.0
        items = [{"id": f"q{i}", "turn": 1, "grade": g} for i, g in enumerate(grades)]
        graded = [g for g in grades if g is not None]
        return RunRecord.from_dict(
            {
                "status": "done",
                "seed": seed,
                "config": config,
                "metrics": {"judge/mean_grade": sum(graded) / len(graded)},
                "eval_items": {"judge": items},
            },
            f"{strategy}-{seed}",
        )

    best = [8.0, 9.0, None, 7.0, 8.0, 9.0]
    other = [3.0, None, 2.0, 4.0, 3.0, 2.0]
    records = [judged("all", s, best) for s in (0, 1)] + [judged("last", s, other) for s in (0, 1)]
    (setting,) = analyze(records).settings
    (comparison,) = setting.comparisons["judge/mean_grade"]
    assert comparison.items is not None and comparison.items.n == 4  # q0, q3, q4, q5: graded in both


def test_seeds_for_power_known_values() -> None:
    """Paired t-test, two-sided alpha 0.05, 80% power: G*Power needs 34, 15, 10 pairs at d_z 0.5, 0.8, 1."""
    assert paired_t_power(1.0, 10) == pytest.approx(0.8031, abs=1e-3)
    assert paired_t_power(0.5, 34) == pytest.approx(0.8078, abs=1e-3)
    for effect, pairs in ((0.5, 34), (0.8, 15), (1.0, 10)):
        # differences with mean `effect` and standard deviation 1
        d = np.array([-1.0, 0.0, 1.0]) + effect
        needed = seeds_for_power(d.tolist(), [0.0, 0.0, 0.0])
        assert needed.n == pairs and needed.effect_size == pytest.approx(effect)
        assert needed.text() == f"{pairs} seeds"
    assert seeds_for_power([1.0, 2.0], [1.0, 2.0]).note == "differences have no variance"
    assert seeds_for_power([1.0], [0.0]).n is None
    assert seeds_for_power([0.1, -0.1, 0.0], [0.0, 0.0, 0.0]).text() == ">1000 seeds"  # no difference at all


def _with_tem(base: dict, strategy: str, seed: int, value: float, **kw) -> dict:
    record = make_record(base, strategy, seed, **kw)
    record["metrics"]["turn_exact_match"] = value
    return record


def test_a_pick_that_is_not_significant_says_how_many_seeds_it_needs(
    base_config: dict, tmp_path: Path
) -> None:
    best, runner = [0.60, 0.70, 0.50], [0.58, 0.62, 0.55]
    records = [_with_tem(base_config, "all", s, v, sweep="close") for s, v in enumerate(best)]
    records += [_with_tem(base_config, "weighted", s, v, sweep="close") for s, v in enumerate(runner)]
    records += [_with_tem(base_config, "full", s, 0.1, sweep="close") for s in range(3)]
    write_sweep(tmp_path / "runs", records)
    report = write_report(load_records(str(tmp_path / "runs")), tmp_path / "out", command="X")
    pick = next(p for p in report.settings[0].picks if p.metric == TEM)
    assert pick.best == "all" and pick.runner_up == "weighted(pw=0.1)" and not pick.significant
    expected = seeds_for_power(best, runner)
    assert pick.seeds_needed == expected and 100 < expected.n < 200  # d_z = 0.26
    line = f"needs ~{expected.n} seeds for 80% power"
    assert line in (tmp_path / "out" / "table.md").read_text()
    report_md = squash((tmp_path / "out" / "report.md").read_text())
    assert line in report_md or f"| {expected.n} seeds |" in report_md
    assert "seeds for 80% power" in report_md
    # The held-out split it rests on, and the items a paired test over them would need (issue 25).
    assert pick.num_items == 2 * N_CONVERSATIONS and pick.items_needed is not None
    assert f"held-out items (it has {2 * N_CONVERSATIONS})" in (tmp_path / "out" / "table.md").read_text()
    # A four-way tie or a significant pick names no seed count.
    stop = next(p for p in report.settings[0].picks if p.metric == "synthetic/stop_rate")
    assert stop.seeds_needed is None


LR_TEST = {  # strategy -> learning rate -> (validation, test) score; validation and test disagree for `all`
    "full": {1e-3: (0.20, 0.21), 3e-3: (0.30, 0.31)},
    "all": {1e-3: (0.70, 0.50), 3e-3: (0.60, 0.80)},
}


def _lr_records(base: dict, with_validation: bool = True) -> list[dict]:
    records = []
    for strategy, by_lr in LR_TEST.items():
        for lr, (validation, test) in by_lr.items():
            for seed in (0, 1, 2):
                record = make_record(base, strategy, seed, sweep="lr")
                record["config"]["train"]["learning_rate"] = lr
                record["optimized_metric"] = TEM  # resolved by the pipeline (null in the config)
                record["metrics"]["turn_exact_match"] = test + SEED_NOISE[seed]
                if with_validation:
                    record["metrics"]["validation/synthetic/turn_exact_match"] = validation + SEED_NOISE[seed]
                records.append(record)
    return records


def _write_runs(root: Path, records: list[dict]) -> Path:
    for i, record in enumerate(records):
        (root / f"run{i}").mkdir(parents=True)
        (root / f"run{i}" / "result.json").write_text(json.dumps(record))
    return root


def test_selection_picks_on_validation_and_compares_on_test(base_config: dict, tmp_path: Path) -> None:
    records = load_records(str(_write_runs(tmp_path / "runs", _lr_records(base_config))))
    plain = analyze(records)  # without selection, every learning rate is its own setting
    assert [s.name for s in plain.settings] == [
        "lr | train.learning_rate=0.001",
        "lr | train.learning_rate=0.003",
    ]
    assert all("validation/synthetic/turn_exact_match" not in s.eval_metrics for s in plain.settings)
    assert all("validation/synthetic/turn_exact_match" not in s.train_metrics for s in plain.settings)

    (setting,) = analyze(records, Selection(("train.learning_rate",))).settings
    assert setting.name == "lr" and setting.selection_metric == "validation/synthetic/turn_exact_match"
    # `all` keeps 1e-3 (best on validation) although 3e-3 is better on test: never selected on test.
    assert setting.chosen("all") == ("train.learning_rate=0.001",)
    assert setting.chosen("full") == ("train.learning_rate=0.003",)
    assert setting.summary[TEM]["all"].mean == pytest.approx(0.50 + np.mean(list(SEED_NOISE.values())))
    assert setting.summary[TEM]["full"].mean == pytest.approx(0.31 + np.mean(list(SEED_NOISE.values())))
    scores = {c.values: c.score.mean for c in setting.candidates["all"]}
    assert scores == pytest.approx(
        {("train.learning_rate=0.001",): 0.70 + 1 / 300, ("train.learning_rate=0.003",): 0.60 + 1 / 300}
    )
    assert TEM in setting.eval_metrics and not any(m.startswith("validation/") for m in setting.eval_metrics)

    out = tmp_path / "out"
    assert (
        report_main([str(tmp_path / "runs"), "--select-key", "train.learning_rate", "--out", str(out)]) == 0
    )
    table = squash((out / "table.md").read_text())
    assert "selected on validation" in table and "compared on test" in table
    assert "| strategy | train.learning_rate (chosen) | n |" in table
    assert "| all | 0.001 | 3 |" in table and "| full | 0.003 | 3 |" in table
    report_md = (out / "report.md").read_text()
    assert "### Selection on validation (never on test)" in report_md
    assert "compared on test" in (out / "tables.tex").read_text()


def test_selection_without_validation_metrics_is_an_error(base_config: dict, tmp_path: Path, capsys) -> None:
    runs = _write_runs(tmp_path / "runs", _lr_records(base_config, with_validation=False))
    assert report_main([str(runs), "--select-key", "train.learning_rate", "--out", str(tmp_path / "o")]) == 1
    assert "records validation/synthetic/turn_exact_match" in capsys.readouterr().err


def test_selection_from_the_run_table_is_the_selection_from_the_records(
    base_config: dict, tmp_path: Path
) -> None:
    """`make paper` selects from a shipped runs.csv: the same choice and tables as from the records."""
    runs = _write_runs(tmp_path / "runs", _lr_records(base_config))
    select = ["--select-key", "train.learning_rate"]
    assert report_main([str(runs), *select, "--out", str(tmp_path / "a")]) == 0
    assert report_main([str(tmp_path / "a" / "runs.csv"), *select, "--out", str(tmp_path / "b")]) == 0
    # The run table carries every run and its optimized metric over (read back, it is the same table) ...
    assert (tmp_path / "b" / "runs.csv").read_text() == (tmp_path / "a" / "runs.csv").read_text()
    # ... so the same learning rate is chosen per strategy (its item tests need the records: not compared).
    for table in (squash((tmp_path / d / "table.md").read_text()) for d in "ab"):
        assert "| all | 0.001 | 3 |" in table and "| full | 0.003 | 3 |" in table


def test_a_two_stage_selection_keeps_its_choice_and_invents_no_missing_runs(base_config: dict) -> None:
    """Stage 1 runs every rate on seeds 0-2; stage 2 only the chosen rates on seeds 3-5. Candidates are
    scored on the seeds they all ran, so the choice holds however the extra seeds turn out, the comparison
    uses all six seeds, and the rates not chosen are not "missing" seeds 3-5."""
    records = _lr_records(base_config)
    for strategy, lr in (("all", 1e-3), ("full", 3e-3)):  # the rates chosen on seeds 0-2
        for seed in (3, 4, 5):
            record = make_record(base_config, strategy, seed % 3, sweep="lr")  # SEED_NOISE has seeds 0-2
            record["seed"] = record["config"]["seed"] = seed
            record["config"]["train"]["learning_rate"] = lr
            record["optimized_metric"] = TEM
            record["metrics"]["turn_exact_match"] = 0.4
            record["metrics"]["validation/synthetic/turn_exact_match"] = 0.0  # worse than any candidate
            records.append(record)
    loaded = [RunRecord.from_dict(r, f"run{i}") for i, r in enumerate(records)]
    report = analyze(loaded, Selection(("train.learning_rate",)))
    (setting,) = report.settings
    assert setting.selection_seeds == {"all": [0, 1, 2], "full": [0, 1, 2]}
    assert setting.chosen("all") == ("train.learning_rate=0.001",)
    assert setting.chosen("full") == ("train.learning_rate=0.003",)
    assert setting.seeds == {"all": [0, 1, 2, 3, 4, 5], "full": [0, 1, 2, 3, 4, 5]}
    assert report.hygiene.missing == [] and report.hygiene.expected == report.hygiene.done == 18
    assert "over seeds 0, 1, 2), compared on test" in selection_caption(setting)

    # A candidate not chosen that lacks a selection seed is missing, with the overrides that run it.
    dropped = [r for r in loaded if not (r.label == "all" and r.seed == 1 and _lr(r) == 3e-3)]
    missing = analyze(dropped, Selection(("train.learning_rate",))).hygiene.missing
    assert [(m.strategy, m.seed) for m in missing] == [("all", 1)]
    assert "train.learning_rate=0.003" in missing[0].overrides

    # A strategy with no run at all at one rate: each of its selection seeds there is missing.
    no_rate = [r for r in loaded if not (r.label == "full" and _lr(r) == 1e-3)]
    missing = analyze(no_rate, Selection(("train.learning_rate",))).hygiene.missing
    assert [(m.strategy, m.seed) for m in missing] == [("full", 0), ("full", 1), ("full", 2)]


def test_a_failed_run_leaves_its_seed_out_of_its_strategys_selection(base_config: dict) -> None:
    """Every candidate of a strategy is scored on the seeds all of them scored (done, metric recorded)."""
    records = _lr_records(base_config)
    for record in records:
        if record["config"]["masking"]["name"] == "all" and record["seed"] == 0 and _lr_of(record) == 3e-3:
            record["status"], record["error"] = "failed", "RuntimeError: out of memory"
    loaded = [RunRecord.from_dict(r, f"run{i}") for i, r in enumerate(records)]
    report = analyze(loaded, Selection(("train.learning_rate",)))
    (setting,) = report.settings
    assert setting.selection_seeds == {"all": [1, 2], "full": [0, 1, 2]}
    assert [c.score.n for c in setting.candidates["all"]] == [2, 2]
    assert "the seeds all of a strategy's candidates ran" in selection_caption(setting)
    assert [(r.strategy, r.seed) for r in report.hygiene.not_done] == [("all", 0)]


def _lr_of(record: dict) -> float:
    return record["config"]["train"]["learning_rate"]


def _lr(record: RunRecord) -> float:
    return record.config["train"]["learning_rate"]
