"""Multi-IF: IFEval checkers equal to lm-eval's, the loaders, the built-in set, its hold-out, a real run."""

from __future__ import annotations

import json
import re
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


def _ours(ids, kwargs, prompt, response, scoring="lm_eval") -> dict:
    verdict = check_response(ids, kwargs, prompt, response, scoring)
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


# ------------------------------------------- language-aware counting (Multi-IF's ifeval.py) vs lm-eval

WORDS, SENTENCES = "length_constraints:number_words", "length_constraints:number_sentences"
# Answers of each language and what Multi-IF's rules count in them (upstream `ifeval.py`: CJK one word per
# character, sentences ending in 。！？; Hindi sentences ending in the danda ।), against lm-eval's count
# (`\w+` runs, NLTK's English punkt), which sees one unbroken word and one sentence in Chinese.
ZH_62 = (
    "月亮是地球唯一的天然卫星它围绕地球运行大约每二十七天转一圈"
    "月亮本身不发光我们看到的月光其实是太阳光的反射古人常常在中秋节赏月"
)
LANGUAGE_CASES = {
    # language: (answer, langdetect code, (Multi-IF words, sentences), (lm-eval words, sentences))
    "Chinese": (ZH_62, "zh-cn", (62, 1), (1, 1)),
    "Chinese sentences": ("月亮是地球的卫星。它不发光！我们看到的是反射的阳光。", "zh-cn", (23, 3), (3, 1)),
    "Japanese": (
        "月は地球の唯一の衛星です。月は自ら光を出しません！私たちが見る月の光は太陽の光の反射です。",
        "ja",
        (42, 3),
        (3, 1),
    ),
    "Hindi": (
        "चाँद पृथ्वी का उपग्रह है। यह अपनी रोशनी नहीं देता। हम सूरज की रोशनी का प्रतिबिंब देखते हैं।",
        "hi",
        (18, 3),  # words as lm-eval (upstream counts Hindi words the English way too)
        (18, 1),
    ),
    "English": ("The moon is bright. It has no light of its own! We see sunlight.", "en", (14, 3), (14, 3)),
}


@pytest.mark.parametrize("case", LANGUAGE_CASES, ids=list(LANGUAGE_CASES))
def test_language_aware_counts_differ_from_lm_eval_exactly_where_multi_if_does(lm_eval_utils, case) -> None:
    from lm_eval.tasks.ifeval import instructions_util

    from sft_sweeps.evaluation.multi_if_lang import count_sentences, count_words, detect_language

    answer, code, (words, sentences), (lm_words, lm_sentences) = LANGUAGE_CASES[case]
    assert detect_language(answer) == code
    assert (count_words(answer, code), count_sentences(answer, code)) == (words, sentences)
    assert (instructions_util.count_words(answer), instructions_util.count_sentences(answer)) == (
        lm_words,
        lm_sentences,
    )
    # The verdicts: "at least" the Multi-IF count passes under Multi-IF scoring; under lm_eval scoring it
    # passes only where lm-eval counts as many (English; Hindi words).
    for instruction_id, kwargs, theirs in (
        (WORDS, {"num_words": words, "relation": "at least"}, lm_words),
        (SENTENCES, {"num_sentences": sentences, "relation": "at least"}, lm_sentences),
    ):
        assert check_response([instruction_id], [kwargs], "p", answer, "multi_if").strict == [True]
        lm_eval = check_response([instruction_id], [kwargs], "p", answer, "lm_eval").strict
        assert lm_eval == [theirs >= next(v for k, v in kwargs.items() if k != "relation")]
        assert _ours([instruction_id], [kwargs], "p", answer) == _lm_eval_verdict(
            lm_eval_utils, [instruction_id], [kwargs], "p", answer
        )


def test_thai_counts_with_pythainlp_as_multi_if_does(lm_eval_utils) -> None:
    tokenize = pytest.importorskip("pythainlp.tokenize", reason="Thai needs pythainlp (THAI_PACKAGES)")
    from lm_eval.tasks.ifeval import instructions_util

    from sft_sweeps.evaluation.multi_if_lang import count_words, detect_language

    answer = "ดวงจันทร์เป็นดาวบริวารของโลก ดวงจันทร์ไม่มีแสงในตัวเอง เราเห็นแสงที่สะท้อนจากดวงอาทิตย์"
    assert detect_language(answer) == "th"
    assert count_words(answer, "th") == len(tokenize.word_tokenize(answer))
    assert count_words(answer, "th") != instructions_util.count_words(answer)


