"""Read what a W&B run wrote to its `.wandb` file, so tests check what actually reached W&B.

A `.wandb` file is wandb's own protobuf records (`wandb_internal_pb2.Record`) in LevelDB-log framing:
a 7-byte file header (`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each chunk a
7-byte header (CRC-32 of type byte + data, little-endian uint32; length, uint16; type, uint8) and its
data. A record larger than a block is split into FIRST/MIDDLE/LAST chunks; a block tail shorter than a
chunk header is zero padding. wandb 0.31 ships no Python reader for it.

Example:
    >>> run = read_run(next(Path(run_dir).glob("wandb/*/run-*.wandb")))   # doctest: +SKIP
    >>> run.config["seed"], run.group, run.summary["turn_exact_match"]   # doctest: +SKIP
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    """All records of a `.wandb` file, in order. Raises ValueError on a bad header or checksum."""
    data = Path(path).read_bytes()
    if data[: len(HEADER)] != HEADER:
        raise ValueError(f"{path}: not a .wandb file (header {data[:7]!r})")
    records, pending, pos = [], b"", len(HEADER)
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER:
            pos += left_in_block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if checksum == 0 and length == 0 and kind == 0:  # zero-filled tail of a preallocated block
            pos += left_in_block
            continue
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        if len(chunk) < length:
            break  # a truncated last chunk: the writer was killed mid-record
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != checksum:
            raise ValueError(f"{path}: bad checksum at byte {pos}")
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _set(target: dict[str, Any], item: Any) -> None:
    """Apply one config/summary/history item (flat `key` or `nested_key` path) to a nested dict."""
    path = [item.key] if item.key else list(item.nested_key)
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = json.loads(item.value_json)


@dataclass
class WandbRun:
    """What one `.wandb` file holds, decoded."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # define_metric calls
    files: list[str] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    def table(self, run_dir: str | Path, key: str) -> dict[str, Any]:
        """The `{"columns", "data"}` JSON of table `key` as logged, read from the run's files folder."""
        ref = self.summary[key]
        (path,) = Path(run_dir).glob(f"wandb/*-{self.run_id}/files/{ref['path']}")
        return json.loads(path.read_text())


def read_run(path: str | Path, wait_s: float = 30.0) -> WandbRun:
    """Decode a `.wandb` file: run metadata, config, history rows, summary, metrics, files, exit code.

    `run.finish()` can return before wandb-core's writer has flushed the file, so this waits up to
    `wait_s` seconds for the exit record (a run still in progress is read as it is after that).
    """
    deadline = time.monotonic() + wait_s
    records = iter_records(path)
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.1)
        records = iter_records(path)
    run = WandbRun()
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.group, run.name = r.run_id, r.project, r.run_group, r.display_name
            run.tags = list(r.tags)
            for item in r.config.update:
                _set(run.config, item)
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, item)
        elif kind == "metric":
            m = record.metric
            run.metrics.append({"name": m.name, "glob_name": m.glob_name, "step_metric": m.step_metric})
        elif kind == "files":
            run.files.extend(f.path for f in record.files.files)
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append(
                {"type": a.type, "name": a.name, "paths": [c.path for c in a.manifest.contents]}
            )
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def find_run_files(run_dir: str | Path) -> list[Path]:
    """The `.wandb` files under `<run_dir>/wandb/`, oldest first (a resumed run adds one).

    `wandb/latest-run` is a link to the newest run folder and is skipped.
    """
    return sorted(p for p in Path(run_dir).glob("wandb/*/run-*.wandb") if not p.parent.is_symlink())
