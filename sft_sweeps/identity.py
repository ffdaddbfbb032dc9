"""What identifies a run, in one place: the record's schema, the config hash, labels, groups, folder names.

Everything that names or compares runs reads this module: the pipeline writes `RunRecord`s, resume
compares `config_hash` and the data fingerprint, the W&B adapter (`sft_sweeps.tracking`) takes the group,
name and tags from here, the report reads records through `RunRecord.from_dict` and places them in
settings with `SETTING_EXCLUDED_KEYS`, and Hydra names job folders with `job_dirname`.

Masking labels are derived from the fields of `MaskingConfig` (their `abbrev`/`used_by` metadata), so a
parameter added there gets its own label, group and report row with no edit here.

Example:
    >>> masking_label({"name": "weighted", "prompt_weight": 0.1})
    'weighted(pw=0.1)'
    >>> job_dirname("masking=weighted,masking.prompt_weight=0.1", 2)
    'masking-weighted__masking.prompt_weight-0.1__seed-2'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sft_sweeps.config import (
    AgentConfig,
    DatasetConfig,
    HeldOutConfig,
    JudgeConfig,
    MaskingConfig,
    MultiIFConfig,
    TrainConfig,
)
from sft_sweeps.metrics import canonical_key
from sft_sweeps.naming import DEFAULT_SWEEP, default_sweep_name, file_slug  # noqa: F401 (the identity API)

# Keys that change how a run is observed, not what it computes: left out of the config hash.
# Threads change the order of float sums only, not what is computed: a sweep resumes on another machine.
UNHASHED_KEYS = ("logger", "resume", "cache_dir", "inspect", "optimized_metric", "num_threads")
# Nested keys of the same kind: how many checkpoints are kept, and whether a done run keeps them.
UNHASHED_PATHS = {"train": ("save_total_limit", "keep_checkpoints")}
# Left out of a setting too: the seed varies within a setting, the sweep name only names it.
UNGROUPED_KEYS = ("seed", "sweep_name", *UNHASHED_KEYS)
# The report compares strategies within a setting, so masking does not define one either.
SETTING_EXCLUDED_KEYS = ("masking", *UNGROUPED_KEYS)

# Run states. `interrupted`: a record left `running` by a process that is gone (killed, crashed machine).
STATUSES = ("running", "done", "failed", "interrupted")


def as_dict(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A resolved plain dict of a config (DictConfig) or a copy of a record's `config` dict."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
    return dict(cfg)


def _added_keys() -> dict[str, tuple[Any, str | None]]:
    """Config keys added after runs were recorded: dotted path -> (its default, the benchmark it belongs to).

    A key at its default is left out of a config when its benchmark is not listed (or it belongs to none),
    so a record written before it keeps its config hash (resume skips it), its setting and its place in the
    report: it computed the same thing. Set away from the default, or read by a listed benchmark (whose
    scoring it may change: Multi-IF's language-aware counts, the judge's parse rule), it counts like any key.
    Masking parameters declare it with `hashed_at_default=False`; benchmark settings are listed here.
    """
    added: dict[str, tuple[Any, str | None]] = {
        "eval.agent": (dataclasses.asdict(AgentConfig()), "agent"),
        "eval.heldout": (dataclasses.asdict(HeldOutConfig()), "heldout"),
        "eval.multi_if.scoring": (MultiIFConfig.scoring, "multi_if"),
        "eval.judge.parse": (JudgeConfig.parse, "judge"),
        "eval.judge.preflight": (JudgeConfig.preflight, None),  # a check before work: never changes results
        "eval.judge.held_out_references": (JudgeConfig.held_out_references, None),  # off: as before it
        # With checkpoints on, the length-grouped batches are drawn from (seed, epoch): another order.
        "train.save_steps": (TrainConfig.save_steps, None),
    }
    for f in dataclasses.fields(MaskingConfig):
        if f.metadata.get("hashed_at_default") is False:
            added[f"masking.{f.name}"] = (_default(f), None)
    return added


def comparable_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as hashes and the report's settings see it: without the keys added later that sit
    at their default (`_added_keys`), so records from before a key existed compare equal to those after."""
    out = json.loads(json.dumps(as_dict(cfg), default=str))  # a deep copy
    for section, keys in UNHASHED_PATHS.items():
        for key in keys:
            (out.get(section) or {}).pop(key, None)
    listed = set((out.get("eval") or {}).get("benchmarks") or [])
    for path, (default, benchmark) in _added_keys().items():
        if benchmark in listed:
            continue
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node and node[last] == default:
            del node[last]
    return out


