"""`python -m sft_sweeps.inspect`: the same overrides as training; rich or JSON per-token weights."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from sft_sweeps import inspect
from sft_sweeps.masking import loss_weights
from sft_sweeps.masking.strategies import strategy_names
from sft_sweeps.tokenizer import build_embedded_tokenizer
from tests.conftest import compose_config

SMALL = ["dataset.num_train=6", "dataset.num_validation=2", "dataset.num_test=2", "inspect.num_samples=2"]


@pytest.fixture
def data():
    from sft_sweeps.config import DatasetConfig
    from sft_sweeps.data import load_splits

    # The tasks of the default dataset (conf/dataset/synthetic.yaml), which `inspect` composes.
    tasks = list(compose_config().dataset.tasks)
    return load_splits(DatasetConfig(tasks=tasks, num_train=6, num_validation=2, num_test=2)).train


def test_json_gives_per_token_fields_that_match_loss_weights(capsys, data):
    samples = inspect.main(["masking=weighted", "masking.prompt_weight=0.2", "inspect.format=json", *SMALL])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(samples)) and len(printed) == 2
    tok = build_embedded_tokenizer()
    for sample, record in zip(printed, data, strict=False):
        n = len(sample["ids"])
        assert all(
            len(sample[key]) == n
            for key in ("text", "tokens", "messages", "roles", "turns", "kinds", "weights")
        )
        ids, weights = loss_weights(tok, record["messages"], "weighted", prompt_weight=0.2)
        assert sample["ids"] == ids and sample["weights"] == pytest.approx(weights)
        assert "".join(sample["text"]) == tok.apply_chat_template(record["messages"], tokenize=False)
        assert set(sample["supervised_tokens"]) == set(strategy_names())
        # Turns count assistant messages; only assistant tokens have one.
        assert {r for r, t in zip(sample["roles"], sample["turns"], strict=True) if t is not None} == {
            "assistant"
        }


def test_rich_output_colours_tokens_and_counts_per_strategy(data):
    from sft_sweeps.config import register_configs  # noqa: F401  (compose below registers too)

    console = Console(record=True, width=120, force_terminal=True)
    cfg = _compose(["masking=last", "masking.expand_turns=true", *SMALL])
    samples = inspect.run(cfg, console)
    out = console.export_text()
    assert all(f"{s['id']} (last)" in out for s in samples)
    assert "supervised tokens by strategy: full=" in out
    # expand_turns with `last`: one sample per conversation, for its last assistant turn.
    assert len(samples) == 2 and all("@" in s["id"] for s in samples)


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sft_sweeps.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(inspect.CONF_DIR)):
        return compose("config", overrides=overrides)


def test_without_a_terminal_the_weights_are_written_out(data):
    """Piped or logged, colour is gone: each run of supervised tokens is bracketed with its weight, and the
    counts use the training log's definition (tokens with weight > 0)."""
    console = Console(record=True, width=120, color_system=None)
    cfg = _compose(["masking=weighted", *SMALL])
    samples = inspect.run(cfg, console)
    out = console.export_text()
    assert "⟦w=1: " in out and "⟦w=0.1: " in out
    for sample in samples:
        assert inspect.plain_weights(sample) in out
        assert sample["supervised_tokens"]["weighted"] == sum(w > 0 for w in sample["weights"])
