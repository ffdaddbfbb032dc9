"""Agent trajectories: LLaMA-Factory and OpenAI tool-calling files read into canonical messages, malformed
trajectories named or counted, tool calls and results rendered by the embedded template and weighed by every
strategy, and a message marked `train: false` never supervised."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sft_sweeps.config import DatasetConfig, MaskingConfig, validate
from sft_sweeps.data import DataValidationError, load_splits, to_record
from sft_sweeps.identity import config_hash, masking_label, setting_hash
from sft_sweeps.inspect import token_parts
from sft_sweeps.masking import annotate, build_dataset, loss_weights
from sft_sweeps.tokenizer import CHATML_TEMPLATE, PLAIN_CHATML_TEMPLATE, build_embedded_tokenizer
from tests.conftest import TINY_OVERRIDES, compose_config, tiny_llama

FIXTURES = Path(__file__).parent / "fixtures" / "data"
LLAMAFACTORY = FIXTURES / "agent_llamafactory.json"
OPENAI = FIXTURES / "agent_openai.jsonl"
INVALID = FIXTURES / "agent_invalid.jsonl"
STRATEGIES = ("full", "last", "last_round", "all", "weighted")


def local(path: Path, **overrides) -> DatasetConfig:
    values = dict(name="local", source="local", path=str(path), num_train=100, num_validation=0, num_test=0)
    values.update(overrides)
    return DatasetConfig(**values)


@pytest.fixture(scope="module")
def tok():
    return build_embedded_tokenizer()


def weather_schema() -> dict:
    record = json.loads(LLAMAFACTORY.read_text())[0]
    return json.loads(record["tools"])[0]


def test_llamafactory_agent_file_reads_into_canonical_messages() -> None:
    first, parallel, two_rounds, plain = load_splits(local(LLAMAFACTORY)).train
    assert first["messages"] == [
        {"role": "system", "content": "You are a weather assistant."},  # LLaMA-Factory's `system` column
        {"role": "user", "content": "What is the weather in Oslo right now?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
            ],
        },
        {"role": "tool", "content": '{"temp_c": 5, "condition": "rain"}'},
        {"role": "assistant", "content": "It is 5 °C and raining in Oslo."},
    ]
    # The `tools` column is a JSON string of bare functions: OpenAI function schemas come out.
    assert first["tools"] == [{"type": "function", "function": weather_schema()}]
    # A list in `function_call` is one assistant message with parallel calls, answered by one observation.
    calls = parallel["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Rome"}, {"city": "Paris"}]
    assert [m["role"] for m in two_rounds["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool", "assistant"
    ]  # fmt: skip
    assert "tools" not in plain  # an empty `tools` column means none


def test_openai_tool_calling_file_keeps_calls_ids_and_text() -> None:
    records = {r["id"]: r for r in load_splits(local(OPENAI)).train}
    call = records["oa0"]["messages"][1]
    # `content: null` beside `tool_calls` (OpenAI's shape) is read, arguments (a JSON string) parsed.
    assert call == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                "id": "call_1",
            }
        ],
    }
    assert records["oa0"]["messages"][2] == {
        "role": "tool",
        "content": '{"temp_c": 5, "condition": "rain"}',
        "tool_call_id": "call_1",
        "name": "get_weather",
    }
    # Text and calls in one message: both kept (they used to lose the calls).
    both = records["oa1"]["messages"][2]
    assert both["content"] == "I will look both up." and len(both["tool_calls"]) == 2
    assert records["oa3"]["messages"][3]["train"] is False


EXPECTED_ERRORS = {
    "no-name": ("messages[1].tool_calls[0].function.name", "bad_tool_call"),
    "args-not-json": ("messages[1].tool_calls[0].function.arguments", "bad_tool_arguments"),
    "args-not-object": ("messages[1].tool_calls[0].function.arguments", "bad_tool_arguments"),
    "tools-not-json": ("tools", "bad_tools"),
    "unknown-tool": ("messages[1].tool_calls[0].function.name", "unknown_tool"),
    "call-without-result": ("messages[1].tool_calls", "tool_call_without_result"),
    "result-without-call": ("messages[2]", "tool_result_without_call"),
    "result-for-another-call": ("messages[2].tool_call_id", "tool_result_without_call"),
    "ends-on-result": ("messages[2].role", "ends_on_tool_result"),
}


@pytest.mark.parametrize("record_id", sorted(EXPECTED_ERRORS))
def test_each_malformed_trajectory_names_file_record_and_field(record_id: str) -> None:
    lines = INVALID.read_text().splitlines()
    (index,) = [i for i, line in enumerate(lines) if json.loads(line)["id"] == record_id]
    with pytest.raises(DataValidationError) as info:
        to_record(json.loads(lines[index]), "auto", str(INVALID), index, index + 1)
    field, reason = EXPECTED_ERRORS[record_id]
    assert (info.value.field, info.value.reason) == (field, reason)
    assert str(info.value).startswith(f"{INVALID}:{index + 1}: record {index} (id={record_id}): {field}: ")


def test_malformed_trajectories_stop_the_run_or_are_skipped_and_counted() -> None:
    with pytest.raises(DataValidationError, match=r"record 1 \(id=no-name\)"):
        load_splits(local(INVALID))
    splits = load_splits(local(INVALID, on_invalid="skip"))
    assert [r["id"] for r in splits.train] == ["ok"]
    assert splits.stats["train"]["skipped"] == {
        "bad_tool_call": 1,
        "bad_tool_arguments": 2,
        "bad_tools": 1,
        "unknown_tool": 1,
        "tool_call_without_result": 1,
        "tool_result_without_call": 2,
        "ends_on_tool_result": 1,
    }


def test_embedded_template_renders_conversations_without_tools_byte_identically(tok) -> None:
    """The default sweep's tokens do not change: same text, same generation spans, same prompts."""
    plain = build_embedded_tokenizer()
    plain.chat_template = PLAIN_CHATML_TEMPLATE
    assert tok.chat_template == CHATML_TEMPLATE != PLAIN_CHATML_TEMPLATE
    records = load_splits(DatasetConfig(num_train=40, num_validation=5, num_test=5)).train
    records += load_splits(local(FIXTURES / "messages.jsonl")).train
    assert records
    for record in records:
        messages = record["messages"]
        for gen in (False, True):
            new = tok.apply_chat_template(
                messages, tokenize=True, return_dict=True, add_generation_prompt=gen
            )
            old = plain.apply_chat_template(
                messages, tokenize=True, return_dict=True, add_generation_prompt=gen
            )
            assert new["input_ids"] == old["input_ids"]
        marked = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        before = plain.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        assert marked["assistant_masks"] == before["assistant_masks"]
    # And so what every strategy trains on: the same ids and weights, sample by sample.
    for strategy in STRATEGIES:
        new_data, _ = build_dataset(tok, records, MaskingConfig(name=strategy), max_length=4096)
        old_data, _ = build_dataset(plain, records, MaskingConfig(name=strategy), max_length=4096)
        assert new_data.to_dict() == old_data.to_dict(), strategy


