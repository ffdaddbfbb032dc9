"""Span extraction against TRL: its training chat templates, applied to offline tokenizers with their tokens.

`all` must supervise exactly the tokens of `return_assistant_tokens_mask` on TRL's `*_training.jinja`
templates, and prefix rendering (no markers) must find the same spans on the original templates, except
where the training template puts part of the header inside `{% generation %}` (documented per family).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trl
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sft_sweeps.masking import ASSISTANT, TOOL_CALL, TemplateError, annotate, loss_weights

TEMPLATES = Path(trl.__file__).parent / "chat_templates"

# Special tokens each family's template needs beyond the ones written in `<|...|>` form.
FAMILIES = {
    "qwen2_5": dict(eos="<|im_end|>", extra=["<|endoftext|>"]),
    "llama3": dict(bos="<|begin_of_text|>", eos="<|eot_id|>"),
    "phi3": dict(eos="<|endoftext|>"),
    "gemma": dict(bos="<bos>", eos="<eos>", extra=["<start_of_turn>", "<end_of_turn>"]),
    "gemma3": dict(bos="<bos>", eos="<eos>", extra=["<start_of_turn>", "<end_of_turn>"]),
    "cohere": dict(bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>"),
    "deepseekv3": dict(bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>"),
    "qwen3": dict(eos="<|im_end|>"),
    "qwen3_instruct_2507": dict(eos="<|im_end|>"),
    "glm4moe": dict(eos="<|endoftext|>", extra=["[gMASK]", "<sop>"]),
    "lfm2": dict(bos="<|startoftext|>", eos="<|im_end|>"),
}

CONVERSATIONS = {
    "template_text_unicode": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say <|im_start|>assistant: and <end_of_turn> please"},
        {"role": "assistant", "content": "Hello 😀 héllo 你好\n<|im_end|> assistant:"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    "alternating": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ],
    "empty_system": [
        {"role": "system", "content": ""},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
    ],
    "ends_on_user": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
    "same_role_twice": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "a2"},
        {"role": "assistant", "content": "b"},
        {"role": "assistant", "content": "b2"},
    ],
    "tool_messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "calling"},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "warm"},
        {"role": "assistant", "content": "It is sunny."},
    ],
    "whitespace": [
        {"role": "user", "content": "  padded  "},
        {"role": "assistant", "content": " spaced \n"},
    ],
}


def offline_tokenizer(
    template: str, bos: str | None = None, eos: str | None = None, extra=(), merges: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with the template's special tokens, and the template.

    Without `merges`, one token per byte, like the embedded tokenizer. With them, a small BPE trained here on
    the test conversations, so that tokens merge across the text the template joins (`\n\n`, ` hi`).
    """
    specials = set(re.findall(r"<[|｜][^<>]*?[|｜]>", template)) | {t for t in (bos, eos) if t} | set(extra)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if merges:
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        corpus = [m["content"] for c in CONVERSATIONS.values() for m in c] + [
            "assistant\n\nHello",
            "user\n\n  hi",
        ]
        raw.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=500, initial_alphabet=alphabet))
    else:
        raw = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(alphabet)}, merges=[]))
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sorted(specials)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=bos, eos_token=eos, pad_token=eos)
    tok.chat_template = template
    return tok


def family_tokenizer(
    family: str, variant: str = "_training", merges: bool = False
) -> PreTrainedTokenizerFast:
    return offline_tokenizer(
        (TEMPLATES / f"{family}{variant}.jinja").read_text(), **FAMILIES[family], merges=merges
    )


def trl_mask(tok, messages):
    """TRL's reference: what SFTTrainer(assistant_only_loss=True) trains on. None if the template refuses."""
    try:
        out = tok.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
    except Exception:  # e.g. Gemma: "System role not supported"
        return None
    return out["input_ids"], out["assistant_masks"]


@pytest.mark.parametrize("merges", [False, True], ids=["bytes", "bpe"])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_all_equals_trl_assistant_mask(family, conversation, merges):
    tok = family_tokenizer(family, merges=merges)
    messages = CONVERSATIONS[conversation]
    reference = trl_mask(tok, messages)
    if reference is None:
        with pytest.raises(TemplateError, match=f"TRL chat template '{family}_training'"):
            loss_weights(tok, messages, "all")
        return
    ids, weights = loss_weights(tok, messages, "all")
    assert ids == reference[0]
    assert [int(w > 0) for w in weights] == reference[1]


# Tokens that TRL's training template puts inside `{% generation %}` although they belong to the header the
# generation prompt writes (so prefix rendering, which follows the generation prompt, leaves them out).
HEADER_IN_GENERATION = {"qwen2_5": {"\n"}, "deepseekv3": {"<｜Assistant｜>", "<｜tool▁outputs▁end｜>"}}


