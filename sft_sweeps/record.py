"""The run record: `result.json` in each run dir, written atomically.

A record says what ran (resolved config, its hash, seed, data fingerprint, package versions, git commit)
and what came out (status, metrics, model path, wall time). A killed run never leaves a half-written
file: records are written to a temporary file and renamed over the old one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sft_sweeps.files import create_temp

RECORD_NAME = "result.json"
PACKAGES = (
    "sft_sweeps",
    "torch",
    "transformers",
    "trl",
    "datasets",
    "peft",
    "accelerate",
    "hydra-core",
    "omegaconf",
    "wandb",
    "lm_eval",
    "tokenizers",
)
# Keys that change how a run is observed, not what it computes: excluded from the config hash.
UNHASHED_KEYS = ("logger", "resume", "cache_dir", "inspect")


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON to `path` via a temporary file in the same directory and an atomic rename.

    The file gets the permissions of a normal file under the umask (0644 under 022), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The record in `run_dir`, or None when there is none (or it is unreadable)."""
    path = Path(run_dir) / RECORD_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def config_digest(resolved: dict[str, Any], drop: tuple[str, ...], length: int) -> str:
    """First `length` hex digits of sha256 over a resolved config's JSON, top-level `drop` keys left out."""
    kept = {key: value for key, value in resolved.items() if key not in drop}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:length]


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config without the keys that do not change what a run computes."""
    return config_digest(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), UNHASHED_KEYS, 16)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The commit of the source tree that ran, with `+dirty` when it had uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit
