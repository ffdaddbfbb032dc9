"""Turn one raw chat record of any supported shape into an OpenAI-style `messages` record, or say why not.

Shapes (`dataset.format`, `auto` picks per record by its keys):

- `messages`: `{"messages": [{"role": "user", "content": "..."}, ...]}` (OpenAI, TRL, ultrachat, smoltalk)
- `sharegpt`: `{"conversations": [{"from": "human", "value": "..."}, ...]}`; LLaMA-Factory's agent form adds
  `function_call` (the assistant's call: a JSON `{"name", "arguments"}`, or a list of them for parallel
  calls) and `observation` (the tool's result) turns, a `tools` column (a JSON string) and a `system` column
- `prompt_completion`: `{"prompt": ..., "completion": ...}`, each a string or a list of messages (TRL)

Tool calls come out in the canonical (OpenAI/TRL) shape that `transformers` chat templates take:
`{"role": "assistant", "content": str (may be ""), "tool_calls": [{"type": "function", "id"?: str,
"function": {"name": str, "arguments": dict}}]}` (arguments given as a JSON string are parsed), results as
`{"role": "tool", "content": str, "tool_call_id"?: str, "name"?: str}`, and the record's `tools` as a list of
`{"type": "function", "function": {"name", "description"?, "parameters"?}}` (bare functions are wrapped).

A valid conversation is: system messages first (any number), then a user message, then turns in which an
assistant message answers and may call tools (`assistant (tool+ assistant)*`), ending on an assistant message.
Every tool call is answered by a result right after its message (one result may answer several parallel
calls, as LLaMA-Factory's observation does; with ids, each id is answered), every result answers a call, and
a called tool is one of the record's `tools` when it has them.

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

import json
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
    "ipython": "tool",  # Llama 3.1's name for tool results
    "function_call": "assistant",  # LLaMA-Factory: the assistant's tool call(s), JSON in the value
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
    "bad_tool_call",
    "bad_tool_arguments",
    "bad_tools",
    "unknown_tool",
    "tool_call_without_result",
    "tool_result_without_call",
    "ends_on_tool_result",
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


def _arguments(value: Any, field: str) -> dict[str, Any]:
    # transformers' templates take arguments as a dict (`| tojson`); OpenAI sends a JSON string.
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as e:
            raise _Invalid(
                field, "bad_tool_arguments", f"arguments are not JSON ({e}): {value!r:.80}"
            ) from None
    if not isinstance(value, dict):
        raise _Invalid(field, "bad_tool_arguments", f"arguments must be a JSON object, got {value!r:.80}")
    return value


def _tool_call(call: Any, field: str) -> dict[str, Any]:
    """One call in canonical form, from OpenAI's `{"id", "type", "function": {...}}` or a bare function."""
    if not isinstance(call, dict):
        raise _Invalid(field, "bad_tool_call", f"expected an object, got {type(call).__name__}")
    function, where = (call["function"], f"{field}.function") if "function" in call else (call, field)
    if not isinstance(function, dict):
        raise _Invalid(where, "bad_tool_call", f"expected an object, got {type(function).__name__}")
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _Invalid(f"{where}.name", "bad_tool_call", f"expected a tool name, got {name!r}")
    out: dict[str, Any] = {
        "type": "function",
        "function": {"name": name, "arguments": _arguments(function.get("arguments"), f"{where}.arguments")},
    }
    if isinstance(call.get("id"), str) and call["id"]:
        out["id"] = call["id"]
    return out


def _tool_calls(value: Any, field: str) -> list[dict[str, Any]]:
    if isinstance(value, dict):  # a single call (LLaMA-Factory's usual `function_call` value)
        value = [value]
    if not isinstance(value, list):
        raise _Invalid(field, "bad_tool_call", f"expected a list of calls, got {type(value).__name__}")
    return [_tool_call(call, f"{field}[{j}]") for j, call in enumerate(value)]


