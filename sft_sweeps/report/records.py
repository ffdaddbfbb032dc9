"""Load run records: `result.json` files from sweep folders, or W&B runs through the public API."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sft_sweeps.identity import RecordError, RunRecord
from sft_sweeps.record import RECORD_NAME

__all__ = ["RecordError", "fetch_wandb_records", "load_records", "record_from_wandb_run", "records_from_csv"]

# Summary keys of a W&B run that are not end-of-run metrics.
_WANDB_NON_METRICS = ("_", "train/", "eval/", "data/", "by_depth/", "eval_items/")
# Config keys `make_tracker` adds to a W&B run's config (the masking label, for W&B grouping): derived from
# the config, so not part of it in a record (they would change its setting and group hash).
_WANDB_DERIVED_CONFIG = ("strategy",)


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


def load_records(paths_or_globs: str | Iterable[str]) -> list[RunRecord]:
    """Read every `result.json` under the given sweep dirs, run dirs, files or glob patterns.

    Each record's `source` is the file it came from. Records are sorted by source, and a file named twice
    is read once. Records written by older versions (unprefixed metric names, job folders named
    `masking=all,seed=0`) are read the same way.

    Example:
        >>> records = load_records(["multirun/masking_seeds"])   # doctest: +SKIP
        >>> records = load_records("multirun/*")                  # doctest: +SKIP

    Args:
        paths_or_globs: one spec or several.

    Returns:
        The records, sorted by their source path.

    Raises:
        FileNotFoundError: a spec matched no result.json.
        RecordError: a file cannot be read, is not valid UTF-8 or JSON, or lacks a required field (file and
            field named).
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
        if path.suffix == ".csv":  # a report's runs.csv: the runs of a sweep whose records are not here
            try:
                records.extend(records_from_csv(path))
            except (OSError, UnicodeDecodeError) as e:
                raise RecordError(f"{path}: cannot read ({e})") from e
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: not valid JSON ({e})") from e
        except UnicodeDecodeError as e:  # a torn or foreign file: name it, not the codec's position alone
            raise RecordError(f"{path}: not valid UTF-8 ({e})") from e
        except OSError as e:
            raise RecordError(f"{path}: cannot read ({e.strerror or e})") from e
        records.append(RunRecord.from_dict(record, str(path)))
    return records


def _csv_number(text: str) -> float | None:
    return float(text) if text.strip() else None


def _setting_config(setting: str, sweep: str) -> dict[str, Any]:
    """The config keys a setting name (`sweep | k=v, k=v`) says, nested (`train.learning_rate=0.001`)."""
    config: dict[str, Any] = {}
    _, _, overrides = setting.partition(" | ") if setting != sweep else ("", "", "")
    for override in filter(None, re.split(r", (?=[A-Za-z_][\w.]*=)", overrides)):
        key, _, text = override.partition("=")
        if key == "data.fingerprint" or key.startswith("benchmarks."):
            continue  # recorded, not configured: the data fingerprint has its own column
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return config


def records_from_csv(path: Path) -> list[RunRecord]:
    """Records from a report's `runs.csv` (`render.runs_csv`): status, seed, masking, the setting's keys,
    data fingerprint, code version and metrics, each run once. They hold no per-item results and no
    turn-depth curves, so a report read from them has seed tests but no item tests and no depth plots.

    Raises:
        RecordError: a row lacks a column the report needs or holds a value that is not one (file, row
            and column named).
    """
    from sft_sweeps.identity import parse_masking_label

    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    required = ("setting", "sweep", "strategy", "seed", "status", "group")
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise RecordError(f"{path}: not a runs.csv of the report: no column {missing[0]!r}")
    metric_columns = [c for c in reader.fieldnames or [] if c not in RUN_COLUMNS]
    records = []
    for row_number, row in enumerate(reader, start=2):
        where = f"{path}: row {row_number}"
        try:
            masking = parse_masking_label(row["strategy"])
            group = dict(re.findall(r"(model|dataset)=([^,]+)", row["group"].split("/", 1)[-1]))
            config = _setting_config(row["setting"], row["sweep"])
            config["sweep_name"] = row["sweep"]
            config["masking"] = masking
            for key in ("model", "dataset"):
                config.setdefault(key, {})["name"] = group.get(key, "unknown")
            metrics = {c: value for c in metric_columns if (value := _csv_number(row[c])) is not None}
            seed = int(row["seed"])
            wall = _csv_number(row.get("wall_time_s") or "")
        except (ValueError, KeyError) as e:
            raise RecordError(f"{where}: {e}") from e
        record = {
            "status": row["status"],
            "seed": seed,
            "config": config,
            "config_hash": row.get("config_hash") or "",
            "group": row["group"],
            "strategy": masking["name"],
            "error": row.get("error") or None,
            "git_commit": row.get("git_commit") or None,
            "data": {"fingerprint": row["data_fingerprint"]} if row.get("data_fingerprint") else None,
            "metrics": metrics,
            "wall_time_s": wall,
            # The metric a selection reads on validation; run tables older than the column lack it.
            "optimized_metric": row.get("optimized_metric") or None,
        }
        records.append(RunRecord.from_dict(record, row.get("source") or where))
    return records


# runs.csv columns that are not metrics (`render.CSV_FIELDS`).
RUN_COLUMNS = (
    "setting",
    "sweep",
    "strategy",
    "seed",
    "status",
    "group",
    "config_hash",
    "wall_time_s",
    "git_commit",
    "data_fingerprint",
    "error",
    "source",
    "optimized_metric",
)


def _unwrap(value: Any) -> Any:
    # The public API may hand back config values as {"value": ..., "desc": ...}.
    if isinstance(value, Mapping) and set(value) <= {"value", "desc"} and "value" in value:
        return value["value"]
    return value


def record_from_wandb_run(run: Any) -> RunRecord:
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
        if key.startswith("by_depth/") and key.count("/") >= 2:
            metric, depth = key.removeprefix("by_depth/").rsplit("/", 1)
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
    }
    return RunRecord.from_dict(record, f"wandb:{path}")


def fetch_wandb_records(entity_project: str, filters: dict[str, Any] | None = None) -> list[RunRecord]:
    """All runs of a W&B project (`entity/project`) as records, through `wandb.Api()` (needs a login).

    Args:
        entity_project: e.g. `"my-team/sft_sweeps"`.
        filters: a MongoDB-style filter passed to `Api.runs`, e.g. `{"group": {"$regex": "^masking_seeds/"}}`.
    """
    import wandb

    runs = wandb.Api().runs(entity_project, filters=filters or {})
    return sorted((record_from_wandb_run(run) for run in runs), key=lambda r: r.source or "")
