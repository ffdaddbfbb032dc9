"""From run records to the numbers of the report: cells, means, tests, picks and the sweep's hygiene.

Runs are arranged as the W&B groups are (`sft_sweeps.tracking.run_group`): runs that differ only by seed
form a cell. A cell is a strategy (its masking label, e.g. `weighted(pw=0.1)`) within a setting (the sweep
name plus every other config key that varies across the records, e.g. `model.arch.hidden_size=64`);
strategies are compared within a setting.

Selection (`analyze(records, Selection(("train.learning_rate",)))`): when a sweep varies a hyperparameter
within each strategy (a learning-rate grid), each strategy keeps the value with the best mean validation
metric over seeds (`validation/<optimized_metric>`, recorded by every run), and the strategies' chosen
cells are compared on test. Nothing is ever chosen on test.

Example:
    >>> report = analyze(load_records("multirun/masking_seeds"))         # doctest: +SKIP
    >>> [(p.metric, p.best, p.significant) for p in report.settings[0].picks]   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import shlex
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_sweeps.identity import (
    SETTING_EXCLUDED_KEYS,
    RunRecord,
    comparable_config,
    file_slug,
    inapplicable_keys,
    masking_label,
    masking_params,
)
from sft_sweeps.metrics import (
    VALIDATION_PREFIX,
    is_compared,
    is_detail,
    is_validation,
    lookup,
    lower_is_better,
    sort_keys,
)
from sft_sweeps.record import effective_status
from sft_sweeps.report.stats import (
    ALPHA,
    MeanCI,
    PairedTest,
    SeedsNeeded,
    holm,
    mean_ci,
    paired_permutation,
    paired_t,
    seeds_for_power,
)

__all__ = [
    "OptionError",
    "Selection",
    "SelectionError",
    "analyze",
    "check_selection",
    "is_eval_metric",
    "lower_is_better",
    "place_runs",
]

STRATEGY_ORDER = ("full", "last", "all", "weighted")
# The data a run trained and was scored on defines its setting too: runs on different data are never
# paired or ranked against each other (a changed training file makes a new setting, not a silent mix).
DATA_KEY = "data.fingerprint"


def is_eval_metric(metric: str) -> bool:
    """Compared across strategies (`sft_sweeps.metrics`); counts, times and the training loss are not."""
    return is_compared(metric)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return flat


def _strategy_key(masking: Mapping[str, Any]) -> tuple:
    name = str(masking.get("name"))
    order = STRATEGY_ORDER.index(name) if name in STRATEGY_ORDER else len(STRATEGY_ORDER)
    params = tuple((k, json.dumps(masking[k], sort_keys=True)) for k in sorted(masking) if k != "name")
    numeric = tuple(
        masking.get(k) for k in ("prompt_weight", "turn_decay") if isinstance(masking.get(k), int | float)
    )
    return (order, name, numeric, params)


@dataclass
class Run:
    """One record placed in the sweep: its setting, strategy and seed."""

    record: RunRecord
    sweep: str
    setting: str
    setting_overrides: tuple[str, ...]
    strategy: str
    strategy_key: tuple
    seed: int
    status: str

    @property
    def source(self) -> str:
        return str(self.record.source or "")

    @property
    def masking(self) -> dict[str, Any]:
        return self.record.config["masking"]

    def metric(self, name: str) -> float | None:
        return self.record.metric(name)

    def skipped_records(self) -> int:
        """Records of the data source skipped as invalid (`dataset.on_invalid=skip`), over all splits."""
        stats = (self.record.data or {}).get("stats") or {}
        return sum(
            sum((split.get("skipped") or {}).values()) for split in stats.values() if isinstance(split, dict)
        )

    def error_line(self) -> str:
        if self.status == "interrupted" and self.record.status == "running":
            return "left `running` by a process that is gone (killed?); resume reruns it"
        lines = [line for line in str(self.record.error or "").strip().splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


@dataclass
class Missing:
    """A grid point (strategy x seed of one setting) with no record at all."""

    sweep: str
    setting: str
    strategy: str
    seed: int
    overrides: str  # the overrides that make it differ from the others of its setting
    command: str = ""  # the command that runs it into its sweep folder (from a sibling's overrides)


@dataclass
class Comparison:
    """One strategy against the best of a metric: seed-paired and item-paired tests (a = best)."""

    metric: str
    strategy: str
    gap: float  # mean(strategy) - mean(best), in metric units
    seeds: PairedTest
    seeds_p_holm: float | None = None
    items: PairedTest | None = None
    items_p_holm: float | None = None


@dataclass
class Pick:
    """The best strategy of a metric, its margin over the runner-up, and whether that is significant."""

    metric: str
    best: str
    best_mean: float
    runner_up: str | None
    margin: float | None  # how much better than the runner-up (>= 0), in metric units
    test: str | None  # "seeds" or "items": the test whose Holm-adjusted p decides
    p_holm: float | None
    significant: bool
    tied: list[str] = field(default_factory=list)  # strategies with the best mean exactly (bold too)
    # Seeds a paired t-test would need to detect this margin at 80% power (from the seed spread).
    seeds_needed: SeedsNeeded | None = None
    # The held-out items the comparison rests on, and how many a paired test over items would need to
    # detect this margin at 80% power: a held-out split too small for the claim says so.
    num_items: int | None = None
    items_needed: SeedsNeeded | None = None


@dataclass(frozen=True)
class Selection:
    """Pick, per strategy, the value of `keys` with the best mean of `metric` over seeds.

    Attributes:
        keys: config keys varied within each strategy (e.g. `train.learning_rate`).
        metric: the selection metric; None: `validation/<optimized_metric>` of the records.
    """

    keys: tuple[str, ...]
    metric: str | None = None
    split: str = "validation"


@dataclass
class Candidate:
    """One value of the selection keys for one strategy: its validation score and whether it was chosen."""

    values: tuple[str, ...]  # `key=value` of each selection key
    score: MeanCI | None  # the selection metric over the seeds done (None: no run reported it)
    chosen: bool = False


@dataclass
class SettingReport:
    """Everything the report says about one setting."""

    name: str
    overrides: tuple[str, ...]
    strategies: list[str]
    masking: dict[str, dict[str, Any]]  # strategy -> its masking config
    seeds: dict[str, list[int]]  # strategy -> seeds of its done runs
    eval_metrics: list[str]
    train_metrics: list[str]
    summary: dict[str, dict[str, MeanCI]]  # metric -> strategy -> mean/CI over seeds
    by_seed: dict[str, dict[str, dict[int, float]]]  # metric -> strategy -> seed -> value (the seed spread)
    comparisons: dict[str, list[Comparison]]
    picks: list[Pick]
    by_depth: dict[str, dict[str, dict[int, MeanCI]]]  # metric -> strategy -> depth -> mean/CI
    fingerprints: dict[str, list[str]]  # data fingerprint -> "strategy seed=s" of the runs that used it
    # With a Selection: the selection metric and, per strategy, its candidates (the chosen one marked).
    selection_metric: str | None = None
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    # Per strategy, the seeds its candidates are scored on (empty: none in common, each on its own).
    selection_seeds: dict[str, list[int]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name for headings and file names: the setting's name when short, else the sweep and each
        differing key's last part and value, paths cut to their file name (`setting_label`)."""
        return short_setting_name(self.name, self.overrides)

    def chosen(self, strategy: str) -> tuple[str, ...]:
        """The `key=value` settings chosen for `strategy` (empty without a selection)."""
        return next((c.values for c in self.candidates.get(strategy, []) if c.chosen), ())


