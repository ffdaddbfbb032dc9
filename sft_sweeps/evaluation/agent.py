"""Tool use, measured: the trained model calls tools, a simulated environment answers, the calls are scored.

The held-out conversations with tool calls (the `tool_use` task, or a user's agent trajectories) are played
twice:

* **gold history**: every assistant message of the reference trajectory is generated once, the reference
  messages before it as history. A message that should call tools is right when the model's calls equal
  the reference calls (same names, JSON-equal arguments, same order); a final answer is right when the
  model calls nothing and its text equals the reference (`sft_sweeps.metrics.exact_match`).
* **own history**: the model plays the assistant from the first user message on. Its tool calls are
  executed by `ToolEnvironment`, which answers every call the reference trajectory makes with the result
  recorded for it (deterministic, from the conversation's own data) and any other call with an error;
  after a message without a call the next user message of the reference follows. A user turn succeeds
  when the model made exactly the reference calls and then gave the reference answer; a conversation
  (`task_success`) when every user turn does.

Generation stops at the end of each assistant message (`generation.rollout`). A message in which the
model writes tool-result markup itself (`eval.agent.result_markers`) instead of ending its message has a
**fabricated result**: what a model trained on tool results (`masking=full`) learns to do.

Tool calls are read in the Hermes/Qwen markup (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
the embedded template's and Qwen2.5's), or, for templates that emit a bare JSON object (Llama 3.1), a
message that is one JSON object with `name` and `arguments`/`parameters`.

Metrics (`sft_sweeps.metrics`, benchmark `agent`), by step depth (gold history) or user turn (own history):
`step_exact_match`, `tool_call_exact_match`, `answer_exact_match`, `tool_call_validity` (calls that parse,
name a declared tool and give its required arguments), `fabricated_result_rate`; own history:
`own_turn_success`, `task_success`, `own_fabricated_result_rate`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sft_sweeps.metrics import exact_match

if TYPE_CHECKING:
    from sft_sweeps.config import AgentConfig, Config
    from sft_sweeps.evaluation.base import BenchmarkResult, EvalContext
    from sft_sweeps.evaluation.generation import Generation

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


# --------------------------------------------------------------------------------------------- tool calls


@dataclass
class ParsedMessage:
    """What the model said in one assistant message.

    Attributes:
        content: its text outside tool-call markup.
        calls: the calls that parsed, `{"name", "arguments"}` (arguments a dict).
        attempted: it tried to call a tool (markup present, or a bare JSON call).
        malformed: calls whose JSON did not parse or lacked a name or object arguments.
    """

    content: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    attempted: bool = False
    malformed: int = 0


def parse_message(text: str) -> ParsedMessage:
    """Read the tool calls of one generated assistant message (see the module docstring)."""
    blocks = _CALL.findall(text)
    if not blocks and "<tool_call>" in text:  # an opened call never closed
        return ParsedMessage(text.split("<tool_call>", 1)[0].strip(), attempted=True, malformed=1)
    if not blocks:
        bare = _call_from_json(text.strip())
        if bare is not None:
            return ParsedMessage("", [bare], attempted=True)
        return ParsedMessage(text.strip())
    calls, malformed = [], 0
    for block in blocks:
        call = _call_from_json(block)
        if call is None:
            malformed += 1
        else:
            calls.append(call)
    return ParsedMessage(_CALL.sub("", text).strip(), calls, attempted=True, malformed=malformed)


def _call_from_json(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI's wire form: a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": value["name"], "arguments": arguments}


def reference_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The `{"name", "arguments"}` calls of a canonical assistant message (arguments as a dict)."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
        calls.append({"name": function["name"], "arguments": arguments})
    return calls


def call_key(call: dict[str, Any]) -> str:
    """A call as comparable text: name and arguments, JSON with sorted keys (so JSON-equal is equal)."""
    return json.dumps({"name": call["name"], "arguments": call["arguments"]}, sort_keys=True)


def valid_calls(parsed: ParsedMessage, tools: list[dict[str, Any]] | None) -> bool:
    """Every call parsed, names a declared tool and gives that tool's required arguments."""
    schemas = {t.get("function", t)["name"]: t.get("function", t) for t in tools or []}
    if parsed.malformed or not parsed.calls:
        return False
    for call in parsed.calls:
        schema = schemas.get(call["name"])
        if schema is None:
            return False
        required = (schema.get("parameters") or {}).get("required") or []
        if any(name not in call["arguments"] for name in required):
            return False
    return True


