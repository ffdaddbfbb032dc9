"""Load run records: `result.json` files from sweep folders, or W&B runs through the public API."""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RECORD_NAME = "result.json"  # as written by `sft_sweeps.record`
# Fields the report cannot do without; a record lacking one is an error that names file and field.
REQUIRED_FIELDS = ("status", "seed", "config")
REQUIRED_CONFIG = ("model", "dataset", "masking")
# Summary keys of a W&B run that are not end-of-run metrics.
_WANDB_NON_METRICS = ("_", "train/", "eval/", "data/", "by_depth/")
# Config keys `make_tracker` adds to a W&B run's config (the masking label, for W&B grouping): derived from
# the config, so not part of it in a record (they would change its setting and group hash).
_WANDB_DERIVED_CONFIG = ("strategy",)


class RecordError(ValueError):
    """A record is unreadable or lacks a field; the message names the file and the field."""


def _record_files(spec: str) -> list[Path]:
    """result.json files named by one path or glob: a record file, a run dir, or a folder of them."""
    matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
    files: list[Path] = []
    for match in matches:
        path = Path(match)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(path.rglob(RECORD_NAME)))
    return files


def validate_record(record: Any, source: str) -> dict[str, Any]:
    """Check the fields the report needs. Raises RecordError naming `source` and the field."""
    if not isinstance(record, dict):
        raise RecordError(f"{source}: a record must be a JSON object, got {type(record).__name__}")
    for key in REQUIRED_FIELDS:
        if key not in record:
            raise RecordError(f"{source}: record has no field {key!r}")
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        raise RecordError(f"{source}: field 'seed' must be an integer, got {record['seed']!r}")
    if not isinstance(record["config"], dict):
        raise RecordError(f"{source}: field 'config' must be an object")
    for key in REQUIRED_CONFIG:
        if not isinstance(record["config"].get(key), dict) or "name" not in record["config"][key]:
            raise RecordError(f"{source}: field 'config.{key}.name' is missing")
    if record["status"] == "done":
        metrics = record.get("metrics")
        if not isinstance(metrics, dict):
            raise RecordError(f"{source}: a done record needs field 'metrics' (an object)")
        for name, value in metrics.items():
            if value is not None and not isinstance(value, int | float):
                raise RecordError(f"{source}: field 'metrics.{name}' must be a number, got {value!r}")
    return record


def load_records(paths_or_globs: str | Iterable[str]) -> list[dict[str, Any]]:
    """Read every `result.json` under the given sweep dirs, run dirs, files or glob patterns.

    Each record gets a `source` field: the file it came from. Records are sorted by source, and a file
    named twice is read once.

    Example:
        >>> records = load_records(["multirun/masking_seeds"])   # doctest: +SKIP
        >>> records = load_records("multirun/*")                  # doctest: +SKIP

    Args:
        paths_or_globs: one spec or several.

    Returns:
        The records, sorted by their source path.

    Raises:
        FileNotFoundError: a spec matched no result.json.
        RecordError: a file is not valid JSON or lacks a required field (file and field named).
    """
    specs = [paths_or_globs] if isinstance(paths_or_globs, str) else list(paths_or_globs)
    files: set[Path] = set()
    for spec in specs:
        found = _record_files(spec)
        if not found:
            raise FileNotFoundError(f"no {RECORD_NAME} found under {spec!r}")
        files.update(p.resolve() for p in found)
    records = []
    for path in sorted(files):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: not valid JSON ({e})") from e
        record = validate_record(record, str(path))
        record["source"] = str(path)
        records.append(record)
    return records


def _unwrap(value: Any) -> Any:
    # The public API may hand back config values as {"value": ..., "desc": ...}.
    if isinstance(value, Mapping) and set(value) <= {"value", "desc"} and "value" in value:
        return value["value"]
    return value


def record_from_wandb_run(run: Any) -> dict[str, Any]:
    """Turn a W&B public-API run into the record shape of `result.json` (no eval items, no data stats).

    Uses `run.id`, `run.path`, `run.group`, `run.state`, `run.config` and `run.summary`. Metrics are the
    numeric summary values outside `train/`, `eval/`, `data/`; `by_depth/<metric>/<depth>` summary keys,
    where logged, become `by_depth`.

    Raises:
        RecordError: the run's config lacks a field the report needs.
    """
    config = {
        k: _unwrap(v)
        for k, v in dict(run.config).items()
        if not k.startswith("_") and k not in _WANDB_DERIVED_CONFIG
    }
    summary = dict(run.summary)
    metrics, by_depth = {}, {}
    for key, value in summary.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            continue
        if key.startswith("by_depth/") and key.count("/") == 2:
            _, metric, depth = key.split("/")
            by_depth.setdefault(metric, {})[depth] = float(value)
        elif not key.startswith(_WANDB_NON_METRICS):
            metrics[key] = float(value)
    state = str(run.state)
    status = {"finished": "done", "running": "running"}.get(state, "failed")
    path = "/".join(run.path) if isinstance(run.path, list | tuple) else str(run.path)
    record = {
        "status": status,
        "error": None if status != "failed" else f"W&B run state: {state}",
        "group": run.group,
        "seed": config.get("seed"),
        "strategy": (config.get("masking") or {}).get("name"),
        "config": config,
        "metrics": metrics,
        "by_depth": by_depth,
        "eval_items": None,
        "data": None,
        "wall_time_s": summary.get("_runtime"),
        "wandb": {"run_id": run.id, "mode": "online"},
        "source": f"wandb:{path}",
    }
    return validate_record(record, record["source"])


def fetch_wandb_records(entity_project: str, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """All runs of a W&B project (`entity/project`) as records, through `wandb.Api()` (needs a login).

    Args:
        entity_project: e.g. `"my-team/sft_sweeps"`.
        filters: a MongoDB-style filter passed to `Api.runs`, e.g. `{"group": {"$regex": "^masking_seeds/"}}`.
    """
    import wandb

    runs = wandb.Api().runs(entity_project, filters=filters or {})
    return sorted((record_from_wandb_run(run) for run in runs), key=lambda r: r["source"])
