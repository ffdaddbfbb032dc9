"""The masking engine on the embedded ChatML tokenizer: strategies token by token, datasets, cache."""

from __future__ import annotations

import pytest

from sft_sweeps.config import ConfigError, MaskingConfig
from sft_sweeps.masking import (
    ASSISTANT,
    CONTENT,
    SCAFFOLD,
    ConversationError,
    MessageWeightError,
    annotate,
    build_dataset,
    loss_weights,
)
from sft_sweeps.tokenizer import build_embedded_tokenizer

CONV = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "u1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "u2"},
    {"role": "assistant", "content": "a2"},
]


@pytest.fixture(scope="module")
def tok():
    return build_embedded_tokenizer()


def weighted_text(tok, ids, weights):
    """The supervised text, grouped into runs of equal weight: [(text, weight), ...]."""
    runs: list[tuple[str, float]] = []
    for token_id, w in zip(ids, weights, strict=True):
        piece = tok.decode([token_id])
        if runs and runs[-1][1] == w:
            runs[-1] = (runs[-1][0] + piece, w)
        else:
            runs.append((piece, w))
    return runs


def test_all_supervises_every_assistant_message_with_its_end_of_turn(tok):
    ids, w = loss_weights(tok, CONV, "all")
    assert ids == tok.apply_chat_template(CONV, tokenize=True, return_dict=False)
    assert weighted_text(tok, ids, w) == [
        ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\n", 0.0),
        ("a1<|im_end|>", 1.0),
        ("\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n", 0.0),
        ("a2<|im_end|>", 1.0),
        ("\n", 0.0),
    ]


def test_last_supervises_only_the_last_assistant_message(tok):
    ids, w = loss_weights(tok, CONV, "last")
    runs = weighted_text(tok, ids, w)
    assert [text for text, weight in runs if weight > 0] == ["a2<|im_end|>"]


def test_full_supervises_every_token(tok):
    ids, w = loss_weights(tok, CONV, "full")
    assert w == [1.0] * len(ids)


def test_weighted_prompt_weight_and_turn_decay(tok):
    ids, w = loss_weights(tok, CONV, "weighted", prompt_weight=0.1, turn_schedule="decay", turn_decay=0.5)
    runs = weighted_text(tok, ids, w)
    assert [(t, round(x, 6)) for t, x in runs] == [
        ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\n", 0.1),
        ("a1<|im_end|>", 0.5),  # one turn before the last
        ("\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n", 0.1),
        ("a2<|im_end|>", 1.0),
        ("\n", 0.1),
    ]


@pytest.mark.parametrize("strategy", ["full", "all", "last", "weighted"])
def test_message_weight_fields_apply_to_every_strategy(tok, strategy):
    conv = [dict(m) for m in CONV]
    conv[4]["train"] = False  # Axolotl: never train on this message
    conv[1]["train"] = 0.5
    params = {"prompt_weight": 0.2} if strategy == "weighted" else {}
    ids, w = loss_weights(tok, conv, strategy, message_weight_field="train", **params)
    message = annotate(tok, conv).tokens.message
    by_message = {m: sorted({round(w[i], 6) for i in range(len(ids)) if message[i] == m}) for m in range(5)}
    assert by_message[4] == [0.0]  # never supervised, under any strategy
    expected_user = {"full": [0.5], "weighted": [0.1], "all": [0.0], "last": [0.0]}[strategy]
    assert by_message[1] == expected_user
    # `last` means the last assistant message, which this conversation excludes: nothing to learn.
    assert (sum(w) == 0) == (strategy == "last")


