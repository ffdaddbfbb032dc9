"""An LLM judge for open-ended multi-turn answers: MT-Bench single grading by any OpenAI-compatible server.

The trained model answers each question turn by turn with its own earlier answers as history; a judge model
behind an OpenAI-compatible chat-completions endpoint (`vllm serve`, a hosted API) grades every answer 1-10
with FastChat's MT-Bench single-grade prompts: turn 1 alone, turn k with turns 1..k in view, and against the
question's reference answers in the reference categories (math, reasoning, coding).

Config (`eval.judge`, `sft_sweeps.config.JudgeConfig`):

* `base_url`, `model`: the judge. `api_key_env`: the NAME of the environment variable holding its key (null:
  no key); the key is read at run time and never written to result.json, W&B, the cache or logs.
* `questions`: a JSONL file in FastChat's MT-Bench `question.jsonl` schema (`question_id`, `category`,
  `turns`, optional `reference`); null replays the user turns of the held-out conversations (no references).
  `max_questions` caps either. `held_out_references`: with `questions` null, grade each answer against the
  held-out conversation's own answer to that turn as the reference (MT-Bench's reference prompts), for chats
  whose turns have a right answer; off by default, since on open-ended chats a reference rewards imitation.
* `prompts`: judge prompts in FastChat's `judge_prompts.jsonl` schema, the four single-grade ones by name
  (`single-v1`, `single-v1-multi-turn`, `single-math-v1`, `single-math-v1-multi-turn`); null uses the shipped
  copy (`judge_prompts/mt_bench_single.jsonl`). Besides FastChat's fields (`question`, `answer`,
  `question_1`, `answer_1`, `ref_answer_1`, ...) templates may use `conversation` and `ref_conversation`
  (every turn up to the judged one, in FastChat's `### User:` / `### Assistant A:` layout) and `turn_ordinal`
  (`second`): the shipped multi-turn prompts use them, so a conversation of any length is shown whole, and
  render MT-Bench's two-turn questions exactly as FastChat does.
* `reference_categories`, `max_new_tokens` (answer), `judge_max_tokens`, `concurrency` (threads),
  `timeout_s`, `max_retries` (the client's exponential backoff), `cache`.

* `parse`: how a grade is read. `strict` (default): only `[[n]]`, the last one in 1-10, so a judge quoting
  the prompt's example `Rating: [[5]]` before its verdict, or citing `see [2]`, is never graded by it;
  `fastchat`: FastChat's rule (the first `[[n]]`, else the first `[n]`), for numbers comparable with
  published MT-Bench tables. Cached replies are parsed again on reading, so switching costs no request.
* `preflight`: before any training, `GET /models` (the model must be listed, where the server has the
  endpoint) and one tiny chat completion prove the URL, the model name and the key; an HTTP 4xx stops the
  run in one line quoting the server (`JudgeUnreachable`), a transient failure (connection, timeout, 5xx)
  warns and the run goes on.

Nothing is averaged in that is not a grade: a judgment without a grade by the `parse` rule (or a refusal)
is a `parse_failure`, a request that failed after its retries a `request_failure` (an HTTP error keeps the
server's own reason in `judge_error`; a reply that is not JSON or not a chat completion is one too, for
that item only); both are recorded per item (`judge_status`) and counted (`num_parse_failures`,
`num_request_failures`). Judgments are cached one JSON file per (judge model, rendered prompt: template,
question, answers) under `<cache_dir>/judge/`, written atomically as each arrives; failed requests are not
cached. A run whose requests failed is recorded `done` with them counted; rerunning it (the sweep, with
`resume`) asks the judge again for exactly those items, with the answers the record holds and no training
(`retry_request_failures`), and the report and the sweep table say how many grades are still missing.

The judge's identity (model, base URL host, sha256 of the prompts used, questions file and its sha256) is in
the benchmark's `info` (`benchmarks.judge.identity` of result.json); `eval.judge.*` is part of the config, so
the report puts runs judged by different models or prompt files in different settings.

Example:
    >>> JudgeBenchmark().check(settings)                          # doctest: +SKIP
    >>> result = JudgeBenchmark().run(EvalContext(model, tok, splits, settings))   # doctest: +SKIP
    >>> result.metrics["mean_grade"], result.metrics["num_parse_failures"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sft_sweeps.evaluation.judge_preflight import JudgeUnreachable, failure_reason, preflight, scrub
from sft_sweeps.files import JsonlError, read_jsonl
from sft_sweeps.record import write_json_atomic

if TYPE_CHECKING:
    from sft_sweeps.config import Config, JudgeConfig
    from sft_sweeps.evaluation.base import BenchmarkResult, EvalContext

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = "judge_prompts/mt_bench_single.jsonl"  # package data of sft_sweeps.evaluation
PROMPT_NAMES = ("single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn")
# FastChat's parse: `[[8]]`, else `[8]`; the first match counts. Strict: only `[[8]]`, the last in 1-10.
_GRADE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_GRADE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
PARSE_MODES = ("strict", "fastchat")
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
_FIELDS = re.compile(r"(question|answer|ref_answer)(_\d+)?|conversation|ref_conversation|turn|turn_ordinal")


@dataclass
class Question:
    """One multi-turn question: its user turns, optional reference answers, category."""

    id: str
    turns: list[str]
    category: str | None = None
    reference: list[str] | None = None
    system: str | None = None  # a held-out conversation's system message, kept for generation
    # Graded against `reference` whatever its category (`eval.judge.held_out_references`).
    graded_against_reference: bool = False


@dataclass
class Prompt:
    """One judge prompt of the FastChat schema."""

    name: str
    system_prompt: str
    prompt_template: str


@dataclass
class Judgment:
    """What the judge said about one answer.

    Attributes:
        status: `ok`, `parse_failure` (no grade in 1-10 in the output), `refusal` or `request_failure`.
        grade: the grade when status is `ok`, else None.
        output: the judge's text (None when the request failed).
        error: why the request failed (exception class and message), else None.
        cached: read from the cache.
        reply: the judge's reply as cached (`output`, `refusal`, `finish_reason`); None when it failed.
    """

    status: str
    grade: float | None = None
    output: str | None = None
    error: str | None = None
    cached: bool = False
    reply: dict[str, Any] | None = None


@dataclass
class _Task:
    question: int  # index in the question list
    turn: int  # 1-based
    prompt: Prompt
    messages: list[dict[str, str]]
    key: str
    judgment: Judgment | None = field(default=None)


class JudgeBenchmark:
    """MT-Bench-style grading of open-ended multi-turn answers by an LLM judge (`eval.judge`)."""

    name = "judge"

    def check(self, settings: Config) -> None:
        from sft_sweeps.evaluation.base import BenchmarkUnavailable

        cfg = settings.eval.judge
        for key in ("base_url", "model"):
            if getattr(cfg, key) is None:
                raise BenchmarkUnavailable(
                    f"eval.benchmarks lists 'judge' but eval.judge.{key} is not set; point it at an "
                    "OpenAI-compatible server, e.g. eval.judge.base_url=http://127.0.0.1:8000/v1 "
                    "eval.judge.model=Qwen/Qwen2.5-7B-Instruct (see the README, 'An LLM judge')"
                )
        if cfg.api_key_env is not None and not os.environ.get(cfg.api_key_env):
            raise BenchmarkUnavailable(
                f"eval.judge.api_key_env names the environment variable {cfg.api_key_env}, which is not set; "
                f"export {cfg.api_key_env}=<key>, or eval.judge.api_key_env=null for a server without a key"
            )
        try:
            import openai  # noqa: F401
        except ImportError:
            raise BenchmarkUnavailable(
                "eval.benchmarks lists 'judge', which needs the openai client: pip install 'openai>=3.54,<4'"
            ) from None
        try:
            load_prompts(cfg.prompts)
            if cfg.questions is not None:
                load_questions(cfg.questions)
        except (OSError, ValueError) as e:
            raise BenchmarkUnavailable(str(e)) from e
        if cfg.preflight:
            try:
                warning = preflight(cfg)
            except JudgeUnreachable as e:
                raise BenchmarkUnavailable(str(e)) from None
            if warning:
                log.warning(warning)

    def run(self, context: EvalContext) -> BenchmarkResult:
        from sft_sweeps.evaluation.base import BenchmarkResult

        cfg = context.settings.eval.judge
        prompts = load_prompts(cfg.prompts)
        questions = questions_for(cfg, lambda: context.conversations)
        answers = answer_questions(context, questions, cfg.max_new_tokens)
        tasks = judge_tasks(questions, answers, prompts, cfg)
        cache = Path(context.settings.cache_dir) / "judge" if cfg.cache else None
        judge_all(tasks, cfg, cache)
        items = _items(questions, answers, tasks)
        metrics, by_depth = aggregate(items)
        identity = judge_identity(cfg, prompts)
        failed = [item for item in items if item["judge_status"] == "request_failure"]
        if failed:
            log.warning(
                "judge: %d of %d requests failed (counted in judge/num_request_failures), e.g. %s",
                len(failed),
                len(items),
                failed[0]["judge_error"],
            )
        log.info(
            "judge %s: %d turns, %d graded, %d parse failures, %d request failures, %d from cache",
            identity["model"],
            len(items),
            metrics["num_graded_turns"],
            metrics["num_parse_failures"],
            metrics["num_request_failures"],
            metrics["num_cached_judgments"],
        )
        return BenchmarkResult(metrics, by_depth, items, {"identity": identity})


# --- questions -------------------------------------------------------------------------------------------


def load_questions(path: str | Path) -> list[Question]:
    """Questions from a JSONL file in FastChat's MT-Bench `question.jsonl` schema.

    Raises:
        FileNotFoundError: no such file (the message names `eval.judge.questions`).
        ValueError: a line is not JSON or a field is missing or mistyped (file, line and field named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval.judge.questions: no such file {str(path)!r}")
    questions = []
    seen: set[str] = set()
    for number, record in _jsonl("eval.judge.questions", path):
        where = f"eval.judge.questions: {path}:{number}"
        if not isinstance(record, dict) or "question_id" not in record:
            raise ValueError(f"{where}: a question needs field 'question_id'")
        question_id = str(record["question_id"])
        if question_id in seen:
            raise ValueError(f"{where}: field 'question_id' repeats {question_id!r}")
        seen.add(question_id)
        turns = record.get("turns")
        if not _strings(turns) or not turns:
            raise ValueError(f"{where}: field 'turns' must be a non-empty list of strings")
        category = record.get("category")
        if category is not None and not isinstance(category, str):
            raise ValueError(f"{where}: field 'category' must be a string")
        reference = record.get("reference")
        if reference is not None and not _strings(reference):
            raise ValueError(f"{where}: field 'reference' must be a list of strings")
        questions.append(Question(question_id, list(turns), category, reference))
    if not questions:
        raise ValueError(f"eval.judge.questions: {path} holds no question")
    return questions


def questions_for(cfg: JudgeConfig, held_out: Callable[[], list[dict[str, Any]]]) -> list[Question]:
    """The questions `cfg` asks: its questions file, else the held-out conversations (read only then)
    replayed."""
    if cfg.questions is not None:
        return load_questions(cfg.questions)[: cfg.max_questions]
    return questions_from_conversations(held_out()[: cfg.max_questions], cfg.held_out_references)


def questions_from_conversations(
    conversations: list[dict[str, Any]], with_references: bool = False
) -> list[Question]:
    """The user turns of held-out conversations, to be replayed. Without `with_references` their answers are
    not graded against the conversation's own (which would reward imitation on open-ended chats); with it,
    each turn's reference is the conversation's last assistant text before the next user turn.

    Raises:
        ValueError: a record has no user message, or (with references) a user turn no assistant answers
            (its id and turn named).
    """
    questions = []
    for position, record in enumerate(conversations):
        record_id = str(record.get("id", f"#{position}"))
        messages = record.get("messages") or []
        users = [m["content"] for m in messages if m.get("role") == "user"]
        if not users:
            raise ValueError(f"judge: held-out record {record_id!r} has no user message to replay")
        system = messages[0]["content"] if messages[0].get("role") == "system" else None
        task = record.get("task")
        references = _turn_answers(record_id, messages) if with_references else None
        questions.append(
            Question(
                record_id, users, task if isinstance(task, str) else None, references, system, with_references
            )
        )
    return questions


def _turn_answers(record_id: str, messages: list[dict[str, Any]]) -> list[str]:
    """Per user turn, the last assistant text before the next user turn (an agent's final answer)."""
    answers: list[str | None] = []
    for message in messages:
        if message.get("role") == "user":
            answers.append(None)
        elif message.get("role") == "assistant" and answers and message.get("content"):
            answers[-1] = message["content"]
    missing = [turn for turn, answer in enumerate(answers, start=1) if answer is None]
    if missing:
        raise ValueError(
            f"judge: held-out record {record_id!r} turn {missing[0]}: no assistant answer to grade against "
            "(eval.judge.held_out_references=true needs one per user turn)"
        )
    return [a for a in answers if a is not None]


def _jsonl(key: str, path: str | Path, text: str | None = None) -> Iterator[tuple[int, Any]]:
    """The file's records through the one JSONL reader, a bad line named with the config key."""
    try:
        yield from read_jsonl(path, text)
    except JsonlError as e:
        raise ValueError(f"{key}: {e}") from None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# --- answers ---------------------------------------------------------------------------------------------


def answer_questions(context: EvalContext, questions: list[Question], max_new_tokens: int) -> list[list[Any]]:
    """The model's answers, turn by turn with its own history; all questions batched per depth (the
    shared `generation.rollout`).

    Returns:
        `answers[q][t]`: the `Generation` of question q's turn t+1.
    """
    from sft_sweeps.evaluation.generation import Replay, rollout

    return rollout(
        context.model,
        context.tokenizer,
        [Replay(q.turns, q.system) for q in questions],
        context.settings.eval.batch_size,
        max_new_tokens,
        context.window,
        context.generation_backend,
    )


# --- prompts ---------------------------------------------------------------------------------------------


def load_prompts(path: str | Path | None) -> dict[str, Prompt]:
    """The four single-grade prompts of a FastChat `judge_prompts.jsonl`-schema file (null: the shipped one).

    Other prompts in the file (FastChat's pairwise ones) are ignored.

    Raises:
        FileNotFoundError: no such file (the message names `eval.judge.prompts`).
        ValueError: a needed prompt is missing, or uses a field or an output format this judge cannot fill.
    """
    if path is None:
        text = resources.files("sft_sweeps.evaluation").joinpath(DEFAULT_PROMPTS).read_text(encoding="utf-8")
        source = f"sft_sweeps/evaluation/{DEFAULT_PROMPTS}"
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"eval.judge.prompts: no such file {str(path)!r}")
        text, source = Path(path).read_text(encoding="utf-8"), str(path)
    found: dict[str, Prompt] = {}
    for number, record in _jsonl("eval.judge.prompts", source, text):
        where = f"eval.judge.prompts: {source}:{number}"
        if not isinstance(record, dict) or record.get("name") not in PROMPT_NAMES:
            continue
        for key in ("system_prompt", "prompt_template"):
            if not isinstance(record.get(key), str):
                raise ValueError(f"{where}: prompt {record['name']!r} needs a string field {key!r}")
            unknown = [f for f in _field_names(record[key]) if not _FIELDS.fullmatch(f)]
            if unknown:
                raise ValueError(
                    f"{where}: field {key!r} of {record['name']!r} uses unknown fields {unknown}"
                )
        if record.get("output_format", "[[rating]]") != "[[rating]]":
            raise ValueError(f"{where}: field 'output_format' must be '[[rating]]' (single grading)")
        found[record["name"]] = Prompt(record["name"], record["system_prompt"], record["prompt_template"])
    missing = [name for name in PROMPT_NAMES if name not in found]
    if missing:
        raise ValueError(f"eval.judge.prompts: {source} lacks the prompts {missing}")
    return found


