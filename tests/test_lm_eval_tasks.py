"""The suite as lm-eval tasks: indexed, same docs and prompts as `evaluate`, held-out data, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sft_sweeps.config import EvalConfig
from sft_sweeps.evaluation import evaluate, prompt_ids, run_lm_eval
from sft_sweeps.lm_eval_tasks import DATA_DIR, TASKS_DIR
from sft_sweeps.lm_eval_tasks.build_data import build
from sft_sweeps.tasks import TEXT_TASKS, make_splits
from sft_sweeps.tokenizer import build_embedded_tokenizer
from tests.conftest import compose_config
from tests.test_evaluation import one_thread, overfit_llama, tiny_llama  # noqa: F401  (one_thread: autouse fixture)

pytest.importorskip("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

TASK_NAMES = [f"sft_sweeps_{name}" for name in sorted(TEXT_TASKS)]


def read_data(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA_DIR / f"{name}.jsonl").read_text().splitlines()]


def load_task(name: str, metadata: dict | None = None):
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
    return manager.load([name])["tasks"][name]


@pytest.fixture(scope="module")
def tok():
    return build_embedded_tokenizer()


def test_every_task_and_the_group_are_indexed():
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert set(manager.all_tasks) == {*TASK_NAMES, "sft_sweeps_suite"}


@pytest.mark.parametrize("name", sorted(TEXT_TASKS))
def test_docs_are_the_assistant_turns_of_the_data_file(name):
    docs = list(load_task(f"sft_sweeps_{name}").test_docs())
    expected = [
        (r["id"], m["content"], r["messages"][:i])
        for r in read_data(name)
        for i, m in enumerate(r["messages"])
        if m["role"] == "assistant"
    ]
    assert [(d["id"], d["answer"], d["history"]) for d in docs] == expected
    assert {d["turn"] for d in docs} == set(range(1, max(d["turn"] for d in docs) + 1))


def test_prompt_is_the_evaluation_prompt_with_or_without_apply_chat_template(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    with_metadata = load_task("sft_sweeps_fact_recall", metadata={"pretrained": str(tmp_path)})
    doc = next(d for d in with_metadata.test_docs() if d["turn"] == 3)
    expected = tok.decode(prompt_ids(tok, [doc["history"]])[0])
    assert doc["turn"] > 1 and expected.count("<|im_start|>assistant") == doc["turn"]
    assert with_metadata.fewshot_context(doc, 0) == expected

    def chat_template(messages, add_generation_prompt):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    task = load_task("sft_sweeps_fact_recall")
    assert task.fewshot_context(doc, 0, apply_chat_template=True, chat_template=chat_template) == expected
    with pytest.raises(ValueError, match="--apply_chat_template"):
        task.fewshot_context(doc, 0)
    with pytest.raises(ValueError, match="--num_fewshot 0"):
        task.fewshot_context(doc, 2, apply_chat_template=True, chat_template=chat_template)


def test_process_results_is_exact_match_up_to_whitespace():
    task = load_task("sft_sweeps_state_tracking")
    doc = task.test_docs()[0]
    assert task.process_results(doc, [f" {doc['answer']}\n"]) == {"exact_match": 1.0}
    assert task.process_results(doc, [doc["answer"] + " a=1"]) == {"exact_match": 0.0}


@pytest.mark.parametrize("name", sorted(TEXT_TASKS))
def test_data_files_are_up_to_date(name):
    """Fails after a task's generator changes: rerun `python -m sft_sweeps.lm_eval_tasks.build_data`."""
    assert (DATA_DIR / f"{name}.jsonl").read_text(encoding="utf-8") == build(name)


@pytest.mark.parametrize("dataset", ["synthetic", "synthetic_suite"])
def test_data_files_are_held_out_from_training(dataset):
    cfg = compose_config([f"dataset={dataset}"]).dataset
    sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
    splits = make_splits(list(cfg.tasks), sizes, cfg.min_turns, cfg.max_turns, cfg.seed)
    seen = {json.dumps(r["messages"]) for split in ("train", "validation") for r in splits[split]}
    for name in cfg.tasks:
        assert not seen & {json.dumps(r["messages"]) for r in read_data(name)}


def test_run_lm_eval_scores_our_task_on_a_model_object(tok):
    model = tiny_llama(tok)
    results = run_lm_eval(model, tok, ["sft_sweeps_state_tracking"], limit=4, batch_size=4)
    assert results["results"]["sft_sweeps_state_tracking"]["exact_match,none"] == 0.0  # random init
    assert results["n-samples"]["sft_sweeps_state_tracking"]["effective"] == 4
    json.dumps(results)


@pytest.mark.slow
def test_lm_eval_cli_on_a_saved_model_agrees_with_evaluate(tok, tmp_path):
    """A model trained on the first conversations of the data file: lm-eval's CLI scores its turns 1.0, and
    on conversations it never saw gives the same answer as `evaluate` doc by doc; `run_lm_eval` agrees."""
    records = read_data("state_tracking")
    model = overfit_llama(tok, records[:3], steps=200)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    ours = evaluate(model, tok, records[:8], EvalConfig(max_conversations=None), progress=False).items
    seen = sum(1 for r in records[:3] for m in r["messages"] if m["role"] == "assistant")
    assert all(item["correct"] for item in ours[:seen])

    command = [
        str(Path(sys.executable).with_name("lm_eval")),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tmp_path / 'model'}",
        "--include_path",
        str(TASKS_DIR),
        "--tasks",
        "sft_sweeps_state_tracking",
        "--limit",
        str(len(ours)),
        "--log_samples",
        "--output_path",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    [result_file] = (tmp_path / "out").rglob("results*.json")
    [samples_file] = (tmp_path / "out").rglob("samples_sft_sweeps_state_tracking*.jsonl")
    samples = sorted(
        (json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"]
    )
    assert len(samples) == len(ours)
    for sample, item in zip(samples, ours, strict=True):
        assert (sample["doc"]["id"], sample["doc"]["turn"]) == (item["id"], item["turn"])
        assert sample["exact_match"] == float(item["correct"])
        if item["stopped"]:  # lm-eval drops special tokens from what runs on, so compare stopped answers
            assert sample["filtered_resps"][0] == item["prediction"]
    expected = sum(item["correct"] for item in ours) / len(ours)
    cli = json.loads(result_file.read_text())["results"]["sft_sweeps_state_tracking"]
    assert cli["exact_match,none"] == pytest.approx(expected)
    in_process = run_lm_eval(model, tok, ["sft_sweeps_state_tracking"], limit=len(ours), batch_size=8)
    assert in_process["results"]["sft_sweeps_state_tracking"]["exact_match,none"] == pytest.approx(expected)
