"""Turn one raw chat record of any supported shape into an OpenAI-style `messages` record, or say why not.

Shapes (`dataset.format`, `auto` picks per record by its keys):

- `messages`: `{"messages": [{"role": "user", "content": "..."}, ...]}` (OpenAI, TRL, ultrachat, smoltalk)
- `sharegpt`: `{"conversations": [{"from": "human", "value": "..."}, ...]}`
- `prompt_completion`: `{"prompt": ..., "completion": ...}`, each a string or a list of messages (TRL)

A valid conversation is: system messages first (any number), then a user message, then turns in which an
assistant message answers and may call tools (`assistant (tool+ assistant)*`), ending on an assistant message.

The rules for one message in canonical form (a role the chat templates know; string content, empty only
beside `tool_calls`) live in `message_problem`, and every stage that takes messages from outside checks
them with it: `to_record` at the data door, `check_messages` for messages handed to the masking engine or
the evaluator directly.

Example:
    >>> to_record({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    ...           "auto", "chat.jsonl", 0)["messages"]
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]
"""

from __future__ import annotations

import math
from typing import Any

# ShareGPT and other corpora's role names, mapped onto the four roles the chat templates know.
ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
FORMAT_KEYS = {"messages": "messages", "sharegpt": "conversations"}
ROLES = ("system", "user", "assistant", "tool")
# Per-message fields kept besides role and content: the weights `masking.message_weight_field` may name.
WEIGHT_FIELDS = ("weight", "train")
# Which role may follow which; `None` stands for the start and the end of the conversation.
_NEXT_ROLES = {
    None: ("system", "user"),
    "system": ("system", "user"),
    "user": ("assistant",),
    "assistant": ("user", "tool", None),
    "tool": ("tool", "assistant"),
}

# Reasons a record is invalid: the keys of the skip counts in `Splits.stats`.
REASONS = (
    "bad_json",
    "truncated",
    "not_an_object",
    "missing_field",
    "unknown_role",
    "empty_content",
    "non_string_content",
    "bad_weight",
    "no_assistant",
    "broken_alternation",
)


class DataValidationError(ValueError):
    """A record is invalid. The message names the file (or hub id and split), the record and the field.

    Example message: `data/train.jsonl:18: record 17 (id=abc): messages[3].role: unknown role 'bot'`.

    Attributes:
        origin: File path or `hub_id[split]` (the message adds `:line` for JSONL).
        index: 0-based position of the record in its file or split.
        record_id: The record's `id` field, if it has one.
        field: Path of the offending field inside the record, e.g. `messages[3].role`.
        reason: One of `REASONS`; the key under which `on_invalid=skip` counts it.
    """

    def __init__(
        self,
        origin: str,
        index: int,
        field: str,
        reason: str,
        detail: str,
        record_id: str | None = None,
        line: int | None = None,
    ) -> None:
        self.origin, self.index, self.record_id, self.field, self.reason = (
            origin,
            index,
            record_id,
            field,
            reason,
        )
        where = f"record {index}" + (f" (id={record_id})" if record_id is not None else "")
        place = origin if line is None else f"{origin}:{line}"
        super().__init__(f"{place}: {where}: {field}: {detail}")


class ConversationError(ValueError):
    """Messages handed over directly (not read from a file) are malformed; names the place and the field."""


def message_problem(message: Any, allow_empty: bool = False) -> tuple[str, str, str] | None:
    """What is wrong with one canonical message, as `(field, reason, detail)`, or None when it is valid.

    The one rule for a message: a dict with a `role` in `ROLES` and string `content`, which may be None
    only on a message that carries `tool_calls`. Empty content is refused at the data door (a record to
    skip and count) but renders fine, so `allow_empty` lets callers of the masking engine pass it.
    """
    if not isinstance(message, dict):
        return "", "not_an_object", f"expected an object, got {type(message).__name__}"
    role = message.get("role")
    if role not in ROLES:
        return "role", "unknown_role", f"expected one of {ROLES}, got {role!r}"
    content = message.get("content")
    if message.get("tool_calls") and (content is None or isinstance(content, str)):
        return None
    if not isinstance(content, str):
        return "content", "non_string_content", f"expected a string, got {type(content).__name__}"
    if not content.strip() and not allow_empty:
        return "content", "empty_content", "empty content"
    return None


def check_messages(messages: Any, where: str = "the conversation", allow_empty: bool = True) -> None:
    """Raise ConversationError unless `messages` is a non-empty list of valid messages (`message_problem`).

    Example message: `conversation 'c1' (record 2), message 0, field 'content': expected a string, got int`.
    """
    if not isinstance(messages, list) or not messages:
        raise ConversationError(f"{where}, field 'messages': expected a non-empty list, got {messages!r:.80}")
    for i, message in enumerate(messages):
        problem = message_problem(message, allow_empty)
        if problem is not None:
            field, _, detail = problem
            raise ConversationError(
                f"{where}, message {i}" + (f", field {field!r}" if field else "") + f": {detail}"
            )