def _field_names(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # an unmatched brace
        raise ValueError(f"not a format string ({e})") from None


def prompts_sha256(prompts: dict[str, Prompt]) -> str:
    """sha256 over the prompts in use (not the whole file): runs graded with the same text share it."""
    used = [[p.name, p.system_prompt, p.prompt_template] for p in (prompts[n] for n in PROMPT_NAMES)]
    return hashlib.sha256(json.dumps(used).encode()).hexdigest()


def render(prompt: Prompt, question: Question, answers: list[str], turn: int) -> list[dict[str, str]]:
    """The judge's messages for answer `turn` (1-based) of `question`, turns 1..turn in view.

    Raises:
        ValueError: a multi-turn template that would not show the judged answer (e.g. FastChat's own
            two-turn template on a third turn).
    """
    questions, answers = question.turns[:turn], answers[:turn]
    references = (question.reference or [])[:turn]
    values: dict[str, Any] = {
        "question": questions[-1],
        "answer": answers[-1],
        "turn": turn,
        "turn_ordinal": _ORDINALS[turn - 1] if turn <= len(_ORDINALS) else f"{turn}th",
        "conversation": _transcript(questions, answers, "Assistant A"),
        "ref_conversation": _transcript(questions, references, "Reference answer"),
    }
    for i, text in enumerate(questions, start=1):
        values[f"question_{i}"] = text
    for i, text in enumerate(answers, start=1):
        values[f"answer_{i}"] = text
    for i, text in enumerate(references, start=1):
        values[f"ref_answer_{i}"] = text
    fields = _field_names(prompt.system_prompt) + _field_names(prompt.prompt_template)
    if not {"answer", "conversation", f"answer_{turn}"} & set(fields):
        raise ValueError(
            f"eval.judge.prompts: prompt {prompt.name!r} does not show the answer to turn {turn} of question "
            f"{question.id!r}; use {{conversation}} (every turn) or {{answer_{turn}}}"
        )
    missing = sorted(set(fields) - set(values))
    if missing:
        raise ValueError(
            f"eval.judge.prompts: prompt {prompt.name!r} needs {missing}, which question {question.id!r} "
            f"turn {turn} lacks"
        )
    return [
        {"role": "system", "content": prompt.system_prompt.format_map(values)},
        {"role": "user", "content": prompt.prompt_template.format_map(values)},
    ]


def _transcript(questions: list[str], answers: list[str], speaker: str) -> str:
    blocks = [f"### User:\n{q}\n\n### {speaker}:\n{a}" for q, a in zip(questions, answers, strict=False)]
    return "\n\n".join(blocks)


def pick_prompt(
    prompts: dict[str, Prompt], question: Question, turn: int, reference_categories: list[str]
) -> Prompt:
    """MT-Bench's choice: the reference prompts for reference categories with references (or a question graded
    against its reference whatever its category), single-v1 else."""
    with_reference = (
        (question.category in reference_categories or question.graded_against_reference)
        and question.reference is not None
        and len(question.reference) >= turn
    )
    name = "single-math-v1" if with_reference else "single-v1"
    return prompts[name if turn == 1 else f"{name}-multi-turn"]


def judge_tasks(
    questions: list[Question], answers: list[list[Any]], prompts: dict[str, Prompt], cfg: JudgeConfig
) -> list[_Task]:
    """One judge request per answered turn, keyed for the cache."""
    tasks = []
    for qi, question in enumerate(questions):
        texts = [a.text for a in answers[qi]]
        for turn in range(1, len(texts) + 1):
            prompt = pick_prompt(prompts, question, turn, cfg.reference_categories)
            messages = render(prompt, question, texts, turn)
            tasks.append(_Task(qi, turn, prompt, messages, cache_key(cfg, messages)))
    return tasks


# --- the judge -------------------------------------------------------------------------------------------


def cache_key(cfg: JudgeConfig, messages: list[dict[str, str]]) -> str:
    """sha256 of what determines a judgment: the judge model, its token budget, temperature 0 and the
    rendered messages (template, question, reference and answers). The server address is left out: the
    same model behind another host gives the same judgment."""
    payload = {"model": cfg.model, "max_tokens": cfg.judge_max_tokens, "temperature": 0, "messages": messages}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def parse_grade(output: str, mode: str = "strict") -> float | None:
    """The grade in a judgment, None when there is none (or it is outside 1-10).

    Args:
        mode: `fastchat`: FastChat's rule (the first `[[n]]`, else the first `[n]`; out of range is no
            grade), for numbers comparable with published MT-Bench tables; `strict`: only `[[n]]`, the last
            one in 1-10 (the verdict closes the judgment; an earlier `[[5]]` quotes the prompt's example, and
            `see [2]` is a citation, not a grade).

    Example:
        >>> quoted = 'As in "Rating: [[5]]"... Rating: [[8]]'
        >>> parse_grade(quoted), parse_grade("See [2]."), parse_grade("[[11]]")
        (8.0, None, None)
        >>> parse_grade(quoted, "fastchat"), parse_grade("See [2].", "fastchat")
        (5.0, 2.0)
    """
    if mode == "strict":
        grades = [float(g) for g in _GRADE.findall(output)]
        in_range = [g for g in grades if 1.0 <= g <= 10.0]
        return in_range[-1] if in_range else None
    match = _GRADE.search(output) or _GRADE_BACKUP.search(output)
    if match is None:
        return None
    grade = float(match.group(1))
    return grade if 1.0 <= grade <= 10.0 else None


def judgment_from_reply(
    output: str | None, refusal: str | None = None, finish_reason: str | None = None, parse: str = "strict"
) -> Judgment:
    """Classify a judge's reply: a grade, a refusal (the API's `refusal` field or a content filter), or text
    without a grade by the `parse` rule (a parse failure)."""
    reply = {"output": output, "refusal": refusal, "finish_reason": finish_reason}
    if refusal or finish_reason == "content_filter":
        return Judgment("refusal", output=output or refusal, reply=reply)
    grade = parse_grade(output or "", parse)
    return Judgment("ok" if grade is not None else "parse_failure", grade=grade, output=output, reply=reply)


def judge_all(tasks: list[_Task], cfg: JudgeConfig, cache: Path | None) -> None:
    """Fill `task.judgment` for every task: from the cache, else from the judge (`cfg.concurrency` requests in
    flight); each judgment is cached as soon as it arrives."""
    todo = []
    for task in tasks:
        cached = _read_cache(cache, task.key, cfg.parse) if cache is not None else None
        if cached is not None:
            task.judgment = cached
        else:
            todo.append(task)
    if not todo:
        return
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env is not None else ""
    client = _client(cfg, key)

    def work(task: _Task) -> None:
        task.judgment = _ask(client, cfg, task.messages, key)
        if cache is not None and task.judgment.reply is not None:
            _write_cache(cache, task, cfg.model)

    try:
        with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="judge") as pool:
            # list() re-raises a bug in `work` here instead of leaving a task without a judgment.
            list(pool.map(work, todo))
    finally:
        client.close()