def test_labels_know_message_role_turn_and_kind(tok):
    conv = annotate(tok, CONV)
    kinds = {(int(m), int(k)) for m, k in zip(conv.tokens.message, conv.tokens.kind, strict=True)}
    # Every message has scaffolding; system and user content is CONTENT; assistant text is ASSISTANT.
    assert kinds == {
        (0, SCAFFOLD),
        (0, CONTENT),
        (1, SCAFFOLD),
        (1, CONTENT),
        (2, SCAFFOLD),
        (2, ASSISTANT),
        (3, SCAFFOLD),
        (3, CONTENT),
        (4, SCAFFOLD),
        (4, ASSISTANT),
    }
    assert conv.roles == [m["role"] for m in CONV]


@pytest.mark.parametrize(
    "messages, error, field",
    [
        ([], ConversationError, "messages"),
        ([{"role": "robot", "content": "x"}], ConversationError, "role"),
        ([{"role": "user", "content": 3}], ConversationError, "content"),
        ([{"role": "user", "content": "x", "weight": -1}], MessageWeightError, "weight"),
        ([{"role": "user", "content": "x", "weight": "high"}], MessageWeightError, "weight"),
    ],
)
def test_bad_input_names_the_field(tok, messages, error, field):
    with pytest.raises(error, match=f"'{field}'"):
        loss_weights(tok, messages, "all")


def test_bad_parameters_are_refused(tok):
    with pytest.raises(TypeError, match="expand_turns"):
        loss_weights(tok, CONV, "all", expand_turns=True)
    with pytest.raises(ConfigError, match="masking.prompt_weight"):
        loss_weights(tok, CONV, "weighted", prompt_weight=2.0)
    with pytest.raises(ValueError):
        loss_weights(tok, CONV, "most")


def records(n=6):
    out = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
        if i % 2:
            messages += [{"role": "user", "content": "more?"}, {"role": "assistant", "content": "no" * i}]
        out.append({"id": f"c{i}", "messages": messages, "extra": "ignored"})
    return out


def test_build_dataset_matches_loss_weights_and_counts(tok, tmp_path):
    data = records()
    masking = MaskingConfig(name="weighted", prompt_weight=0.25)
    ds, stats = build_dataset(tok, data, masking, max_length=4096, cache_dir=str(tmp_path))
    assert ds.column_names == ["id", "input_ids", "weights"] and ds["id"] == [r["id"] for r in data]
    for row, record in zip(ds, data, strict=True):
        ids, w = loss_weights(tok, record["messages"], "weighted", prompt_weight=0.25)
        assert row["input_ids"] == ids and row["weights"] == pytest.approx(w)
    assert (stats.conversations, stats.samples, stats.kept, stats.truncated, stats.dropped_zero_weight) == (
        6,
        6,
        6,
        0,
        0,
    )
    assert stats.tokens == sum(len(x) for x in ds["input_ids"])
    assert stats.supervised_tokens == sum(len(x) for x in ds["input_ids"])  # prompt weight > 0: every token
    assert stats.weight_sum == pytest.approx(sum(sum(x) for x in ds["weights"]), rel=1e-6)
    assert not stats.cache_hit and stats.used_generation_markers


def test_cache_is_shared_by_strategies_and_invalidated_by_content(tok, tmp_path):
    data = records()
    _, first = build_dataset(tok, data, MaskingConfig(name="all"), 4096, cache_dir=str(tmp_path))
    ds_last, second = build_dataset(tok, data, MaskingConfig(name="last"), 64, cache_dir=str(tmp_path))
    assert not first.cache_hit and second.cache_hit
    uncached, _ = build_dataset(tok, data, MaskingConfig(name="last"), 64)
    assert ds_last["input_ids"] == uncached["input_ids"] and ds_last["weights"] == uncached["weights"]
    changed = [dict(r) for r in data]
    changed[0] = {**data[0], "messages": [*data[0]["messages"][:-1], {"role": "assistant", "content": "new"}]}
    _, third = build_dataset(tok, changed, MaskingConfig(name="all"), 4096, cache_dir=str(tmp_path))
    assert not third.cache_hit


