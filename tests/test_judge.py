"""The LLM judge: grade parsing, MT-Bench prompts, questions, config, and runs against a real HTTP server.

The end-to-end tests start `transformers serve` on the loopback interface with a tiny random Llama saved to a
tmp dir: a real OpenAI-compatible server running a real model. Its judgments are noise, so most grades fail
to parse, which is what the failure counts must show. Nothing mocks the HTTP layer.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
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
    missing_grades,
    parse_grade,
    pick_prompt,
    questions_from_conversations,
    render,
    retry_request_failures,
)
from sft_sweeps.identity import RunRecord
from sft_sweeps.record import load_run_record
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
    fastchat = "fastchat"
    assert parse_grade("The answer is fine.\n\nRating: [[7]]", fastchat) == 7.0
    assert parse_grade("Rating: [8.5] and later [[3]]", fastchat) == 3.0  # [[n]] wins over the backup [n]
    assert parse_grade("Rating: [8.5]", fastchat) == 8.5
    assert parse_grade("Rating: [[0]]", fastchat) is None  # outside 1-10
    assert parse_grade("Rating: 7/10", fastchat) is None
    assert judgment_from_reply("Rating: [[9]]").status == "ok"
    assert judgment_from_reply("I cannot rate this.").status == "parse_failure"
    refused = judgment_from_reply(None, refusal="I can't help with that.")
    assert (refused.status, refused.grade, refused.output) == ("refusal", None, "I can't help with that.")
    assert judgment_from_reply("Rating: [[9]]", finish_reason="content_filter").status == "refusal"


@pytest.mark.parametrize(
    ("output", "fastchat", "strict"),
    [
        ("Good answer.\n\nRating: [[7]]", 7.0, 7.0),
        ("See [2] for details; overall weak.", 2.0, None),  # a citation is not a grade
        ('As asked, the format is "Rating: [[5]]". The answer is good. Rating: [[8]]', 5.0, 8.0),
        ("Rating: [[12]] ... corrected: Rating: [[9]]", None, 9.0),  # FastChat stops at the first match
        ("Rating: [8.5]", 8.5, None),
        ("Rating: [[6.5]]", 6.5, 6.5),
        ("no grade", None, None),
    ],
)
def test_strict_and_fastchat_parse_differ_where_fastchat_takes_a_number_that_is_not_the_verdict(
    output, fastchat, strict
):
    assert parse_grade(output, "fastchat") == fastchat
    assert parse_grade(output, "strict") == strict
    # The chosen rule decides what is a parse failure (and so `num_parse_failures`).
    for mode, grade in (("fastchat", fastchat), ("strict", strict)):
        assert judgment_from_reply(output, parse=mode).status == (
            "ok" if grade is not None else "parse_failure"
        )


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
    # No preflight: whatever listens on port 8000 of this machine must not decide this test (the preflight
    # has its own tests against a server of their own).
    ready = {
        "base_url": "http://127.0.0.1:8000/v1",
        "model": "judge",
        "api_key_env": KEY_ENV,
        "preflight": False,
    }
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


def test_held_out_references_grade_each_turn_against_the_conversations_own_answer(
    judge_server, tmp_path, tok
):
    """`eval.judge.held_out_references=true`: the reference prompts, the conversation's answers as
    references."""
    base_url, model, _ = judge_server
    splits = make_splits(["state_tracking"], {"train": 2, "test": 2}, min_turns=2, max_turns=2, seed=0)
    records = splits["test"]
    questions = questions_from_conversations(records, with_references=True)
    for record, question in zip(records, questions, strict=True):
        assert question.reference == [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        assert question.category not in ("math", "reasoning", "coding")  # graded on it all the same
    rendered = render(pick_prompt(load_prompts(None), questions[0], 2, []), questions[0], ["x", "y"], 2)
    assert questions[0].reference[1] in rendered[1]["content"]

    settings = judge_settings(
        tmp_path, base_url=base_url, model=model, api_key_env="null", max_new_tokens=8, judge_max_tokens=8,
        held_out_references=True,
    )  # fmt: skip
    context = EvalContext(tiny_llama(tok), tok, SimpleNamespace(test=records), settings, progress=False)
    items = run_benchmarks(context)["eval_items"]["judge"]
    assert len(items) == 4
    assert {i["template"] for i in items} == {"single-math-v1", "single-math-v1-multi-turn"}


def test_held_out_references_name_a_turn_with_no_answer():
    messages = [("user", "a"), ("assistant", "b"), ("user", "c")]
    record = {"id": "c7", "messages": [{"role": role, "content": text} for role, text in messages]}
    with pytest.raises(ValueError, match="'c7' turn 2: no assistant answer"):
        questions_from_conversations([record], with_references=True)
    assert questions_from_conversations([record])[0].reference is None  # without references: replayed as is


def test_held_out_references_with_a_questions_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="eval.judge.held_out_references grades the held-out conversations"):
        judge_settings(tmp_path, questions=str(QUESTIONS), held_out_references=True)


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


# --- fast: a real HTTP server on the loopback whose failures a test chooses -----------------------------


class FaultyJudge:
    """An OpenAI-compatible judge on 127.0.0.1 (http.server in a thread): `GET /v1/models` and
    `POST /v1/chat/completions`, answering as `mode` says. Requests are counted; stopped by `close`."""

    def __init__(
        self,
        model: str = "judge-a",
        mode: str = "ok",
        models_endpoint: bool = True,
        listed: list | None = None,
    ) -> None:
        self.model, self.mode, self.models_endpoint = model, mode, models_endpoint
        self.listed = [model] if listed is None else listed  # what GET /v1/models says it serves
        self.chat_requests = 0
        judge = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: ANN002 - quiet: pytest shows failures, not access logs
                pass

            def _send(self, status: int, body: str | dict) -> None:
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path == "/v1/models" and judge.models_endpoint:
                    data = [{"id": name, "object": "model"} for name in judge.listed]
                    self._send(200, {"object": "list", "data": data})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.chat_requests += 1
                if body["model"] != judge.model:
                    message = f"Server is pinned to {judge.model}, got {body['model']}"
                    self._send(400, {"error": {"message": message, "type": "invalid_request_error"}})
                elif judge.mode == "500":
                    self._send(500, {"error": {"message": "judge overloaded"}})
                elif judge.mode == "badjson":
                    self._send(200, "this is not JSON {")
                else:
                    message = {"role": "assistant", "content": "Fine answer.\nRating: [[7]]"}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    self._send(
                        200,
                        {
                            "id": "c",
                            "object": "chat.completion",
                            "created": 0,
                            "model": judge.model,
                            "choices": [choice],
                        },
                    )

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1})
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def faulty_judge():
    judges: list[FaultyJudge] = []

    def start(**kwargs: object) -> FaultyJudge:
        judges.append(FaultyJudge(**kwargs))
        return judges[-1]

    yield start
    for judge in judges:
        judge.close()


def served_settings(tmp_path: Path, judge: FaultyJudge, **extra: object) -> Config:
    return judge_settings(
        tmp_path,
        base_url=judge.base_url,
        model=extra.pop("model", "judge-a"),
        api_key_env="null",
        questions=str(QUESTIONS),
        max_new_tokens=4,
        max_retries=0,
        timeout_s=10,
        **extra,
    )


@pytest.mark.parametrize("models_endpoint", [True, False], ids=["models-listed", "no-models-endpoint"])
def test_preflight_stops_a_wrong_model_name_before_training_quoting_the_server(
    faulty_judge, tmp_path, models_endpoint
):
    judge = faulty_judge(models_endpoint=models_endpoint)
    settings = served_settings(tmp_path, judge, model="judge-b")
    with pytest.raises(BenchmarkUnavailable) as error:
        JudgeBenchmark().check(settings)
    message = str(error.value)
    assert "\n" not in message and "eval.judge.model=judge-b" in message
    assert "HTTP 400" in message and "Server is pinned to judge-a, got judge-b" in message  # the server's own
    assert ("GET /models lists ['judge-a']" in message) == models_endpoint
    JudgeBenchmark().check(served_settings(tmp_path, judge))  # the right name passes
    JudgeBenchmark().check(served_settings(tmp_path, judge, model="judge-b", preflight=False))  # opted out


def test_preflight_warns_when_the_judge_answers_for_a_model_it_does_not_list(faulty_judge, tmp_path, caplog):
    """`transformers serve` lists its hub cache, not the model it serves: the chat completion decides."""
    judge = faulty_judge(listed=["some/other-model"])
    JudgeBenchmark().check(served_settings(tmp_path, judge))
    assert "answered, though GET /models does not list it" in caplog.text and judge.chat_requests == 1


def test_preflight_warns_on_a_transient_failure_and_goes_on(faulty_judge, tmp_path, caplog):
    judge = faulty_judge(mode="500")
    JudgeBenchmark().check(served_settings(tmp_path, judge))
    assert "transient failure, going on: HTTP 500" in caplog.text and "judge overloaded" in caplog.text


@pytest.mark.parametrize(
    ("mode", "model", "error"),
    [
        ("ok", "judge-b", "HTTP 400 BadRequestError: Server is pinned to judge-a, got judge-b"),
        ("500", "judge-a", "HTTP 500 InternalServerError: judge overloaded"),
        ("badjson", "judge-a", "invalid response (not JSON)"),
    ],
)
def test_failures_during_a_run_are_counted_per_item_with_the_servers_reason(
    faulty_judge, tmp_path, tok, mode, model, error
):
    judge = faulty_judge(mode=mode)
    settings = served_settings(tmp_path, judge, model=model, preflight=False)
    out = run_benchmarks(EvalContext(tiny_llama(tok), tok, None, settings, progress=False))
    items = out["eval_items"]["judge"]
    assert out["metrics"]["judge/num_request_failures"] == 6 == len(items) == judge.chat_requests
    assert all(item["judge_status"] == "request_failure" and error in item["judge_error"] for item in items)
    assert "judge/mean_grade" not in out["metrics"]


def test_a_rerun_asks_again_for_exactly_the_failed_requests(faulty_judge, tmp_path, tok):
    judge = faulty_judge(mode="500")
    settings = served_settings(tmp_path, judge, preflight=False)
    out = run_benchmarks(EvalContext(tiny_llama(tok), tok, None, settings, progress=False))
    items = out["eval_items"]["judge"]
    items[0].update(judge_status="ok", grade=3.0, judge_output="Rating: [[3]]", judge_error=None)
    assert missing_grades(items) == 5
    judge.mode, judge.chat_requests = "ok", 0
    metrics, by_depth, retried = retry_request_failures(items, settings, [])
    assert judge.chat_requests == 5  # the five that failed, not the one graded
    assert missing_grades(retried) == 0 and retried[0]["grade"] == 3.0
    assert [i["grade"] for i in retried[1:]] == [7.0] * 5
    assert metrics["num_graded_turns"] == 6 and metrics["mean_grade"] == (3 + 5 * 7) / 6
    assert by_depth["mean_grade"] == {1: (3 + 2 * 7) / 3, 2: 7.0}


def test_a_sweep_run_whose_judge_failed_is_retried_without_training_and_reported_missing(
    faulty_judge, tmp_path, caplog
):
    """Issue 21: an all-failed judge run was recorded done, never retried, and reported as 'No completed
    run' while the sweep table said 1/1 done."""
    from omegaconf import open_dict

    from sft_sweeps.pipeline import run
    from sft_sweeps.report.analysis import analyze
    from sft_sweeps.report.console import sweep_table
    from sft_sweeps.report.render import report_md

    judge = faulty_judge(mode="500")
    cfg = compose_config(
        [
            *TINY_OVERRIDES,
            "logger=none",
            "eval.benchmarks=[judge]",
            f"eval.judge.base_url={judge.base_url}",
            "eval.judge.model=judge-a",
            "eval.judge.api_key_env=null",
            "eval.judge.max_retries=0",
            "eval.judge.max_new_tokens=4",
            "eval.judge.max_questions=2",
        ]
    )
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
    run_dir = str(tmp_path / "job")
    first = run(cfg, run_dir=run_dir)
    failed = int(first.metrics["judge/num_request_failures"])
    assert first.status == "done" and failed > 0 and "judge/mean_grade" not in first.metrics

    table, notes = sweep_table([first])
    assert any(f"{failed} judge grades missing" in note for note in notes)
    text = report_md(analyze([first]), "cmd", {})
    assert "No completed run" not in text and f"{failed} judge grades missing" in text

    judge.mode, judge.chat_requests = "ok", 0
    caplog.set_level("INFO")
    second = run(cfg, run_dir=run_dir)
    assert judge.chat_requests == 1 + failed  # the preflight, then exactly the failed requests again
    assert "asking the judge again" in caplog.text and "train_runtime_s" in second.metrics
    assert second.metrics["train_runtime_s"] == first.metrics["train_runtime_s"]  # not trained again
    assert second.metrics["judge/num_request_failures"] == 0 and second.metrics["judge/mean_grade"] == 7.0
    assert load_run_record(run_dir).metrics["judge/mean_grade"] == 7.0
    judge.chat_requests = 0
    third = run(cfg, run_dir=run_dir)  # nothing missing: skipped, no request
    assert judge.chat_requests == 1 and third.metrics == second.metrics  # the preflight only