@dataclass
class Hygiene:
    """What the averages do not show: failed, missing and duplicate runs, mixed data, seeds or code."""

    expected: int
    done: int
    not_done: list[Run] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    duplicates: list[Run] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    # setting -> records the data source skipped as invalid (the most any of its runs reports)
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class SweepReport:
    runs: list[Run]
    settings: list[SettingReport]
    hygiene: Hygiene


def _setting_flats(records: list[RunRecord]) -> tuple[list[dict[str, str]], list[str]]:
    """Each record's setting keys (flattened config, benchmark identities, data) and the keys that vary.

    A key a record lacks counts as a value (`null`) unless the record could not have it: its data
    fingerprint (older records) or a key its data source ignores.
    """
    flats = []
    optional: list[set[str]] = []
    for record in records:
        optional.append({DATA_KEY, *inapplicable_keys(record.config)})
        config = {k: v for k, v in comparable_config(record.config).items() if k not in SETTING_EXCLUDED_KEYS}
        # A key the run's data source ignores (`dataset.tasks` for local files) never tells settings apart.
        ignored = inapplicable_keys(record.config)
        flat = {k: v for k, v in _flatten(config).items() if k not in ignored}
        flat.update(_flatten(_benchmark_identities(record), "benchmarks."))
        if record.data_fingerprint:
            flat[DATA_KEY] = json.dumps(record.data_fingerprint[:12])
        flats.append(flat)
    keys = sorted({k for flat in flats for k in flat})
    # A record without a fingerprint (older, failed early) joins whatever data its setting has.
    varying = [
        k
        for k in keys
        if len({flat.get(k) for flat, opt in zip(flats, optional, strict=True) if k in flat or k not in opt})
        > 1
    ]
    return [
        {**flat, **{k: _ABSENT for k in varying if k not in flat and k not in opt}}
        for flat, opt in zip(flats, optional, strict=True)
    ], varying


