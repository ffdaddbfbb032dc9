"""Files the project reads and writes itself: JSONL records with located errors, temporary files for
atomic writes, and folders checked writable before any work.

`read_jsonl` is the one JSONL reader: every JSONL file (data, benchmark items, judge questions and prompts,
the built-in sets) is read through it, one record per non-blank line, and a line that is not JSON is
reported with its file and line number, raised or handed to the caller to count.

`tempfile.mkstemp` creates files mode 0600 whatever the umask, so a record or cache file renamed from
one is unreadable by the rest of the group. `create_temp` makes the same unique, exclusive file, but with
mode 0666 filtered by the umask (0644 under the usual 022), as `open(path, "w")` would.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class JsonlError(ValueError):
    """A JSONL line is not valid JSON (or not UTF-8); the message names the file and the line.

    Attributes:
        path: the file (or the name given for a text).
        line: its 1-based line number.
    """

    def __init__(self, path: str, line: int, cause: Exception) -> None:
        super().__init__(f"{path}:{line}: invalid JSON: {cause}")
        self.path, self.line, self.cause = path, line, cause


def read_jsonl(
    path: str | Path, text: str | None = None, errors: str = "raise", stream: Iterable[bytes] | None = None
) -> Iterator[tuple[int, Any]]:
    """(line number, record) for every non-blank line of a JSONL file.

    Args:
        path: the file; with `text` or `stream`, only the name used in errors (e.g. a package resource).
        text: the file's content when it is not read from `path`.
        stream: an open binary file to read instead of `path` (a decompressing one, say).
        errors: `raise` a `JsonlError` at the first bad line, or `yield` the `JsonlError` in place of the
            record (a data reader that skips and counts invalid records).

    Raises:
        JsonlError: a line is not JSON or not UTF-8 (with `errors="raise"`).
    """
    if stream is not None:
        lines: Iterable[bytes] = stream
    else:
        lines = text.encode("utf-8").splitlines(keepends=True) if text is not None else _lines(path)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            error = JsonlError(str(path), number, e)
            if errors == "raise":
                raise error from None
            yield number, error


def _lines(path: str | Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from f


def create_temp(directory: str | Path, name: str) -> tuple[int, Path]:
    """Create and open a new, uniquely named hidden file `<directory>/.<name>.<random>.tmp`.

    Args:
        directory: where the file goes; the same folder as the final file, so a rename is atomic.
        name: the final file's name, to tell whose temporary file it is.

    Returns:
        An open file descriptor (write-only) and the file's path.
    """
    while True:
        path = Path(directory) / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            # O_EXCL: never open a file someone else made; 0o666 lets the umask decide, as open() does.
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def check_writable_dir(directory: str | Path, key: str, fix: str) -> None:
    """Fail before any work when files cannot be created in `directory` (made if missing).

    Args:
        directory: the folder a run will write to.
        key: the setting that names it, for the message (`cache_dir`, `--out`).
        fix: what the user can do, ending the message (`set cache_dir=<dir> or SFT_SWEEPS_CACHE`).

    Raises:
        sft_sweeps.config.ConfigError: `<key>: cannot write to '<dir>' (<why>); <fix>`.
    """
    from sft_sweeps.config import ConfigError

    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = create_temp(path, "write_check")
        os.close(fd)
        probe.unlink()
    except OSError as e:
        why = e.strerror or str(e)
        if isinstance(e, FileExistsError) or (path.exists() and not path.is_dir()):
            why = "it is not a directory"
        raise ConfigError(f"{key}: cannot write to '{path}' ({why}); {fix}") from e
