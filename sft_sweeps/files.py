"""Temporary files for atomic writes, created with the permissions of a normal file; writable dirs.

`tempfile.mkstemp` creates files mode 0600 whatever the umask, so a record or cache file renamed from
one is unreadable by the rest of the group. `create_temp` makes the same unique, exclusive file, but with
mode 0666 filtered by the umask (0644 under the usual 022), as `open(path, "w")` would.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


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