_ABSENT = json.dumps(None)  # a varying key a record does not have: `null`, as before


def place_runs(records: Iterable[RunRecord]) -> list[Run]:
    """Give each record its setting (sweep name plus config keys and data that vary across records) and
    strategy. Done runs whose data fingerprints differ land in different settings."""
    records = list(records)
    flats, varying = _setting_flats(records)
    runs = []
    for record, flat in zip(records, flats, strict=True):
        overrides = tuple(f"{k}={_plain(flat[k])}" for k in varying if k in flat)
        sweep = str(record.config.get("sweep_name", "default"))
        masking = record.config["masking"]
        runs.append(
            Run(
                record=record,
                sweep=sweep,
                setting=" | ".join([sweep, ", ".join(overrides)]) if overrides else sweep,
                setting_overrides=overrides,
                strategy=masking_label(masking),
                strategy_key=_strategy_key(masking),
                seed=record.seed,
                status=effective_status(record),
            )
        )
    return sorted(runs, key=lambda r: (r.setting, r.strategy_key, r.seed, r.source))


def _benchmark_identities(record: RunRecord) -> dict[str, Any]:
    """What identifies how each benchmark scored (`benchmarks.<name>.identity`, e.g. the judge model and the
    sha256 of its prompts): runs scored differently land in different settings, even when their configs
    agree (a prompt file edited in place)."""
    benchmarks = record.benchmarks or {}
    return {
        name: {"identity": info["identity"]}
        for name, info in benchmarks.items()
        if isinstance(info, Mapping) and isinstance(info.get("identity"), Mapping)
    }


def _plain(value_json: str | None) -> str:
    if value_json is None:
        return "null"
    value = json.loads(value_json)
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if not isinstance(value, str) else value


def _rerun_overrides(masking: Mapping[str, Any], setting_overrides: tuple[str, ...], seed: int) -> str:
    params = [f"masking.{k}={_plain(json.dumps(v))}" for k, v in masking_params(masking).items()]
    # `benchmarks.*` (a judge's identity) and the data fingerprint are recorded, not configured: no
    # override reproduces them.
    config = [o for o in setting_overrides if not o.startswith(("benchmarks.", DATA_KEY))]
    return " ".join([f"masking={masking['name']}", *params, *config, f"seed={seed}"])


def _rerun_command(missing_masking: Mapping[str, Any], seed: int, siblings: list[Run]) -> str:
    """`python -m sft_sweeps -m ...`: the overrides of a run of the same setting (the same strategy if
    any, else the same seed), its masking and seed replaced, into that run's sweep folder."""
    sibling = min(
        siblings,
        key=lambda r: (r.strategy != masking_label(missing_masking), r.seed != seed, r.source),
    )
    kept = [
        o
        for o in sibling.record.overrides
        if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] not in ("masking", "seed")
    ]
    params = [f"masking.{k}={_plain(json.dumps(v))}" for k, v in masking_params(missing_masking).items()]
    args = [*kept, f"masking={missing_masking['name']}", *params, f"seed={seed}"]
    if sibling.source and not sibling.source.startswith("wandb:"):
        args.append(f"hydra.sweep.dir={_display_path(Path(sibling.source).parent.parent)}")
    return shlex.join(["python", "-m", "sft_sweeps", "-m", *args])


def display_source(source: str) -> str:
    """A record's source as a user names it: a file path relative to the working directory when under it."""
    return source if source.startswith("wandb:") else _display_path(Path(source))