class _Invalid(Exception):
    def __init__(self, field: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.field, self.reason, self.detail = field, reason, detail


def _detect_format(raw: dict[str, Any]) -> str:
    if "messages" in raw:
        return "messages"
    if "conversations" in raw:
        return "sharegpt"
    if "prompt" in raw and "completion" in raw:
        return "prompt_completion"
    raise _Invalid(
        "<record>",
        "missing_field",
        f"no 'messages', 'conversations' or 'prompt'+'completion' in keys {sorted(raw)}",
    )


def _message(item: Any, field: str, default_role: str | None = None) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _Invalid(field, "not_an_object", f"expected an object, got {type(item).__name__}")
    # Either key style may appear in either shape (some ShareGPT exports use role/content).
    role = item.get("role", item.get("from", default_role))
    if role is None:
        raise _Invalid(f"{field}.role", "missing_field", "no 'role' or 'from' key")
    if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
        raise _Invalid(
            f"{field}.role", "unknown_role", f"unknown role {role!r}; known: {sorted(ROLE_ALIASES)}"
        )
    content_key = "content" if "content" in item else "value"
    message: dict[str, Any] = {"role": ROLE_ALIASES[role.lower()], "content": item.get(content_key)}
    problem = message_problem(message)
    if problem is not None:
        problem_field, reason, detail = problem
        raise _Invalid(
            f"{field}.{content_key if problem_field == 'content' else problem_field}", reason, detail
        )
    for key in WEIGHT_FIELDS:
        if key in item and item[key] is not None:
            value = item[key]
            if not isinstance(value, (bool, int, float)) or not math.isfinite(value) or value < 0:
                raise _Invalid(
                    f"{field}.{key}", "bad_weight", f"must be a bool or a finite number >= 0, got {value!r}"
                )
            message[key] = value
    return message


def _messages(value: Any, field: str, default_role: str | None = None) -> list[dict[str, Any]]:
    if isinstance(value, str) and default_role is not None:
        value = [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        raise _Invalid(field, "missing_field", f"expected a list of messages, got {type(value).__name__}")
    return [_message(item, f"{field}[{i}]", default_role) for i, item in enumerate(value)]


def _check_structure(messages: list[dict[str, Any]], field: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise _Invalid(field, "no_assistant", "no assistant message")
    previous = None
    for i, role in enumerate([m["role"] for m in messages] + [None]):
        if role not in _NEXT_ROLES[previous]:
            if role is None:
                raise _Invalid(
                    f"{field}[{i - 1}].role", "broken_alternation", f"conversation ends on {previous!r}"
                )
            expected = [r for r in _NEXT_ROLES[previous] if r]
            detail = f"{role!r} after {previous or 'the start'!r}; expected one of {expected}"
            raise _Invalid(f"{field}[{i}].role", "broken_alternation", detail)
        previous = role


def record_id(raw: Any) -> str | None:
    """The record's own `id` as a string, if it has a usable one."""
    value = raw.get("id") if isinstance(raw, dict) else None
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def to_record(raw: Any, fmt: str, origin: str, index: int, line: int | None = None) -> dict[str, Any]:
    """Normalise and validate one raw record.

    Args:
        raw: The record as read (a dict for valid input).
        fmt: `auto`, `messages`, `sharegpt` or `prompt_completion`.
        origin: Where it came from, for error messages: a file path or `hub_id[split]`.
        index: Its 0-based position in `origin`.
        line: Its 1-based line number, for line-based files.

    Returns:
        `{"id", "messages", + "task", "tools" when present}`; messages keep `weight`/`train` when present.
        A record without an id gets `<origin>#<index>`.

    Raises:
        DataValidationError: naming origin, index, id, field and reason.
    """
    rid = record_id(raw)
    try:
        if not isinstance(raw, dict):
            raise _Invalid("<record>", "not_an_object", f"expected an object, got {type(raw).__name__}")
        shape = _detect_format(raw) if fmt == "auto" else fmt
        if shape == "prompt_completion":
            for key in ("prompt", "completion"):
                if key not in raw:
                    raise _Invalid(key, "missing_field", f"no {key!r} key (format=prompt_completion)")
            messages = _messages(raw["prompt"], "prompt", "user") + _messages(
                raw["completion"], "completion", "assistant"
            )
            field = "prompt+completion"
        else:
            field = FORMAT_KEYS[shape]
            if field not in raw:
                raise _Invalid(
                    field, "missing_field", f"no {field!r} key (format={shape}); keys {sorted(raw)}"
                )
            messages = _messages(raw[field], field)
        _check_structure(messages, field)
    except _Invalid as e:
        raise DataValidationError(origin, index, e.field, e.reason, e.detail, rid, line) from None
    record: dict[str, Any] = {"id": rid if rid is not None else f"{origin}#{index}", "messages": messages}
    for key in ("task", "tools"):
        if raw.get(key) is not None:
            record[key] = raw[key]
    return record