def _client(cfg: JudgeConfig, key: str) -> Any:
    import openai

    # The client retries connection errors, 408/409/429 and 5xx with exponential backoff (`max_retries`).
    # A server without a key still needs a non-empty one here (vLLM's convention: EMPTY).
    return openai.OpenAI(
        base_url=cfg.base_url, api_key=key or "EMPTY", timeout=cfg.timeout_s, max_retries=cfg.max_retries
    )


def _ask(client: Any, cfg: JudgeConfig, messages: list[dict[str, str]], key: str) -> Judgment:
    import openai

    try:
        response = client.chat.completions.create(
            model=cfg.model, messages=messages, temperature=0, max_tokens=cfg.judge_max_tokens
        )
    except openai.OpenAIError as e:
        return Judgment("request_failure", error=scrub(failure_reason(e), key))
    except ValueError as e:  # a 200 whose body is not JSON (json.JSONDecodeError): this item's failure only
        return Judgment("request_failure", error=scrub(f"invalid response (not JSON): {e}", key))
    try:
        if not response.choices:
            return judgment_from_reply(None, finish_reason="no choices", parse=cfg.parse)
        choice = response.choices[0]
        return judgment_from_reply(
            choice.message.content, getattr(choice.message, "refusal", None), choice.finish_reason, cfg.parse
        )
    except (AttributeError, TypeError, IndexError) as e:  # JSON, but not a chat completion
        return Judgment("request_failure", error=scrub(f"invalid response (not a chat completion): {e}", key))


