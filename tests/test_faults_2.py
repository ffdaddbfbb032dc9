"""Fault injection, second round (issue 21): nothing lost when a job of a sweep dies, a full disk fails
loudly, and every input that is not a plain readable data file fails in one line naming it.

Real processes, files and filesystems: a real sweep whose job processes get SIGTERM, SIGKILL and SIGSEGV; a
small tmpfs filled to the last block (skipped, saying why, where mount is not allowed); gzip/bzip2/xz/zstd
files, looping and dangling symbolic links, FIFOs and directories on disk.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import json
import logging
import lzma
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_sweeps.config import ConfigError, DatasetConfig
from sft_sweeps.data import load_splits
from sft_sweeps.estimate import load_calibration
from sft_sweeps.masking import build_dataset
from sft_sweeps.record import RECORD_NAME, load_run_record
from sft_sweeps.tokenizer import build_embedded_tokenizer
from tests.conftest import CONF_DIR
from tests.test_faults import MASKING, assert_clean_error, cli, conversations

ROOT = Path(CONF_DIR).parent
MESSAGES = ROOT / "tests" / "fixtures" / "data" / "messages.jsonl"


def dataset(path: Path | str, **extra) -> DatasetConfig:
    return DatasetConfig(
        name="local_jsonl",
        source="local",
        path=str(path),
        num_train=8,
        num_validation=2,
        num_test=2,
        on_invalid="error",
        **extra,
    )


# --- compressed data files -------------------------------------------------------------------------------


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as f:
        f.write(data)
    return sink.getvalue().to_pybytes()


COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zst": _zstd}


@pytest.mark.parametrize("compression", list(COMPRESSORS))
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_compressed_data_is_read_as_the_plain_file(tmp_path: Path, suffix: str, compression: str) -> None:
    lines = MESSAGES.read_bytes().splitlines()
    text = b"\n".join(lines) if suffix == ".jsonl" else b"[" + b",".join(lines) + b"]"
    plain = tmp_path / f"plain{suffix}"
    plain.write_bytes(text)
    packed = tmp_path / f"packed{suffix}{compression}"
    packed.write_bytes(COMPRESSORS[compression](text))
    expected, got = load_splits(dataset(plain)), load_splits(dataset(packed))
    assert got.fingerprint == expected.fingerprint and len(got.train) == 8


def test_a_folder_reads_its_compressed_files_too(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chats.jsonl.gz").write_bytes(gzip.compress(MESSAGES.read_bytes()))
    assert load_splits(dataset(tmp_path / "data")).fingerprint == load_splits(dataset(MESSAGES)).fingerprint


def test_a_compressed_file_named_as_plain_is_named(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_bytes(gzip.compress(MESSAGES.read_bytes()))
    with pytest.raises(
        ConfigError, match=rf"^dataset\.path: '{path}' is gzip-compressed but named \.jsonl; "
    ):
        load_splits(dataset(path))


def test_a_corrupt_compressed_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl.gz"
    path.write_bytes(gzip.compress(MESSAGES.read_bytes())[:300])  # cut short: the stream never ends
    with pytest.raises(
        ConfigError, match=rf"^dataset\.path: cannot read '{path}': .*check or replace the file"
    ):
        load_splits(dataset(path))


def test_a_compressed_parquet_file_is_named(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in MESSAGES.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chats.parquet")
    path = tmp_path / "chats.parquet.gz"
    path.write_bytes(gzip.compress((tmp_path / "chats.parquet").read_bytes()))
    with pytest.raises(
        ConfigError, match=rf"^dataset\.path: '{path}' is a compressed Parquet file; decompress"
    ):
        load_splits(dataset(path))


# --- paths that are not regular data files ---------------------------------------------------------------


def test_a_looping_symlink_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    with pytest.raises(
        ConfigError, match=rf"^dataset\.path: '{tmp_path / 'a.jsonl'}' is a symbolic link that loops"
    ):
        load_splits(dataset(tmp_path / "a.jsonl"))


def test_a_dangling_symlink_in_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_bytes(MESSAGES.read_bytes())
    (tmp_path / "data" / "b.jsonl").symlink_to("/nonexistent/chats.jsonl")
    with pytest.raises(ConfigError, match=r"b\.jsonl' is a symbolic link that points to '/nonexistent/chats"):
        load_splits(dataset(tmp_path / "data"))


@pytest.mark.parametrize("pattern", ["{d}", "{d}/*"], ids=["folder", "glob"])
def test_a_directory_inside_a_data_folder_or_glob_is_named(tmp_path: Path, pattern: str) -> None:
    data = tmp_path / "data"
    (data / "more.jsonl").mkdir(parents=True)  # a folder named like a data file
    (data / "a.jsonl").write_bytes(MESSAGES.read_bytes())
    with pytest.raises(ConfigError, match=rf"'{data / 'more.jsonl'}' is a directory, not a data file"):
        load_splits(dataset(pattern.format(d=data)))


def test_other_entries_of_a_folder_are_not_read_and_said_so(tmp_path: Path, caplog) -> None:
    data = tmp_path / "data"
    (data / "old").mkdir(parents=True)
    (data / "README.md").write_text("notes")
    (data / "a.jsonl").write_bytes(MESSAGES.read_bytes())
    with caplog.at_level(logging.WARNING, logger="sft_sweeps.data.readers"):
        assert len(load_splits(dataset(data)).train) == 8
    assert "not reading 2 entries that are not .jsonl/.json/.parquet files: README.md, old/" in caplog.text


def test_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "chats.jsonl"
    os.mkfifo(fifo)
    # In a child with a time limit: reading a FIFO nobody writes to would block forever.
    code = (
        "import sys\nfrom sft_sweeps.data.readers import read_local\n"
        "try:\n    next(read_local(sys.argv[1]))\nexcept Exception as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(fifo)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert f"dataset.path: '{fifo}' is not a regular file (a pipe or device)" in out.stdout, out.stderr[
        -2000:
    ]


def test_a_json_file_holding_an_object_is_named(tmp_path: Path) -> None:
    path = tmp_path / "chats.json"
    path.write_text(json.dumps({"data": [json.loads(MESSAGES.read_text().splitlines()[0])]}))
    with pytest.raises(ConfigError, match=rf"^dataset\.path: '{path}' holds a JSON object, not an array"):
        load_splits(dataset(path))


def test_a_one_record_file_names_the_empty_split_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(MESSAGES.read_text().splitlines()[0] + "\n")
    with pytest.raises(
        ConfigError, match=rf"split is empty after loading dataset\.path '{path}' \(records read 1"
    ):
        load_splits(dataset(path))


@pytest.mark.slow
def test_a_one_record_file_is_one_error_line_in_a_run(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(MESSAGES.read_text().splitlines()[0] + "\n")
    out = cli(
        "sft_sweeps",
        "dataset=local_jsonl",
        f"dataset.path={path}",
        "debug=smoke",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert_clean_error(out, "split is empty after loading", str(path), "records read 1")


# --- cache and side files --------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_unwritable_cache_dir_fails_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = cli(
        "sft_sweeps", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'file'}"
    )
    assert_clean_error(
        out, f"error: cache_dir: cannot write to '{tmp_path / 'file'}' (it is not a directory)"
    )
    assert not (tmp_path / "run" / RECORD_NAME).exists()  # nothing started


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_run(tmp_path: Path, caplog) -> None:
    (tmp_path / "file").write_text("x")  # cache_dir under a file: every write fails
    tok = build_embedded_tokenizer()
    with caplog.at_level(logging.WARNING, logger="sft_sweeps.masking.dataset"):
        ds, stats = build_dataset(tok, conversations(), MASKING, 4096, cache_dir=str(tmp_path / "file" / "c"))
    assert len(ds) == 4 and not stats.cache_hit
    assert (
        f"masking cache {tmp_path / 'file' / 'c'}" in caplog.text
        and "the run goes on without it" in caplog.text
    )


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"tokens_per_s": ', "is unreadable"),
        ('{"tokens_per_s": 10.0}', "mean_tokens_per_sample is missing or invalid"),
        (
            '{"tokens_per_s": -1, "mean_tokens_per_sample": 5, "train_signature": {}}',
            "tokens_per_s is missing",
        ),
        ("[1, 2]", "holds no calibration record"),
    ],
    ids=["torn", "missing-field", "negative", "not-a-record"],
)
def test_a_corrupt_calibration_file_is_named(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"^calibration file '{path}'.*{problem}.*sft_sweeps\.calibrate"):
        load_calibration(path)


@pytest.mark.slow
def test_calibrate_checks_where_it_writes_before_measuring(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = cli("sft_sweeps.calibrate", "--out", str(tmp_path / "file" / "calibration.json"), "debug=smoke")
    assert_clean_error(out, f"error: --out: cannot write to '{tmp_path / 'file'}' (it is not a directory)")


def test_a_directory_where_the_record_goes_is_named(tmp_path: Path) -> None:
    (tmp_path / RECORD_NAME).mkdir()
    with pytest.raises(
        ConfigError, match=rf"^{tmp_path / RECORD_NAME}: cannot read the run's record \(Is a dir"
    ):
        load_run_record(tmp_path)


# --- the launcher ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_jobs", [0, -0, "2", 1.5, True])
def test_launcher_n_jobs_must_be_a_nonzero_integer(n_jobs) -> None:
    from hydra_plugins.sft_sweeps_launcher.launcher import effective_n_jobs

    with pytest.raises(ConfigError, match=r"^hydra\.launcher\.n_jobs must be a positive number of jobs"):
        effective_n_jobs(n_jobs)
    assert effective_n_jobs(1) == 1 and effective_n_jobs(-1) >= 1 and effective_n_jobs(-10_000) == 1


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs", ["0", "two"])
def test_a_bad_launcher_n_jobs_is_one_line(tmp_path: Path, n_jobs: str) -> None:
    out = cli(
        "sft_sweeps", "-m", "logger=none", f"hydra.sweep.dir={tmp_path}", f"hydra.launcher.n_jobs={n_jobs}"
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "hydra.launcher.n_jobs" in out.stderr
    assert not list(tmp_path.glob(f"*/{RECORD_NAME}"))


def _records(sweep: Path) -> dict[str, dict]:
    records = {}
    for path in sweep.glob(f"*/{RECORD_NAME}"):
        try:
            record = json.loads(path.read_text())
        except ValueError:  # being replaced right now
            continue
        records[record["config"]["masking"]["name"]] = record
    return records


def _sweep(tmp_path: Path, strategies: str, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "sft_sweeps",
        "-m",
        f"masking={strategies}",
        "debug=smoke",
        "logger=none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"cache_dir={tmp_path / 'cache'}",
        *extra,
    ]
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115 - closed with the process by the caller
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_one_jobs_death_leaves_the_others_to_finish(tmp_path: Path) -> None:
    """Four jobs at once; three of their processes get SIGTERM, SIGKILL (what the OOM killer sends) and
    SIGSEGV (a crash in native code) mid-training. The fourth finishes with its evaluation; each dead one
    is recorded with its signal; the sweep prints its table and exits non-zero."""
    victims = {"full": signal.SIGTERM, "last": signal.SIGKILL, "weighted": signal.SIGSEGV}
    sweep = _sweep(tmp_path, "full,last,all,weighted", "hydra.launcher.n_jobs=4", "train.max_steps=300")
    try:
        deadline = time.monotonic() + 600
        while not (
            len(records := _records(tmp_path / "sweep")) == 4
            and all(r["status"] == "running" for r in records.values())
        ):
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the jobs never all started"
            time.sleep(0.2)
        for strategy, sig in victims.items():
            os.kill(records[strategy]["owner"]["pid"], sig)
        assert sweep.wait(timeout=600) == 1
    finally:
        if sweep.poll() is None:
            sweep.kill()
    output = (tmp_path / "sweep.log").read_text()
    records = _records(tmp_path / "sweep")
    assert records["all"]["status"] == "done", output[-3000:]
    assert records["all"]["metrics"]["synthetic/turn_exact_match"] is not None  # evaluated, not cut short
    for strategy, sig in victims.items():
        expected = "interrupted" if sig != signal.SIGSEGV else "failed"
        assert records[strategy]["status"] == expected, records[strategy]
        assert f"killed by {sig.name}" in records[strategy]["error"]
    assert "1/4 runs done" in output  # the table
    assert "error: 3 of 4 jobs of this sweep did not finish" in output
    assert "Traceback" not in output.split("1/4 runs done")[-1]


@pytest.mark.slow
def test_stopping_the_sweep_stops_its_jobs_and_records_them_interrupted(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, "all,last", "hydra.launcher.n_jobs=2", "train.max_steps=300")
    try:
        deadline = time.monotonic() + 600
        while not (
            len(records := _records(tmp_path / "sweep")) == 2
            and all(r["status"] == "running" for r in records.values())
        ):
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the jobs never all started"
            time.sleep(0.2)
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if sweep.poll() is None:
            sweep.kill()
    output = (tmp_path / "sweep.log").read_text()
    assert "error: the sweep was stopped by SIGTERM" in output and "Traceback" not in output, output[-3000:]
    for record in _records(tmp_path / "sweep").values():
        assert record["status"] == "interrupted"
        assert record["error"] == "the sweep was stopped by SIGTERM; resume reruns it"
    for pid in (r["owner"]["pid"] for r in records.values()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no job left running behind the sweep


def _small_disk(tmp_path: Path, free_kib: int) -> Iterator[Path]:
    """A 1 MiB tmpfs with `free_kib` KiB left (skipped, saying why, where mount is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        with open(mount / "filler", "wb") as f:
            try:
                f.write(b"\0" * (1024 * 1024 - free_kib * 1024))
                f.flush()
            except OSError:  # ENOSPC: full to the last block, as asked for free_kib=0
                pass
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """96 KiB left: room for two jobs' configs, logs and records (72 KiB in 4 KiB tmpfs pages here, where
    one more page of log or record on another machine must still fit), not for a model (~84 KiB: its
    75 KiB safetensors and config files)."""
    yield from _small_disk(tmp_path, 96)


@pytest.fixture
def no_space(tmp_path: Path) -> Iterator[Path]:
    """Not a block left."""
    yield from _small_disk(tmp_path, 0)


def test_a_sweep_dir_on_a_full_disk_is_one_line_before_any_job(no_space: Path) -> None:
    out = cli("sft_sweeps", "-m", "logger=none", f"hydra.sweep.dir={no_space / 'sweep'}")
    assert_clean_error(
        out, "error: hydra.sweep.dir: cannot write to", "No space left on device", "0 bytes free"
    )


def test_a_safetensors_write_on_a_full_disk_is_an_os_error_naming_the_disk_full(no_space: Path) -> None:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from sft_sweeps.stages import _as_os_error

    with pytest.raises(SafetensorError) as raised:  # what a checkpoint or model save raises there
        save_file({"w": torch.zeros(4096)}, str(no_space / "model.safetensors"))
    error = _as_os_error(raised.value, f"cannot save the model to {no_space}")
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(error) == f"[Errno 28] cannot save the model to {no_space}: No space left on device"


@pytest.mark.slow
def test_a_sweep_on_a_full_disk_records_its_jobs_failed_and_exits_nonzero(
    tmp_path: Path, full_disk: Path
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sft_sweeps",
            "-m",
            "masking=all,last",
            "debug=smoke",
            "logger=none",
            f"hydra.sweep.dir={full_disk / 'sweep'}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "error: 2 of 2 jobs of this sweep did not finish" in out.stderr
    assert "0/2 runs done" in out.stdout  # the table, before the error
    for run_dir in (full_disk / "sweep").glob("masking-*"):
        record = json.loads((run_dir / RECORD_NAME).read_text())
        assert record["status"] == "failed"
        assert "No space left on device" in record["error"] and str(run_dir) in record["error"]
