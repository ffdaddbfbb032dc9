"""The LLM judge: grade parsing, MT-Bench prompts, questions, config, and runs against a real HTTP server.

The end-to-end tests start `transformers serve` on the loopback interface with a tiny random Llama saved to a
tmp dir: a real OpenAI-compatible server running a real model. Its judgments are noise, so most grades fail
to parse, which is what the failure counts must show. Nothing mocks the HTTP layer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sft_sweeps.config import Config, ConfigError, validate
from sft_sweeps.evaluation.benchmarks import BenchmarkUnavailable, EvalContext, run_benchmarks
from sft_sweeps.evaluation.judge import (
    JudgeBenchmark,
    Question,
    judgment_from_reply,
    load_prompts,
    load_questions,
    parse_grade,
    pick_prompt,
    questions_from_conversations,
    render,
)
from sft_sweeps.identity import RunRecord
from sft_sweeps.report.analysis import place_runs
from sft_sweeps.tasks import make_splits
from sft_sweeps.tokenizer import build_embedded_tokenizer
from tests.conftest import TINY_OVERRIDES, compose_config
from tests.test_evaluation import tiny_llama

QUESTIONS = Path(__file__).parent / "fixtures" / "mt_bench_questions.jsonl"
KEY_ENV = "SFT_SWEEPS_TEST_JUDGE_KEY"
SECRET = "sk-test-3f9a1c7e-never-in-outputs"
# FastChat's own `single-v1-multi-turn` template (fastchat/llm_judge/data/judge_prompts.jsonl), two turns.
FASTCHAT_MULTI_TURN = (
    "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
    "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
    "<|The End of Assistant A's Conversation with User|>"
)


@pytest.fixture(scope="module")
def tok():
    return build_embedded_tokenizer()


def judge_settings(tmp_path: Path, **judge: object) -> Config:
    """The tiny default with `eval.benchmarks=[judge]` and the given `eval.judge.*` overrides."""
    overrides = [*TINY_OVERRIDES, "logger=none", "eval.benchmarks=[judge]"]
    overrides += [f"eval.judge.{k}={v}" for k, v in judge.items()]
    cfg = compose_config(overrides)
    cfg.cache_dir = str(tmp_path / "cache")
    return validate(cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_files(settings: Config) -> list[Path]:
    return sorted((Path(settings.cache_dir) / "judge").rglob("*.json"))


# --- fast: parsing, prompts, questions, config -----------------------------------------------------------


def test_grades_parse_as_fastchat_and_failures_are_not_numbers():
    assert parse_grade("The answer is fine.\n\nRating: [[7]]") == 7.0
    assert parse_grade("Rating: [8.5] and later [[3]]") == 3.0  # [[n]] wins over the backup [n]
    assert parse_grade("Rating: [8.5]") == 8.5
    assert parse_grade("Rating: [[0]]") is None  # outside 1-10
    assert parse_grade("Rating: 7/10") is None
    assert judgment_from_reply("Rating: [[9]]").status == "ok"
    assert judgment_from_reply("I cannot rate this.").status == "parse_failure"
    refused = judgment_from_reply(None, refusal="I can't help with that.")
    assert (refused.status, refused.grade, refused.output) == ("refusal", None, "I can't help with that.")
    assert judgment_from_reply("Rating: [[9]]", finish_reason="content_filter").status == "refusal"


def test_turn_two_is_judged_with_turn_one_in_view_exactly_as_fastchat_renders_it():
    prompts = load_prompts(None)
    question = Question("1", ["Q one?", "Q two?"], "writing")
    messages = render(prompts["single-v1-multi-turn"], question, ["A one.", "A two."], turn=2)
    fastchat = FASTCHAT_MULTI_TURN.format(
        question_1="Q one?", answer_1="A one.", question_2="Q two?", answer_2="A two."
    )
    assert messages[1] == {"role": "user", "content": fastchat}
    assert "focus on the assistant's answer to the second user question" in messages[0]["content"]
    assert '"[[rating]]", for example: "Rating: [[5]]"' in messages[0]["content"]
    first = render(prompts["single-v1"], question, ["A one.", "A two."], turn=1)
    assert "[Question]\nQ one?\n\n[The Start of Assistant's Answer]\nA one.\n" in first[1]["content"]
    assert "Q two?" not in first[1]["content"]


def test_reference_prompts_for_math_and_reasoning_with_references_only():
    prompts = load_prompts(None)
    math = Question("2", ["12*12?", "/3?"], "math", ["144", "48"])
    assert pick_prompt(prompts, math, 1, ["math"]).name == "single-math-v1"
    assert pick_prompt(prompts, math, 2, ["math"]).name == "single-math-v1-multi-turn"
    rendered = render(prompts["single-math-v1-multi-turn"], math, ["12", "4"], turn=2)[1]["content"]
    assert "### User:\n/3?\n\n### Reference answer:\n48" in rendered
    assert "### User:\n/3?\n\n### Assistant A:\n4" in rendered
    no_reference = Question("3", ["12*12?"], "math")
    assert pick_prompt(prompts, no_reference, 1, ["math"]).name == "single-v1"
    assert pick_prompt(prompts, math, 1, ["coding"]).name == "single-v1"


def test_a_users_fastchat_prompt_file_works_and_refuses_turns_it_cannot_show(tmp_path):
    shipped = [json.loads(line) for line in load_prompts_text().splitlines()]
    for prompt in shipped:  # FastChat's verbatim two-turn template instead of the shipped {conversation}
        if prompt["name"] == "single-v1-multi-turn":
            prompt["prompt_template"] = FASTCHAT_MULTI_TURN
    path = tmp_path / "judge_prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in shipped))
    prompts = load_prompts(path)
    question = Question("1", ["a", "b", "c"])
    assert (
        "### User:\nb" in render(prompts["single-v1-multi-turn"], question, ["x", "y", "z"], 2)[1]["content"]
    )
    with pytest.raises(ValueError, match=r"does not show the answer to turn 3 .*\{conversation\}"):
        render(prompts["single-v1-multi-turn"], question, ["x", "y", "z"], 3)
    path.write_text(json.dumps({**shipped[0], "prompt_template": "{question} {score}"}) + "\n")
    with pytest.raises(ValueError, match=r"eval.judge.prompts: .*:1: .*unknown fields \['score'\]"):
        load_prompts(path)
    path.write_text(json.dumps(shipped[0]) + "\n")
    with pytest.raises(ValueError, match=r"lacks the prompts \['single-v1-multi-turn'"):
        load_prompts(path)


def load_prompts_text() -> str:
    from importlib import resources

    return (
        resources.files("sft_sweeps.evaluation").joinpath("judge_prompts/mt_bench_single.jsonl").read_text()
    )


def test_questions_file_errors_name_the_key_file_line_and_field(tmp_path):
    questions = load_questions(QUESTIONS)
    assert [(q.id, q.category, len(q.turns)) for q in questions] == [
        ("81", "writing", 2),
        ("111", "math", 2),
        ("131", "reasoning", 2),
    ]
    assert questions[1].reference == ["144", "48"]
    with pytest.raises(FileNotFoundError, match="eval.judge.questions: no such file"):
        load_questions(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["hi"]}\n{"question_id": 2, "turns": "hi"}\n')
    with pytest.raises(ValueError, match=r"eval.judge.questions: .*bad.jsonl:2: field 'turns'"):
        load_questions(bad)


def test_held_out_conversations_replay_their_user_turns_with_their_system_message():
    records = [
        {
            "id": "c1",
            "task": "chat",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "u2"},
                {"role": "assistant", "content": "a2"},
            ],
        }
    ]
    [question] = questions_from_conversations(records)
    assert (question.id, question.turns, question.system, question.reference) == (
        "c1",
        ["u1", "u2"],
        "Be brief.",
        None,
    )
    with pytest.raises(ValueError, match="'c2' has no user message"):
        questions_from_conversations([{"id": "c2", "messages": [{"role": "assistant", "content": "a"}]}])


def test_config_ranges_and_a_pasted_key_is_refused_without_being_echoed(tmp_path):
    settings = judge_settings(tmp_path, base_url="http://127.0.0.1:8000/v1", model="judge", concurrency=3)
    assert (settings.eval.judge.base_url, settings.eval.judge.concurrency) == ("http://127.0.0.1:8000/v1", 3)
    with pytest.raises(ConfigError, match="eval.judge.concurrency must be positive"):
        judge_settings(tmp_path, concurrency=0)
    with pytest.raises(ConfigError, match="eval.judge.timeout_s must be positive"):
        judge_settings(tmp_path, timeout_s=0)
    with pytest.raises(ConfigError, match="eval.judge.base_url must start with http"):
        judge_settings(tmp_path, base_url="localhost:8000")
    with pytest.raises(ConfigError, match="eval.judge.api_key_env must be the NAME") as error:
        judge_settings(tmp_path, api_key_env=SECRET)
    assert SECRET not in str(error.value)


def test_check_says_how_to_make_the_judge_runnable(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BenchmarkUnavailable, match="eval.judge.base_url is not set"):
        JudgeBenchmark().check(judge_settings(tmp_path))
    ready = {"base_url": "http://127.0.0.1:8000/v1", "model": "judge", "api_key_env": KEY_ENV}
    with pytest.raises(BenchmarkUnavailable, match=f"{KEY_ENV}, which is not set"):
        JudgeBenchmark().check(judge_settings(tmp_path, **ready))
    monkeypatch.setenv(KEY_ENV, SECRET)
    with pytest.raises(BenchmarkUnavailable, match="eval.judge.questions: no such file"):
        JudgeBenchmark().check(judge_settings(tmp_path, **ready, questions=str(tmp_path / "none.jsonl")))
    JudgeBenchmark().check(judge_settings(tmp_path, **ready, questions=str(QUESTIONS)))
    JudgeBenchmark().check(judge_settings(tmp_path, **{**ready, "api_key_env": "null"}))


def test_failed_requests_are_counted_not_averaged_and_not_cached(tmp_path, tok, monkeypatch, caplog):
    """Nothing listens on the port: every request fails after its retries, and says so per item."""
    caplog.set_level("INFO")
    monkeypatch.setenv(KEY_ENV, SECRET)
    settings = judge_settings(
        tmp_path,
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        model="judge",
        api_key_env=KEY_ENV,
        questions=str(QUESTIONS),
        max_new_tokens=8,
        max_retries=1,
        timeout_s=5,
    )
    out = run_benchmarks(EvalContext(tiny_llama(tok), tok, None, settings, progress=False))
    metrics, items = out["metrics"], out["eval_items"]["judge"]
    assert metrics["judge/num_judge_turns"] == 6 == len(items)
    assert metrics["judge/num_request_failures"] == 6
    assert metrics["judge/num_graded_turns"] == metrics["judge/num_parse_failures"] == 0
    assert "judge/mean_grade" not in metrics  # no grade: no number
    assert {item["judge_status"] for item in items} == {"request_failure"}
    assert all(item["grade"] is None and "APIConnectionError" in item["judge_error"] for item in items)
    assert cache_files(settings) == []  # a rerun asks again
    assert "6 of 6 requests failed" in caplog.text
    assert SECRET not in json.dumps(out) + caplog.text


# --- slow: a real OpenAI-compatible server (transformers serve) on the loopback --------------------------


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory, tok):
    """`transformers serve` of a tiny random Llama on 127.0.0.1; yields (base_url, model, log path)."""
    pytest.importorskip("fastapi", reason="the judge server test needs `pip install -e .[dev]`")
    pytest.importorskip("uvicorn", reason="the judge server test needs `pip install -e .[dev]`")
    root = tmp_path_factory.mktemp("judge_server")
    model_dir = root / "model"
    torch.manual_seed(0)
    tiny_llama(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    port, log_path = free_port(), root / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "info"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(server, f"http://127.0.0.1:{port}/health", log_path, deadline_s=180)
        yield f"http://127.0.0.1:{port}/v1", str(model_dir), log_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)


def _wait_healthy(server: subprocess.Popen, url: str, log_path: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:  # bounded: fails after deadline_s
        if server.poll() is not None:
            pytest.fail(
                f"transformers serve exited with {server.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"transformers serve not healthy after {deadline_s}s:\n{log_path.read_text()[-3000:]}")


def served_requests(log_path: Path) -> int:
    """Chat-completion requests the server answered, from its access log."""
    return log_path.read_text().count('"POST /v1/chat/completions HTTP/1.1"')


@pytest.mark.slow
def test_end_to_end_against_a_real_server_counts_failures_and_reruns_from_cache(
    judge_server, tmp_path, tok, monkeypatch, caplog
):
    base_url, model, log_path = judge_server
    caplog.set_level("DEBUG")  # the client's and httpx's debug logs too
    monkeypatch.setenv(KEY_ENV, SECRET)
    settings = judge_settings(
        tmp_path,
        base_url=base_url,
        model=model,
        api_key_env=KEY_ENV,
        questions=str(QUESTIONS),
        max_new_tokens=12,
        judge_max_tokens=12,
        concurrency=3,
    )
    JudgeBenchmark().check(settings)
    context = EvalContext(tiny_llama(tok, seed=1), tok, None, settings, window=1024, progress=False)
    before = served_requests(log_path)
    out = run_benchmarks(context)
    metrics, items = out["metrics"], out["eval_items"]["judge"]

    assert served_requests(log_path) - before == 6  # 3 questions x 2 turns, no retries needed
    assert metrics["judge/num_request_failures"] == 0
    assert metrics["judge/num_judge_turns"] == 6 == len(items)
    graded, failed = metrics["judge/num_graded_turns"], metrics["judge/num_parse_failures"]
    assert graded + failed == 6
    assert failed > 0  # a random tiny judge writes no [[rating]]: counted, not averaged
    assert ("judge/mean_grade" in metrics) == (graded > 0)
    for item in items:
        assert isinstance(item["judge_output"], str)  # what the judge said, kept for inspection
        assert (item["grade"] is None) == (item["judge_status"] != "ok")
    assert sorted(out["by_depth"]["judge/num_judge_turns"].items()) == [("1", 3.0), ("2", 3.0)]
    assert {(i["id"], i["turn"], i["template"]) for i in items if i["turn"] == 2} == {
        ("81", 2, "single-v1-multi-turn"),
        ("111", 2, "single-math-v1-multi-turn"),
        ("131", 2, "single-math-v1-multi-turn"),
    }
    identity = out["benchmarks"]["judge"]["identity"]
    assert identity["model"] == model and identity["base_url_host"] == base_url.split("/")[2]
    assert len(identity["prompts_sha256"]) == 64 and len(identity["questions_sha256"]) == 64
    assert len(cache_files(settings)) == 6

    rerun = run_benchmarks(context)  # the same answers (greedy), so every judgment comes from the cache
    assert served_requests(log_path) - before == 6
    assert rerun["metrics"]["judge/num_cached_judgments"] == 6
    assert [i["judge_output"] for i in rerun["eval_items"]["judge"]] == [i["judge_output"] for i in items]
    assert {k: v for k, v in rerun["metrics"].items() if "cached" not in k} == {
        k: v for k, v in metrics.items() if "cached" not in k
    }

    assert f"judge {model}: 6 turns" in caplog.text  # the logs were captured, debug included
    outputs = json.dumps([out, rerun]) + caplog.text + "".join(p.read_text() for p in cache_files(settings))
    assert SECRET not in outputs


@pytest.mark.slow
def test_held_out_conversations_are_replayed_turn_by_turn_against_a_real_server(judge_server, tmp_path, tok):
    base_url, model, log_path = judge_server
    records = make_splits(["state_tracking"], {"train": 2, "test": 3}, min_turns=3, max_turns=3, seed=0)[
        "test"
    ]
    settings = judge_settings(
        tmp_path, base_url=base_url, model=model, api_key_env="null", max_new_tokens=8, judge_max_tokens=8
    )
    context = EvalContext(tiny_llama(tok), tok, SimpleNamespace(test=records), settings, progress=False)
    before = served_requests(log_path)
    out = run_benchmarks(context)
    items = out["eval_items"]["judge"]
    user_turns = sum(m["role"] == "user" for r in records for m in r["messages"])
    assert len(items) == user_turns == served_requests(log_path) - before
    assert out["metrics"]["judge/num_request_failures"] == 0
    assert {i["turn"] for i in items} == {1, 2, 3}
    assert {i["template"] for i in items} == {"single-v1", "single-v1-multi-turn"}  # no references replayed
    assert out["benchmarks"]["judge"]["identity"]["questions"] is None


def test_the_report_never_puts_runs_judged_differently_in_one_setting():
    """Same config, but the prompt file was edited in place between the runs: two settings, not one."""

    def record(seed: int, prompts_sha256: str) -> dict:
        config = {"model": {"name": "tiny"}, "dataset": {"name": "synthetic"}, "masking": {"name": "all"}}
        identity = {"model": "judge", "prompts_sha256": prompts_sha256}
        return {
            "status": "done",
            "seed": seed,
            "config": {**config, "sweep_name": "s", "eval": {"judge": {"model": "judge"}}},
            "metrics": {"judge/mean_grade": 5.0},
            "benchmarks": {"judge": {"identity": identity}, "nll": {}},
        }

    records = [record(0, "aaa"), record(1, "aaa"), record(0, "bbb")]
    runs = place_runs([RunRecord.from_dict(r, f"r{i}") for i, r in enumerate(records)])
    assert sorted({r.setting for r in runs}) == [
        "s | benchmarks.judge.identity.prompts_sha256=aaa",
        "s | benchmarks.judge.identity.prompts_sha256=bbb",
    ]
    same = [RunRecord.from_dict(record(s, "aaa"), f"s{s}") for s in (0, 1)]
    assert len({r.setting for r in place_runs(same)}) == 1
