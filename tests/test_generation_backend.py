"""`eval.generation_backend`: hf by default, vllm through the one dispatch point, a clear error without it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sft_sweeps.config import ConfigError, EvalConfig, validate
from sft_sweeps.evaluation import generation
from sft_sweeps.evaluation.benchmarks import check_benchmarks
from sft_sweeps.evaluation.generation import (
    Generation,
    GenerationBackend,
    generate,
    generate_turns,
    prompt_ids,
)
from sft_sweeps.tokenizer import build_embedded_tokenizer
from tests.conftest import TINY_OVERRIDES, compose_config, tiny_llama

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def tok():
    return build_embedded_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(tok, seed=0, hidden_size=32, num_hidden_layers=1, intermediate_size=64)


@pytest.fixture(scope="module")
def prompts(tok):
    histories = [[{"role": "user", "content": text}] for text in ("a=1. what is a?", "hi", "b=2, c=3; sum?")]
    return prompt_ids(tok, histories)


def test_unknown_backend_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"eval\.generation_backend must be one of \('hf', 'vllm'\)"):
        EvalConfig(generation_backend="sglang")


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_vllm_not_installed_fails_before_training_naming_the_key() -> None:
    settings = validate(compose_config(TINY_OVERRIDES + ["logger=none", "eval.generation_backend=vllm"]))
    with pytest.raises(ConfigError, match=r"eval\.generation_backend=vllm.*pip install vllm"):
        check_benchmarks(settings)
    assert "vllm" not in __import__("sys").modules  # found missing, never imported


def test_hf_backend_is_batched_generate(tok, model, prompts) -> None:
    expected = generate(model, tok, prompts, batch_size=2, max_new_tokens=8, window=16)
    assert generate_turns(model, tok, prompts, 2, 8, window=16, backend=GenerationBackend("hf")) == expected
    assert generate_turns(model, tok, prompts, 2, 8, window=16) == expected


def test_vllm_backend_gets_the_saved_model_and_the_same_inputs(tok, model, prompts, monkeypatch) -> None:
    calls = []

    def fake_vllm(model_path, tokenizer, prompt_ids_, max_new_tokens, window, stops=None):
        calls.append((model_path, prompt_ids_, max_new_tokens, window, stops))
        return [Generation(f"answer {i}", True, 2) for i in range(len(prompt_ids_))]

    monkeypatch.setattr(generation, "generate_vllm", fake_vllm)
    done = []
    backend = GenerationBackend("vllm", "/runs/x/model")
    out = generate_turns(model, tok, prompts, 2, 8, done.append, 16, backend)

    assert [g.text for g in out] == ["answer 0", "answer 1", "answer 2"]
    assert calls == [("/runs/x/model", prompts, 8, 16, [tok.eos_token_id])]
    assert done == [3]  # progress bars advance as with hf


def test_vllm_backend_without_a_saved_model_names_train_save_model(tok, model, prompts) -> None:
    with pytest.raises(ConfigError, match=r"train\.save_model=true"):
        generate_turns(model, tok, prompts, 2, 8, backend=GenerationBackend("vllm", None))


@pytest.mark.gpu
def test_vllm_matches_hf_greedy_on_a_saved_tiny_model(tok, model, prompts, tmp_path) -> None:
    """Untested so far (no GPU, no vllm where this was written): the same greedy answers from both engines."""
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA device")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    hf = generate(model, tok, prompts, batch_size=3, max_new_tokens=16, window=64)
    served = generation.generate_vllm(str(tmp_path), tok, prompts, 16, 64, stops=[tok.eos_token_id])
    assert [g.prompt_cut for g in served] == [g.prompt_cut for g in hf]
    # A random fp32 model has near-ties that a GPU kernel may break the other way: most answers agree.
    assert sum(a.text == b.text for a, b in zip(hf, served, strict=True)) >= len(hf) - 1


def test_benchmarks_generate_through_the_dispatch_point(tok, model, monkeypatch) -> None:
    from sft_sweeps.evaluation.benchmarks import EvalContext, run_benchmarks

    overrides = ["eval.benchmarks=[multi_if]", "eval.multi_if.max_items=2", "eval.generation_backend=vllm"]
    settings = validate(compose_config(TINY_OVERRIDES + ["logger=none", *overrides]))
    served = []

    def fake_vllm(model_path, tokenizer, prompt_ids_, max_new_tokens, window, stops=None):
        served.append(model_path)
        return [Generation("Sure.", True, 3) for _ in prompt_ids_]

    monkeypatch.setattr(generation, "generate_vllm", fake_vllm)
    context = EvalContext(model, tok, None, settings, window=128, progress=False, model_path="/runs/x/model")
    out = run_benchmarks(context)

    assert served and set(served) == {"/runs/x/model"}  # one call per turn depth
    assert {item["response"] for item in out["eval_items"]["multi_if"]} == {"Sure."}