def as_message(parsed: ParsedMessage, text: str) -> dict[str, Any]:
    """The assistant message that enters the history: the calls in canonical form, else the raw text."""
    if not parsed.calls or parsed.malformed:
        return {"role": "assistant", "content": text}
    return {
        "role": "assistant",
        "content": parsed.content,
        "tool_calls": [
            {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in parsed.calls
        ],
    }


# ---------------------------------------------------------------------------------------- the environment


class ToolEnvironment:
    """Answers tool calls from a reference trajectory: each call it makes gets the result recorded after it.

    A call the reference never makes gets `error: <name> has no result for these arguments`, so a wrong
    item or a wrong number leads nowhere, deterministically.
    """

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.results: dict[str, str] = {}
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or not message.get("tool_calls"):
                continue
            following = messages[i + 1 : i + 1 + len(message["tool_calls"])]
            for call, result in zip(reference_calls(message), following, strict=False):
                if result["role"] == "tool":
                    self.results.setdefault(call_key(call), result["content"])

    def __call__(self, call: dict[str, Any]) -> str:
        return self.results.get(call_key(call), f"error: {call['name']} has no result for these arguments")


@dataclass
class UserTurn:
    """One user turn of a reference trajectory: the messages that open it, its calls and its answer."""

    opening: list[dict[str, Any]]  # the user (and any system) messages before the assistant's first step
    calls: list[str]  # call_key of every reference call, in order
    answer: str | None  # the final assistant message's text; None when the turn ends on a call


def user_turns(messages: list[dict[str, Any]]) -> list[UserTurn]:
    """Split a reference trajectory into user turns: each opens with user (or system) messages and holds
    the assistant steps (and tool results) up to the next user message."""
    turns: list[UserTurn] = []
    opening: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] in ("system", "user"):
            opening.append(message)
            continue
        if opening:
            turns.append(UserTurn(opening, [], None))
            opening = []
        if message["role"] == "assistant":
            turns[-1].calls += [call_key(c) for c in reference_calls(message)]
            turns[-1].answer = None if message.get("tool_calls") else message.get("content") or ""
    return turns


def turn_numbers(messages: list[dict[str, Any]]) -> list[int]:
    """For each message, the 1-based user turn it belongs to (as `user_turns` counts them)."""
    numbers, turn = [], 0
    for j, message in enumerate(messages):
        opens = message["role"] in ("system", "user")
        if opens and (j == 0 or messages[j - 1]["role"] not in ("system", "user")):
            turn += 1
        numbers.append(turn)
    return numbers


class AgentEpisode:
    """The model plays the assistant of one trajectory; its calls are executed by the environment."""

    def __init__(self, messages: list[dict[str, Any]], tools: list[dict] | None, cfg: AgentConfig) -> None:
        self.tools, self.cfg = tools, cfg
        self.turns = user_turns(messages)
        self.environment = ToolEnvironment(messages)
        self.messages: list[dict[str, Any]] = list(self.turns[0].opening) if self.turns else []
        self.turn, self.steps = 0, 0
        # Per user turn: the calls the model made (call_key) and its final answer (None: never answered).
        self.made: list[list[str]] = [[] for _ in self.turns]
        self.answers: list[str | None] = [None for _ in self.turns]
        self.fabricated: list[bool] = []

    def history(self, depth: int, answers: list[Generation]) -> list[dict[str, Any]] | None:
        if depth == 0:
            return list(self.messages) if self.turns else None
        text = answers[depth - 1].text
        parsed = parse_message(text)
        self.fabricated.append(any(marker in text for marker in self.cfg.result_markers))
        self.messages.append(as_message(parsed, text))
        self.steps += 1
        if parsed.calls and not parsed.malformed and self.steps < self.cfg.max_steps:
            self.made[self.turn] += [call_key(c) for c in parsed.calls]
            self.messages += [{"role": "tool", "content": self.environment(c)} for c in parsed.calls]
            return list(self.messages)
        if not parsed.attempted:
            self.answers[self.turn] = parsed.content
        self.turn, self.steps = self.turn + 1, 0
        if self.turn >= len(self.turns):
            return None
        self.messages += self.turns[self.turn].opening
        return list(self.messages)

    def turn_success(self) -> list[bool]:
        """Per user turn: exactly the reference calls, then the reference answer."""
        return [
            made == turn.calls
            and answer is not None
            and turn.answer is not None
            and exact_match(answer, turn.answer)
            for made, answer, turn in zip(self.made, self.answers, self.turns, strict=True)
        ]


