"""A training dataset of `input_ids` and `weights`, with the tokenization cached on disk across strategies.

Rendering, tokenizing and labelling tokens is the expensive part and does not depend on the strategy, so
it is cached under `cache_dir/masking/<key>.parquet`, keyed by the tokenizer (vocabulary, special tokens,
chat template), the conversations' content and `expand_turns`. The cache holds untruncated samples, so runs
that differ only in strategy, its parameters or `max_length` share one tokenization.

Each entry stores the key it was written for and a checksum of its content. Both are checked before use:
a corrupted entry, or another dataset's file under this key, is logged as a warning, tokenized again and
replaced, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerBase

from sft_sweeps.config import MaskingConfig
from sft_sweeps.files import create_temp
from sft_sweeps.masking.sample import Annotator
from sft_sweeps.masking.tokens import tokenize_layouts
from sft_sweeps.masking.weights import message_factors, message_weights, token_weights

log = logging.getLogger(__name__)

# Bump when the cached columns or their meaning change (2: key and checksum stored; 3: TOOL_CALL kind).
CACHE_VERSION = 3
_COLUMNS = ("conversation", "target", "input_ids", "message", "kind")
_CHECKED_METADATA = (b"conversation_tokens", b"markers")  # what build_dataset reads besides the columns
_KEY_FIELD, _CHECKSUM_FIELD = b"sft_sweeps.cache_key", b"sft_sweeps.checksum"
_BATCH = 512  # conversations rendered and tokenized per batch: bounds memory, keeps Rust batching efficient


TRUNCATION_MODES = ("turns", "keep_start", "keep_end")


def turn_window(message: np.ndarray, roles: list[str], max_length: int) -> tuple[np.ndarray, int]:
    """The tokens a sample longer than `max_length` keeps under `truncation_mode=turns`, and how many
    whole turns it dropped.

    The leading system messages (and any template text before the first message) are kept; then the
    earliest whole turns (a user message and everything up to the next one: assistant messages, tool calls
    and results) are dropped, fewest first, until the rest fits. The last turn always stays: a strategy
    that supervises the final answer (`last`, `last_round`) finds it in every sample, and every strategy
    sees the same tokens. When even the last turn does not fit beside the system messages, the start of
    that turn is cut (its end, the final answer, is kept); when the system messages alone do not fit, the
    last `max_length` tokens are kept.

    Args:
        message: per token, the index of its message (-1: template text before the first message).
        roles: the role of each message of the conversation.
        max_length: tokens to keep.

    Example:
        >>> msg = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])  # system, user, assistant, user, assistant
        >>> turn_window(msg, ["system", "user", "assistant", "user", "assistant"], 6)[0].tolist()
        [0, 1, 6, 7, 8, 9]
    """
    first = next((k for k, role in enumerate(roles) if role != "system"), len(roles))
    head = np.flatnonzero(message < first)
    last_message = int(message.max()) if len(message) else -1  # a turn-expanded sample ends at its target
    starts = [k for k, role in enumerate(roles) if role == "user" and first <= k <= last_message]
    room = max_length - len(head)
    if not starts or room <= 0:
        return np.arange(len(message) - max_length, len(message)), 0
    for dropped, start in enumerate(starts[1:], start=1):
        tail = np.flatnonzero(message >= start)
        if len(tail) <= room:
            return np.concatenate([head, tail]), dropped
    tail = np.flatnonzero(message >= starts[-1])
    return np.concatenate([head, tail[-room:]]), len(starts) - 1


@dataclass
class MaskingStats:
    """What data preparation did, for the run record (`result.json`) and the logger.

    Attributes:
        conversations: conversations given.
        samples: samples built: one per conversation, or with `expand_turns` one per supervised turn.
        kept: samples in the returned dataset.
        conversations_kept: conversations with at least one sample in it (what a strategy trained on).
        truncated: samples that lost tokens to `max_length` (whether kept or dropped afterwards).
        dropped_zero_weight: samples whose weights sum to 0 after truncation (never trained on).
        expanded_samples_added: samples beyond one per conversation that `expand_turns` made.
        expanded_tokens_added: tokens of all samples minus tokens of their conversations (before truncation).
        tokens: tokens in the returned dataset.
        supervised_tokens: tokens with weight > 0 in the returned dataset.
        weight_sum: sum of all weights in the returned dataset.
        truncated_tokens: tokens cut by truncation, over all samples.
        truncated_turns: whole turns dropped from the start of a history (`truncation_mode=turns`).
        used_generation_markers: assistant spans came from the template's `{% generation %}` blocks.
        cache_hit: the tokenization was read from the cache.
    """

    conversations: int = 0
    samples: int = 0
    kept: int = 0
    conversations_kept: int = 0
    truncated: int = 0
    dropped_zero_weight: int = 0
    expanded_samples_added: int = 0
    expanded_tokens_added: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    weight_sum: float = 0.0
    truncated_tokens: int = 0
    truncated_turns: int = 0
    used_generation_markers: bool = False
    cache_hit: bool = False

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides ids and rendering: vocabulary, added and special tokens, chat template."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # merges, normalizer and pre-tokenizer change ids too
        h.update(backend.to_str().encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(json.dumps(tokenizer.chat_template, sort_keys=True).encode())
    return h.hexdigest()


def _cache_key(tokenizer: PreTrainedTokenizerBase, conversations: list[dict], expand: bool) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}/expand={expand}/".encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    for record in conversations:
        h.update(
            json.dumps([record.get("messages"), record.get("tools")], sort_keys=True, default=str).encode()
        )
        h.update(b"\x00")
    return h.hexdigest()[:32]


def _tokenize_all(tokenizer: PreTrainedTokenizerBase, conversations: list[dict], expand: bool) -> pa.Table:
    """Rows: one per sample: conversation index, target message, and per-token ids, messages, kinds."""
    annotator = Annotator(tokenizer)
    conv, target, ids, msg, kind, conv_tokens = [], [], [], [], [], []
    for first in range(0, len(conversations), _BATCH):
        batch, owners = [], []
        for i in range(first, min(first + _BATCH, len(conversations))):
            record = conversations[i]
            where = f"conversation {record.get('id', i)!r} (record {i})"
            items = annotator.layouts(record.get("messages"), record.get("tools"), expand=expand, where=where)
            for layout, _, t in items if not expand else items[1:]:
                batch.append(layout)
                owners.append((i, -1 if t is None else t))
            if expand:  # the whole conversation is tokenized only to count what expansion added
                batch.append(items[0][0])
                owners.append((i, -2))
        for (i, t), sample in zip(owners, tokenize_layouts(tokenizer, batch), strict=True):
            if t == -2:
                conv_tokens.append(len(sample.input_ids))
                continue
            if not expand:
                conv_tokens.append(len(sample.input_ids))
            conv.append(i)
            target.append(t)
            ids.append(sample.input_ids.astype(np.int32))
            msg.append(sample.message)
            kind.append(sample.kind)
    samples = pa.table(
        {
            "conversation": pa.array(conv, pa.int32()),
            "target": pa.array(target, pa.int32()),
            "input_ids": _list_array(ids, pa.int32()),
            "message": _list_array(msg, pa.int32()),
            "kind": _list_array(kind, pa.int8()),
        }
    )
    meta = {"conversation_tokens": json.dumps(conv_tokens), "markers": json.dumps(annotator.uses_markers)}
    return samples.replace_schema_metadata(meta)


def _list_array(rows: list[np.ndarray], dtype: pa.DataType) -> pa.Array:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate(rows) if rows else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, dtype))


def _flat(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    array = table.column(column).combine_chunks()
    offsets = array.offsets.to_numpy()
    return offsets - offsets[0], array.flatten().to_numpy(zero_copy_only=False)


def _checksum(table: pa.Table) -> str:
    """sha256 of everything training reads from a cached table.

    Covers each column's type, nulls and values, and the metadata `build_dataset` uses. It is computed on
    decoded values, so a parquet round trip keeps it, and any change that reaches training changes it.
    """
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for name in _COLUMNS:
        array = table.column(name).combine_chunks()
        # A list's item field is renamed by parquet ("item" -> "element"): hash the value type only.
        dtype = f"list<{array.type.value_type}>" if pa.types.is_list(array.type) else str(array.type)
        h.update(f"/{name}:{dtype}:{len(array)}:{array.null_count}/".encode())
        if pa.types.is_list(array.type):
            offsets = array.offsets.to_numpy()
            h.update((offsets - offsets[0]).astype(np.int64).tobytes())
            array = array.flatten()
        values = array.to_numpy(zero_copy_only=False)
        h.update(f"{values.dtype}:".encode() + np.ascontiguousarray(values).tobytes())
    meta = table.schema.metadata or {}
    for field in _CHECKED_METADATA:
        h.update(b"/" + field + b"=" + meta.get(field, b"<missing>"))
    return h.hexdigest()


def _cache_problem(table: pa.Table, key: str) -> str | None:
    """Why a table read from the cache cannot be used for `key`, or None when it can."""
    meta = table.schema.metadata or {}
    stored_key = meta.get(_KEY_FIELD)
    if stored_key is None:
        return "no key stored in it (not written by this version)"
    if stored_key != key.encode():
        return f"written for key {stored_key.decode(errors='replace')!r}, not {key!r} (another dataset's?)"
    stored_sum, actual_sum = meta.get(_CHECKSUM_FIELD, b"").decode(errors="replace"), _checksum(table)
    if stored_sum != actual_sum:
        return f"checksum mismatch (stored {stored_sum[:16]!r}, content {actual_sum[:16]!r}): corrupted"
    return None


def _read_cache(path: Path, key: str) -> pa.Table | None:
    """The table cached at `path` if it is whole and was written for `key`; else None, with a warning."""
    try:
        table = pq.read_table(path)
        problem = _cache_problem(table, key)
    except Exception as e:  # noqa: BLE001 - whatever fails to read or check, the entry is untrustworthy
        problem = f"unreadable ({type(e).__name__}: {e})"
    if problem is None:
        return table
    log.warning("masking cache %s: %s; tokenizing again and replacing it", path, problem)
    return None


def _write_cache(path: Path, table: pa.Table, key: str) -> None:
    """Write `table` with its key and checksum to `path`, atomically and readable like a normal file."""
    meta = {**(table.schema.metadata or {}), _KEY_FIELD: key.encode()}
    meta[_CHECKSUM_FIELD] = _checksum(table).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so parallel jobs of a sweep never read a half-written file.
    fd, tmp = create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table.replace_schema_metadata(meta), f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_or_tokenize(
    tokenizer: PreTrainedTokenizerBase, conversations: list[dict], expand: bool, cache_dir: str | None
) -> tuple[pa.Table, bool]:
    """The tokenized samples and whether they came from the cache (verified: key and checksum)."""
    if cache_dir is None:
        return _tokenize_all(tokenizer, conversations, expand), False
    key = _cache_key(tokenizer, conversations, expand)
    path = Path(cache_dir) / "masking" / f"{key}.parquet"
    if path.exists():
        table = _read_cache(path, key)
        if table is not None:
            return table, True
    table = _tokenize_all(tokenizer, conversations, expand)
    try:
        _write_cache(path, table, key)
    except OSError as e:  # a full or read-only cache disk costs a re-tokenization next time, not the run
        log.warning("masking cache %s: not written (%s); the run goes on without it", path, e.strerror or e)
    return table, False


def build_dataset(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[dict[str, Any]],
    masking: MaskingConfig,
    max_length: int,
    truncation_mode: str = "turns",
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, MaskingStats]:
    """Tokenize conversations and weight every token by `masking`'s strategy.

    Args:
        tokenizer: a fast tokenizer with a chat template.
        conversations: records `{"id", "messages": [{"role", "content", ...}], "tools"?}`; other keys are
            ignored. A message's `masking.message_weight_field` (`weight` by default) scales it, and a
            `train: false` message (Axolotl) is never supervised.
        masking: strategy and parameters; `expand_turns` makes one sample per supervised assistant turn.
        max_length: tokens kept per sample.
        truncation_mode: `turns` (default) drops the earliest whole turns, keeping the system message and
            the last turn (`turn_window`); `keep_start` keeps the first `max_length` tokens, `keep_end`
            the last.
        cache_dir: where tokenizations are cached; None tokenizes without caching.

    Returns:
        A dataset with columns `id`, `input_ids` and `weights` (equal lengths, no sample with zero total
        weight), and what was done, counted.

    Raises:
        ConversationError: a record is malformed (names the record and field).
        MessageWeightError: a message weight is not a bool or a number >= 0.
        TemplateError: the chat template cannot be aligned with the messages (names template and message).

    Example:
        >>> from sft_sweeps.tokenizer import build_embedded_tokenizer
        >>> chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        >>> data = [{"id": "a", "messages": chat}]
        >>> ds, stats = build_dataset(build_embedded_tokenizer(), data, MaskingConfig(), max_length=64)
        >>> ds[0]["weights"][-4:], stats.kept, stats.supervised_tokens  # y o <|im_end|> \\n
        ([1.0, 1.0, 1.0, 0.0], 1, 3)
    """
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    table, hit = _load_or_tokenize(tokenizer, conversations, masking.expand_turns, cache_dir)
    meta = table.schema.metadata or {}
    stats = MaskingStats(
        conversations=len(conversations),
        used_generation_markers=bool(json.loads(meta.get(b"markers", b"false"))),
        cache_hit=hit,
    )
    conv = table.column("conversation").to_numpy()
    target = table.column("target").to_numpy()
    offsets, ids = _flat(table, "input_ids")
    _, msg = _flat(table, "message")
    _, kind = _flat(table, "kind")

    factors: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out_ids, out_weights, out_names = [], [], []
    kept_conversations: set[int] = set()
    sample_tokens = np.zeros(len(conversations), dtype=np.int64)
    samples_per_conv = np.zeros(len(conversations), dtype=np.int64)
    for row in range(len(conv)):
        i, t = int(conv[row]), int(target[row])
        record = conversations[i]
        if i not in factors:
            messages = record["messages"]
            where = f"conversation {record.get('id', i)!r} (record {i})"
            weights = message_weights(messages, masking.message_weight_field, where)
            factors[i] = message_factors([m["role"] for m in messages], weights, masking)
        assistant, other = factors[i]
        if t >= 0 and assistant[t] <= 0:
            continue  # a turn this strategy does not supervise makes no sample
        a, b = int(offsets[row]), int(offsets[row + 1])
        w = token_weights(
            msg[a:b],
            kind[a:b],
            assistant,
            other,
            t if t >= 0 else None,
            tool_call_weight=masking.tool_call_weight,
        )
        stats.samples += 1
        samples_per_conv[i] += 1
        sample_tokens[i] += b - a
        kept = slice(0, b - a)
        if b - a > max_length:
            stats.truncated += 1
            stats.truncated_tokens += b - a - max_length
            if truncation_mode == "turns":
                roles = [m["role"] for m in record["messages"]]
                kept, dropped = turn_window(msg[a:b], roles, max_length)
                stats.truncated_turns += dropped
            else:
                kept = (
                    slice(0, max_length)
                    if truncation_mode == "keep_start"
                    else slice(b - a - max_length, b - a)
                )
        w = w[kept]
        total = float(w.sum(dtype=np.float64))
        if total <= 0:
            stats.dropped_zero_weight += 1
            continue
        kept_conversations.add(i)
        out_ids.append(ids[a:b][kept])
        out_weights.append(w)
        name = str(record.get("id", i))
        out_names.append(name if t < 0 else f"{name}@{t}")
        stats.weight_sum += total
        stats.supervised_tokens += int((w > 0).sum())
        stats.tokens += len(w)
    stats.kept = len(out_ids)
    stats.conversations_kept = len(kept_conversations)
    if masking.expand_turns:
        conv_tokens = np.asarray(json.loads(meta.get(b"conversation_tokens", b"[]")), dtype=np.int64)
        made = samples_per_conv > 0
        stats.expanded_samples_added = int((samples_per_conv[made] - 1).sum())
        stats.expanded_tokens_added = int((sample_tokens[made] - conv_tokens[made]).sum())
    stats.weight_sum = round(stats.weight_sum, 6)
    table_out = pa.table(
        {
            "id": pa.array(out_names, pa.string()),
            "input_ids": _list_array(out_ids, pa.int64()),
            "weights": _list_array(out_weights, pa.float32()),
        }
    )
    return datasets.Dataset(table_out), stats