def _cache_path(cache: Path, key: str) -> Path:
    return cache / key[:2] / f"{key}.json"


def _read_cache(cache: Path, key: str, parse: str = "strict") -> Judgment | None:
    try:
        entry = json.loads(_cache_path(cache, key).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    # Parsed again on read: a change of the parsing rule applies to cached judgments too.
    judgment = judgment_from_reply(
        entry.get("output"), entry.get("refusal"), entry.get("finish_reason"), parse
    )
    judgment.cached = True
    return judgment


def _write_cache(cache: Path, task: _Task, model: str | None) -> None:
    assert task.judgment is not None and task.judgment.reply is not None
    entry = {
        "key": task.key,
        "judge_model": model,
        "template": task.prompt.name,
        "messages": task.messages,
        **task.judgment.reply,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(_cache_path(cache, task.key), entry)


# --- results ---------------------------------------------------------------------------------------------


def _items(questions: list[Question], answers: list[list[Any]], tasks: list[_Task]) -> list[dict[str, Any]]:
    items = []
    for task in tasks:
        question, answer, judgment = (
            questions[task.question],
            answers[task.question][task.turn - 1],
            task.judgment,
        )
        assert judgment is not None
        items.append(
            {
                "id": question.id,
                "task": question.category,
                "turn": task.turn,
                "question": question.turns[task.turn - 1],
                "prediction": answer.text,
                "stopped": answer.stopped,
                "prompt_cut": answer.prompt_cut,
                "template": task.prompt.name,
                "grade": judgment.grade,
                "judge_status": judgment.status,
                "judge_output": judgment.output,
                "judge_error": judgment.error,
                "cached": judgment.cached,
            }
        )
    return items


def aggregate(items: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """Counts and the mean grade, overall, per category (`<category>/mean_grade`) and per turn.

    `mean_grade` averages graded turns only and is absent where no turn has a grade: a failure is never
    a number.
    """
    metrics = _counts(items)
    metrics["num_judge_questions"] = float(len({item["id"] for item in items}))
    metrics.update(_mean(items))
    by_category: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        if item["task"] is not None:
            by_category[item["task"]].append(item)
    for category, group in by_category.items():
        metrics.update({f"{category}/{k}": v for k, v in _mean(group).items()})
        metrics[f"{category}/num_graded_turns"] = _counts(group)["num_graded_turns"]
    by_depth: dict[str, dict[int, float]] = defaultdict(dict)
    by_turn: dict[int, list[dict]] = defaultdict(list)
    for item in items:
        by_turn[item["turn"]].append(item)
    for turn in sorted(by_turn):
        for name, value in {**_counts(by_turn[turn]), **_mean(by_turn[turn])}.items():
            if name not in ("num_cached_judgments",):
                by_depth[name][turn] = value
    return metrics, dict(by_depth)


def _counts(items: list[dict[str, Any]]) -> dict[str, float]:
    status = [item["judge_status"] for item in items]
    return {
        "num_judge_turns": float(len(items)),
        "num_graded_turns": float(status.count("ok")),
        "num_parse_failures": float(status.count("parse_failure") + status.count("refusal")),
        "num_request_failures": float(status.count("request_failure")),
        "num_cached_judgments": float(sum(item["cached"] for item in items)),
    }


def _mean(items: list[dict[str, Any]]) -> dict[str, float]:
    grades = [item["grade"] for item in items if item["grade"] is not None]
    return {"mean_grade": sum(grades) / len(grades)} if grades else {}


def judge_identity(cfg: JudgeConfig, prompts: dict[str, Prompt]) -> dict[str, Any]:
    """Who judged, with which prompts, on which questions: what must match for two runs to be compared.
    The base URL keeps only host and port (no path, no credentials a URL might carry)."""
    url = urlsplit(cfg.base_url or "")
    host = f"{url.hostname}:{url.port}" if url.port else url.hostname
    questions_sha = None
    if cfg.questions is not None:
        questions_sha = hashlib.sha256(Path(cfg.questions).read_bytes()).hexdigest()
    return {
        "model": cfg.model,
        "base_url_host": host,
        "prompts": cfg.prompts or f"builtin:{DEFAULT_PROMPTS}",
        "prompts_sha256": prompts_sha256(prompts),
        "questions": cfg.questions,
        "questions_sha256": questions_sha,
        "temperature": 0,
        "parse": cfg.parse,
        "judge_max_tokens": cfg.judge_max_tokens,
        "answer_max_new_tokens": cfg.max_new_tokens,
    }


# --- retrying failed requests on a rerun -----------------------------------------------------------------


def missing_grades(items: list[dict[str, Any]] | None) -> int:
    """Judge requests of a run that failed (no judgment at all): what a rerun asks again."""
    return sum(item.get("judge_status") == "request_failure" for item in items or [])


def retry_request_failures(
    items: list[dict[str, Any]], settings: Config, conversations: list[dict[str, Any]]
) -> tuple[dict[str, float], dict[str, dict[int, float]], list[dict[str, Any]]]:
    """Ask the judge again for exactly the items whose request failed, with the answers the run recorded (no
    generation, no training); every other judgment is kept as it is.

    Args:
        items: the run's judge items (`eval_items["judge"]` of its record).
        settings: the run's config (the same questions, prompts and judge).
        conversations: the held-out split the questions were replayed from when `eval.judge.questions` is
            null (ignored otherwise).

    Returns:
        The judge's metrics, by-depth values and items, recomputed over all items.
    """
    cfg = settings.eval.judge
    prompts = load_prompts(cfg.prompts)
    questions = questions_for(cfg, lambda: conversations)
    index = {q.id: qi for qi, q in enumerate(questions)}
    answers: dict[str, dict[int, str]] = defaultdict(dict)
    for item in items:
        answers[item["id"]][item["turn"]] = item["prediction"]
    tasks, positions = [], []
    for position, item in enumerate(items):
        if item.get("judge_status") != "request_failure" or item["id"] not in index:
            continue
        question = questions[index[item["id"]]]
        texts = [answers[item["id"]][t] for t in range(1, len(answers[item["id"]]) + 1)]
        prompt = pick_prompt(prompts, question, item["turn"], cfg.reference_categories)
        messages = render(prompt, question, texts, item["turn"])
        tasks.append(_Task(index[item["id"]], item["turn"], prompt, messages, cache_key(cfg, messages)))
        positions.append(position)
    cache = Path(settings.cache_dir) / "judge" if cfg.cache else None
    judge_all(tasks, cfg, cache)
    items = [dict(item) for item in items]
    for position, task in zip(positions, tasks, strict=True):
        judgment = task.judgment
        assert judgment is not None
        items[position].update(
            grade=judgment.grade,
            judge_status=judgment.status,
            judge_output=judgment.output,
            judge_error=judgment.error,
            cached=judgment.cached,
        )
    log.info("judge: asked again for %d failed requests, %d still failing", len(tasks), missing_grades(items))
    metrics, by_depth = aggregate(items)
    return metrics, by_depth, items