@pytest.mark.parametrize("merges", [False, True], ids=["bytes", "bpe"])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize(
    "family", ["qwen2_5", "llama3", "phi3", "gemma", "gemma3", "cohere", "deepseekv3", "qwen3_instruct_2507"]
)
def test_prefix_rendering_finds_the_marked_spans_without_markers(family, conversation, merges):
    original, training = family_tokenizer(family, "", merges), family_tokenizer(family, merges=merges)
    messages = CONVERSATIONS[conversation]
    reference = trl_mask(training, messages)
    if reference is None or original.apply_chat_template(
        messages, tokenize=False
    ) != training.apply_chat_template(messages, tokenize=False):
        pytest.skip("the template refuses this conversation")
    labels = annotate(original, messages).tokens
    assert labels.input_ids.tolist() == reference[0]
    ours = [int(k == ASSISTANT) for k in labels.kind]
    differ = {original.decode([reference[0][i]]) for i in range(len(ours)) if ours[i] != reference[1][i]}
    assert differ <= HEADER_IN_GENERATION.get(family, set())
    assert all(reference[1][i] for i in range(len(ours)) if ours[i])  # never more than TRL


def test_markers_and_prefix_agree_on_the_embedded_template_but_the_trailing_newline():
    from sft_sweeps.tokenizer import build_embedded_tokenizer

    tok = build_embedded_tokenizer()
    for messages in CONVERSATIONS.values():
        marked, prefixed = annotate(tok, messages), annotate(tok, messages, use_markers=False)
        differ = [
            i for i in range(len(marked.tokens.kind)) if marked.tokens.kind[i] != prefixed.tokens.kind[i]
        ]
        assert {tok.decode([int(marked.tokens.input_ids[i])]) for i in differ} <= {"\n"}


def test_end_of_turn_tokens_are_supervised_in_every_family():
    ends = {
        "qwen2_5": "<|im_end|>",
        "llama3": "<|eot_id|>",
        "phi3": "<|end|>",
        "gemma": "<end_of_turn>",
        "cohere": "<|END_OF_TURN_TOKEN|>",
        "deepseekv3": "<｜end▁of▁sentence｜>",
    }
    messages = CONVERSATIONS["alternating"]
    for family, end in ends.items():
        for variant in ("", "_training"):
            tok = family_tokenizer(family, variant)
            ids, weights = loss_weights(tok, messages, "all")
            end_id = tok.convert_tokens_to_ids(end)
            supervised = [i for i, w in zip(ids, weights, strict=True) if w > 0]
            assert supervised.count(end_id) == 2, family  # one per assistant turn, none elsewhere


def test_template_that_rewrites_history_is_refused_with_template_and_message():
    tok = family_tokenizer("qwen3", "")  # drops the reasoning of turns before the last user message
    with pytest.raises(
        TemplateError, match=r"TRL chat template 'qwen3'.*not prefix-stable.*message 1 \(assistant\)"
    ):
        loss_weights(tok, CONVERSATIONS["alternating"], "all")
    # TRL's training variant keeps every turn's reasoning, so it is prefix-stable.
    loss_weights(family_tokenizer("qwen3"), CONVERSATIONS["alternating"], "all")


def test_end_of_sequence_only_after_the_final_turn_is_the_last_turns():
    tok = family_tokenizer("phi3", "")  # Phi-3 appends eos after the final message only
    for messages, supervised in ((CONVERSATIONS["alternating"], 1.0), (CONVERSATIONS["ends_on_user"], 0.0)):
        ids, weights = loss_weights(tok, messages, "all")
        assert ids[-1] == tok.eos_token_id and weights[-1] == supervised


def test_generation_prompt_that_differs_from_history_is_handled():
    tok = family_tokenizer(
        "deepseekv3", ""
    )  # generation prompt `<｜Assistant｜><think>\n`, history `<｜Assistant｜>`
    ids, weights = loss_weights(tok, CONVERSATIONS["alternating"], "all")
    supervised = tok.decode([i for i, w in zip(ids, weights, strict=True) if w > 0])
    assert supervised == "b<｜end▁of▁sentence｜>d<｜end▁of▁sentence｜>"