def _display_path(path: Path) -> str:
    """`path` relative to the working directory when it is under it (what a user typed), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _pick_cells(runs: list[Run]) -> tuple[dict[tuple[str, str], dict[int, Run]], list[Run]]:
    """One run per (setting, strategy, seed): a done one if any, else the first; the rest are duplicates."""
    by_point: dict[tuple[str, str, int], list[Run]] = defaultdict(list)
    for run in runs:
        by_point[(run.setting, run.strategy, run.seed)].append(run)
    cells: dict[tuple[str, str], dict[int, Run]] = defaultdict(dict)
    duplicates = []
    for (setting, strategy, seed), candidates in sorted(by_point.items(), key=lambda kv: kv[0]):
        chosen = next((r for r in candidates if r.status == "done"), candidates[0])
        cells[(setting, strategy)][seed] = chosen
        duplicates.extend(r for r in candidates if r is not chosen)
    return cells, duplicates


def _items_by_key(run: Run, metric: str) -> dict[tuple, float] | None:
    """Per-item values of `metric` in one run (None when the records hold no per-item evidence).

    The metric's benchmark, item field and level come from `sft_sweeps.metrics`; a task breakdown
    (`synthetic/state_tracking/turn_exact_match`) keeps that task's items.
    """
    declared = lookup(metric)
    if declared is None or declared.item_field is None:
        return None
    items = run.record.items_for(declared.benchmark)
    if not items:
        return None
    parts = metric.split("/")
    task = parts[1] if len(parts) == 3 else None
    values: dict[tuple, list[float]] = defaultdict(list)
    for item in items:
        if task and item.get("task") != task:
            continue
        if declared.turn is not None and item.get("turn") != declared.turn:
            continue  # a metric of one turn (Multi-IF's turn 3) pairs that turn's items only
        value = item.get(declared.item_field)
        if value is None and declared.item_field in item:
            continue  # no value here (a judgment that failed to parse): pair items graded in both runs
        if not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
            return None  # a field missing or non-numeric on any item: no item-level test for this metric
        key = (
            (item.get("task"), item.get("id"))
            if declared.level == "conversation"
            else (item.get("task"), item.get("id"), item.get("turn"))
        )
        values[key].append(float(value))
    if not values:
        return None
    if declared.level == "conversation":
        return {k: float(all(v)) for k, v in values.items()}
    return {k: sum(v) / len(v) for k, v in values.items()}


def _item_pairs(
    best: dict[int, Run], other: dict[int, Run], metric: str
) -> tuple[list[float], list[float]] | None:
    """Per-item values of `metric` in two strategies' runs, paired by item, each averaged over the seeds
    both ran; None when the records hold no per-item evidence."""
    seeds = sorted(set(best) & set(other))
    per_seed = []
    for seed in seeds:
        a, b = _items_by_key(best[seed], metric), _items_by_key(other[seed], metric)
        if a is None or b is None:
            return None
        per_seed.append((a, b))
    if not per_seed:
        return None
    common = set.intersection(*(set(a) & set(b) for a, b in per_seed))
    keys = sorted(common, key=lambda k: json.dumps(k, default=str))
    xa = [sum(a[k] for a, _ in per_seed) / len(per_seed) for k in keys]
    xb = [sum(b[k] for _, b in per_seed) / len(per_seed) for k in keys]
    return xa, xb


def _item_test(best: dict[int, Run], other: dict[int, Run], metric: str) -> PairedTest | None:
    """Permutation test over items of `best - other`, each item averaged over the seeds both ran."""
    pairs = _item_pairs(best, other, metric)
    return paired_permutation(*pairs) if pairs is not None else None


def _items_needed(
    best: dict[int, Run], other: dict[int, Run], metric: str, settled: bool
) -> tuple[int | None, SeedsNeeded | None]:
    """(held-out items paired, items needed for 80% power); the latter only where the pick is unsettled."""
    pairs = _item_pairs(best, other, metric)
    if pairs is None or not pairs[0]:
        return None, None
    return len(pairs[0]), None if settled else seeds_for_power(*pairs)


def _analyze_setting(
    name: str,
    cells: dict[str, dict[int, Run]],
    overrides: tuple[str, ...] | None = None,
    selection: SelectedSetting | None = None,
) -> SettingReport:
    any_run = next(iter(next(iter(cells.values())).values()))
    strategies = sorted(cells, key=lambda s: next(iter(cells[s].values())).strategy_key)
    done = {s: {seed: r for seed, r in cells[s].items() if r.status == "done"} for s in strategies}
    ordered = sort_keys({m for runs in done.values() for r in runs.values() for m in r.record.metrics})
    # Detail metrics (Multi-IF's turn x language cells) have their own table (`sft_sweeps.report.benchmarks`).
    eval_metrics = [m for m in ordered if is_eval_metric(m) and not is_detail(m)]
    # Validation metrics only select (the Selection table shows them); they are not training figures either.
    train_metrics = [
        m for m in ordered if not is_eval_metric(m) and not is_validation(m) and not is_detail(m)
    ]

    summary: dict[str, dict[str, MeanCI]] = {}
    by_seed: dict[str, dict[str, dict[int, float]]] = {}
    for metric in ordered:
        summary[metric], by_seed[metric] = {}, {}
        for s in strategies:
            values = {seed: v for seed, r in sorted(done[s].items()) if (v := r.metric(metric)) is not None}
            if values:
                summary[metric][s] = mean_ci(list(values.values()))
                by_seed[metric][s] = values

    comparisons: dict[str, list[Comparison]] = {}
    picks = []
    for metric in eval_metrics:
        sign = -1.0 if lower_is_better(metric) else 1.0
        ranked = sorted(summary[metric], key=lambda s: (-sign * summary[metric][s].mean, strategies.index(s)))
        if not ranked:
            continue
        best = ranked[0]
        rows = []
        paired: dict[str, tuple[list[float], list[float]]] = {}  # strategy -> (best, strategy) by seed
        for s in ranked[1:]:
            seeds = sorted(
                seed
                for seed in set(done[best]) & set(done[s])
                if done[best][seed].metric(metric) is not None and done[s][seed].metric(metric) is not None
            )
            paired[s] = (
                [done[best][k].metric(metric) for k in seeds],
                [done[s][k].metric(metric) for k in seeds],
            )
            seed_test = paired_t(*paired[s])
            rows.append(
                Comparison(
                    metric,
                    s,
                    summary[metric][s].mean - summary[metric][best].mean,
                    seed_test,
                    items=_item_test(done[best], done[s], metric),
                )
            )
        for attr in ("seeds", "items"):
            tested = [c for c in rows if getattr(c, attr) is not None and getattr(c, attr).p is not None]
            for c, p in zip(tested, holm([getattr(c, attr).p for c in tested]), strict=True):
                setattr(c, f"{attr}_p_holm", p)
        comparisons[metric] = rows
        best_mean = summary[metric][best].mean
        tied = [
            s for s in ranked if abs(summary[metric][s].mean - best_mean) <= 1e-12 * max(1.0, abs(best_mean))
        ]
        if rows:
            runner = rows[0]
            test, p = (
                ("seeds", runner.seeds_p_holm)
                if runner.seeds_p_holm is not None
                else (("items", runner.items_p_holm) if runner.items_p_holm is not None else (None, None))
            )
            significant = p is not None and p < ALPHA and len(tied) == 1
            picks.append(
                Pick(
                    metric,
                    best,
                    best_mean,
                    runner.strategy,
                    abs(runner.gap),
                    test,
                    p,
                    significant,
                    tied,
                    # How many seeds would settle it: only said where the pick is not settled yet.
                    None if significant or len(tied) > 1 else seeds_for_power(*paired[runner.strategy]),
                    *_items_needed(done[best], done[runner.strategy], metric, significant or len(tied) > 1),
                )
            )
        else:
            picks.append(Pick(metric, best, best_mean, None, None, None, None, False, tied))

    by_depth: dict[str, dict[str, dict[int, MeanCI]]] = {}
    depth_metrics = sorted({m for runs in done.values() for r in runs.values() for m in r.record.by_depth})
    for metric in depth_metrics:
        by_depth[metric] = {}
        for s in strategies:
            per_depth: dict[int, list[float]] = defaultdict(list)
            for r in done[s].values():
                for depth, value in (r.record.by_depth.get(metric) or {}).items():
                    if isinstance(value, int | float) and math.isfinite(value):
                        per_depth[int(depth)].append(float(value))
            if per_depth:
                by_depth[metric][s] = {d: mean_ci(v) for d, v in sorted(per_depth.items())}

    fingerprints: dict[str, list[str]] = defaultdict(list)
    for s in strategies:
        for seed, r in sorted(done[s].items()):
            fingerprint = r.record.data_fingerprint or "unknown"
            fingerprints[fingerprint].append(f"{s} seed={seed}")

    return SettingReport(
        name=name,
        overrides=any_run.setting_overrides if overrides is None else overrides,
        strategies=strategies,
        masking={s: dict(next(iter(cells[s].values())).masking) for s in strategies},
        seeds={s: sorted(done[s]) for s in strategies},
        eval_metrics=eval_metrics,
        train_metrics=train_metrics,
        summary=summary,
        by_seed=by_seed,
        comparisons=comparisons,
        picks=picks,
        by_depth=by_depth,
        fingerprints=dict(sorted(fingerprints.items())),
        selection_metric=selection.metric if selection else None,
        candidates=selection.candidates if selection else {},
        selection_seeds=selection.seeds if selection else {},
    )


# A setting's name longer than this is shown by its label (`setting_label`) in headings and file names.
MAX_SETTING_NAME = 80


def short_setting_name(name: str, overrides: tuple[str, ...]) -> str:
    """`name` when it fits `MAX_SETTING_NAME`, else `setting_label` of its sweep and overrides."""
    return name if len(name) <= MAX_SETTING_NAME else setting_label(name.split(" | ", 1)[0], overrides)


def setting_label(sweep: str, overrides: tuple[str, ...], width: int = 28) -> str:
    """`default | dataset=local_jsonl, path=chats.jsonl`: readable, bounded parts of a setting's name.

    A key is shown by its last component (`model.arch.hidden_size` -> `hidden_size`; `dataset.name` ->
    `dataset`), a value by its last path component, each cut to `width` characters with a short hash when
    cut, so two long paths that differ stay apart.
    """
    parts = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.startswith("benchmarks."):
            key = key.split(".")[1]  # the benchmark whose identity differs (e.g. a judge's prompts)
        elif key == DATA_KEY:
            key = "data"
        else:
            *group, last = key.split(".")
            key = group[-1] if last == "name" and group else last
        if "/" in value.strip("/"):
            value = value.rstrip("/").rsplit("/", 1)[-1]
        if len(value) > width:
            value = file_slug(value, width)
        parts.append(f"{key}={value}")
    return " | ".join([sweep, ", ".join(parts)]) if parts else sweep


class SelectionError(ValueError):
    """Selection was asked for but the records cannot support it (no validation metric recorded)."""


class OptionError(SelectionError):
    """A report option names something the records do not have (a key that does not vary, a metric that no
    record holds): a usage error, said before anything is written."""


def check_selection(records: Iterable[RunRecord], selection: Selection) -> None:
    """Check a selection against the records: every key varies across them, the metric is recorded.

    Raises:
        OptionError: a key that no record has, that has one value everywhere, or that is never a setting
            key (seed, sweep name, masking); a metric that no done record holds. The message names the
            option and what the records do offer.
    """
    records = list(records)
    flats, varying = _setting_flats(records)
    offered = ", ".join(k for k in varying if k != DATA_KEY and not k.startswith("benchmarks.")) or "none"
    for key in selection.keys:
        if key.split(".", 1)[0] in SETTING_EXCLUDED_KEYS:
            raise OptionError(
                f"--select-key {key}: seed, sweep name and masking are never selected (strategies are "
                f"compared, seeds averaged); config keys that vary across these records: {offered}"
            )
        values = sorted({flat[key] for flat in flats if key in flat})
        if not values:
            raise OptionError(
                f"--select-key {key}: no record has this config key; keys that vary across these "
                f"records: {offered}"
            )
        if len(values) == 1:
            raise OptionError(
                f"--select-key {key}: {_plain(values[0])} in every record, nothing to select; keys that "
                f"vary across these records: {offered}"
            )
    if selection.metric is not None:
        recorded = sorted(
            {m for r in records if effective_status(r) == "done" for m in r.metrics if is_validation(m)}
        )
        if selection.metric not in recorded:
            raise OptionError(
                f"--select-metric {selection.metric}: no done record holds it; validation metrics "
                f"recorded: {', '.join(recorded) or 'none'}"
            )


def _setting_name(sweep: str, overrides: tuple[str, ...]) -> str:
    return " | ".join([sweep, ", ".join(overrides)]) if overrides else sweep


def _candidate_order(values: tuple[str, ...]) -> tuple:
    """Numeric values in numeric order (1e-3 before 3e-3), others by text."""
    out = []
    for value in values:
        text = value.split("=", 1)[1]
        try:
            out.append((0, float(text), text))
        except ValueError:
            out.append((1, 0.0, text))
    return tuple(out)


def _select_cells(
    cells: dict[tuple[str, str], dict[int, Run]], selection: Selection
) -> dict[str, SelectedSetting]:
    """Merge the settings that differ only by the selection keys; keep, per strategy, the best candidate.

    A strategy's candidates are all scored on the same seeds: those each of them scored (done, the metric
    recorded; all seeds in a full grid; in a two-stage sweep the first stage's, the chosen candidates having
    more). A choice therefore stays the same when the chosen candidates get more seeds.

    Raises:
        SelectionError: no done run of a strategy records the selection metric.
    """
    keys = set(selection.keys)
    grouped: dict[str, dict[str, dict[tuple[str, ...], dict[int, Run]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    base_overrides: dict[str, tuple[str, ...]] = {}
    metric_of: dict[str, str] = {}
    for (_, strategy), by_seed in cells.items():
        run = next(iter(by_seed.values()))
        chosen_by, base = _split_overrides(run.setting_overrides, keys)
        name = _setting_name(run.sweep, base)
        base_overrides[name] = base
        metric_of.setdefault(name, selection.metric or VALIDATION_PREFIX + str(run.record.main_metric))
        grouped[name][strategy][chosen_by] = by_seed

    out = {}
    for name, strategies in grouped.items():
        metric = metric_of[name]
        sign = 1.0 if lower_is_better(metric) else -1.0
        chosen_cells, candidates, chosen_values, selection_seeds = {}, {}, {}, {}
        for strategy, options in strategies.items():
            scored_seeds = {
                values: {
                    seed: v
                    for seed, r in by_seed.items()
                    if r.status == "done" and (v := r.metric(metric)) is not None
                }
                for values, by_seed in options.items()
            }
            # The seeds all the strategy's candidates scored; none in common: each on its own seeds.
            seed_sets = [set(by_seed) for by_seed in scored_seeds.values() if by_seed]
            common = set.intersection(*seed_sets) if seed_sets else set()
            rows = []
            for values in sorted(options, key=_candidate_order):
                scores = [v for seed, v in scored_seeds[values].items() if not common or seed in common]
                rows.append(Candidate(values, mean_ci(scores) if scores else None))
            scored = [c for c in rows if c.score is not None]
            if not scored:
                raise SelectionError(
                    f"{name}: no done run of {strategy} records {metric}, so nothing can be selected on "
                    f"{selection.split}; rerun the sweep with this version (every run scores validation) or "
                    "report without --select-key"
                )
            best = min(scored, key=lambda c: sign * c.score.mean)  # the first of equal scores: stable
            best.chosen = True
            chosen_cells[strategy] = options[best.values]
            candidates[strategy] = rows
            chosen_values[strategy] = best.values
            selection_seeds[strategy] = sorted(common)
        out[name] = SelectedSetting(
            base_overrides[name], metric, chosen_cells, candidates, chosen_values, selection_seeds
        )
    return out


@dataclass
class SelectedSetting:
    """A setting after selection: per strategy its chosen runs (by seed) and every candidate's score."""

    overrides: tuple[str, ...]
    metric: str
    chosen: dict[str, dict[int, Run]]
    candidates: dict[str, list[Candidate]]
    chosen_values: dict[str, tuple[str, ...]]  # strategy -> the chosen `key=value`s
    seeds: dict[str, list[int]]  # strategy -> the seeds its candidates are scored on (empty: each its own)


