"""The `heldout` benchmark: a user's own held-out assistant turns generated with the reference history and
with the model's own, scored by the metric the config names (`sft_sweeps.evaluation.heldout`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_sweeps.config import ConfigError, validate
from sft_sweeps.data import load_splits
from sft_sweeps.evaluation.base import EvalContext
from sft_sweeps.evaluation.benchmarks import run_benchmarks
from sft_sweeps.evaluation.heldout import SCORERS, normalize
from sft_sweeps.tokenizer import build_embedded_tokenizer
from tests.conftest import TINY_OVERRIDES, compose_config, tiny_llama
from tests.test_evaluation import overfit_llama

MESSAGES = Path(__file__).parent / "fixtures" / "data" / "messages.jsonl"


def test_scorers() -> None:
    assert normalize("  The Answer:\n 42. ") == "the answer 42"
    assert SCORERS["exact"]("42.", " 42") == 1.0 and SCORERS["exact"]("43", "42") == 0.0
    assert SCORERS["contains"]("It is 42, I think", "42") == 1.0
    assert SCORERS["rouge_l"]("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert 0.0 < SCORERS["rouge_l"]("the cat sat", "the cat sat on the mat") < 1.0
    assert SCORERS["chrf"]("colour", "colour") == pytest.approx(1.0)
    assert 0.0 < SCORERS["chrf"]("colors", "colours") < 1.0


def test_unknown_metric_names_its_key() -> None:
    with pytest.raises(ConfigError, match="eval.heldout.metric must be one of"):
        validate(compose_config(["eval.heldout.metric=bleu"]))


def _settings(tmp_path: Path, *extra: str):
    cfg = compose_config(
        [
            *TINY_OVERRIDES,
            "dataset=local_jsonl",
            f"dataset.path={MESSAGES}",
            "eval.benchmarks=[heldout]",
            "eval.heldout.metric=exact",
            f"cache_dir={tmp_path / 'cache'}",
            *extra,
        ]
    )
    return validate(cfg)


def test_local_data_is_scored_on_its_own_turns_by_depth(tmp_path: Path) -> None:
    """A model that knows the held-out conversations by heart answers every turn right, with either
    history; a random one answers none. Items carry both answers for paired tests."""
    settings = _settings(tmp_path)
    splits = load_splits(settings.dataset)
    tok = build_embedded_tokenizer()
    known = splits.test[: settings.eval.max_conversations]
    for model, expected in ((overfit_llama(tok, known), 1.0), (tiny_llama(tok), 0.0)):
        out = run_benchmarks(EvalContext(model, tok, splits, settings, window=512, progress=False))
        metrics = out["metrics"]
        assert metrics["heldout/heldout_score"] == expected
        assert metrics["heldout/own_heldout_score"] == expected
        scored = splits.test[: settings.eval.max_conversations]
        assert metrics["heldout/num_heldout_conversations"] == len(scored)
        depths = {
            str(d) for r in scored for d in range(1, 1 + sum(m["role"] == "assistant" for m in r["messages"]))
        }
        assert set(out["by_depth"]["heldout/heldout_score"]) == depths
        items = out["eval_items"]["heldout"]
        assert {i["id"] for i in items} == {r["id"] for r in scored}
        assert all({"score", "own_score", "prediction", "own_prediction", "gold"} <= set(i) for i in items)
        json.dumps(items)  # the record stores them


def test_local_datasets_list_it_first() -> None:
    """Your own data is judged on its own turns first (the optimized metric), then NLL and Multi-IF."""
    from sft_sweeps.job import make_job

    job = make_job(compose_config(["dataset=local_jsonl", f"dataset.path={MESSAGES}"]))
    assert list(job.settings.eval.benchmarks) == ["heldout", "nll", "multi_if"]
    assert job.optimized_metric == "heldout/heldout_score"


ROOT = Path(__file__).resolve().parents[1]


def test_readme_quotes_the_shipped_own_chats_report() -> None:
    """The README's numbers for its own-chats command are those of the shipped reports/my_chats."""
    import re

    readme = (ROOT / "README.md").read_text()
    block = r"<!-- my_chats numbers: [^>]*-->\n(.*?)<!-- end of my_chats numbers -->"
    quoted = re.search(block, readme, re.S)
    assert quoted, "README: no my_chats numbers block"
    shipped = "".join((ROOT / "reports" / "my_chats" / f).read_text() for f in ("table.md", "report.md"))
    numbers = re.findall(r"\d+\.\d{3}", quoted.group(1))
    assert len(numbers) >= 10 and [n for n in numbers if n not in shipped] == []
    assert "(it has 310)" in shipped and "it has 310)" in quoted.group(1)


def test_the_own_chats_fixture_is_what_its_generator_writes(tmp_path: Path) -> None:
    from tests.fixtures.data.make_calc_chats import OUT, main

    main(tmp_path / "calc_chats.jsonl")
    assert (tmp_path / "calc_chats.jsonl").read_bytes() == OUT.read_bytes()
