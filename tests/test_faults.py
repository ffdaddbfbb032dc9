"""Fault injection: nothing is trained on silently, and every entry point names the culprit.

Covered here: a tokenization cache with flipped bytes, truncated, or another dataset's file under its key;
model, tokenizer, output-dir and config errors in `python -m sft_sweeps`, `.inspect`, `.evaluate` and
`.report`; a bad data record; torn result.json files; file permissions under the umask.

Issue 13, second half: resume reruns a run whose data changed, and the report never pairs or ranks runs on
different data; a masking parameter the strategy does not read fails before any work; a run directory
held by a live process is refused, a run left `running` by a dead one is `interrupted` and rerun, an
unreadable record is kept aside, skipped data records are counted where the sweep is read.

Covered elsewhere, not repeated: a sweep killed with SIGKILL mid-run and resumed
(`tests/test_sweeps.py::test_a_sweep_killed_midway_loses_nothing_and_resumes`), a run killed while writing
its record (`tests/test_pipeline.py`), a failing job in a multirun recorded as failed
(`tests/test_pipeline.py`).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import DictConfig, open_dict
from rich.console import Console

from sft_sweeps.cli import USER_ERRORS, errors_reported
from sft_sweeps.config import ConfigError, MaskingConfig, ModelConfig, validate
from sft_sweeps.identity import config_hash, job_dirname
from sft_sweeps.masking import build_dataset
from sft_sweeps.modeling import build_model
from sft_sweeps.pipeline import run
from sft_sweeps.record import (
    LOCK_NAME,
    RECORD_NAME,
    RunLockedError,
    load_run_record,
    read_record,
    write_json_atomic,
)
from sft_sweeps.report import RecordError, analyze, load_records, print_sweep_table, write_report
from sft_sweeps.report.analysis import DATA_KEY, SweepReport
from sft_sweeps.tokenizer import build_embedded_tokenizer, load_tokenizer
from tests.conftest import CONF_DIR, TINY_OVERRIDES, compose_config

ROOT = Path(CONF_DIR).parent
INVALID_DATA = ROOT / "tests" / "fixtures" / "data" / "invalid.jsonl"
MASKING = MaskingConfig(name="weighted", prompt_weight=0.1, turn_schedule="decay", turn_decay=0.5)
FLIPS = 300  # single-byte flips tried per cache file, spread over the whole file


@pytest.fixture(scope="module")
def tok():
    return build_embedded_tokenizer()


def conversations(n: int = 4, tag: str = "") -> list[dict]:
    """Two-turn conversations; a different `tag` makes a different dataset (another cache key)."""
    return [
        {
            "id": f"c{i}{tag}",
            "messages": [
                {"role": "user", "content": f"question {i}{tag}"},
                {"role": "assistant", "content": f"answer {i}"},
                {"role": "user", "content": "and?"},
                {"role": "assistant", "content": f"more {i}{tag}"},
            ],
        }
        for i in range(n)
    ]


def build(tok, data: list[dict], cache: Path) -> tuple[dict, bool]:
    """The dataset built through the cache, as plain data, and whether the cache was hit."""
    ds, stats = build_dataset(tok, data, MASKING, 4096, cache_dir=str(cache))
    return ds.to_dict(), stats.cache_hit


def cache_file(cache: Path) -> Path:
    (path,) = (cache / "masking").glob("*.parquet")
    return path


# --- the tokenization cache ------------------------------------------------------------------------------


def test_no_flipped_byte_in_the_cache_is_trained_on(tok, tmp_path: Path, caplog) -> None:
    data = conversations()
    clean, hit = build(tok, data, tmp_path)
    path = cache_file(tmp_path)
    good = path.read_bytes()
    assert not hit and build(tok, data, tmp_path) == (clean, True)  # the clean file is used as it is
    detected = 0
    with caplog.at_level(logging.WARNING, logger="sft_sweeps.masking.dataset"):
        for position in range(0, len(good), max(1, len(good) // FLIPS)):
            flipped = bytearray(good)
            flipped[position] ^= 0xFF
            path.write_bytes(bytes(flipped))
            built, hit = build(tok, data, tmp_path)
            assert built == clean, f"byte {position} flipped changed what is trained on"
            if not hit:  # detected: the bad file was replaced by a fresh tokenization
                detected += 1
                assert path.read_bytes() == good, f"byte {position}: the bad file was not replaced"
    assert detected > 0
    assert f"masking cache {path}" in caplog.text


def test_changed_content_that_still_parses_fails_the_checksum(tok, tmp_path: Path, caplog) -> None:
    data = conversations()
    clean, _ = build(tok, data, tmp_path)
    path = cache_file(tmp_path)
    # What a flipped byte in a data page can do: other token ids, the stored key and checksum kept.
    table = pq.read_table(path)
    ids = table.column("input_ids").to_pylist()
    ids[0][3] += 1
    column = pa.array(ids, table.column("input_ids").type)
    changed = table.set_column(table.column_names.index("input_ids"), "input_ids", column)
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), path)
    with caplog.at_level(logging.WARNING, logger="sft_sweeps.masking.dataset"):
        built, hit = build(tok, data, tmp_path)
    assert built == clean and not hit
    assert f"masking cache {path}: checksum mismatch" in caplog.text
    assert build(tok, data, tmp_path) == (clean, True)  # the rebuilt file is used again


def test_another_datasets_cache_file_under_this_key_is_rebuilt(tok, tmp_path: Path, caplog) -> None:
    mine, other = conversations(), conversations(tag="x")
    clean, _ = build(tok, mine, tmp_path / "mine")
    build(tok, other, tmp_path / "other")
    path = cache_file(tmp_path / "mine")
    shutil.copyfile(cache_file(tmp_path / "other"), path)
    with caplog.at_level(logging.WARNING, logger="sft_sweeps.masking.dataset"):
        built, hit = build(tok, mine, tmp_path / "mine")
    assert built == clean and not hit
    assert f"masking cache {path}: written for key" in caplog.text
    assert build(tok, mine, tmp_path / "mine") == (clean, True)


def test_truncated_cache_file_is_rebuilt(tok, tmp_path: Path, caplog) -> None:
    data = conversations()
    clean, _ = build(tok, data, tmp_path)
    path = cache_file(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short
    with caplog.at_level(logging.WARNING, logger="sft_sweeps.masking.dataset"):
        built, hit = build(tok, data, tmp_path)
    assert built == clean and not hit
    assert f"masking cache {path}: unreadable" in caplog.text


# --- files readable by the group -------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[None]:
    """Restores the process umask a test sets."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_result_and_cache_files_honour_the_umask(tok, tmp_path: Path, umask, mask: int, mode: int) -> None:
    os.umask(mask)
    write_json_atomic(tmp_path / "run" / RECORD_NAME, {"status": "done"})
    build(tok, conversations(), tmp_path / "cache")
    assert (tmp_path / "run" / RECORD_NAME).stat().st_mode & 0o777 == mode
    assert cache_file(tmp_path / "cache").stat().st_mode & 0o777 == mode
    # Nothing temporary is left behind next to them.
    assert [p.name for p in (tmp_path / "run").iterdir()] == [RECORD_NAME]
    assert len(list((tmp_path / "cache" / "masking").iterdir())) == 1