# --------------------------------------------------------------------------------------------- benchmark


def agent_conversations(conversations: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The held-out records with at least one tool call (the first `limit` of them)."""
    found = [
        r
        for r in conversations
        if any(m.get("role") == "assistant" and m.get("tool_calls") for m in r.get("messages") or [])
    ]
    return found if limit is None else found[:limit]


def evaluate_agent(context: EvalContext) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Both rollouts on the context's held-out split; per-step items and the own-history counts."""
    from rich.progress import Progress

    from sft_sweeps.evaluation.generation import generate_turns, prompt_ids, rollout

    settings = context.settings
    cfg = settings.eval.agent
    records = agent_conversations(context.conversations, settings.eval.max_conversations)
    steps = [
        (ri, i)
        for ri, r in enumerate(records)
        for i, m in enumerate(r["messages"])
        if m["role"] == "assistant"
    ]
    with Progress(disable=not context.progress, transient=True) as bars:
        gold_bar = bars.add_task("agent (gold history)", total=len(steps))
        prompts = prompt_ids(
            context.tokenizer,
            [records[ri]["messages"][:i] for ri, i in steps],
            [records[ri].get("tools") for ri, _ in steps],
        )
        gold = generate_turns(
            context.model,
            context.tokenizer,
            prompts,
            settings.eval.batch_size,
            cfg.max_new_tokens,
            lambda n: bars.advance(gold_bar, n),
            context.window,
            context.generation_backend,
        )
        own_bar = bars.add_task("agent (own history)", total=len(steps))
        episodes = [AgentEpisode(r["messages"], r.get("tools"), cfg) for r in records]
        rollout(
            context.model,
            context.tokenizer,
            episodes,
            settings.eval.batch_size,
            cfg.max_new_tokens,
            context.window,
            context.generation_backend,
            lambda n: bars.advance(own_bar, n),
        )
    items = _gold_items(records, steps, gold, cfg)
    own = [ep.turn_success() for ep in episodes]
    # The own-history verdict of each user turn sits on the item of that turn's last reference step.
    last_step = {}
    for item in items:
        last_step[(item["id"], item["user_turn"])] = item
    for record, successes in zip(records, own, strict=True):
        for t, success in enumerate(successes, start=1):
            if (str(record["id"]), t) in last_step:
                last_step[(str(record["id"]), t)]["own_correct"] = success
    fabricated = [f for ep in episodes for f in ep.fabricated]
    own_counts = {
        "own_fabricated_result_rate": sum(fabricated) / len(fabricated) if fabricated else 0.0,
        "num_own_messages": float(len(fabricated)),
    }
    return items, own_counts


def _gold_items(
    records: list[dict[str, Any]], steps: list[tuple[int, int]], gold: list[Generation], cfg: AgentConfig
) -> list[dict[str, Any]]:
    items = []
    step_of: dict[int, int] = {}
    numbers = [turn_numbers(r["messages"]) for r in records]
    for (ri, i), generation in zip(steps, gold, strict=True):
        record = records[ri]
        messages = record["messages"]
        reference = messages[i]
        step_of[ri] = step_of.get(ri, 0) + 1
        parsed = parse_message(generation.text)
        expected = [call_key(c) for c in reference_calls(reference)]
        if expected:
            call_correct = not parsed.malformed and [call_key(c) for c in parsed.calls] == expected
            answer_correct = None
        else:
            call_correct = None
            answer_correct = not parsed.attempted and exact_match(
                parsed.content, reference.get("content") or ""
            )
        items.append(
            {
                "id": str(record["id"]),
                "task": record.get("task"),
                "turn": step_of[ri],
                "user_turn": numbers[ri][i],
                "kind": "call" if expected else "answer",
                "correct": bool(call_correct or answer_correct),
                "call_correct": call_correct,
                "answer_correct": answer_correct,
                "valid_call": valid_calls(parsed, record.get("tools")) if parsed.attempted else None,
                "fabricated": any(marker in generation.text for marker in cfg.result_markers),
                "own_correct": None,
                "prediction": generation.text,
                "gold": json.dumps(expected) if expected else reference.get("content"),
                "stopped": generation.stopped,
                "prompt_cut": generation.prompt_cut,
            }
        )
    return items


def _rate(items: list[dict[str, Any]], field_name: str) -> float | None:
    values = [item[field_name] for item in items if item[field_name] is not None]
    return sum(values) / len(values) if values else None


_RATES = {
    "step_exact_match": "correct",
    "tool_call_exact_match": "call_correct",
    "answer_exact_match": "answer_correct",
    "tool_call_validity": "valid_call",
    "fabricated_result_rate": "fabricated",
    "own_turn_success": "own_correct",
}


def aggregate(items: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """Overall rates and task success; rates by step depth (own-history ones by user turn)."""
    metrics: dict[str, float] = {}
    by_depth: dict[str, dict[int, float]] = {}
    for name, field_name in _RATES.items():
        rate = _rate(items, field_name)
        if rate is not None:
            metrics[name] = rate
        depth_key = "user_turn" if field_name == "own_correct" else "turn"
        for depth in sorted({item[depth_key] for item in items}):
            rate = _rate([item for item in items if item[depth_key] == depth], field_name)
            if rate is not None:
                by_depth.setdefault(name, {})[depth] = rate
    success: dict[str, bool] = {}
    for item in items:
        if item["own_correct"] is not None:
            success[item["id"]] = success.get(item["id"], True) and item["own_correct"]
    if success:
        metrics["task_success"] = sum(success.values()) / len(success)
    metrics["num_agent_conversations"] = float(len({item["id"] for item in items}))
    metrics["num_agent_steps"] = float(len(items))
    return metrics, by_depth


class AgentBenchmark:
    """Tool use with the model's own calls executed; see the module docstring."""

    name = "agent"
    scores_dataset_splits = True  # reads the held-out splits of the run's data (validation too)

    def check(self, settings: Config) -> None:
        from sft_sweeps.evaluation.base import BenchmarkUnavailable
        from sft_sweeps.tasks import TEXT_TASKS

        if settings.dataset.source == "synthetic" and all(t in TEXT_TASKS for t in settings.dataset.tasks):
            raise BenchmarkUnavailable(
                f"eval.benchmarks lists 'agent', which scores tool calls, but dataset.tasks="
                f"{list(settings.dataset.tasks)} has no agent task; add one (dataset.tasks=[tool_use], or "
                "dataset=synthetic_agent) or drop 'agent'"
            )

    def run(self, context: EvalContext) -> BenchmarkResult:
        from sft_sweeps.evaluation.base import BenchmarkResult, BenchmarkUnavailable

        items, own_counts = evaluate_agent(context)
        if not items:
            raise BenchmarkUnavailable(
                f"benchmark 'agent': no conversation of the {context.split} split has a tool call to score; "
                "drop 'agent' from eval.benchmarks for data without tool calls"
            )
        metrics, by_depth = aggregate(items)
        metrics.update(own_counts)
        return BenchmarkResult(metrics, by_depth, items, {"max_steps": context.settings.eval.agent.max_steps})