def test_truncation_keeps_the_configured_end_and_drops_unsupervised_samples(tok):
    data = [
        {
            "id": "x",
            "messages": [{"role": "user", "content": "q" * 40}, {"role": "assistant", "content": "ok"}],
        }
    ]
    ids, w = loss_weights(tok, data[0]["messages"], "all")
    ds, stats = build_dataset(tok, data, MaskingConfig(name="all"), max_length=20, truncation_mode="keep_end")
    assert ds[0]["input_ids"] == ids[-20:] and ds[0]["weights"] == w[-20:]
    assert (stats.truncated, stats.truncated_tokens, stats.kept, stats.tokens) == (1, len(ids) - 20, 1, 20)
    # keep_start cuts the answer off: nothing left to learn, so the sample never reaches training.
    ds, stats = build_dataset(
        tok, data, MaskingConfig(name="all"), max_length=20, truncation_mode="keep_start"
    )
    assert len(ds) == 0 and (stats.truncated, stats.dropped_zero_weight, stats.kept) == (1, 1, 0)


def test_conversation_without_assistant_text_is_dropped_not_trained(tok):
    data = [{"id": "q", "messages": [{"role": "user", "content": "hello"}]}, *records(2)]
    ds, stats = build_dataset(tok, data, MaskingConfig(name="all"), 4096)
    assert ds["id"] == ["c0", "c1"] and stats.dropped_zero_weight == 1
    ds, stats = build_dataset(tok, data, MaskingConfig(name="full"), 4096)
    assert len(ds) == 3 and stats.dropped_zero_weight == 0


def test_bad_record_is_named(tok):
    data = [*records(2), {"id": "broken", "messages": [{"role": "user"}]}]
    with pytest.raises(
        ConversationError, match=r"conversation 'broken' \(record 2\), message 0, field 'content'"
    ):
        build_dataset(tok, data, MaskingConfig(), 4096)


def test_expand_turns_makes_one_sample_per_supervised_turn(tok):
    data = [{"id": "c", "messages": CONV + [{"role": "user", "content": "bye"}]}]
    masking = MaskingConfig(
        name="weighted", prompt_weight=0.1, turn_schedule="decay", turn_decay=0.5, expand_turns=True
    )
    ds, stats = build_dataset(tok, data, masking, 4096)
    assert ds["id"] == ["c@2", "c@4"]
    first, second = (
        weighted_text(tok, row["input_ids"], [round(x, 6) for x in row["weights"]]) for row in ds
    )
    # Each sample is the history up to its turn; only that turn is supervised, weighted as in the whole
    # conversation (a1 is one turn before the last); the rest is prompt at prompt_weight.
    assert first == [
        ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\n", 0.1),
        ("a1<|im_end|>", 0.5),
        ("\n", 0.1),
    ]
    assert ("a1<|im_end|>", 0.0) in second and second[-2:] == [("a2<|im_end|>", 1.0), ("\n", 0.1)]
    whole, _ = loss_weights(tok, data[0]["messages"], "all")
    assert stats.samples == stats.kept == 2 and stats.expanded_samples_added == 1
    assert stats.expanded_tokens_added == sum(len(x) for x in ds["input_ids"]) - len(whole)


@pytest.mark.parametrize("strategy, samples", [("all", 2), ("last", 1), ("full", 2)])
def test_expand_turns_composes_with_every_strategy(tok, strategy, samples):
    data = [{"id": "c", "messages": CONV}]
    ds, stats = build_dataset(tok, data, MaskingConfig(name=strategy, expand_turns=True), 4096)
    assert stats.samples == samples and stats.expanded_samples_added == samples - 1
    last_row = ds[len(ds) - 1]
    expected = loss_weights(tok, CONV, strategy)
    assert last_row["input_ids"] == expected[0]
    # Earlier assistant turns are context in every expanded sample, whatever the strategy.
    labels = annotate(tok, CONV).tokens
    assert all(
        w == 0
        for w, m, k in zip(last_row["weights"], labels.message, labels.kind, strict=True)
        if m == 2 and k == ASSISTANT
    )
