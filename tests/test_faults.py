"""Fault injection: nothing is trained on silently, and every entry point names the culprit.

Covered here: a tokenization cache with flipped bytes, truncated, or another dataset's file under its key;
model, tokenizer, output-dir and config errors in `python -m sft_sweeps`, `.inspect`, `.evaluate` and
`.report`; a bad data record; torn result.json files; file permissions under the umask.

Covered elsewhere, not repeated: a sweep killed with SIGKILL mid-run and resumed
(`tests/test_sweeps.py::test_a_sweep_killed_midway_loses_nothing_and_resumes`), a run killed while writing
its record (`tests/test_pipeline.py`), a failing job in a multirun recorded as failed
(`tests/test_pipeline.py`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_sweeps.config import ConfigError, MaskingConfig, ModelConfig
from sft_sweeps.masking import build_dataset
from sft_sweeps.modeling import build_model
from sft_sweeps.record import RECORD_NAME, write_json_atomic
from sft_sweeps.tokenizer import build_embedded_tokenizer, load_tokenizer
from tests.conftest import CONF_DIR, TINY_OVERRIDES

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
    assert json.loads((tmp_path / "run" / RECORD_NAME).read_text())["status"] == "failed"


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