# --- model and tokenizer errors, in process ---------------------------------------------------------------


def test_tokenizer_errors_name_the_key_and_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model\.tokenizer: no tokenizer at '/nonexistent/tok' \(not a"):
        load_tokenizer("/nonexistent/tok")
    with pytest.raises(
        ConfigError, match=rf"^model\.tokenizer: no tokenizer in '{tmp_path}' \(the directory"
    ):
        load_tokenizer(str(tmp_path))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"^model\.tokenizer: '.*/file' is a file"):
        load_tokenizer(str(tmp_path / "file"))


def test_model_errors_name_the_key_and_path(tmp_path: Path) -> None:
    tok = build_embedded_tokenizer()
    with pytest.raises(ConfigError, match=rf"^model\.pretrained: no model in '{tmp_path}' \(.*config\.json"):
        build_model(ModelConfig(pretrained=str(tmp_path), tokenizer="embedded"), tok)
    with pytest.raises(ConfigError, match=r"^model\.pretrained: no model at '/nonexistent/model' \(not a"):
        build_model(ModelConfig(pretrained="/nonexistent/model", tokenizer="embedded"), tok)


# --- entry points: `error: <message>` on stderr, exit 1, no traceback ------------------------------------


def cli(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
    )


def assert_clean_error(out: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit 1 and one `error:` line on stderr holding every `expected` piece, with no traceback."""
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out.stderr[-3000:]
    for piece in expected:
        assert piece in lines[0], out.stderr[-3000:]


def test_inspect_names_a_missing_tokenizer() -> None:
    out = cli("sft_sweeps.inspect", "model.tokenizer=/nonexistent/tok")
    assert_clean_error(
        out,
        "error: model.tokenizer: no tokenizer at '/nonexistent/tok' (not a local directory, and not found "
        "on the hub offline)",
    )


def test_inspect_names_an_empty_tokenizer_dir(tmp_path: Path) -> None:
    out = cli("sft_sweeps.inspect", f"model.tokenizer={tmp_path}")
    assert_clean_error(out, "model.tokenizer", str(tmp_path), "tokenizer.json")
    assert "sentencepiece" not in out.stderr and "tiktoken" not in out.stderr


def test_full_error_keeps_the_traceback() -> None:
    out = cli("sft_sweeps.inspect", "model.tokenizer=/nonexistent/tok", env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "ConfigError: model.tokenizer" in out.stderr


def test_evaluate_names_an_empty_model_dir(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = cli("sft_sweeps.evaluate", f"eval.model_path={empty}", "logger=none", f"hydra.run.dir={tmp_path}/r")
    assert_clean_error(out, "eval.model_path", str(empty), "no tokenizer")
    assert "sentencepiece" not in out.stderr and "tiktoken" not in out.stderr


@pytest.mark.slow
def test_evaluate_names_a_model_dir_without_a_model(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    build_embedded_tokenizer().save_pretrained(saved)  # a tokenizer, but no config.json nor weights
    out = cli("sft_sweeps.evaluate", f"eval.model_path={saved}", "logger=none", f"hydra.run.dir={tmp_path}/r")
    assert_clean_error(out, f"eval.model_path: no model in '{saved}'", "config.json")


@pytest.mark.slow
def test_a_single_run_names_a_missing_tokenizer(tmp_path: Path) -> None:
    out = cli(
        "sft_sweeps",
        "model.tokenizer=/nonexistent/tok",
        *TINY_OVERRIDES,
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert_clean_error(out, "error: model.tokenizer: no tokenizer at '/nonexistent/tok'")
    assert "Traceback" not in out.stdout  # the log says it once too, as one line
    record = json.loads((tmp_path / "run" / RECORD_NAME).read_text())
    assert record["status"] == "failed" and "Traceback" in record["error"]


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: a read-only one, or /sys when running as root."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for candidate in (locked, Path("/sys")):
        try:
            (candidate / ".probe").touch()
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    pytest.skip("no unwritable directory here")


@pytest.mark.parametrize("module", ["sft_sweeps", "sft_sweeps.evaluate"])
def test_an_unwritable_run_dir_is_named(tmp_path: Path, module: str) -> None:
    locked = _unwritable_dir(tmp_path)
    out = cli(module, "logger=none", f"hydra.run.dir={locked}", "eval.model_path=/unused")
    assert_clean_error(out, f"error: hydra.run.dir: cannot write to '{locked}'")
    assert "Unable to configure handler" not in out.stderr


def test_a_sweep_dir_under_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = cli("sft_sweeps", "-m", "logger=none", f"hydra.sweep.dir={tmp_path / 'file' / 'sweep'}")
    assert_clean_error(out, "error: hydra.sweep.dir: cannot create", "is not a directory")


@pytest.mark.parametrize("module", ["sft_sweeps", "sft_sweeps.inspect", "sft_sweeps.evaluate"])
def test_an_out_of_range_value_names_its_key(tmp_path: Path, module: str) -> None:
    # inspect composes without a Hydra run, so it has no hydra.run.dir to override.
    run_dir = [] if module == "sft_sweeps.inspect" else [f"hydra.run.dir={tmp_path / 'run'}"]
    out = cli(module, "masking=weighted", "masking.prompt_weight=-1", *run_dir)
    assert_clean_error(out, "error: masking.prompt_weight must be in [0, 1], got -1.0")


@pytest.mark.slow
def test_a_bad_data_record_names_file_record_and_field() -> None:
    out = cli(
        "sft_sweeps.inspect",
        "dataset=local_jsonl",
        f"dataset.path={INVALID_DATA}",
        "dataset.on_invalid=error",
    )
    assert_clean_error(out, f"{INVALID_DATA}:2: record 1 (id=bad-role): messages[1].role: unknown role 'bot'")


# --- the report reading torn records ---------------------------------------------------------------------


def test_report_names_a_truncated_result_file(tmp_path: Path) -> None:
    path = tmp_path / "sweep" / "job" / RECORD_NAME
    write_json_atomic(path, {"status": "done", "seed": 0, "config": {}, "metrics": {}})
    path.write_bytes(path.read_bytes()[:20])  # a copy cut short
    out = cli("sft_sweeps.report", str(tmp_path / "sweep"), "--out", str(tmp_path / "report"))
    assert_clean_error(out, f"error: {path}: not valid JSON")


def test_report_names_a_record_missing_a_field(tmp_path: Path) -> None:
    path = tmp_path / "sweep" / "job" / RECORD_NAME
    write_json_atomic(path, {"status": "done"})
    out = cli("sft_sweeps.report", str(tmp_path / "sweep"), "--out", str(tmp_path / "report"))
    assert_clean_error(out, f"error: {path}: record has no field")


def test_report_names_a_path_without_records(tmp_path: Path) -> None:
    out = cli("sft_sweeps.report", str(tmp_path / "nothing"), "--out", str(tmp_path / "report"))
    assert_clean_error(out, f"error: no {RECORD_NAME} found under '{tmp_path / 'nothing'}'")


# --- issue 13, second half: resume sees the data ----------------------------------------------------------

MESSAGES = ROOT / "tests" / "fixtures" / "data" / "messages.jsonl"
# A local file has none of the synthetic tasks, so it is scored by NLL alone; no model saved, none needed.
LOCAL_OVERRIDES = [
    "dataset=local_jsonl",
    "eval.benchmarks=[nll]",
    "optimized_metric=nll/assistant_nll",
    "train.save_model=false",
    "logger=none",
]


def local_cfg(tmp_path: Path, data: Path, *extra: str) -> DictConfig:
    """The tiny run on a local JSONL file, its tokenization cache under tmp_path."""
    return compose_config(
        [*TINY_OVERRIDES, *LOCAL_OVERRIDES, f"dataset.path={data}", f"cache_dir={tmp_path / 'cache'}", *extra]
    )


@pytest.fixture(scope="module")
def local_record(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The record of one real run on the fixture file, as result.json holds it."""
    tmp_path = tmp_path_factory.mktemp("local_run")
    run(local_cfg(tmp_path, MESSAGES), str(tmp_path / "run"))
    return json.loads((tmp_path / "run" / RECORD_NAME).read_text())


def test_changed_data_reruns_a_done_run_and_unchanged_data_skips_it(tmp_path: Path, caplog) -> None:
    data = tmp_path / "train.jsonl"
    shutil.copyfile(MESSAGES, data)
    cfg, run_dir = local_cfg(tmp_path, data), tmp_path / "run"
    first = run(cfg, str(run_dir))
    assert first.status == "done"
    written = (run_dir / RECORD_NAME).read_bytes()

    with caplog.at_level(logging.INFO, logger="sft_sweeps.pipeline"):
        run(cfg, str(run_dir))
    assert f"skipping {run_dir}" in caplog.text
    assert (run_dir / RECORD_NAME).read_bytes() == written  # skipped: the record is not even rewritten

    # One answer edited in place: same path, same config hash, other data. Resume must not call it done.
    data.write_text(data.read_text().replace('"content": "33"', '"content": "34"', 1))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sft_sweeps.pipeline"):
        second = run(cfg, str(run_dir))
    assert second.config_hash == first.config_hash
    assert second.data_fingerprint != first.data_fingerprint
    old, new = first.data_fingerprint[:12], second.data_fingerprint[:12]
    assert (
        f"rerunning {run_dir}: done for this config, but its data changed (fingerprint {old} -> {new})"
        in (caplog.text)
    )
    assert "skipping" not in caplog.text
    on_disk = load_run_record(run_dir)
    assert on_disk.status == "done" and on_disk.data_fingerprint == second.data_fingerprint


def _report_of(records: dict[str, dict], tmp_path: Path) -> tuple[SweepReport, str, str]:
    """Records written as a sweep's result.json files, then read back and reported as the CLI does."""
    for name, record in records.items():
        write_json_atomic(tmp_path / "sweep" / name / RECORD_NAME, record)
    report = write_report(load_records([str(tmp_path / "sweep")]), tmp_path / "out")
    return report, (tmp_path / "out" / "report.md").read_text(), (tmp_path / "out" / "table.md").read_text()


def _on_data(record: dict, fingerprint: str) -> dict:
    other = copy.deepcopy(record)
    other["data"]["fingerprint"] = fingerprint
    return other


def test_the_report_places_runs_on_different_data_in_different_settings(local_record: dict, tmp_path) -> None:
    mine = local_record["data"]["fingerprint"]
    other = "0" * 64 if not mine.startswith("0" * 12) else "1" * 64
    report, report_md, table_md = _report_of(
        {"a": local_record, "b": _on_data(local_record, other)}, tmp_path
    )
    # Identical but for the data: neither is dropped as a duplicate of the other, nor averaged with it.
    assert not report.hygiene.duplicates
    assert sorted(s.name for s in report.settings) == sorted(
        f"{local_record['config']['sweep_name']} | {DATA_KEY}={fp[:12]}" for fp in (mine, other)
    )
    for setting in report.settings:
        assert setting.seeds == {"all": [0]} and list(setting.fingerprints) != ["unknown"]
        assert f"## {setting.name}\n" in report_md
        assert f"**{setting.name}**:" in table_md


def test_the_report_picks_no_best_across_different_data(local_record: dict, tmp_path: Path) -> None:
    last = _on_data(local_record, "0" * 64)
    last["config"]["masking"]["name"] = last["strategy"] = "last"
    report, report_md, table_md = _report_of({"all": local_record, "last": last}, tmp_path)
    assert len(report.settings) == 2
    # Each strategy is alone on its data: nothing is compared, no winner named.
    assert all(p.runner_up is None for s in report.settings for p in s.picks)
    assert all(not s.comparisons.get(m) for s in report.settings for m in s.eval_metrics)
    assert "best `" not in table_md and "best `" not in report_md
    assert "only `all` has results" in table_md and "only `last` has results" in table_md


# --- parameters a strategy does not use fail before any work ---------------------------------------------

UNUSED_PARAMETERS = [
    (
        ["masking=all", "masking.prompt_weight=0.5"],
        "masking.prompt_weight=0.5 has no effect with masking=all: only weighted reads it",
    ),
    (
        ["masking=weighted", "masking.turn_decay=0.5"],
        "masking.turn_decay=0.5 has no effect with masking=weighted and masking.turn_schedule=constant",
    ),
]


@pytest.mark.parametrize("overrides, message", UNUSED_PARAMETERS, ids=["all+pw", "weighted+decay"])
def test_a_parameter_the_strategy_does_not_read_fails_validation(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config(overrides))


@pytest.mark.parametrize("overrides, message", UNUSED_PARAMETERS, ids=["all+pw", "weighted+decay"])
def test_a_parameter_the_strategy_does_not_read_fails_the_cli_before_any_work(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    out = cli(
        "sft_sweeps",
        *overrides,
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"cache_dir={tmp_path}/c",
    )
    assert_clean_error(out, f"error: {message}")
    assert not (tmp_path / "run" / RECORD_NAME).exists() and not (tmp_path / "c").exists()


def test_an_explicit_default_does_not_change_the_config_hash() -> None:
    hashes = {
        config_hash(compose_config(["masking=all", *explicit]))
        for explicit in ([], ["masking.prompt_weight=0.0"], ["masking.prompt_weight=0"])
    }
    assert len(hashes) == 1  # the schema makes `0` a float: one value, one hash, one W&B group
    # The job folder is named from the overrides as typed, so an explicit default gets another folder and
    # resume does not find the first run there: a second, identical run (same hash, same report cell).
    assert job_dirname("masking=all,masking.prompt_weight=0.0", 0) != job_dirname("masking=all", 0)


# --- runs that tell the truth about their state ----------------------------------------------------------

# Holds a run directory's lock the way a running job does, until killed; with `running`, it also marks the
# record there `running`, as a job that has started does.
LOCK_HOLDER = (
    "import sys, time\n"
    "from sft_sweeps.record import RECORD_NAME, RunLock, read_record, write_json_atomic\n"
    "with RunLock(sys.argv[1]):\n"
    "    if sys.argv[2:] == ['running']:\n"
    "        record = read_record(sys.argv[1])\n"
    "        record['status'] = 'running'\n"
    "        write_json_atomic(f'{sys.argv[1]}/{RECORD_NAME}', record)\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(300)\n"
)


def hold_lock(run_dir: Path, *args: str) -> subprocess.Popen:
    """A live process holding `run_dir`'s lock (returned once it holds it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run_dir), *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def sweep_table_text(sweep_dir: Path) -> str:
    """What `print_sweep_table` prints at the end of a multirun, as plain text."""
    console = Console(file=io.StringIO(), width=300)
    print_sweep_table(str(sweep_dir), console)
    return console.file.getvalue()


def test_a_run_dir_held_by_a_live_process_fails_fast_naming_it(tiny_cfg, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(RunLockedError, match=rf"host={socket.gethostname()} pid={holder.pid}\)"):
            run(tiny_cfg, str(run_dir))
        assert not (run_dir / RECORD_NAME).exists()  # failed before any work, and wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock of a killed holder: nothing stale is left to clear by hand.
    assert run(tiny_cfg, str(run_dir)).status == "done"


def _run_command(run_dir: Path, tmp_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sft_sweeps",
        *TINY_OVERRIDES,
        "logger=none",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, f"the job exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_second_process_on_a_running_run_dir_fails_and_the_first_finishes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_run_command(run_dir, tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL)
    lock = run_dir / LOCK_NAME
    _wait_for(lambda: lock.exists() and lock.read_text() != "", first, "the first job took its lock")
    # Paused while it holds the lock, however long the second one takes to start: no race on a fast job.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run(
            _run_command(run_dir, tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300
        )
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert_clean_error(
        second, f"{run_dir} is in use by another run (host={socket.gethostname()} pid={first.pid})"
    )
    assert first.wait(timeout=300) == 0
    record = read_record(run_dir)
    assert record["status"] == "done" and record["owner"]["pid"] == first.pid


def test_a_running_record_is_running_while_its_process_lives_and_interrupted_once_killed(
    tiny_cfg, tmp_path: Path
) -> None:
    run_dir = tmp_path / "sweep" / "job"
    assert run(tiny_cfg, str(run_dir)).status == "done"
    job = hold_lock(run_dir, "running")  # a job that started, its record `running`
    try:
        (live,) = analyze(load_records([str(run_dir)])).runs
        assert live.status == "running"  # alive: not called interrupted
    finally:
        job.kill()  # SIGKILL: no handler runs, the record stays `running`
        job.wait()
    assert read_record(run_dir)["status"] == "running"
    report = analyze(load_records([str(run_dir)]))
    (killed,) = report.runs
    assert killed.status == "interrupted" and report.hygiene.not_done == [killed]
    table = sweep_table_text(tmp_path / "sweep")
    assert "0/1 runs done" in table
    assert (
        "all seed=0 interrupted: left `running` by a process that is gone (killed?); resume reruns it"
        in table
    )
    assert run(tiny_cfg, str(run_dir)).status == "done"  # resume reruns it: `running` is not `done`


@pytest.mark.slow
def test_a_run_killed_midway_is_reported_interrupted_and_rerun(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = subprocess.Popen(_run_command(run_dir, tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL)
    _wait_for(lambda: (read_record(run_dir) or {}).get("status") == "running", job, "its record said running")
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert read_record(run_dir)["status"] == "running"  # what a killed job leaves: no handler ran

    report = analyze(load_records([str(run_dir)]))
    (killed,) = report.runs
    assert killed.status == "interrupted" and report.hygiene.not_done == [killed] and report.hygiene.done == 0
    table = sweep_table_text(run_dir)
    assert "0/1 runs done" in table and "interrupted" in table
    assert "all seed=0 interrupted: left `running` by a process that is gone (killed?)" in table

    cfg = compose_config([*TINY_OVERRIDES, "logger=none", f"cache_dir={tmp_path / 'cache'}"])
    assert run(cfg, str(run_dir)).status == "done"  # resume reruns it: `running` is not `done`
    assert analyze(load_records([str(run_dir)])).runs[0].status == "done"


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x13\x37 not json at all {{", b'{"status": "done", "error": "\xff\xfe broken"}'],
    ids=["garbage", "invalid-utf8"],
)
def test_an_unreadable_record_is_kept_aside_and_the_run_starts_afresh(
    tiny_cfg, tmp_path: Path, caplog, garbage: bytes
) -> None:
    path = tmp_path / "run" / RECORD_NAME
    path.parent.mkdir()
    path.write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="sft_sweeps.record"):
        assert run(tiny_cfg, str(path.parent)).status == "done"
    (aside,) = path.parent.glob(f"{RECORD_NAME}.unreadable-*")
    assert aside.read_bytes() == garbage  # kept as it was, for a post-mortem
    assert f"{path} is unreadable" in caplog.text and f"moved it to {aside}" in caplog.text
    assert load_run_record(path.parent).status == "done"


def test_two_unreadable_records_in_a_row_are_both_kept(tmp_path: Path) -> None:
    # Within the same second both get the same time stamp: the second must not replace the first.
    for garbage in (b"first {", b"second {"):
        (tmp_path / RECORD_NAME).write_bytes(garbage)
        assert load_run_record(tmp_path) is None
    kept = sorted(p.read_bytes() for p in tmp_path.glob(f"{RECORD_NAME}.unreadable-*"))
    assert kept == [b"first {", b"second {"] and not (tmp_path / RECORD_NAME).exists()


def test_skipped_records_are_counted_in_the_sweep_table_and_the_report(tmp_path: Path) -> None:
    data = tmp_path / "mixed.jsonl"
    data.write_text(MESSAGES.read_text() + INVALID_DATA.read_text())  # 6 of its lines are invalid
    record = run(local_cfg(tmp_path, data, "dataset.on_invalid=skip"), str(tmp_path / "sweep" / "job"))
    assert record.status == "done"
    assert sum(record.data["stats"]["train"]["skipped"].values()) == 6

    notes = sweep_table_text(tmp_path / "sweep")
    assert "6 source records skipped as invalid (reasons: data.stats in result.json)" in notes
    write_report(load_records([str(tmp_path / "sweep")]), tmp_path / "out")
    hygiene = (tmp_path / "out" / "report.md").read_text().split("## Method")[0]
    assert f"{record.config['sweep_name']}: **6 source records skipped as invalid**" in hygiene


# --- errors in one run: one line, the traceback kept in the record ---------------------------------------


def test_a_config_error_in_a_single_run_is_logged_without_a_traceback(
    tiny_cfg, tmp_path: Path, caplog
) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.model.tokenizer = "/nonexistent/tok"
    with caplog.at_level(logging.ERROR, logger="sft_sweeps.pipeline"), pytest.raises(ConfigError):
        run(tiny_cfg, str(tmp_path / "run"))
    assert (
        f"run failed: {tmp_path / 'run'}: model.tokenizer: no tokenizer at '/nonexistent/tok'" in caplog.text
    )
    assert "Traceback" not in caplog.text
    record = read_record(tmp_path / "run")
    assert record["status"] == "failed" and "Traceback" in record["error"]  # the record keeps it all


BAD_ROLE = f"{INVALID_DATA}:2: record 1 (id=bad-role): messages[1].role: unknown role 'bot'"


def test_a_bad_data_record_is_reported_as_one_line(tmp_path: Path, capsys) -> None:
    # What `python -m sft_sweeps` and `.evaluate` wrap around a run (the CLI runs are below, marked slow).
    cfg = local_cfg(tmp_path, INVALID_DATA, "dataset.on_invalid=error")
    with pytest.raises(SystemExit) as exited, errors_reported(*USER_ERRORS):
        run(cfg, str(tmp_path / "run"))
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {BAD_ROLE}") and err.count("\n") == 1  # one line, then the known roles


@pytest.mark.slow
@pytest.mark.parametrize("module", ["sft_sweeps", "sft_sweeps.evaluate"])
def test_a_bad_data_record_in_a_run_names_file_record_and_field(tmp_path: Path, module: str) -> None:
    out = cli(
        module,
        *LOCAL_OVERRIDES,
        f"dataset.path={INVALID_DATA}",
        "dataset.on_invalid=error",
        f"eval.model_path={tmp_path}",  # evaluate reads the data before it loads a model
        f"hydra.run.dir={tmp_path / 'run'}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert_clean_error(out, f"error: {BAD_ROLE}")
    assert "Traceback" not in out.stdout


def test_report_names_a_record_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sweep" / "job" / RECORD_NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"status": "done", "error": "\xff"}')
    out = cli("sft_sweeps.report", str(tmp_path / "sweep"), "--out", str(tmp_path / "report"))
    assert_clean_error(out, f"error: {path}: not valid UTF-8")


def test_load_records_names_a_record_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "job" / RECORD_NAME).mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(RecordError, match=rf"^{re.escape(str(tmp_path / 'job' / RECORD_NAME))}: cannot read"):
        load_records([str(tmp_path)])


def test_a_job_whose_data_cannot_be_read_is_recorded_failed_in_a_multirun(tmp_path: Path) -> None:
    """Data is read before the resume check (it needs the fingerprint); a failure there is still a
    `failed` record naming the file, so the sweep table says what broke instead of "missing"."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "robot", "content": "hi"}]}\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sft_sweeps",
            "-m",
            "masking=all",
            "dataset=local_jsonl",
            f"dataset.path={bad}",
            "debug=smoke",
            "logger=none",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-2000:]  # a sweep with a failed job exits non-zero
    assert "error: 1 of 1 jobs of this sweep did not finish" in out.stderr
    (record_file,) = (tmp_path / "sweep").glob("*/result.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "failed" and "bad.jsonl" in record["error"] and "role" in record["error"]
    assert "1/1 runs done" not in out.stdout and "failed" in out.stdout
