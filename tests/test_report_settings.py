"""Report options and settings (issues 21, 25): options checked against the records, a sweep folder per
setting, bounded file names on long settings, one table per setting, and commands that run as printed."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from sft_sweeps.config import ConfigError, validate
from sft_sweeps.identity import RunRecord, default_sweep_name, file_slug
from sft_sweeps.report import analyze, load_records, print_sweep_table, write_report
from sft_sweeps.report.__main__ import main as report_main
from tests.conftest import compose_config
from tests.test_report import _lr_records, _write_runs, make_record

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_config() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config(["masking=weighted"]), resolve=True, enum_to_str=True)


# --- issue 21: report options validated against the records ---------------------------------------------


@pytest.mark.parametrize(
    ("key", "said"),
    [
        (
            "train.learning_rat",
            "no record has this config key; keys that vary across these records: train.learning_rate",
        ),
        ("train.max_steps", "in every record, nothing to select"),
        ("seed", "seed, sweep name and masking are never selected"),
    ],
)
def test_select_key_that_does_not_vary_is_a_usage_error(
    base_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture, key: str, said: str
) -> None:
    runs = _write_runs(tmp_path / "runs", _lr_records(base_config))
    out = tmp_path / "out"
    assert report_main([str(runs), "--select-key", key, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --select-key {key}: ") and said in err and "\n" not in err
    assert not out.exists()  # nothing written on a usage error


def test_select_metric_not_recorded_is_a_usage_error(
    base_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = _write_runs(tmp_path / "runs", _lr_records(base_config))
    argv = [str(runs), "--select-key", "train.learning_rate", "--select-metric", "validation/nll/x"]
    assert report_main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error: --select-metric validation/nll/x: no done record holds it" in err
    assert "validation/synthetic/turn_exact_match" in err  # what is recorded, to choose from


@pytest.mark.parametrize("group", ["masking", "model", "dataset", "train", "eval", "logger"])
def test_a_group_schema_is_not_an_option(group: str) -> None:
    # Hydra lists the ConfigStore schema among a group's options; chosen, it ran its defaults (`all`).
    with pytest.raises(ConfigError, match=rf"^{group}={group}_schema is the schema the {group} options"):
        validate(compose_config([f"{group}={group}_schema"]))


# --- issue 25: one sweep folder per setting --------------------------------------------------------------


def test_sweep_name_defaults_to_dataset_and_model() -> None:
    def name(overrides: list[str]) -> str:
        return validate(compose_config(overrides)).sweep_name

    assert name([]) == "default"  # the default sweep keeps multirun/default
    assert name(["masking=weighted", "seed=3", "train.learning_rate=1e-3"]) == "default"
    assert name(["dataset=local_jsonl", "dataset.path=data/chats.jsonl"]) == "local_jsonl-chats__tiny"
    assert name(["dataset=local_jsonl", "dataset.path='data/{split}.jsonl'"]) == "local_jsonl-data__tiny"
    assert name(["dataset=sharegpt", "model=smollm2_135m"]) == "sharegpt__smollm2_135m"
    assert name(["dataset=sharegpt", "sweep_name=mine"]) == "mine"
    assert name(["experiment=masking_seeds"]) == "masking_seeds"
    long_path = "/data/" + "x" * 300 + ".jsonl"
    assert len(default_sweep_name("tiny", "local_jsonl", long_path)) < 120


def _long_setting_records(base: dict) -> list[dict]:
    """Two settings of one sweep folder: the embedded data and a local file deep in long folders, with
    many overrides; the second setting ran two strategies, the first four."""
    records = []
    local = copy.deepcopy(base)
    local["dataset"].update(
        name="local_jsonl",
        source="local",
        path="/srv/" + "/".join(["a_very_long_folder_name_for_chat_exports"] * 6) + "/my_chats_2024.jsonl",
    )
    local["train"].update(learning_rate=3e-4, max_steps=77, warmup_ratio=0.07)
    local["model"]["arch"].update(hidden_size=96, intermediate_size=384)
    for config, strategies in ((base, ("full", "last", "all", "weighted")), (local, ("all", "weighted"))):
        for strategy in strategies:
            for seed in (0, 1):
                record = make_record(config, strategy, seed, sweep="default")
                if config is local:
                    record["data"]["fingerprint"] = "e" * 64
                records.append(record)
    return records


def test_report_on_a_long_setting_has_bounded_file_names(base_config: dict, tmp_path: Path) -> None:
    records = [RunRecord.from_dict(r, f"r{i}") for i, r in enumerate(_long_setting_records(base_config))]
    report = write_report(records, tmp_path / "out")  # an OSError (File name too long) before
    assert len(report.settings) == 2
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert any(n.startswith("depth_") for n in names)
    assert all(len(n) <= 120 for n in names), names
    # no phantom runs: the local setting ran 2 strategies, never the 4 of the other
    assert report.hygiene.missing == [] and report.hygiene.expected == 12
    long_label = next(s.label for s in report.settings if "local" in s.label)
    assert "dataset=local_jsonl" in long_label and "a_very_long_folder" not in long_label
    assert "tasks" not in long_label  # dataset.tasks means nothing for local files


def test_sweep_table_of_several_settings(base_config: dict, tmp_path: Path) -> None:
    sweep = _write_runs(tmp_path / "runs" / "default", _long_setting_records(base_config))
    console = Console(record=True, width=100)
    print_sweep_table(str(sweep), console=console)
    text = console.export_text()
    assert "12/12 runs done" in text and "missing" not in text
    # one headed group per setting; its label names only what differs, never dataset.tasks for local data
    headings = [line.strip() for line in text.splitlines() if line.strip().startswith("default |")]
    assert len(headings) == 2, text
    assert all(len(h) <= 100 for h in headings)
    assert not any("tasks=" in h for h in headings if "local_jsonl" in h)
    assert any("dataset=local_jsonl" in h and "hidden_size=96" in h for h in headings)


def test_printed_report_command_runs_on_a_long_setting(base_config: dict, tmp_path: Path) -> None:
    sweep = _write_runs(tmp_path / "runs" / "default", _long_setting_records(base_config))
    console = Console(record=True, width=80)
    print_sweep_table(str(sweep), console=console)
    (line,) = [ln for ln in console.export_text().splitlines() if ln.startswith("Full report: ")]
    argv = shlex.split(line.removeprefix("Full report: "))
    assert argv[:3] == ["python", "-m", "sft_sweeps.report"]
    os.chdir(tmp_path)  # the printed `--out reports/...` is relative to where the user is
    try:
        assert report_main(argv[3:]) == 0
    finally:
        os.chdir(ROOT)
    assert (tmp_path / "reports" / "default" / "report.md").is_file()


def test_file_slug_is_bounded_and_unique() -> None:
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(file_slug(a)) == 60 and file_slug(a) != file_slug(b)
    assert file_slug("nll/assistant_nll") == "nll_assistant_nll"


@pytest.mark.slow
def test_every_command_a_sweep_prints_runs_as_printed(tmp_path: Path) -> None:
    """A real own-data sweep (long path, several overrides): its own folder, then the printed report
    command and the printed rerun command of a run whose record is gone, each run as printed."""
    data = tmp_path / ("exports_" + "n" * 80) / ("folder_" + "m" * 80) / "my_chats.jsonl"
    data.parent.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "fixtures" / "data" / "messages.jsonl", data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    sweep = [
        sys.executable, "-m", "sft_sweeps", "-m", "masking=all,last", "seed=0,1", "debug=smoke",
        "logger=none", "launcher=sequential", "dataset=local_jsonl", f"dataset.path={data}",
        "eval.benchmarks=[nll]",
        "train.learning_rate=1e-3", "train.warmup_ratio=0.1",
    ]  # fmt: skip

    def run(argv: list[str]) -> str:
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    out = run(sweep)
    folder = tmp_path / "multirun" / "local_jsonl-my_chats__tiny"
    jobs = sorted(p.name for p in folder.iterdir() if (p / "result.json").exists())
    assert len(jobs) == 4 and all(len(j) <= 120 for j in jobs), jobs
    assert not (tmp_path / "multirun" / "default").exists()

    (report,) = re.findall(r"^Full report: (.+)$", out, re.M)
    run([sys.executable if a == "python" else a for a in shlex.split(report)])
    assert (tmp_path / "reports" / "local_jsonl-my_chats__tiny" / "report.md").is_file()

    (gone,) = [r.run_dir for r in load_records(str(folder)) if (r.strategy, r.seed) == ("last", 1)]
    gone = Path(gone)
    (gone / "result.json").unlink()
    console = Console(record=True, width=100)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        print_sweep_table(str(folder.relative_to(tmp_path)), console=console)
    finally:
        os.chdir(cwd)
    (rerun,) = re.findall(r"rerun: (python -m sft_sweeps -m .+)$", console.export_text(), re.M)
    run([sys.executable if a == "python" else a for a in shlex.split(rerun)])
    record = json.loads((gone / "result.json").read_text())
    assert record["status"] == "done" and record["seed"] == 1
    assert len(load_records(str(folder))) == 4 and not analyze(load_records(str(folder))).hygiene.missing


def test_setting_label_keeps_what_tells_two_long_settings_apart() -> None:
    from sft_sweeps.report.analysis import setting_label

    deep = "/srv/" + "/".join(["exports_of_the_support_team_chats"] * 5)
    a = setting_label("mine", (f"dataset.path={deep}/2024_q1.jsonl", "model.name=smollm2_135m"))
    b = setting_label("mine", (f"dataset.path={deep}/2024_q2.jsonl", "model.name=smollm2_135m"))
    assert a == "mine | path=2024_q1.jsonl, model=smollm2_135m" and a != b
    long_value = setting_label("mine", ("dataset.path=/d/" + "x" * 200 + "_1.jsonl",))
    assert len(long_value) < 60 and long_value != setting_label(
        "mine", ("dataset.path=/d/" + "x" * 200 + "_2.jsonl",)
    )