def test_emoji_and_mixed_scripts_count_as_multi_if_does() -> None:
    from sft_sweeps.evaluation.multi_if_lang import count_words_cjk

    # Upstream's own docstring example: 19.
    assert count_words_cjk("こんにちは、ジェイソンさん、Jason? Nice to meet you☺ ❤") == 19
    # 我 爱 🍎 和 👍🏽 还 有 👨‍👩‍👧 family: one emoji per sequence, punctuation dropped.
    assert count_words_cjk("我爱🍎和👍🏽！还有👨‍👩‍👧 family…") == 9


def test_scoring_is_chosen_per_config_and_defaults_to_multi_if() -> None:
    assert MultiIFConfig().scoring == "multi_if"
    with pytest.raises(ConfigError, match="eval.multi_if.scoring"):
        MultiIFConfig(scoring="ifeval")


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


def test_a_record_without_language_is_one_clear_error(tmp_path) -> None:
    path = _write_record(tmp_path, language=None)
    with pytest.raises(MultiIFDataError) as error:
        read_local(path)
    text = str(error.value)
    assert (
        "\n" not in text and str(path) in text and "record 0" in text and "field 'language': missing" in text
    )


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv"])
def test_an_empty_file_says_so_and_does_not_blame_languages(tmp_path, name) -> None:
    path = tmp_path / name
    path.write_text("" if name.endswith(".jsonl") else "key,language,turn_1_prompt\n")
    settings = Config(
        eval=EvalConfig(benchmarks=["multi_if"], multi_if=MultiIFConfig(source="local", path=str(path)))
    )
    with pytest.raises(BenchmarkUnavailable) as error:
        check_benchmarks(settings)
    text = str(error.value)
    assert "\n" not in text and str(path) in text and "no record" in text and "languages" not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ('["{\\"num_words\\": 5}"]', "punctuation:no_comma takes [] not ['num_words']"),
        ('["{\\"relation\\": \\"more than\\"}"]', "refuses these kwargs"),
    ],
)
def test_kwargs_a_checker_does_not_accept_fail_before_training(tmp_path, kwargs, message) -> None:
    changes = {"turn_1_kwargs": kwargs}
    if "relation" in kwargs:
        changes["turn_1_instruction_id_list"] = '["length_constraints:number_words"]'
        changes.update(turn_2_prompt="", turn_3_prompt="")
    path = _write_record(tmp_path, **changes)
    settings = Config(
        eval=EvalConfig(benchmarks=["multi_if"], multi_if=MultiIFConfig(source="local", path=str(path)))
    )
    with pytest.raises(BenchmarkUnavailable) as error:
        check_benchmarks(settings)
    text = str(error.value).replace(",", "")
    assert str(path) in text and "record 0" in text and "field 'turn_1_kwargs'[0]" in text
    assert message.replace(",", "") in text


def test_thai_items_without_pythainlp_fail_before_training(tmp_path) -> None:
    try:
        import pythainlp  # noqa: F401

        pytest.skip("pythainlp is installed: Thai items can be counted")
    except ImportError:
        pass
    path = _write_record(tmp_path, language="Thai")
    settings = Config(
        eval=EvalConfig(benchmarks=["multi_if"], multi_if=MultiIFConfig(source="local", path=str(path)))
    )
    with pytest.raises(BenchmarkUnavailable, match="pip install pythainlp.*eval.multi_if.scoring=lm_eval"):
        check_benchmarks(settings)
    lm_eval = MultiIFConfig(source="local", path=str(path), scoring="lm_eval")
    check_benchmarks(Config(eval=EvalConfig(benchmarks=["multi_if"], multi_if=lm_eval)))


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