def test_the_report_shows_mt_bench_as_fastchat_show_result_per_turn_average_and_category():
    from sft_sweeps.report.analysis import analyze
    from sft_sweeps.report.benchmarks import judge_md

    def record(strategy: str, seed: int, grades: dict[int, float], failed: int) -> RunRecord:
        metrics = {
            "judge/mean_grade": sum(grades.values()) / len(grades),
            "judge/writing/mean_grade": grades[1],
            "judge/math/mean_grade": grades[2],
            "judge/num_request_failures": float(failed),
            "judge/num_parse_failures": 0.0,
        }
        by_depth = {"judge/mean_grade": {str(t): g for t, g in grades.items()}}
        config = {"model": {"name": "m"}, "dataset": {"name": "d"}, "masking": {"name": strategy}}
        data = {"status": "done", "seed": seed, "config": config, "metrics": metrics, "by_depth": by_depth}
        return RunRecord.from_dict(data, f"{strategy}{seed}")

    records = [record("all", 0, {1: 8.0, 2: 6.0}, 0), record("last", 0, {1: 7.0, 2: 5.0}, 2)]
    (setting,) = analyze(records).settings
    text = judge_md(setting)
    text = re.sub(r" {2,}", " ", text)  # the cells' padding (tabulate) collapsed
    assert "| strategy | First turn | Second turn | Average | math | writing | missing grades |" in text
    assert "| all | 8.000 (n=1) | 6.000 (n=1) | 7.000 (n=1) | 6.000 (n=1) | 8.000 (n=1) | 0 |" in text
    assert "2 failed requests, 0 without a grade" in text and "**2 grades missing**" in text
