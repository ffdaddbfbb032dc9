"""Multi-IF: IFEval checkers equal to lm-eval's, the loaders, the built-in set, its hold-out, a real run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sft_sweeps.config import Config, ConfigError, DatasetConfig, EvalConfig, ModelConfig, MultiIFConfig
from sft_sweeps.data import load_splits, readers
from sft_sweeps.data.holdout import BUILTIN_PATH, builtin_sources, conversation_group, reserved_group
from sft_sweeps.evaluation.benchmarks import (
    BenchmarkUnavailable,
    EvalContext,
    check_benchmarks,
    run_benchmarks,
)
from sft_sweeps.evaluation.multi_if import aggregate, check_response, ifeval_registry, load_items
from sft_sweeps.evaluation.multi_if_build import build_builtin, write_jsonl
from sft_sweeps.evaluation.multi_if_data import (
    BUILTIN_VERSION,
    EXCLUDED_IDS,
    MultiIFDataError,
    read_builtin,
    read_hub,
    read_local,
)
from sft_sweeps.metrics import lookup
from sft_sweeps.modeling import build_model
from sft_sweeps.tokenizer import load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "data"

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("punctuation:no_comma", {}, "Hello world.", "Hello, world."),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "One thing. Two things. Three things.",
        "Only one sentence here.",
    ),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "less than"},
        "Short answer here.",
        "This answer has far too many words in it.",
    ),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* apples\n* pears", "* apples"),
    ("detectable_format:title", {}, "<<Moon>>\nThe moon is bright.", "Moon\nThe moon is bright."),
    ("keywords:existence", {"keywords": ["moon", "tide"]}, "The moon moves the tide.", "The sun shines."),
    ("change_case:english_lowercase", {}, "all lowercase here", "Not lowercase"),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "NASA and ESA agree.",
        "nasa and esa agree.",
    ),
    # Strict fails on the preamble line; loose drops the first line and passes.
    ("startend:quotation", {}, '"All quoted."', 'Sure, here it is:\n"All quoted."'),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. Bye.", "Hi."),
    (
        "language:response_language",
        {"language": "en"},
        "This is a sentence written in plain English for the language detector.",
        "Ceci est une phrase écrite en français pour le détecteur de langue.",
    ),
    ("detectable_format:json_format", {}, '{"a": 1}', "a: 1"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Done."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", "*one*"),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A dog barked.", "A cat meowed."),
]


@pytest.fixture(scope="module")
def lm_eval_utils():
    ifeval_registry()  # punkt_tab on nltk's path before lm-eval's module looks for it
    from lm_eval.tasks.ifeval import utils

    return utils


def _lm_eval_verdict(utils, ids, kwargs, prompt, response) -> dict:
    doc = {"key": 1, "prompt": prompt, "instruction_id_list": list(ids), "kwargs": list(kwargs)}
    return utils.process_results(doc, [response])


def _ours(ids, kwargs, prompt, response) -> dict:
    verdict = check_response(ids, kwargs, prompt, response)
    return {
        "prompt_level_strict_acc": all(verdict.strict),
        "inst_level_strict_acc": verdict.strict,
        "prompt_level_loose_acc": all(verdict.loose),
        "inst_level_loose_acc": verdict.loose,
    }


@pytest.mark.parametrize(("instruction_id", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_checker_equals_lm_eval_ifeval_on_passing_and_failing_answers(
    lm_eval_utils, instruction_id, kwargs, good, bad
) -> None:
    prompt = "Write something."
    for response in (good, bad, ""):
        expected = _lm_eval_verdict(lm_eval_utils, [instruction_id], [kwargs], prompt, response)
        assert _ours([instruction_id], [kwargs], prompt, response) == expected, response
    # The answers do what they claim, so both outcomes are compared.
    assert check_response([instruction_id], [kwargs], prompt, good).strict == [True]
    assert check_response([instruction_id], [kwargs], prompt, bad).strict == [False]
    assert check_response([instruction_id], [kwargs], prompt, "").loose == [False]


def test_loose_rescues_a_preamble_like_lm_eval(lm_eval_utils) -> None:
    ids, kwargs = ["startend:quotation", "punctuation:no_comma"], [{}, {}]
    response = 'Sure here it is:\n"All quoted."'
    ours = _ours(ids, kwargs, "p", response)
    assert ours == _lm_eval_verdict(lm_eval_utils, ids, kwargs, "p", response)
    assert ours["inst_level_strict_acc"] == [False, True] and ours["inst_level_loose_acc"] == [True, True]


def test_several_instructions_at_once_equal_lm_eval(lm_eval_utils) -> None:
    ids = [c[0] for c in CASES]
    kwargs = [c[1] for c in CASES]
    for response in ("NASA and ESA. P.S. moon tide", CASES[0][2], '"<<T>>\n* a\n* b"'):
        assert _ours(ids, kwargs, "p", response) == _lm_eval_verdict(
            lm_eval_utils, ids, kwargs, "p", response
        )


# ------------------------------------------------------------------------------------------- loading


def test_jsonl_and_csv_fixtures_load_alike_with_accumulating_instructions() -> None:
    jsonl = read_local(FIXTURES / "multi_if.jsonl", ifeval_registry().INSTRUCTION_DICT)
    assert read_local(FIXTURES / "multi_if.csv") == jsonl
    assert [(item.id, item.language, len(item.turns)) for item in jsonl] == [
        ("1001:1:en", "English", 3),
        ("1002:1:en", "English", 2),
        ("1003:1:zh", "Chinese", 3),
    ]
    turns = jsonl[0].turns
    assert turns[0].prompt.startswith("Write a short note about the moon.")
    assert turns[2].instruction_ids == (
        "punctuation:no_comma",
        "detectable_format:multiple_sections",
        "startend:end_checker",
    )
    assert turns[1].kwargs == ({}, {"section_spliter": "SECTION", "num_sections": 2})
    # Multi-IF's nulls survive loading; the checker drops them as lm-eval does.
    assert jsonl[2].turns[0].kwargs == ({"num_highlights": 3, "relation": None},)
    assert check_response(
        jsonl[2].turns[0].instruction_ids, jsonl[2].turns[0].kwargs, "p", "*a* *b* *c*"
    ).strict == [True]


def _write_record(tmp_path: Path, **changes) -> Path:
    record = json.loads((FIXTURES / "multi_if.jsonl").read_text("utf-8").splitlines()[0])
    record.update(changes)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (
            {"turn_2_instruction_id_list": '["punctuation:no_comma", "nope:unknown"]'},
            "turn_2_instruction_id_list",
            "nope:unknown",
        ),
        ({"turn_1_kwargs": '["{}", "{}"]'}, "turn_1_kwargs", "list of 1 objects"),
        ({"turn_1_prompt": "{not json"}, "turn_1_prompt", "invalid JSON"),
        ({"turn_2_prompt": ""}, "turn_2_prompt", "turn 3 is not"),
        ({"key": ""}, "key", "missing"),
    ],
)
def test_malformed_records_name_file_record_and_field(tmp_path, changes, field, message) -> None:
    path = _write_record(tmp_path, **changes)
    with pytest.raises(MultiIFDataError) as error:
        read_local(path, ifeval_registry().INSTRUCTION_DICT)
    text = str(error.value)
    assert str(path) in text and "record 0" in text and f"field '{field}'" in text and message in text


def test_hub_source_reads_a_dataset_folder_through_datasets(tmp_path) -> None:
    folder = tmp_path / "multi_if_hub"
    folder.mkdir()
    shutil.copy(FIXTURES / "multi_if.jsonl", folder / "train.jsonl")
    assert read_hub(str(folder), "train") == read_local(FIXTURES / "multi_if.jsonl")


def test_hub_source_offline_and_uncached_says_how_to_get_the_data() -> None:
    with pytest.raises(MultiIFDataError, match="datasets cache.*eval.multi_if.source=local"):
        read_hub("sft-sweeps-tests/no-such-multi-if", "train")
    settings = Config(
        eval=EvalConfig(
            benchmarks=["multi_if"],
            multi_if=MultiIFConfig(source="hub", path="sft-sweeps-tests/no-such-multi-if"),
        )
    )
    with pytest.raises(BenchmarkUnavailable, match="source=hub"):
        check_benchmarks(settings)


def test_missing_local_file_fails_the_check_before_training(tmp_path) -> None:
    settings = Config(
        eval=EvalConfig(
            benchmarks=["multi_if"], multi_if=MultiIFConfig(source="local", path=str(tmp_path / "none.csv"))
        )
    )
    with pytest.raises(BenchmarkUnavailable, match="none.csv"):
        check_benchmarks(settings)


def test_languages_filter_and_an_absent_language_is_an_error() -> None:
    cfg = MultiIFConfig(source="local", path=str(FIXTURES / "multi_if.csv"), languages=["chinese"])
    items, info = load_items(cfg)
    assert [item.id for item in items] == ["1003:1:zh"] and info["num_items_available"] == 3
    with pytest.raises(BenchmarkUnavailable, match="present: \\['Chinese', 'English'\\]"):
        load_items(MultiIFConfig(source="local", path=str(FIXTURES / "multi_if.csv"), languages=["French"]))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"source": "s3"}, "eval.multi_if.source"),
        ({"source": "local"}, "eval.multi_if.path"),
        ({"max_items": 0}, "eval.multi_if.max_items"),
        ({"max_new_tokens": 0}, "eval.multi_if.max_new_tokens"),
    ],
)
def test_config_errors_name_the_key(kwargs, key) -> None:
    with pytest.raises(ConfigError, match=key):
        MultiIFConfig(**kwargs)


# ------------------------------------------------------------------------------------------ built-in


def test_builtin_set_is_versioned_accumulating_and_conflict_free() -> None:
    registry = ifeval_registry()
    items, data_version = read_builtin(registry.INSTRUCTION_DICT)
    assert data_version == BUILTIN_VERSION and len(items) == 150
    conflicts = registry.conflict_make({k: set(v) for k, v in registry.INSTRUCTION_CONFLICTS.items()})
    for item in items:
        assert len(item.turns) == 3
        for before, after in zip(item.turns, item.turns[1:], strict=False):
            assert after.instruction_ids[: len(before.instruction_ids)] == before.instruction_ids
            assert after.kwargs[: len(before.kwargs)] == before.kwargs
            assert len(after.instruction_ids) == len(before.instruction_ids) + 1
        ids = item.turns[-1].instruction_ids
        assert not set(ids) & EXCLUDED_IDS
        assert all(b not in conflicts[a] for i, a in enumerate(ids) for b in ids[i + 1 :])


def test_rebuild_equals_the_shipped_file(tmp_path) -> None:
    out = tmp_path / "rebuilt.jsonl"
    write_jsonl(build_builtin(), out)
    assert out.read_bytes() == BUILTIN_PATH.read_bytes()


def test_builtin_prompts_come_from_reserved_package_conversations() -> None:
    groups, prompts = builtin_sources()
    assert len(groups) == 150 and len(prompts) == 150
    assert all(reserved_group(group) for group in groups)
    openers = {}
    for item in readers.read_sharegpt_package():
        raw = item.raw
        if isinstance(raw, dict) and conversation_group(raw["id"]) in groups and raw["id"].endswith("_0"):
            openers[conversation_group(raw["id"])] = raw["conversations"][0]["value"].strip()
    assert set(openers) == groups and set(openers.values()) == prompts


def test_load_splits_never_yields_benchmark_conversations_or_copies(tmp_path, monkeypatch) -> None:
    groups, prompts = builtin_sources()
    group, prompt = sorted(groups)[0], sorted(prompts)[0]
    records = [
        {
            "id": f"{group}_0",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
        },
        {
            "id": f"{group}_1",
            "conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}],
        },
        # A copy of a benchmark prompt under another id, as a later user turn.
        {
            "id": "copy_0",
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello"},
                {"from": "human", "value": f"  {prompt}\n"},
                {"from": "gpt", "value": "sure"},
            ],
        },
    ] + [
        {
            "id": f"keep{i}_0",
            "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}],
        }
        for i in range(20)
    ]
    path = tmp_path / "package.json"
    path.write_text(json.dumps(records))
    monkeypatch.setattr(readers, "read_sharegpt_package", lambda: readers.read_json_array(str(path)))
    cfg = DatasetConfig(
        name="sharegpt",
        source="sharegpt_package",
        format="sharegpt",
        num_train=100,
        num_validation=0,
        num_test=0,
    )
    splits = load_splits(cfg)
    loaded = {r["id"] for s in (splits.train, splits.validation, splits.test) for r in s}
    assert loaded == {f"keep{i}_0" for i in range(20)}
    assert splits.stats["train"]["held_out"] == 3


# ------------------------------------------------------------------------------------------- scoring


def test_aggregate_flattens_instructions_and_needs_every_turn_for_success() -> None:
    def record(item_id, turn, strict, loose, cut=0):
        return {
            "id": item_id,
            "turn": turn,
            "language": "English",
            "prompt_strict": all(strict),
            "prompt_loose": all(loose),
            "follow_strict": strict,
            "follow_loose": loose,
            "prompt_cut": cut,
        }

    records = [
        record("a", 1, [True], [True]),
        record("a", 2, [True, False], [True, True], cut=5),
        record("b", 1, [True], [True]),
        record("b", 2, [True, True, True], [True, True, True]),
    ]
    metrics, by_depth = aggregate(records)
    assert metrics["if_prompt_strict"] == 0.75 and metrics["if_prompt_loose"] == 1.0
    assert metrics["if_instruction_strict"] == 6 / 7  # over instructions, not a mean of per-turn fractions
    assert metrics["if_all_turns_strict"] == 0.5 and metrics["num_truncated_prompts"] == 1.0
    assert by_depth["if_prompt_strict"] == {1: 1.0, 2: 0.5}
    assert by_depth["if_instruction_strict"][2] == 4 / 5


def test_metrics_are_declared_for_the_report() -> None:
    headline = lookup("multi_if/if_prompt_strict")
    assert headline.benchmark == "multi_if" and headline.headline and headline.item_field == "prompt_strict"
    assert lookup("multi_if/if_all_turns_strict").level == "conversation"


def test_benchmark_runs_on_the_embedded_model_with_its_own_history() -> None:
    torch.manual_seed(0)
    tok = load_tokenizer("embedded")
    model = build_model(ModelConfig(), tok).eval()
    settings = Config(
        eval=EvalConfig(
            benchmarks=["multi_if"], batch_size=8, multi_if=MultiIFConfig(max_items=3, max_new_tokens=8)
        )
    )
    check_benchmarks(settings)
    out = run_benchmarks(EvalContext(model, tok, splits=None, settings=settings, window=128, progress=False))
    metrics, items = out["metrics"], out["eval_items"]["multi_if"]
    rates = ["if_prompt_strict", "if_prompt_loose", "if_instruction_strict", "if_instruction_loose"]
    for name in [*rates, "if_all_turns_strict"]:
        assert 0.0 <= metrics[f"multi_if/{name}"] <= 1.0
    assert sorted((i["id"], i["turn"]) for i in items) == [
        (f"{BUILTIN_VERSION}:{n}", t) for n in range(3) for t in (1, 2, 3)
    ]
    assert metrics["multi_if/num_if_turns"] == 9 and metrics["multi_if/num_if_conversations"] == 3
    # Some prompts exceed the 128 - 8 tokens left for them: they are cut, and counted.
    assert metrics["multi_if/num_truncated_prompts"] == sum(i["prompt_cut"] > 0 for i in items) > 0
    assert set(out["by_depth"]["multi_if/if_prompt_strict"]) == {"1", "2", "3"}
    assert out["benchmarks"]["multi_if"]["version"] == BUILTIN_VERSION
    first = {i["id"]: len(i["instruction_ids"]) for i in items if i["turn"] == 1}
    for item in items:  # one more instruction in force per turn, one verdict per instruction
        assert (
            len(item["follow_strict"]) == len(item["instruction_ids"]) == first[item["id"]] + item["turn"] - 1
        )
        assert item["instruction_strict"] == sum(item["follow_strict"]) / len(item["follow_strict"])
