"""Held-out multi-turn evaluation: exact match per turn, conversation success, stop rate, assistant NLL.

Two histories are scored for every synthetic conversation:

* gold history: turn k is prompted with the reference answers of turns 1..k-1 (`turn_exact_match`);
* own history: turn k is prompted with the model's own earlier answers, so an early error compounds
  (`own_history_exact_match` per turn, `conversation_success` when every turn is right).

An answer is correct when it equals the reference after stripping surrounding whitespace; it is what the
model said before its end-of-turn token, special tokens kept, so running on into an invented user turn
is wrong. No judge model is involved.

Records whose `task` is not a known synthetic task (real chats) are open-ended: exact match means nothing
there, so they get only the NLL of their assistant turns (`assistant_nll`) and are counted in
`num_nll_only_conversations`.

Example:
    >>> cfg = EvalConfig(max_conversations=50)
    >>> result = evaluate(model, tokenizer, splits["test"], cfg)  # doctest: +SKIP
    >>> result.metrics["turn_exact_match"], result.by_depth["turn_exact_match"][3]  # doctest: +SKIP
    (0.91, 0.84)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.progress import Progress
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft_sweeps.config import EvalConfig
from sft_sweeps.data.validate import check_messages
from sft_sweeps.evaluation.generation import (
    Generation,
    GenerationBackend,
    OwnHistory,
    generate_turns,
    prompt_ids,
    rollout,
    stop_token_ids,
)
from sft_sweeps.evaluation.nll import assistant_spans, windowed_turn_nlls
from sft_sweeps.metrics import exact_match
from sft_sweeps.tasks import TEXT_TASKS


@dataclass
class EvalResult:
    """What `evaluate` measured.

    Attributes:
        metrics: flat scalars (`turn_exact_match`, `conversation_success`, `own_history_exact_match`,
            `stop_rate`, `assistant_nll`, counts), plus `<task>/<metric>` for each synthetic task.
        by_depth: metric name -> {assistant turn number (1-based) -> value}.
        items: one dict per scored (conversation, assistant turn): `id`, `task`, `turn`, `correct`, `stopped`,
            `nll`, `num_tokens`, `prediction`, `gold`, `own_correct`, `own_prediction`. Generation fields are
            None for NLL-only records.
    """

    metrics: dict[str, float]
    by_depth: dict[str, dict[int, float]]
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy (depth keys become strings)."""
        return {
            "metrics": dict(self.metrics),
            "by_depth": {
                name: {str(d): v for d, v in values.items()} for name, values in self.by_depth.items()
            },
            "items": [dict(item) for item in self.items],
        }


@dataclass
class _Conversation:
    id: str
    task: str | None  # None: NLL only
    messages: list[dict[str, Any]]
    turns: list[int]  # index in `messages` of each assistant message
    tools: list[dict[str, Any]] | None = None  # the record's tool schemas, rendered by the template


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[dict],
    cfg: EvalConfig,
    progress: bool = True,
    window: int | None = None,
) -> EvalResult:
    """Both halves of the held-out evaluation, items merged per (conversation, turn): `evaluate_synthetic`
    (exact match, stop rate, conversation success) and `evaluate_nll` (assistant NLL).

    Args:
        model: a causal LM in eval mode, on the device to run on.
        tokenizer: its tokenizer, with a chat template and an eos token that ends an assistant turn.
        conversations: records `{"id", "task", "messages"}` (e.g. the test split of `make_splits`); the first
            `cfg.max_conversations` are scored.
        cfg: batch size, generation budget and how many conversations to score.
        progress: show rich progress bars.
        window: the longest token sequence fed to the model (the training `max_length`); None: no limit.

    Returns:
        An `EvalResult`; see the module docstring for what each metric means.

    Raises:
        ValueError: a record has no `messages` list, a message no role or content, or no assistant message.
    """
    synthetic = evaluate_synthetic(model, tokenizer, conversations, cfg, progress, window)
    nll = evaluate_nll(model, tokenizer, conversations, cfg, progress, window)
    generated = {(item["id"], item["turn"]): item for item in synthetic.items}
    items = [{**item, **generated.get((item["id"], item["turn"]), _NOT_GENERATED)} for item in nll.items]
    metrics = {**nll.metrics, **synthetic.metrics}
    metrics["num_conversations"] = nll.metrics["num_nll_conversations"]
    metrics["num_nll_only_conversations"] = metrics["num_conversations"] - synthetic.metrics.get(
        "num_conversations", 0.0
    )
    return EvalResult(metrics=metrics, by_depth={**nll.by_depth, **synthetic.by_depth}, items=items)


_NOT_GENERATED = {
    "correct": None,
    "stopped": None,
    "prediction": None,
    "own_correct": None,
    "own_prediction": None,
}