def test_embedded_template_renders_tools_calls_and_results(tok) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
            ],
        },
        {"role": "tool", "content": "rain"},
        {"role": "assistant", "content": "Rain."},
    ]
    assert tok.apply_chat_template(messages, tools=tools, tokenize=False) == (
        "<|im_start|>system\nBe brief.\n\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather"}}\n</tools><|im_end|>\n'
        "<|im_start|>user\nOslo?<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\n<tool_response>\nrain\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nRain.<|im_end|>\n"
    )


def _parts_and_weights(tok, record: dict, strategy: str, **params) -> list[tuple[str, int, float]]:
    conversation = annotate(tok, record["messages"], record.get("tools"))
    _, weights = loss_weights(tok, record["messages"], strategy, tools=record.get("tools"), **params)
    messages = conversation.tokens.message.tolist()
    return list(zip(token_parts(conversation), messages, weights, strict=True))


def _record(path: Path, record_id: str) -> dict:
    return {r["id"]: r for r in load_splits(local(path)).train}[record_id]


def test_strategies_weigh_tool_calls_and_tool_results_as_documented(tok) -> None:
    record = _record(OPENAI, "oa2")  # user, call, result, answer, user, call, result, answer
    supervised = {
        strategy: {(part, m) for part, m, w in _parts_and_weights(tok, record, strategy) if w > 0}
        for strategy in ("all", "last", "last_round", "full")
    }
    # `all`: every call and answer, no tool result; `last`: the final answer only (its calls masked, as
    # LLaMA-Factory's mask_history); `last_round`: after the last user message, the call and the answer.
    assert {(p, m) for p, m in supervised["all"]} == {
        ("tool_call", 1), ("assistant_text", 1), ("assistant_text", 3),
        ("tool_call", 5), ("assistant_text", 5), ("assistant_text", 7),
    }  # fmt: skip
    assert {m for _, m in supervised["last"]} == {7}
    assert {m for _, m in supervised["last_round"]} == {5, 7}
    assert ("tool_call", 5) in supervised["last_round"] and ("tool_call", 1) not in supervised["last_round"]
    assert {p for p, _ in supervised["full"]} >= {"tool_result", "tool_call", "user"}  # full means full


