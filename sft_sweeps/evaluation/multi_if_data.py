"""Multi-IF data: the loader (local CSV/JSONL, hub, the built-in offline set).

## The schema (Multi-IF's, `facebook/Multi-IF`)
One record per conversation: `key` (unique, any string or number: the item's id in results), `language`
(required: Multi-IF's name of it, e.g. English, Chinese, Hindi; every metric is reported per language), and
for turn k = 1..3 `turn_k_prompt` (a JSON string
`{"role": "user", "content": "..."}`, empty when the conversation has fewer turns),
`turn_k_instruction_id_list` (JSON list of IFEval instruction ids) and `turn_k_kwargs` (JSON list with one
JSON-encoded kwargs object per id). The list of turn k is every instruction in force at turn k, those of
earlier turns included; the model's answer to turn k is checked against all of them. Fields may also hold
the decoded values (a dict, a list) instead of JSON text. Each kwargs object is built by its checker
when the file is read (before any training): a key the checker does not take is an error naming the record.
Other fields (Multi-IF's `turns`, `responses`) are ignored.

## The built-in set (`eval.multi_if.source=builtin`, version `BUILTIN_VERSION`)
`data/multi_if_builtin.jsonl`, in the schema above plus `version`, `source_id` and `source_prompt`; how it
is built and rebuilt byte for byte: `sft_sweeps.evaluation.multi_if_build`.
"""

from __future__ import annotations

import csv
import inspect
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_sweeps.data.holdout import BUILTIN_PATH
from sft_sweeps.files import JsonlError, read_jsonl

BUILTIN_VERSION = "sharegpt-ifeval-1"
BUILTIN_SIZE = 150
BUILTIN_SEED = 20241018
MAX_TURNS = 3
HUB_ID = "facebook/Multi-IF"
# Conflict with nearly every other id (constrained_response, json_format, two_responses: a conversation
# could not grow past one turn) or need the prompt's own text as a parameter (repeat_prompt).
EXCLUDED_IDS = frozenset(
    {
        "detectable_format:constrained_response",
        "detectable_format:json_format",
        "combination:two_responses",
        "combination:repeat_prompt",
    }
)
FOLLOW_UP = "Please revise your previous answer. {description}"


class MultiIFDataError(ValueError):
    """A Multi-IF record is malformed or its data cannot be read; the message names file, record and field."""


@dataclass(frozen=True)
class Turn:
    """One user turn: its prompt and every instruction in force (earlier turns' included)."""

    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class MultiIFItem:
    """One conversation: `id` (the record's `key`), `language`, and its 1-3 turns."""

    id: str
    language: str
    turns: tuple[Turn, ...]


# ---------------------------------------------------------------------------------------------- loading