def evaluate_synthetic(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[dict],
    cfg: EvalConfig,
    progress: bool = True,
    window: int | None = None,
    backend: GenerationBackend | None = None,
) -> EvalResult:
    """Exact match on the conversations of known synthetic tasks, with gold and with own history.

    Records of other tasks (real chats) are skipped: exact match means nothing on open-ended answers.
    Arguments and errors as for `evaluate`; `backend` picks the generation engine (None: hf). Items: `id`,
    `task`, `turn`, `gold`, `correct`, `stopped`, `prediction`, `own_correct`, `own_prediction`, `prompt_cut`.
    """
    convs = [c for c in parse_conversations(conversations, cfg) if c.task is not None]
    gold_gen, own_gen = answer_every_turn(
        model, tokenizer, convs, cfg.batch_size, cfg.max_new_tokens, progress, window, backend
    )
    items = []
    for ci, c in enumerate(convs):
        for t, message_index in enumerate(c.turns):
            gold, own = gold_gen[(ci, t)], own_gen[(ci, t)]
            reference = c.messages[message_index]["content"]
            items.append(
                {
                    "id": c.id,
                    "task": c.task,
                    "turn": t + 1,
                    "gold": reference,
                    "correct": exact_match(gold.text, reference),
                    "stopped": gold.stopped,
                    "prediction": gold.text,
                    "own_correct": exact_match(own.text, reference),
                    "own_prediction": own.text,
                    "prompt_cut": gold.prompt_cut,
                }
            )
    metrics, by_depth = _aggregate(items, _generation_means)
    if items:
        metrics["num_truncated_prompts"] = float(sum(item["prompt_cut"] > 0 for item in items))
    return EvalResult(metrics=metrics, by_depth=by_depth, items=items)


def evaluate_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[dict],
    cfg: EvalConfig,
    progress: bool = True,
    window: int | None = None,
) -> EvalResult:
    """Teacher-forced NLL of every assistant turn of every conversation, in windows of `window` tokens.

    Arguments and errors as for `evaluate`. Items: `id`, `task`, `turn`, `gold`, `nll` (per token),
    `num_tokens`, `cut_tokens`, `windowed`. Metrics: `assistant_nll` (a mean over tokens, not turns),
    `num_scored_tokens`, `num_cut_tokens`, `num_windowed_turns`, `num_nll_conversations`.
    """
    convs = parse_conversations(conversations, cfg)
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    gold_prompts = _turn_prompts(tokenizer, convs)
    with Progress(disable=not progress, transient=True) as bars:
        nll_bar = bars.add_task("assistant NLL", total=len(convs))
        full_ids = _conversation_ids(tokenizer, convs)
        spans = [
            assistant_spans(ids, prompts, stops, c.id)
            for ids, prompts, c in zip(full_ids, gold_prompts, convs, strict=True)
        ]
        longest = max((len(ids) for ids in full_ids), default=2)
        nlls = windowed_turn_nlls(
            model, full_ids, spans, pad_id, cfg.batch_size, window or longest, _advance(bars, nll_bar)
        )
    items = []
    for ci, c in enumerate(convs):
        for t, message_index in enumerate(c.turns):
            turn = nlls[ci][t]
            items.append(
                {
                    "id": c.id,
                    "task": c.task,
                    "turn": t + 1,
                    "gold": c.messages[message_index]["content"],
                    "nll": turn.nll_sum / turn.num_tokens,
                    "num_tokens": turn.num_tokens,
                    "cut_tokens": turn.cut_tokens,
                    "windowed": turn.windowed,
                }
            )
    metrics, by_depth = _aggregate(items, _nll_means)
    metrics["num_nll_conversations"] = float(len(convs))
    if items:
        metrics["num_scored_tokens"] = float(sum(i["num_tokens"] for i in items))
        metrics["num_cut_tokens"] = float(sum(i["cut_tokens"] for i in items))
        metrics["num_windowed_turns"] = float(sum(i["windowed"] for i in items))
    return EvalResult(metrics=metrics, by_depth=by_depth, items=items)


def answer_every_turn(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    convs: list[_Conversation],
    batch_size: int,
    max_new_tokens: int,
    progress: bool,
    window: int | None,
    backend: GenerationBackend | None,
) -> tuple[dict[tuple[int, int], Generation], dict[tuple[int, int], Generation]]:
    """Every assistant turn of every conversation answered twice: with the reference history (one batched
    pass over all turns) and with the model's own earlier answers (`rollout`).

    Returns:
        gold-history and own-history answers, each keyed by (conversation index, turn index).
    """
    gold_prompts = _turn_prompts(tokenizer, convs)
    with Progress(disable=not progress, transient=True) as bars:
        gen_bar = bars.add_task("generate (gold history)", total=sum(len(c.turns) for c in convs))
        flat = [(ci, t) for ci, c in enumerate(convs) for t in range(len(c.turns))]
        outputs = generate_turns(
            model,
            tokenizer,
            [gold_prompts[ci][t] for ci, t in flat],
            batch_size,
            max_new_tokens,
            _advance(bars, gen_bar),
            window,
            backend,
        )
        gold_gen = dict(zip(flat, outputs, strict=True))
        own_bar = bars.add_task("generate (own history)", total=len(flat))
        # While a conversation's own history renders to the ids of its gold history, the gold-history
        # answer is reused: greedy decoding of the same ids gives the same answer.
        own_answers = rollout(
            model,
            tokenizer,
            [OwnHistory(c.messages, c.turns, c.tools) for c in convs],
            batch_size,
            max_new_tokens,
            window,
            backend,
            _advance(bars, own_bar),
            reuse=lambda ci, t, prompt: gold_gen[(ci, t)] if prompt == gold_prompts[ci][t] else None,
        )
    own_gen = {(ci, t): a for ci, answers in enumerate(own_answers) for t, a in enumerate(answers)}
    return gold_gen, own_gen


