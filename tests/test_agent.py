"""The agent task and benchmark: tool calls read from generated text, executed from the conversation's own
data, scored with the reference and with the model's own history (`sft_sweeps.evaluation.agent`)."""

from __future__ import annotations

import json
import random

import pytest

from sft_sweeps.config import AgentConfig
from sft_sweeps.evaluation.agent import (
    AgentEpisode,
    ToolEnvironment,
    aggregate,
    as_message,
    call_key,
    parse_message,
    reference_calls,
    user_turns,
    valid_calls,
)
from sft_sweeps.evaluation.generation import Generation
from sft_sweeps.tasks import TASKS, TEXT_TASKS, make_splits
from sft_sweeps.tasks.tool_use import TOOLS, ToolUse


def _said(text: str) -> Generation:
    return Generation(text, stopped=True, num_tokens=len(text))


def _call_text(name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def _conversation(seed: int = 3, turns: int = 3) -> list[dict]:
    return ToolUse().generate(random.Random(seed), turns)


def test_tool_use_task_needs_the_tool_results_to_answer() -> None:
    """Every answer is a tool's result: the one just before it, or (an item asked again) an earlier one."""
    for seed in range(50):
        messages = _conversation(seed, 3)
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and not message.get("tool_calls"):
                results = [m["content"] for m in messages[:i] if m["role"] == "tool"]
                assert message["content"] in results
                assert messages[i - 1]["role"] == "tool" or messages[i - 1]["role"] == "user"
        calls = [c for m in messages for c in reference_calls(m)]
        assert {c["name"] for c in calls} <= {"lookup", "add"} and calls[0]["name"] == "lookup"
        assert valid_calls(
            parse_message("".join(_call_text(**{"name": c["name"], **c["arguments"]}) for c in calls)), TOOLS
        )


def test_agent_task_records_carry_their_tools_and_stay_out_of_the_text_tasks() -> None:
    splits = make_splits(["tool_use"], {"train": 20, "test": 5}, 1, 3, seed=0)
    assert all(r["tools"] == TOOLS for s in splits.values() for r in s)
    assert "tool_use" in TASKS and "tool_use" not in TEXT_TASKS
    # The text tasks' records are unchanged: no `tools` key (the default data and its fingerprint stay).
    assert all("tools" not in r for r in make_splits(["fact_recall"], {"train": 5}, 2, 6, seed=0)["train"])


@pytest.mark.parametrize(
    ("text", "calls", "attempted", "malformed"),
    [
        ("37", [], False, 0),
        (_call_text("lookup", item="box"), [{"name": "lookup", "arguments": {"item": "box"}}], True, 0),
        # Two calls in one message (parallel calls), text before them kept as content.
        (
            "ok " + _call_text("lookup", item="box") + _call_text("add", a=1, b=2),
            [
                {"name": "lookup", "arguments": {"item": "box"}},
                {"name": "add", "arguments": {"a": 1, "b": 2}},
            ],
            True,
            0,
        ),
        ("<tool_call>\n{not json}\n</tool_call>", [], True, 1),
        ('<tool_call>\n{"name": "lookup", "argu', [], True, 1),  # opened, never closed
        # Llama 3.1 emits a bare JSON object with `parameters`.
        (
            '{"name": "add", "parameters": {"a": 3, "b": 4}}',
            [{"name": "add", "arguments": {"a": 3, "b": 4}}],
            True,
            0,
        ),
        # OpenAI's wire form: arguments as a JSON string.
        (
            '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>',
            [{"name": "add", "arguments": {"a": 1, "b": 2}}],
            True,
            0,
        ),
    ],
)
def test_parse_message(text: str, calls: list, attempted: bool, malformed: int) -> None:
    parsed = parse_message(text)
    assert parsed.calls == calls and parsed.attempted == attempted and parsed.malformed == malformed


def test_validity_needs_a_declared_tool_and_its_required_arguments() -> None:
    assert valid_calls(parse_message(_call_text("lookup", item="box")), TOOLS)
    assert not valid_calls(parse_message(_call_text("search", item="box")), TOOLS)  # not declared
    assert not valid_calls(parse_message(_call_text("add", a=1)), TOOLS)  # `b` is required
    assert not valid_calls(parse_message("<tool_call>{oops}</tool_call>"), TOOLS)


def test_calls_compare_json_equal_whatever_the_key_order() -> None:
    a = {"name": "add", "arguments": {"a": 1, "b": 2}}
    b = {"name": "add", "arguments": {"b": 2, "a": 1}}
    assert call_key(a) == call_key(b) != call_key({"name": "add", "arguments": {"a": 1, "b": 3}})


def test_environment_answers_the_reference_calls_from_the_conversation_and_errs_on_others() -> None:
    messages = _conversation(3, 3)
    environment = ToolEnvironment(messages)
    for i, message in enumerate(messages):
        for call in reference_calls(message):
            assert environment(call) == messages[i + 1]["content"]
    assert environment({"name": "lookup", "arguments": {"item": "nothing"}}).startswith("error: lookup")


def test_a_perfect_player_succeeds_and_its_history_is_the_reference() -> None:
    """Answering every step as the reference does, the episode rebuilds the reference conversation."""
    messages = _conversation(5, 3)
    episode = AgentEpisode(messages, TOOLS, AgentConfig())
    reference_steps = [m for m in messages if m["role"] == "assistant"]
    answers: list[Generation] = []
    history = episode.history(0, answers)
    for depth, step in enumerate(reference_steps):
        calls = reference_calls(step)
        text = "".join(_call_text(c["name"], **c["arguments"]) for c in calls) if calls else step["content"]
        answers.append(_said(text))
        history = episode.history(depth + 1, answers)
    assert history is None  # the conversation is over
    assert episode.messages == [{**m, "content": m.get("content") or ""} for m in messages]
    assert episode.turn_success() == [True] * len(user_turns(messages))
    assert episode.fabricated == [False] * len(reference_steps)


def test_a_wrong_call_gets_an_error_and_the_turn_fails_while_later_turns_go_on() -> None:
    messages = _conversation(5, 2)
    episode = AgentEpisode(messages, TOOLS, AgentConfig())
    answers = [_said(_call_text("lookup", item="nothing"))]
    episode.history(0, [])
    history = episode.history(1, answers)
    assert history[-1]["role"] == "tool" and history[-1]["content"].startswith("error")
    answers.append(_said("12"))  # a guess
    history = episode.history(2, answers)
    assert history[-1] == user_turns(messages)[1].opening[-1]  # the next user turn follows
    assert episode.turn_success()[0] is False


def test_fabricated_results_are_counted_and_a_message_never_ending_in_calls_moves_on() -> None:
    messages = _conversation(5, 1)
    episode = AgentEpisode(messages, TOOLS, AgentConfig(max_steps=2))
    call = reference_calls(next(m for m in messages if m.get("tool_calls")))[0]
    looping = _call_text(call["name"], **call["arguments"]) + "<tool_response>\n42\n</tool_response>"
    answers = [_said(looping)]
    episode.history(0, [])
    assert episode.history(1, answers) is not None  # executed: its own result comes from the environment
    answers.append(_said(looping))
    assert episode.history(2, answers) is None  # max_steps reached: the turn ends without an answer
    assert episode.fabricated == [True, True] and episode.turn_success() == [False]


def test_as_message_keeps_text_that_is_not_a_clean_call() -> None:
    text = "<tool_call>{bad}</tool_call>"
    assert as_message(parse_message(text), text) == {"role": "assistant", "content": text}
    message = as_message(parse_message(_call_text("add", a=1, b=2)), "")
    assert message["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 1, "b": 2}}


def test_aggregate_rates_by_step_and_task_success_by_conversation() -> None:
    def item(cid, turn, user_turn, correct, call, answer, own):
        return {
            "id": cid,
            "turn": turn,
            "user_turn": user_turn,
            "correct": correct,
            "call_correct": call,
            "answer_correct": answer,
            "valid_call": call,
            "fabricated": False,
            "own_correct": own,
        }

    items = [
        item("a", 1, 1, True, True, None, None),
        item("a", 2, 1, True, None, True, True),
        item("b", 1, 1, False, False, None, None),
        item("b", 2, 1, True, None, True, False),
    ]
    metrics, by_depth = aggregate(items)
    assert metrics["step_exact_match"] == 0.75
    assert metrics["tool_call_exact_match"] == 0.5 and metrics["answer_exact_match"] == 1.0
    assert metrics["own_turn_success"] == 0.5 and metrics["task_success"] == 0.5
    assert by_depth["step_exact_match"] == {1: 0.5, 2: 1.0}
    assert metrics["num_agent_conversations"] == 2.0


def test_the_readme_agent_table_is_the_shipped_report() -> None:
    """The README quotes `reports/agent_masking/table.md` (what `python -m sft_sweeps.report` wrote): every
    line between its markers is a line of that file, and the other metrics it quotes are in report.md."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- agent table: reports/agent_masking/table.md -->")[1].split(
        "<!-- end agent table"
    )[0]
    table = (root / "reports" / "agent_masking" / "table.md").read_text(encoding="utf-8").splitlines()
    quoted = [line for line in block.strip().splitlines() if line.strip()]
    assert len(quoted) > 8 and all(line in table for line in quoted)
    report = (root / "reports" / "agent_masking" / "report.md").read_text(encoding="utf-8")
    for value in ("0.296 ± 0.638", "0.013 ± 0.057", "0.008 ± 0.021"):
        assert value in report and value in readme
