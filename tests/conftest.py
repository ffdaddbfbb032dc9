"""Shared fixtures: configs composed the way `python -m sft_sweeps` composes them, shrunk for tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from sft_sweeps.config import register_configs

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The test models are tiny: one thread beats two (thread overhead dominates), also in CLI subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# Shrinks the embedded default to seconds on CPU: tiny model, few conversations, few steps.
TINY_OVERRIDES = [
    "model.arch.hidden_size=32",
    "model.arch.num_hidden_layers=1",
    "model.arch.num_attention_heads=2",
    "model.arch.num_key_value_heads=2",
    "model.arch.intermediate_size=64",
    "dataset.num_train=64",
    "dataset.num_validation=8",
    "dataset.num_test=8",
    "train.max_steps=4",
    "train.per_device_train_batch_size=8",
    "train.logging_steps=2",
    "eval.max_conversations=4",
    "eval.max_new_tokens=16",
]


def compose_config(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """Compose `conf/config.yaml` with overrides, as the CLI does (outside a Hydra run)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("config", overrides=overrides or [], return_hydra_config=return_hydra_config)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Iterator[DictConfig]:
    """The embedded default shrunk to a few seconds, writing under tmp_path."""
    cfg = compose_config(TINY_OVERRIDES + ["logger=none"])
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
    yield cfg
    GlobalHydra.instance().clear()


def tiny_llama(
    tok, seed: int = 0, hidden_size: int = 64, num_hidden_layers: int = 2, intermediate_size: int = 128
):
    """A real random-init Llama for the embedded tokenizer, small enough for a unit test, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=intermediate_size,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()