def parse_conversations(conversations: list[dict], cfg: EvalConfig) -> list[_Conversation]:
    """The held-out records as conversations to score (at most `cfg.max_conversations`), each validated.

    Raises:
        ValueError: a record's messages are malformed or have no assistant turn, or two share an id.
    """
    records = conversations if cfg.max_conversations is None else conversations[: cfg.max_conversations]
    convs = [_parse(record, position) for position, record in enumerate(records)]
    duplicates = sorted(i for i, n in Counter(c.id for c in convs).items() if n > 1)
    if duplicates:
        raise ValueError(f"eval records: field 'id' must be unique, repeated: {duplicates[:5]}")
    return convs


def _parse(record: dict, position: int) -> _Conversation:
    record_id = str(record.get("id", f"#{position}"))
    messages = record.get("messages")
    check_messages(messages, f"eval record {record_id!r}")
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError(f"eval record {record_id!r}: field 'messages' has no assistant message to score")
    task = record.get("task")
    return _Conversation(
        record_id, task if task in TEXT_TASKS else None, messages, turns, record.get("tools")
    )


def _conversation_ids(tokenizer: PreTrainedTokenizerBase, convs: list[_Conversation]) -> list[list[int]]:
    """Each whole conversation rendered as in training: with its tools, when it declares any."""
    if not convs:
        return []
    if all(c.tools is None for c in convs):
        return tokenizer.apply_chat_template([c.messages for c in convs], tokenize=True, return_dict=False)
    return [
        tokenizer.apply_chat_template(c.messages, tools=c.tools, tokenize=True, return_dict=False)
        for c in convs
    ]


def _turn_prompts(tokenizer: PreTrainedTokenizerBase, convs: list[_Conversation]) -> list[list[list[int]]]:
    histories = [c.messages[:i] for c in convs for i in c.turns]
    flat = iter(prompt_ids(tokenizer, histories, [c.tools for c in convs for _ in c.turns]))
    return [[next(flat) for _ in c.turns] for c in convs]


def _aggregate(
    items: list[dict[str, Any]], means: Callable[[list[dict[str, Any]], bool], dict[str, float]]
) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """`means` over items, overall, per task (`<task>/<metric>`) and per turn depth."""
    metrics: dict[str, float] = {}
    by_depth: dict[str, dict[int, float]] = {}
    groups: dict[str, list[dict]] = {"": items} if items else {}
    for item in items:
        if item["task"] is not None:
            groups.setdefault(f"{item['task']}/", []).append(item)
    for prefix, group in groups.items():
        metrics.update({prefix + k: v for k, v in means(group, True).items()})
        depth_groups: dict[int, list[dict]] = defaultdict(list)
        for item in group:
            depth_groups[item["turn"]].append(item)
        for depth in sorted(depth_groups):
            for name, value in means(depth_groups[depth], False).items():
                by_depth.setdefault(prefix + name, {})[depth] = value
        if prefix:
            metrics[prefix + "num_conversations"] = float(len({item["id"] for item in group}))
    return metrics, by_depth


def _nll_means(items: list[dict[str, Any]], overall: bool) -> dict[str, float]:
    # A mean over tokens, not over turns.
    return {
        "assistant_nll": sum(i["nll"] * i["num_tokens"] for i in items) / sum(i["num_tokens"] for i in items)
    }


def _generation_means(items: list[dict[str, Any]], overall: bool) -> dict[str, float]:
    out = {
        "turn_exact_match": sum(i["correct"] for i in items) / len(items),
        "own_history_exact_match": sum(i["own_correct"] for i in items) / len(items),
        "stop_rate": sum(i["stopped"] for i in items) / len(items),
        "num_turns": float(len(items)),
    }
    if overall:
        success: dict[str, bool] = {}
        for i in items:
            success[i["id"]] = success.get(i["id"], True) and i["own_correct"]
        out["conversation_success"] = sum(success.values()) / len(success)
        out["num_conversations"] = float(len(success))
    return out


def _advance(bars: Progress, task_id: Any) -> Callable[[int], None]:
    return lambda n: bars.advance(task_id, n)
