"""End to end: the CLI sweep on a shrunken default, result.json, failure isolation, resume."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sft_sweeps.pipeline import run
from sft_sweeps.record import RECORD_NAME, read_record, write_json_atomic
from tests.conftest import CONF_DIR, TINY_OVERRIDES

ROOT = Path(CONF_DIR).parent


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sft_sweeps",
            *args,
            *TINY_OVERRIDES,
            "logger=none",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _records(sweep_dir: Path) -> dict[str, dict]:
    """Records of a sweep by job folder name (overrides, cut and hashed when long, then the seed)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{RECORD_NAME}"))}


def _by_strategy(sweep_dir: Path) -> dict[str, dict]:
    return {r["config"]["masking"]["name"]: r for r in _records(sweep_dir).values()}


@pytest.fixture(scope="module")
def cli_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp_path = tmp_path_factory.mktemp("cli_sweep")
    return _cli(["-m", "masking=full,last,all,weighted"], tmp_path), tmp_path


def test_cli_sweep_runs_every_strategy_and_prints_a_comparison(cli_sweep) -> None:
    out, tmp_path = cli_sweep
    assert out.returncode == 0, out.stderr[-3000:]
    records = _records(tmp_path / "sweep")
    # Folder names any tool takes as a path: no `,` or `=`.
    assert len(records) == 4 and all(name.endswith("__seed-0") for name in records)
    assert not any(c in name for name in records for c in ",=")
    assert {r["status"] for r in records.values()} == {"done"}
    assert sorted(r["strategy"] for r in records.values()) == ["all", "full", "last", "weighted(pw=0.1)"]
    # The default launcher runs jobs in parallel, each in its own process, one torch thread each on 2 cores.
    assert re.search(r"Launching 4 jobs, \d+ at a time, each in its own process", out.stdout + out.stderr)
    # Progress while training, and the comparison table at the end of the sweep.
    assert "step 4/4" in out.stdout + out.stderr
    table_text = out.stdout
    for strategy in ("full", "last", "all", "weighted"):
        assert strategy in table_text
    # Same data for every strategy: one fingerprint.
    assert len({r["data"]["fingerprint"] for r in records.values()}) == 1


def test_result_json_holds_what_a_paper_table_needs(cli_sweep) -> None:
    _, tmp_path = cli_sweep
    record = _by_strategy(tmp_path / "sweep")["weighted"]
    assert record["status"] == "done" and record["error"] is None
    assert record["seed"] == 0
    assert record["config"]["masking"]["name"] == "weighted"
    assert record["config"]["masking"]["prompt_weight"] == pytest.approx(0.1)
    assert record["config"]["train"]["max_steps"] == 4
    assert len(record["config_hash"]) == 16
    for name in (
        "synthetic/turn_exact_match",
        "synthetic/conversation_success",
        "synthetic/stop_rate",
        "nll/assistant_nll",
        "train_loss",
    ):
        assert isinstance(record["metrics"][name], float)
    assert 0.0 <= record["metrics"]["synthetic/turn_exact_match"] <= 1.0
    # The main metric on the validation split too (selection only; never compared as a test result).
    assert 0.0 <= record["metrics"]["validation/synthetic/turn_exact_match"] <= 1.0
    assert record["metrics"]["validation/synthetic/num_conversations"] == 4.0  # eval.max_conversations
    assert record["metrics"]["train_steps"] == 4.0
    assert record["versions"]["torch"].startswith("2.13.0")
    assert record["versions"]["trl"] and record["versions"]["transformers"]
    assert "git_commit" in record
    assert len(record["data"]["fingerprint"]) >= 16
    assert record["data"]["masking"]["kept"] > 0
    assert record["wall_time_s"] > 0
    assert {"id", "turn", "correct"} <= set(record["eval_items"]["synthetic"][0])
    assert {"id", "turn", "nll", "cut_tokens"} <= set(record["eval_items"]["nll"][0])
    # The saved model and tokenizer load with plain transformers.
    model = AutoModelForCausalLM.from_pretrained(record["model_path"])
    tokenizer = AutoTokenizer.from_pretrained(record["model_path"])
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a=1 b=2 c=3"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        assert model(**ids).logits.shape[-1] == len(tokenizer)


def test_rerunning_a_sweep_skips_done_runs(cli_sweep) -> None:
    _, tmp_path = cli_sweep
    before = {name: r["wall_time_s"] for name, r in _records(tmp_path / "sweep").items()}
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob(f"*/{RECORD_NAME}")}
    out = _cli(["-m", "masking=full,last,all,weighted"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipping" in out.stdout + out.stderr
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert {name: r["wall_time_s"] for name, r in _records(tmp_path / "sweep").items()} == before


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    out = _cli(["-m", "model.tokenizer=embedded,/nonexistent/tokenizer"], tmp_path)
    # The sweep goes on, prints its table, then exits non-zero naming the failed job.
    assert out.returncode == 1, out.stderr[-3000:]
    assert "error: 1 of 2 jobs of this sweep did not finish" in out.stderr
    assert "1/2 runs done" in out.stdout
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob(f"*/{RECORD_NAME}")]
    by_status = {r["status"]: r for r in records}
    assert sorted(by_status) == ["done", "failed"]
    assert "/nonexistent/tokenizer" in by_status["failed"]["error"]
    assert "Traceback" in by_status["failed"]["error"]


def test_a_single_failing_run_exits_nonzero_with_a_record(tmp_path: Path) -> None:
    out = _cli(["model.tokenizer=/nonexistent/tokenizer"], tmp_path)
    assert out.returncode != 0
    assert read_record(tmp_path / "run")["status"] == "failed"


def test_bad_override_fails_before_any_work(tmp_path: Path) -> None:
    out = _cli(["masking=weighted", "masking.prompt_weight=-1"], tmp_path)
    assert out.returncode != 0
    assert "masking.prompt_weight must be in [0, 1], got -1.0" in out.stderr
    assert not (tmp_path / "run" / RECORD_NAME).exists()


def test_run_in_process_returns_the_record(tiny_cfg, tmp_path: Path) -> None:
    record = run(tiny_cfg, run_dir=str(tmp_path / "job"))
    assert record.status == "done"
    assert read_record(tmp_path / "job") == json.loads(json.dumps(record.to_dict(), default=str))


def test_record_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_json_atomic(tmp_path / RECORD_NAME, {"status": "done", "n": 1})

    def killed_midway(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(tmp_path / RECORD_NAME, {"status": "running"})
    assert read_record(tmp_path) == {"status": "done", "n": 1}
    assert [p.name for p in tmp_path.iterdir()] == [RECORD_NAME]