def config_digest(resolved: Mapping[str, Any], drop: tuple[str, ...], length: int) -> str:
    """First `length` hex digits of sha256 over a resolved config's JSON, top-level `drop` keys and keys
    added later at their default left out (`comparable_config`)."""
    kept = {key: value for key, value in comparable_config(resolved).items() if key not in drop}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:length]


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """16 hex digits over the resolved config without the keys that do not change what a run computes."""
    return config_digest(as_dict(cfg), UNHASHED_KEYS, 16)


def setting_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """8 hex digits over the resolved config without seed, sweep name and observation keys.

    Two runs with the same setting hash differ only by seed (or by how they were observed).
    """
    return config_digest(as_dict(cfg), UNGROUPED_KEYS, 8)


def _masking_fields() -> list[dataclasses.Field]:
    # Read at call time: whatever MaskingConfig declares now is what names a strategy.
    return [f for f in dataclasses.fields(MaskingConfig) if "abbrev" in f.metadata]


def inapplicable_keys(config: Mapping[str, Any]) -> set[str]:
    """Config keys the run's data source ignores, e.g. `dataset.tasks` for local files.

    Read from the `sources` metadata of `DatasetConfig`'s fields: a key names no setting where it means
    nothing (the report's setting names, the sweep table).
    """
    source = str((config.get("dataset") or {}).get("source"))
    return {
        f"dataset.{f.name}"
        for f in dataclasses.fields(DatasetConfig)
        if "sources" in f.metadata and source not in f.metadata["sources"]
    }


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _default(f: dataclasses.Field) -> Any:
    default = f.default
    return default.value if hasattr(default, "value") else default  # enums as the strings records hold