def _decoded(value: Any, where: str) -> Any:
    """A field's value, decoded when it is JSON text (Multi-IF stores lists and objects as strings)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as e:
        raise MultiIFDataError(f"{where}: invalid JSON: {e}") from None


def _turn(raw: dict[str, Any], k: int, where: str, known_ids: Iterable[str] | None) -> Turn | None:
    prompt = raw.get(f"turn_{k}_prompt")
    if prompt is None or prompt == "":
        return None
    message = _decoded(prompt, f"{where}, field 'turn_{k}_prompt'")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        raise MultiIFDataError(
            f'{where}, field \'turn_{k}_prompt\': expected {{"role": "user", "content": "..."}}'
        )
    ids = _decoded(raw.get(f"turn_{k}_instruction_id_list"), f"{where}, field 'turn_{k}_instruction_id_list'")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise MultiIFDataError(f"{where}, field 'turn_{k}_instruction_id_list': expected a list of ids")
    unknown = [i for i in ids if known_ids is not None and i not in known_ids]
    if unknown:
        raise MultiIFDataError(
            f"{where}, field 'turn_{k}_instruction_id_list': {unknown} not in IFEval's instruction registry"
        )
    kwargs = _decoded(raw.get(f"turn_{k}_kwargs", "[]"), f"{where}, field 'turn_{k}_kwargs'")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise MultiIFDataError(f"{where}, field 'turn_{k}_kwargs': expected a list of {len(ids)} objects")
    parsed = []
    for j, entry in enumerate(kwargs):
        value = _decoded(entry, f"{where}, field 'turn_{k}_kwargs'[{j}]")
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise MultiIFDataError(f"{where}, field 'turn_{k}_kwargs'[{j}]: expected an object")
        if isinstance(known_ids, Mapping):
            _check_kwargs(known_ids[ids[j]], ids[j], value, f"{where}, field 'turn_{k}_kwargs'[{j}]")
        parsed.append(value)
    return Turn(content, tuple(ids), tuple(parsed))


def _check_kwargs(checker: Any, instruction_id: str, kwargs: dict[str, Any], where: str) -> None:
    """Build the checker with these kwargs now, as scoring will: a key its `build_description` does not take,
    or a value it refuses, fails at loading (before training), not after it."""
    # As scoring: falsy values (Multi-IF's unused keys) are dropped.
    given = {k: v for k, v in kwargs.items() if v}
    parameters = inspect.signature(checker.build_description).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(given) - set(parameters)) if not takes_any else []
    if unknown:
        raise MultiIFDataError(
            f"{where}: {instruction_id} takes {sorted(set(parameters) - {'self'})}, not {unknown}"
        )
    state = random.getstate()  # a builder draws missing arguments from the global generator
    try:
        checker(instruction_id).build_description(**given)
    except (TypeError, ValueError) as e:
        raise MultiIFDataError(f"{where}: {instruction_id} refuses these kwargs: {e}") from None
    finally:
        random.setstate(state)


def parse_record(
    raw: dict[str, Any], origin: str, index: int, known_ids: Iterable[str] | None = None
) -> MultiIFItem:
    """One record of the Multi-IF schema as an item.

    Args:
        raw: the record.
        origin: where it was read (file or hub id), for messages.
        index: its 0-based position there.
        known_ids: the instruction ids a checker knows; others are an error. A registry (id -> checker
            class, lm-eval's `INSTRUCTION_DICT`) also has every kwargs object built by its checker here.
            None: not checked.

    Raises:
        MultiIFDataError: naming origin, record (key or index) and field.
    """
    if not isinstance(raw, dict):
        raise MultiIFDataError(f"{origin}: record {index}: expected an object")
    key = raw.get("key")
    where = f"{origin}: record {index} (key {key!r})"
    if key is None or str(key) == "":
        raise MultiIFDataError(f"{where}, field 'key': missing")
    turns: list[Turn] = []
    for k in range(1, MAX_TURNS + 1):
        turn = _turn(raw, k, where, known_ids)
        if turn is None:
            later = [j for j in range(k + 1, MAX_TURNS + 1) if raw.get(f"turn_{j}_prompt") not in (None, "")]
            if later:
                raise MultiIFDataError(f"{where}, field 'turn_{k}_prompt': empty, but turn {later[0]} is not")
            break
        turns.append(turn)
    if not turns:
        raise MultiIFDataError(f"{where}, field 'turn_1_prompt': missing")
    language = raw.get("language")
    if not isinstance(language, str) or not language.strip():
        raise MultiIFDataError(
            f"{where}, field 'language': missing; Multi-IF reports every metric per language, so each "
            "record names its own (English, Chinese, Hindi, ...)"
        )
    return MultiIFItem(str(key), language.strip(), tuple(turns))


def _raw_local(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".csv":
        # Multi-IF's own CSV: every cell a string, empty for a missing turn.
        with path.open(encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)
    elif path.suffix == ".jsonl":
        try:
            for _, record in read_jsonl(path):
                yield record
        except JsonlError as e:
            raise MultiIFDataError(str(e)) from None
    else:
        raise MultiIFDataError(f"{path}: expected a .csv or .jsonl file in the Multi-IF schema")


def read_local(path: str | Path, known_ids: Iterable[str] | None = None) -> list[MultiIFItem]:
    """Items of a local CSV or JSONL file in the Multi-IF schema.

    Raises:
        FileNotFoundError: no such file.
        MultiIFDataError: a malformed record (file, record and field named) or a repeated key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval.multi_if.path: no file {str(path)!r}")
    known = _known(known_ids)
    items = [parse_record(raw, str(path), i, known) for i, raw in enumerate(_raw_local(path))]
    if not items:
        raise MultiIFDataError(f"{path}: no record (the file is empty); write one conversation per line/row")
    return _unique(items, path)


def _known(known_ids: Iterable[str] | None) -> Iterable[str] | None:
    # A registry (id -> checker class) is kept as is: its checkers' signatures are checked at loading.
    if known_ids is None or isinstance(known_ids, Mapping):
        return known_ids
    return list(known_ids)


def read_hub(path: str, split: str = "train", known_ids: Iterable[str] | None = None) -> list[MultiIFItem]:
    """Items of a hub dataset (default `facebook/Multi-IF`) or a local dataset folder, via `datasets`.

    Raises:
        MultiIFDataError: the dataset cannot be loaded (offline and not cached, unknown id), or a record is
            malformed; the message says how to get the data.
    """
    import datasets  # slow to import; only this source needs it

    try:
        rows = datasets.load_dataset(path, split=split)
    except Exception as e:  # noqa: BLE001 - every failure means the same to the user: no data
        raise MultiIFDataError(
            f"eval.multi_if: cannot load {path!r} (split {split!r}) with datasets.load_dataset: "
            f"{type(e).__name__}: {e}. Offline, the hub copy must be in the datasets cache: load it once "
            f"online (python -c \"import datasets; datasets.load_dataset('{path}', split='{split}')\"), or "
            "save it as CSV/JSONL and use eval.multi_if.source=local eval.multi_if.path=FILE"
        ) from None
    known = _known(known_ids)
    items = [parse_record(raw, f"{path}[{split}]", i, known) for i, raw in enumerate(rows)]
    if not items:
        raise MultiIFDataError(f"{path}[{split}]: no record (the split is empty)")
    return _unique(items, path)


def _unique(items: list[MultiIFItem], origin: Any) -> list[MultiIFItem]:
    repeated = sorted(k for k, n in Counter(item.id for item in items).items() if n > 1)
    if repeated:
        raise MultiIFDataError(f"{origin}: field 'key' must be unique, repeated: {repeated[:5]}")
    return items


def read_builtin(known_ids: Iterable[str] | None = None) -> tuple[list[MultiIFItem], str]:
    """The shipped built-in items and their version. Raises MultiIFDataError on a mixed/unversioned file."""
    items = read_local(BUILTIN_PATH, known_ids)
    versions = {record.get("version") for _, record in read_jsonl(BUILTIN_PATH)}
    if len(versions) != 1 or None in versions:
        raise MultiIFDataError(f"{BUILTIN_PATH}: field 'version': expected one version, found {versions}")
    return items, versions.pop()


def select(items: list[MultiIFItem], languages: list[str], max_items: int | None) -> list[MultiIFItem]:
    """Items in `languages` (all when empty; compared case-insensitively), the first `max_items` of them."""
    wanted = {language.lower() for language in languages}
    kept = [item for item in items if not wanted or item.language.lower() in wanted]
    return kept if max_items is None else kept[:max_items]