def _split_overrides(overrides: tuple[str, ...], keys: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the overrides of the selection keys, the rest): a candidate's values and its base setting."""
    values = tuple(o for o in overrides if o.split("=", 1)[0] in keys)
    return values, tuple(o for o in overrides if o not in values)


def _same_base(runs: list[Run], sweep: str, base: tuple[str, ...], keys: set[str]) -> list[Run]:
    """The runs of `sweep` whose overrides, the selection keys left out, are `base`: a setting and those
    that differ from it only by the selection keys."""
    return [r for r in runs if r.sweep == sweep and _split_overrides(r.setting_overrides, keys)[1] == base]


def _expected_seeds(
    sel: SelectedSetting, in_base: list[Run], values: tuple[str, ...], strategy: str, keys: set[str]
) -> list[int]:
    """The seeds the cell of `strategy` at candidate `values` is expected to have under a selection, from
    the runs of its base setting (see `analyze`)."""
    if sel.chosen_values.get(strategy) == values:
        return sorted({r.seed for r in in_base})
    # The first stage's seeds: those any strategy ran at a value it did not choose (a two-stage sweep runs
    # only chosen values on more seeds). Uneven first stages show up as missing runs, never hidden.
    not_chosen = [
        r
        for r in in_base
        if _split_overrides(r.setting_overrides, keys)[0] != sel.chosen_values.get(r.strategy)
    ]
    return sorted({r.seed for r in not_chosen})