def masking_params(masking: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The masking parameters that define a strategy beyond its name, in `MaskingConfig` field order.

    A parameter is named when it differs from its default, or when the strategy always shows it
    (`always_labelled`, e.g. `prompt_weight` for `weighted`, where it is the point).
    """
    masking = as_dict(masking)
    name = str(masking.get("name"))
    out = {}
    for f in _masking_fields():
        if f.name not in masking:
            continue
        always = name in {str(s) for s in f.metadata.get("always_labelled", ())}
        if always or masking[f.name] != _default(f):
            out[f.name] = masking[f.name]
    return out


def masking_label(masking: DictConfig | Mapping[str, Any]) -> str:
    """A short, stable name for a masking config: the strategy plus `masking_params`.

    Returns:
        e.g. `"all"`, `"weighted(pw=0.1)"`, `"weighted(pw=0.1,sched=decay,decay=0.5)"`.
    """
    masking = as_dict(masking)
    abbrev = {f.name: f.metadata["abbrev"] for f in _masking_fields()}
    params = [f"{abbrev[k]}={_fmt_value(v)}" for k, v in masking_params(masking).items()]
    return f"{masking.get('name')}({','.join(params)})" if params else str(masking.get("name"))


def parse_masking_label(label: str) -> dict[str, Any]:
    """The masking config a `masking_label` names (`weighted(pw=0.1)` -> name and prompt_weight): what a
    table of runs (`runs.csv`) keeps of a run's masking. Raises ValueError on an unknown abbreviation."""
    match = re.fullmatch(r"([^()]+)(?:\((.*)\))?", label.strip())
    if match is None:
        raise ValueError(f"not a masking label: {label!r}")
    fields_ = {f.metadata["abbrev"]: f for f in _masking_fields()}
    masking: dict[str, Any] = {"name": match.group(1)}
    for part in filter(None, (match.group(2) or "").split(",")):
        abbrev, _, text = part.partition("=")
        if abbrev not in fields_:
            raise ValueError(f"masking label {label!r}: unknown parameter {abbrev!r}")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        masking[fields_[abbrev].name] = value
    return masking


def run_group(cfg: DictConfig | Mapping[str, Any]) -> str:
    """The W&B group of a run: everything but the seed, readable first, exact by `setting_hash`.

    Returns:
        e.g. `"masking_seeds/model=tiny,dataset=synthetic,masking=weighted(pw=0.1),cfg=1a2b3c4d"`.
    """
    c = as_dict(cfg)
    return (
        f"{c.get('sweep_name', 'default')}/model={c['model']['name']},dataset={c['dataset']['name']},"
        f"masking={masking_label(c['masking'])},cfg={setting_hash(c)}"
    )


def run_name(cfg: DictConfig | Mapping[str, Any]) -> str:
    """Display name of a run: its masking label and seed, e.g. `"weighted(pw=0.1)-seed1"`."""
    c = as_dict(cfg)
    return f"{masking_label(c['masking'])}-seed{c.get('seed')}"


def run_tags(cfg: DictConfig | Mapping[str, Any]) -> list[str]:
    """Tags for model, dataset and masking, then `logger.tags` from the config."""
    c = as_dict(cfg)
    extra = list((c.get("logger") or {}).get("tags") or [])
    return [
        f"model:{c['model']['name']}",
        f"dataset:{c['dataset']['name']}",
        f"masking:{c['masking']['name']}",
        *extra,
    ]


# Characters a job folder never holds: `,` and `=` break lm-eval's --model_args and Hydra overrides.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def job_dirname(override_dirname: str, seed: int, max_length: int = 120) -> str:
    """A sweep job's folder name: its overrides, then the seed, as one path component any tool takes.

    Hydra joins the overrides with `,` and `=` (`conf/config.yaml` sets `kv_sep`/`item_sep` so); here `=`
    becomes `-`, `,` becomes `__`, and anything else outside `[A-Za-z0-9._+-]` becomes `_`. Long names are
    cut (the seed kept) and the settings end in a hash of the whole, so names stay unique, say their
    seed, and stay under the file-system limit.

    Example:
        >>> job_dirname("masking=all", 0)
        'masking-all__seed-0'
    """
    parts = [part for part in (override_dirname.split(",") if override_dirname else []) if part]
    settings = "__".join(_UNSAFE.sub("_", part.replace("=", "-", 1)).strip("_") for part in parts)
    seed_part = f"seed-{seed}"
    room = max_length - len(seed_part) - 2
    if len(settings) > room:  # cut the settings, never the seed, and keep them unique by a hash
        digest = hashlib.sha256(settings.encode()).hexdigest()[:10]
        settings = f"{settings[: room - 11]}-{digest}"
    return f"{settings}__{seed_part}" if settings else seed_part


@dataclass
class RunRecord:
    """`result.json`: what ran and what came out. Written and read through this class.

    Attributes:
        status: one of `STATUSES`.
        config: the resolved config (plain dict); `config_hash`, `group`, `strategy` derive from it.
        seed: the training seed actually used.
        metrics: `<benchmark>/<metric>` -> value (`sft_sweeps.metrics` says what each means).
        by_depth: metric key -> {assistant turn (string) -> value}.
        eval_items: benchmark -> per-item records (paired tests); a list in records older than benchmarks.
        benchmarks: benchmark -> what identifies how it scored (data version, judge model).
        data: `fingerprint` of the splits, their `stats` (skipped records by reason), `masking` stats.
        owner: `host` and `pid` of the process writing a `running` record (to tell a dead run).
        optimized_metric: the metric returned to Hydra, resolved; the report selects on its validation
            score (`validation/<optimized_metric>`).
        resumed_from_step: the optimizer step of the checkpoint an interrupted run continued from
            (`sft_sweeps.checkpoints`); None when it trained from step 0.
        source: the file it was read from (set on reading, never written).
    """

    status: str
    config: dict[str, Any]
    seed: int
    config_hash: str = ""
    group: str = ""
    strategy: str = ""
    # The metric returned to Hydra, resolved (`optimized_metric` may be null in the config).
    optimized_metric: str | None = None
    error: str | None = None
    overrides: list[str] = field(default_factory=list)
    run_dir: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    device: str | None = None
    wandb: dict[str, Any] | None = None
    owner: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    by_depth: dict[str, dict[str, float]] = field(default_factory=dict)
    eval_items: dict[str, list[dict[str, Any]]] | list[dict[str, Any]] | None = None
    benchmarks: dict[str, Any] = field(default_factory=dict)
    lm_eval: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    model_path: str | None = None
    # The optimizer step of the checkpoint the run continued from (None: trained from step 0).
    resumed_from_step: int | None = None
    wall_time_s: float | None = None
    source: str | None = None

    @classmethod
    def start(cls, cfg: DictConfig | Mapping[str, Any], **fields_: Any) -> RunRecord:
        """A new `running` record for a config, its identity derived here."""
        c = as_dict(cfg)
        return cls(
            status="running",
            config=c,
            seed=int(c["seed"]),
            config_hash=config_hash(c),
            group=run_group(c),
            strategy=masking_label(c["masking"]),
            **fields_,
        )

    @property
    def label(self) -> str:
        """The masking label (`weighted(pw=0.1)`), derived from the config."""
        return masking_label(self.config["masking"])

    @property
    def main_metric(self) -> str | None:
        """The resolved optimized metric; records older than it say it in their config."""
        return self.optimized_metric or self.config.get("optimized_metric")

    @property
    def data_fingerprint(self) -> str | None:
        return (self.data or {}).get("fingerprint")

    def items_for(self, benchmark: str) -> list[dict[str, Any]] | None:
        """Per-item records of one benchmark; records written before benchmarks hold one list for
        the synthetic tasks and NLL together."""
        if isinstance(self.eval_items, list):
            return self.eval_items if benchmark in ("synthetic", "nll") else None
        return (self.eval_items or {}).get(benchmark)

    def metric(self, key: str) -> float | None:
        """A finite metric value by its key (`sft_sweeps.metrics`), or None."""
        value = self.metrics.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return None
        return float(value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as result.json (`source` left out)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str) -> RunRecord:
        """Check and read a record. Raises RecordError naming `source` and the field."""
        if not isinstance(data, dict):
            raise RecordError(f"{source}: a record must be a JSON object, got {type(data).__name__}")
        for key in ("status", "seed", "config"):
            if key not in data:
                raise RecordError(f"{source}: record has no field {key!r}")
        if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
            raise RecordError(f"{source}: field 'seed' must be an integer, got {data['seed']!r}")
        if not isinstance(data["config"], dict):
            raise RecordError(f"{source}: field 'config' must be an object")
        for key in ("model", "dataset", "masking"):
            if not isinstance(data["config"].get(key), dict) or "name" not in data["config"][key]:
                raise RecordError(f"{source}: field 'config.{key}.name' is missing")
        metrics = data.get("metrics")
        if data["status"] == "done" and not isinstance(metrics, dict):
            raise RecordError(f"{source}: a done record needs field 'metrics' (an object)")
        for name, value in (metrics or {}).items():
            if value is not None and not isinstance(value, int | float):
                raise RecordError(f"{source}: field 'metrics.{name}' must be a number, got {value!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in known and v is not None}
        # Older records name metrics without their benchmark: read them under today's keys.
        kept["metrics"] = {canonical_key(k): v for k, v in (metrics or {}).items()}
        kept["by_depth"] = {canonical_key(k): v for k, v in (data.get("by_depth") or {}).items()}
        return cls(**{**kept, "source": source})


class RecordError(ValueError):
    """A record is unreadable or lacks a field; the message names the file and the field."""