def test_generation_prompt_unrelated_to_history_is_refused():
    template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|bot|>' }}{% endif %}"
    )
    tok = offline_tokenizer(template, eos="<|end|>", extra=["<|bot|>", "<|assistant|>", "<|user|>"])
    with pytest.raises(TemplateError, match=r"generation prompt '<\|bot\|>'.*message 1 \(assistant\)"):
        loss_weights(tok, CONVERSATIONS["alternating"], "all")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shape_cache_gives_what_prefix_rendering_of_the_conversation_gives(family):
    from sft_sweeps.masking import Annotator
    from sft_sweeps.masking.render import Renderer
    from sft_sweeps.masking.spans import compute_layouts

    tok = family_tokenizer(family)
    annotator = Annotator(tok)
    for name, messages in CONVERSATIONS.items():
        # Same shape, other contents: the second is served from the first's prefix renders.
        for variant in (
            messages,
            [dict(m, content=m["content"] + f" more {i}") for i, m in enumerate(messages)],
        ):
            try:
                cached = annotator.layouts(variant, expand=True)
            except TemplateError:
                continue
            prepared, _ = Renderer.prepare(variant)
            direct = compute_layouts(Renderer(tok), prepared, annotator.specials, expand=True)
            assert [layout for layout, _, _ in cached] == direct, (family, name)
    cache = annotator.cache(False)
    assert cache.hits > 0


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def _call(city: str, call_id: str | None = None) -> dict:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
    return call | ({"id": call_id} if call_id else {})


# Parallel calls after text, then a round whose call message has no text, as the data readers produce them.
TOOL_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo and Rome?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [_call("Oslo", "c1"), _call("Rome", "c2")],
    },
    {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "RESULT 5C"},
    {"role": "tool", "tool_call_id": "c2", "name": "get_weather", "content": "RESULT 20C"},
    {"role": "assistant", "content": "Oslo 5C, Rome 20C."},
    {"role": "user", "content": "And Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [_call("Paris")]},
    {"role": "tool", "content": "RESULT 12C"},
    {"role": "assistant", "content": "12C."},
]


def _supervised_by_role(tok, messages, strategy: str) -> dict[str, str]:
    conversation = annotate(tok, messages, TOOLS)
    _, weights = loss_weights(tok, messages, strategy, tools=TOOLS)
    out: dict[str, list[int]] = {}
    for i, (m, k) in enumerate(zip(conversation.tokens.message, conversation.tokens.kind, strict=True)):
        if weights[i] > 0:
            key = "tool_call" if k == TOOL_CALL else messages[m]["role"]
            out.setdefault(key, []).append(int(conversation.tokens.input_ids[i]))
    return {key: tok.decode(ids) for key, ids in out.items()}


@pytest.mark.parametrize("merges", [False, True], ids=["bytes", "bpe"])
@pytest.mark.parametrize("family", ["qwen2_5", "qwen3", "qwen3_instruct_2507", "glm4moe", "deepseekv3"])
def test_tool_conversation_masks_equal_trl_assistant_masks(family, merges):
    """`all` on a tool conversation is TRL's `assistant_only_loss`: tool calls in, tool results out."""
    tok = family_tokenizer(family, merges=merges)
    reference = tok.apply_chat_template(
        TOOL_CONVERSATION, tools=TOOLS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, weights = loss_weights(tok, TOOL_CONVERSATION, "all", tools=TOOLS)
    assert ids == reference["input_ids"]
    assert [int(w > 0) for w in weights] == reference["assistant_masks"]
    supervised = _supervised_by_role(tok, TOOL_CONVERSATION, "all")
    assert set(supervised) == {"assistant", "tool_call"}  # no tool result, no prompt
    for city in ("Oslo", "Rome", "Paris"):
        assert city in supervised["tool_call"]
    assert "RESULT" not in supervised["tool_call"] + supervised["assistant"]  # results never


def test_llama3_1_tool_calls_are_supervised_and_ipython_results_are_not():
    """Llama 3.1 has no training template in TRL: prefix rendering of the original finds the same split
    (its template puts the tools into the first user message and renders one call per message)."""
    tok = offline_tokenizer(
        (TEMPLATES / "llama3_1.jinja").read_text(), bos="<|begin_of_text|>", eos="<|eot_id|>"
    )
    messages = [m for m in TOOL_CONVERSATION if m.get("tool_call_id") != "c2"]
    messages[2] = {"role": "assistant", "content": "", "tool_calls": [_call("Oslo", "c1")]}
    ids, weights = loss_weights(tok, messages, "all", tools=TOOLS)
    supervised = tok.decode([i for i, w in zip(ids, weights, strict=True) if w > 0])
    assert supervised == (
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}<|eot_id|>Oslo 5C, Rome 20C.<|eot_id|>'
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>12C.<|eot_id|>'
    )
    assert set(_supervised_by_role(tok, messages, "last_round")) == {"assistant", "tool_call"}


def test_template_that_drops_tool_calls_is_refused_not_trained_without_them():
    tok = family_tokenizer("lfm2")  # LFM2 expects calls written in the content
    with pytest.raises(TemplateError, match=r"renders nothing for the message's tool_calls.*message 2"):
        loss_weights(tok, TOOL_CONVERSATION, "all", tools=TOOLS)
