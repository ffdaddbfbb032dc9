"""Causal LMs: the embedded random-init Llama, or any Hugging Face model by hub id or local path."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sft_sweeps.config import ModelConfig
from sft_sweeps.pretrained import LOAD_ERRORS, MODEL_FILES, check_local, load_error

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Build the model of `cfg`: random init from `cfg.arch` when `cfg.pretrained` is null, else load it.

    Seed the RNGs before calling: the random init depends on them.

    Raises:
        ConfigError: `cfg.pretrained` names no loadable model (the message names `model.pretrained`).
    """
    if cfg.pretrained is None:
        arch = cfg.arch
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=arch.hidden_size,
            num_hidden_layers=arch.num_hidden_layers,
            num_attention_heads=arch.num_attention_heads,
            num_key_value_heads=arch.num_key_value_heads,
            intermediate_size=arch.intermediate_size,
            max_position_embeddings=arch.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            tie_word_embeddings=True,  # halves the parameters of a tiny model whose vocabulary dominates
        )
        model = LlamaForCausalLM(config)
        if cfg.dtype not in ("float32", "auto"):
            model = model.to(_DTYPES[cfg.dtype])
    else:
        kwargs = {"dtype": _DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
        if cfg.attn_implementation is not None:
            kwargs["attn_implementation"] = cfg.attn_implementation
        model = load_pretrained_model(cfg.pretrained, kwargs, "model.pretrained")
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def load_pretrained_model(name_or_path: str, kwargs: dict[str, Any], key: str) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)`, with errors naming `key` and the path.

    Raises:
        ConfigError: no model at `name_or_path` (not a model directory, or not found on the hub).
    """
    check_local(name_or_path, key, "model", MODEL_FILES)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except LOAD_ERRORS as e:
        raise load_error(name_or_path, key, "model", e) from e


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