def test_tool_call_weight_and_per_role_prompt_weights(tok) -> None:
    record = _record(OPENAI, "oa1")
    tokens = _parts_and_weights(
        tok, record, "all", tool_call_weight=2.0, tool_result_weight=0.5, system_weight=0.25
    )
    by_part: dict[str, set[float]] = {}
    for part, _, weight in tokens:
        by_part.setdefault(part, set()).add(weight)
    assert by_part["tool_call"] == {2.0}  # ms-swift's react/hermes scale
    assert by_part["assistant_text"] == {1.0}
    assert by_part["tool_result"] == {0.5} and by_part["system"] == {0.25}  # headers included
    assert by_part["user"] == {0.0} and by_part["assistant_header"] == {0.0}  # `all`'s own prompt weight


def test_train_false_is_never_supervised_with_the_default_settings(tok) -> None:
    """README: a message with `train: false` is never supervised, under any strategy (Axolotl's field)."""
    record = _record(OPENAI, "oa3")
    excluded = 3
    assert record["messages"][excluded] == {"role": "assistant", "content": "Rainy.", "train": False}
    labels = annotate(tok, record["messages"], record["tools"]).tokens.message.tolist()
    for strategy in STRATEGIES:
        masking = MaskingConfig(name=strategy)  # message_weight_field left at its default, `weight`
        dataset, _ = build_dataset(tok, [record], masking, max_length=4096)
        weights = dataset[0]["weights"]
        assert len(weights) == len(labels)
        assert not any(w for w, m in zip(weights, labels, strict=True) if m == excluded), strategy
        assert any(w for w, m in zip(weights, labels, strict=True) if m == 5), strategy  # the rest trains


def test_train_false_is_never_supervised_in_a_plain_chat_file(tok, tmp_path: Path) -> None:
    """The same without tools: an Axolotl-style file read as a user would, the default masking config."""
    path = tmp_path / "axolotl.jsonl"
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "A bad answer.", "train": False},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "A good answer."},
    ]
    path.write_text(json.dumps({"id": "ax", "messages": messages}) + "\n")
    (record,) = load_splits(local(path)).train
    labels = annotate(tok, record["messages"]).tokens.message.tolist()
    for strategy in STRATEGIES:
        dataset, _ = build_dataset(tok, [record], MaskingConfig(name=strategy), max_length=4096)
        weights = dataset[0]["weights"]
        assert not any(w for w, m in zip(weights, labels, strict=True) if m == 1), strategy
        assert any(w for w, m in zip(weights, labels, strict=True) if m == 3), strategy