def test_per_turn_and_language_metrics_are_multi_ifs_with_bootstrap_intervals() -> None:
    def record(item_id, turn, language, strict, loose):
        n = len(strict)
        return {
            "id": item_id,
            "turn": turn,
            "language": language,
            "prompt_strict": all(strict),
            "prompt_loose": all(loose),
            "instruction_strict": sum(strict) / n,
            "instruction_loose": sum(loose) / n,
            "follow_strict": strict,
            "follow_loose": loose,
            "prompt_cut": 0,
        }

    records = [
        record("a", 1, "English", [True], [True]),
        record("b", 1, "English", [False, True], [True, True]),
        record("c", 1, "Chinese", [False], [False]),
        record("a", 2, "English", [True, False], [True, True]),
        record("b", 2, "English", [False, True, True], [True, True, True]),
        record("c", 2, "Chinese", [True, True], [True, True]),
    ]
    metrics, _ = aggregate(records)
    # Multi-IF's parse_result: prompt-level over answers, instruction-level over all instructions pooled.
    english_1 = {
        "prompt_strict": 1 / 2,
        "instruction_strict": 2 / 3,
        "prompt_loose": 1.0,
        "instruction_loose": 1.0,
    }
    for rate, value in english_1.items():
        assert metrics[f"turn_1_English_{rate}"] == pytest.approx(value)
    assert metrics["turn_1_English_overall"] == pytest.approx(sum(english_1.values()) / 4)
    assert metrics["turn_1_all_languages_instruction_strict"] == pytest.approx(2 / 4)
    assert metrics["turn_2_all_languages_prompt_strict"] == pytest.approx(1 / 3)
    assert metrics["turn_2_Chinese_overall"] == 1.0
    for key, value in list(metrics.items()):
        if key.startswith("turn_") and not key.endswith(("_ci_low", "_ci_high")):
            assert metrics[f"{key}_ci_low"] <= value <= metrics[f"{key}_ci_high"], key
            assert lookup(f"multi_if/{key}").detail and lookup(f"multi_if/{key}_ci_low").compared is False
    assert metrics["turn_2_Chinese_overall_ci_low"] == metrics["turn_2_Chinese_overall_ci_high"] == 1.0
    assert aggregate(records)[0] == metrics  # the bootstrap is seeded: the same record gives the same CIs


def test_metrics_are_declared_for_the_report() -> None:
    headline = lookup("multi_if/turn_3_all_languages_overall")
    assert headline.benchmark == "multi_if" and headline.headline and headline.item_field == "overall"
    assert headline.turn == 3 and not headline.detail  # in the main table, tested on turn-3 items
    assert not lookup(
        "multi_if/if_prompt_strict"
    ).headline  # pooled over turns: not a number Multi-IF reports
    assert lookup("multi_if/if_all_turns_strict").level == "conversation"
    assert lookup("multi_if/turn_2_Hindi_prompt_loose").detail


def test_the_report_lays_multi_if_out_as_the_paper_turns_as_columns() -> None:
    from sft_sweeps.identity import RunRecord
    from sft_sweeps.report.analysis import analyze
    from sft_sweeps.report.benchmarks import multi_if_md
    from sft_sweeps.report.render import report_md

    def run(strategy: str, shift: float) -> RunRecord:
        metrics = {}
        for language in ("all_languages", "Chinese", "English"):
            for turn in (1, 2, 3):
                value = 0.9 - 0.1 * turn + shift
                metrics[f"multi_if/turn_{turn}_{language}_overall"] = value
                metrics[f"multi_if/turn_{turn}_{language}_overall_ci_low"] = value - 0.05
                metrics[f"multi_if/turn_{turn}_{language}_overall_ci_high"] = value + 0.05
        config = {"model": {"name": "m"}, "dataset": {"name": "d"}, "masking": {"name": strategy}}
        return RunRecord.from_dict(
            {"status": "done", "seed": 0, "config": config, "metrics": metrics}, strategy
        )

    report = analyze([run("all", 0.0), run("last", 0.02)])
    (setting,) = report.settings
    assert setting.eval_metrics == ["multi_if/turn_3_all_languages_overall"]  # the cells have their table
    text = multi_if_md(setting)
    text = re.sub(r" {2,}", " ", text)  # the cells' padding (tabulate) collapsed
    assert "| strategy | Turn 1 | Turn 2 | Turn 3 |" in text
    assert text.index("**All languages**") < text.index("**Chinese**") < text.index("**English**")
    assert "| all | 0.800 [0.750, 0.850] | 0.700 [0.650, 0.750] | 0.600 [0.550, 0.650] |" in text
    assert "### Multi-IF (as the paper reports it)" in report_md(report, "cmd", {})


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
    for turn in (1, 2, 3):  # Multi-IF's cells, the builtin set being English
        for language in ("all_languages", "English"):
            key = f"multi_if/turn_{turn}_{language}_overall"
            assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"]
    assert "multi_if/turn_3_all_languages_overall" in metrics
    assert all(item["counting"] == "multi_if" for item in items)
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