def _function_call_value(value: Any, field: str) -> list[dict[str, Any]]:
    """LLaMA-Factory's `function_call` value: JSON text of one `{"name", "arguments"}` or a list of them."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise _Invalid(
                field, "bad_tool_call", f"a function_call must be JSON ({e}): {value!r:.80}"
            ) from None
    calls = _tool_calls(value, field)
    if not calls:
        raise _Invalid(field, "bad_tool_call", "a function_call with no call")
    return calls


def normalise_tools(value: Any, field: str = "tools") -> list[dict[str, Any]] | None:
    """A record's tools as OpenAI function schemas (None when it has none).

    Accepts a list (or LLaMA-Factory's JSON string of one) of `{"type": "function", "function": {...}}` or of
    bare `{"name", "description", "parameters"}` functions.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError as e:
            raise _Invalid(field, "bad_tools", f"tools must be JSON ({e}): {value!r:.80}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise _Invalid(field, "bad_tools", f"expected a list of tool schemas, got {type(value).__name__}")
    tools = []
    for j, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise _Invalid(
                f"{field}[{j}]", "bad_tools", f"expected a function schema with a name, got {tool!r:.80}"
            )
        tools.append({"type": "function", "function": function})
    return tools or None


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
    if role.lower() == "function_call":
        message["content"] = ""
        message["tool_calls"] = _function_call_value(item.get(content_key), f"{field}.{content_key}")
    elif message["role"] == "assistant" and item.get("tool_calls"):
        message["tool_calls"] = _tool_calls(item["tool_calls"], f"{field}.tool_calls")
        if message["content"] is None:  # OpenAI's shape of a message that only calls tools
            message["content"] = ""
    elif message["role"] == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(item.get(key), str) and item[key]:
                message[key] = item[key]
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
                reason = "ends_on_tool_result" if previous == "tool" else "broken_alternation"
                raise _Invalid(f"{field}[{i - 1}].role", reason, f"conversation ends on {previous!r}")
            expected = [r for r in _NEXT_ROLES[previous] if r]
            detail = f"{role!r} after {previous or 'the start'!r}; expected one of {expected}"
            raise _Invalid(f"{field}[{i}].role", "broken_alternation", detail)
        previous = role


def _check_tool_flow(messages: list[dict[str, Any]], tools: list[dict] | None, field: str) -> None:
    """Every call answered right after its message, every result answering a call, every tool declared."""
    known = {t["function"]["name"] for t in tools} if tools else None
    calls: list[dict[str, Any]] = []  # the calls of the assistant message the current results answer
    caller, results, answered = -1, 0, set()
    for i, message in enumerate([*messages, {"role": None}]):
        if message["role"] == "tool":
            if not calls:
                raise _Invalid(
                    f"{field}[{i}]",
                    "tool_result_without_call",
                    "a tool result after a message with no tool call",
                )
            ids = {c["id"] for c in calls if "id" in c}
            answer = message.get("tool_call_id")
            if answer is not None and ids and answer not in ids:
                raise _Invalid(
                    f"{field}[{i}].tool_call_id",
                    "tool_result_without_call",
                    f"answers no call of message {caller} (its ids: {sorted(ids)})",
                )
            results += 1
            answered.add(answer)
            if results > len(calls):
                raise _Invalid(
                    f"{field}[{i}]",
                    "tool_result_without_call",
                    f"{results} results for the {len(calls)} call(s) of message {caller}",
                )
            continue
        if calls:  # the results of the previous calls ended here
            unanswered = [c["id"] for c in calls if "id" in c and c["id"] not in answered]
            if results == 0 or (None not in answered and unanswered):
                what = f"call id(s) {unanswered}" if results else f"{len(calls)} call(s)"
                raise _Invalid(
                    f"{field}[{caller}].tool_calls",
                    "tool_call_without_result",
                    f"{what} with no tool result after the message",
                )
        calls, caller, results, answered = message.get("tool_calls") or [], i, 0, set()
        for j, call in enumerate(calls):
            name = call["function"]["name"]
            if known is not None and name not in known:
                raise _Invalid(
                    f"{field}[{i}].tool_calls[{j}].function.name",
                    "unknown_tool",
                    f"tool {name!r} is not in the record's tools {sorted(known)}",
                )


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
        `{"id", "messages", + "task", "tools" when present}`; messages keep `weight`/`train` when present,
        assistant messages their `tool_calls`, tool results their `tool_call_id`/`name` (canonical shapes in
        the module docstring).
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
            system = raw.get("system") if shape == "sharegpt" else None
            if isinstance(system, str) and system.strip() and messages and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": system})  # LLaMA-Factory's system column
        tools = normalise_tools(raw.get("tools"))
        _check_structure(messages, field)
        _check_tool_flow(messages, tools, field)
    except _Invalid as e:
        raise DataValidationError(origin, index, e.field, e.reason, e.detail, rid, line) from None
    record: dict[str, Any] = {"id": rid if rid is not None else f"{origin}#{index}", "messages": messages}
    if raw.get("task") is not None:
        record["task"] = raw["task"]
    if tools is not None:
        record["tools"] = tools
    return record