def test_tool_calls_with_null_content_are_rendered_and_supervised(tok) -> None:
    raw = json.loads(OPENAI.read_text().splitlines()[0])
    assert raw["messages"][1]["content"] is None
    record = to_record(raw, "auto", str(OPENAI), 0, 1)
    ids, weights = loss_weights(tok, record["messages"], "all", tools=record["tools"])
    supervised = tok.decode([i for i, w in zip(ids, weights, strict=True) if w > 0])
    assert supervised.startswith(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )


def test_new_parameters_leave_existing_labels_and_hashes_unchanged() -> None:
    new = ("tool_call_weight", "system_weight", "user_weight", "tool_result_weight")
    for option, label in (
        ("all", "all"),
        ("last", "last"),
        ("full", "full"),
        ("weighted", "weighted(pw=0.1)"),
    ):
        cfg = compose_config([f"masking={option}"])
        before = OmegaConf.to_container(cfg, resolve=True)
        for key in new:  # the config as it was resolved before these parameters existed
            del before["masking"][key]
        assert config_hash(cfg) == config_hash(before) and setting_hash(cfg) == setting_hash(before)
        assert masking_label(cfg.masking) == label
    toolcall = compose_config(["masking=all_toolcall2"])
    assert masking_label(toolcall.masking) == "all(tcw=2)"
    assert config_hash(toolcall) != config_hash(compose_config(["masking=all"]))
    assert masking_label(
        compose_config(["masking=last_round", "masking.tool_result_weight=0.1"]).masking
    ) == ("last_round(toolw=0.1)")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("masking.tool_call_weight=-1", "masking.tool_call_weight must be a finite number >= 0"),
        ("masking.user_weight=2", "masking.user_weight must be null or in [0, 1]"),
    ],
)
def test_bad_tool_weights_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(compose_config([override]))


# One run per format in the default suite; every strategy under `-m slow` (about 2 s each).
TRAINED = [
    pytest.param(option, marks=() if option == "all_toolcall2" else pytest.mark.slow)
    for option in (*STRATEGIES, "all_toolcall2")
]


@pytest.mark.parametrize("option", TRAINED)
@pytest.mark.parametrize("path", [LLAMAFACTORY, OPENAI], ids=["llamafactory", "openai"])
def test_every_strategy_trains_on_agent_data(tok, path: Path, option: str, tmp_path: Path) -> None:
    from sft_sweeps.training import build_trainer

    records = load_splits(local(path)).train
    settings = validate(
        compose_config(
            [*TINY_OVERRIDES, "train.max_steps=2", "train.per_device_train_batch_size=2", f"masking={option}"]
        )
    )
    dataset, stats = build_dataset(tok, records, settings.masking, max_length=1024)
    assert stats.kept == len(records) and stats.supervised_tokens > 0
    model = tiny_llama(tok, hidden_size=32, num_hidden_layers=1, intermediate_size=64).train()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = build_trainer(model, tok, dataset, settings.train, seed=0, output_dir=str(tmp_path / "out"))
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_tools_block_without_a_system_message_is_template_text_not_the_users(tok) -> None:
    record = _record(OPENAI, "oa0")  # no system message: the embedded template writes the tools alone
    conversation = annotate(tok, record["messages"], record["tools"])
    text, parts = conversation.layout.text, token_parts(conversation)
    spans = list(zip(conversation.tokens.offsets.tolist(), parts, strict=True))
    user = "".join(text[s:e] for (s, e), p in spans if p == "user")
    template = "".join(text[s:e] for (s, e), p in spans if p == "template")
    assert "<tools>" in template and "<tools>" not in user
    _, weights = loss_weights(tok, record["messages"], "all", tools=record["tools"], user_weight=1.0)
    assert not any(w for w, p in zip(weights, parts, strict=True) if p == "template")  # user_weight: users'
