"""An agent task: look values up with a tool, add them with another, answer; later turns build on earlier.

Each conversation hides a small table (item -> a two-digit value) behind the `lookup` tool; `add` is a
calculator. The user asks for an item's value (`box?`), for an item plus a number (`box+5?`), or for the sum
of two items (`box+pin?`). The assistant calls `lookup` for every item whose value it has not been told yet
in the conversation, then `add` when there is a sum, reads each result and answers with the number. A value
looked up in an earlier turn is not looked up again: its number comes from that earlier result in the
history, so an early wrong call (whose result is an error) carries into later turns. The values are
random, so only reading the tool results gives the right answer; a model trained on the results themselves
(`masking=full`) learns to write them instead of waiting for the tool.

Messages are canonical (OpenAI/TRL): an assistant call is `{"role": "assistant", "content": "",
"tool_calls": [{"type": "function", "function": {"name", "arguments": {...}}}]}`, its result
`{"role": "tool", "content": "37"}`; the record carries the tool schemas (`TOOLS`) under `tools`.

Example:
    >>> import random
    >>> messages = ToolUse().generate(random.Random(0), num_turns=2)
    >>> [m["role"] for m in messages]  # doctest: +NORMALIZE_WHITESPACE
    ['system', 'user', 'assistant', 'tool', 'assistant', 'user', 'assistant', 'tool', 'assistant']
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

ITEMS = ("box", "pin", "door", "lamp", "cup", "key", "book", "coin")
# Schemas without descriptions (optional in OpenAI's format): with a byte-level tokenizer every character
# of the tools block is a token of every sample, and the names say what the tools do.
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"item": {"type": "string"}},
                "required": ["item"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
]


def call(name: str, **arguments: Any) -> dict[str, Any]:
    """One assistant message calling one tool (canonical form)."""
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


@dataclass
class ToolUse:
    name: str = "tool_use"
    tools: list[dict[str, Any]] = field(default_factory=lambda: TOOLS)
    num_items: int = 3

    def generate(self, rng: random.Random, num_turns: int) -> list[dict[str, Any]]:
        table = {item: rng.randint(10, 99) for item in rng.sample(ITEMS, self.num_items)}
        known: dict[str, int] = {}  # values the conversation has already told
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": "Use the tools. Answer with the number."}
        ]
        for turn in range(num_turns):
            kind = "lookup" if turn == 0 else rng.choice(("lookup", "plus", "sum"))
            if kind == "plus" and not known:
                kind = "lookup"
            if kind == "lookup":
                item = rng.choice(sorted(table))
                question, items, extra = f"{item}?", [item], None
            elif kind == "plus":
                item, extra = rng.choice(sorted(known)), rng.randint(1, 9)
                question, items = f"{item}+{extra}?", [item]
            else:
                items = rng.sample(sorted(table), 2)
                question, extra = f"{items[0]}+{items[1]}?", None
            messages.append({"role": "user", "content": question})
            for item in items:
                if item not in known:
                    messages += [call("lookup", item=item), {"role": "tool", "content": str(table[item])}]
                    known[item] = table[item]
            values = [known[item] for item in items] + ([extra] if extra is not None else [])
            if len(values) == 2:
                messages += [
                    call("add", a=values[0], b=values[1]),
                    {"role": "tool", "content": str(sum(values))},
                ]
            messages.append({"role": "assistant", "content": str(sum(values))})
        return messages