def analyze(records: Iterable[RunRecord], selection: Selection | None = None) -> SweepReport:
    """Arrange records into settings and strategies; compute means, tests, picks and hygiene.

    The expected grid of a setting is its strategies x its seeds (a strategy of another setting in the same
    sweep folder is never expected here); grid points with no record are listed as missing, with the
    command that runs them, runs not `done` as failed, and neither enters an average.

    Args:
        records: run records.
        selection: per strategy, keep the value of `selection.keys` with the best validation mean over
            seeds, and compare the chosen cells on test (see the module docstring); None compares every
            value of every key as its own setting.

    Raises:
        ValueError: no records.
        SelectionError: a selection was asked for and a strategy has no run with the validation metric;
            `OptionError` (a subclass) when a selection key or metric is not in the records at all.
    """
    records = list(records)
    if selection is not None:
        check_selection(records, selection)
    runs = place_runs(records)
    if not runs:
        raise ValueError("no records to report on")
    cells, duplicates = _pick_cells(runs)
    selected = _select_cells(cells, selection) if selection is not None else None

    missing = []
    expected = 0
    # The grid of a setting is its own strategies x its own seeds: settings that share a sweep folder were
    # not necessarily run with the same strategies (another command, another day), so a strategy of one
    # setting is never a "missing" run of another. Under a selection, a candidate that was not chosen is
    # expected on the seeds the candidates not chosen ran (a two-stage sweep runs only the chosen ones on
    # more seeds), the chosen one on every seed of the setting.
    for setting, overrides in sorted({(r.setting, r.setting_overrides) for r in runs}):
        in_setting = [r for r in runs if r.setting == setting]
        peers, seeds = in_setting, sorted({r.seed for r in in_setting})
        if selected is not None:
            # Under a selection every strategy of the base setting is expected at every candidate value.
            keys = set(selection.keys)
            values, base = _split_overrides(overrides, keys)
            peers = _same_base(runs, in_setting[0].sweep, base, keys)
            sel = selected[_setting_name(in_setting[0].sweep, base)]
        strategies = sorted({(r.strategy_key, r.strategy) for r in peers})
        masking_of = {r.strategy: r.masking for r in peers}
        for _, strategy in strategies:
            expected_seeds = seeds
            if selected is not None:
                expected_seeds = _expected_seeds(sel, peers, values, strategy, keys)
            expected += len(expected_seeds)
            for seed in expected_seeds:
                if seed not in cells.get((setting, strategy), {}):
                    missing.append(
                        Missing(
                            in_setting[0].sweep,
                            setting,
                            strategy,
                            seed,
                            _rerun_overrides(masking_of[strategy], overrides, seed),
                            _rerun_command(masking_of[strategy], seed, in_setting),
                        )
                    )
    chosen = [r for by_seed in cells.values() for r in by_seed.values()]
    hygiene = Hygiene(
        expected=expected,
        done=sum(r.status == "done" for r in chosen),
        not_done=sorted(
            (r for r in chosen if r.status != "done"), key=lambda r: (r.setting, r.strategy_key, r.seed)
        ),
        missing=missing,
        duplicates=duplicates,
        commits=sorted({str(r.record.git_commit) for r in runs if r.record.git_commit}),
        skipped={
            setting: count
            for setting in sorted({r.setting for r in runs})
            if (count := max(r.skipped_records() for r in runs if r.setting == setting))
        },
    )
    if selected is not None:
        settings = [
            _analyze_setting(name, sel.chosen, sel.overrides, sel) for name, sel in sorted(selected.items())
        ]
        return SweepReport(runs=runs, settings=settings, hygiene=hygiene)
    by_setting: dict[str, dict[str, dict[int, Run]]] = defaultdict(dict)
    for (setting, strategy), by_seed in cells.items():
        by_setting[setting][strategy] = by_seed
    settings = [_analyze_setting(name, by_setting[name]) for name in sorted(by_setting)]
    return SweepReport(runs=runs, settings=settings, hygiene=hygiene)
