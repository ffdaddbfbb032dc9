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
from sft_sweeps.evaluation.generation import Generation, generate, prompt_ids, stop_token_ids
from sft_sweeps.evaluation.nll import assistant_spans, turn_nlls
from sft_sweeps.tasks import TASKS


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


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[dict],
    cfg: EvalConfig,
    progress: bool = True,
) -> EvalResult:
    """Score a model on held-out conversations with greedy, batched generation.

    Args:
        model: a causal LM in eval mode, on the device to run on.
        tokenizer: its tokenizer, with a chat template and an eos token that ends an assistant turn.
        conversations: records `{"id", "task", "messages"}` (e.g. the test split of `make_splits`); the first
            `cfg.max_conversations` are scored.
        cfg: batch size, generation budget and how many conversations to score.
        progress: show rich progress bars.

    Returns:
        An `EvalResult`; see the module docstring for what each metric means.

    Raises:
        ValueError: a record has no `messages` list, a message no role or content, or no assistant message.
    """
    records = conversations if cfg.max_conversations is None else conversations[: cfg.max_conversations]
    convs = [_parse(record, position) for position, record in enumerate(records)]
    duplicates = sorted(i for i, n in Counter(c.id for c in convs).items() if n > 1)
    if duplicates:
        raise ValueError(f"eval records: field 'id' must be unique, repeated: {duplicates[:5]}")
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    gold_prompts = _turn_prompts(tokenizer, convs)
    scored = [c for c in convs if c.task is not None]

    with Progress(disable=not progress, transient=True) as bars:
        nll_bar = bars.add_task("assistant NLL", total=len(convs))
        full_ids = (
            tokenizer.apply_chat_template([c.messages for c in convs], tokenize=True, return_dict=False)
            if convs
            else []
        )
        spans = [
            assistant_spans(ids, prompts, stops, c.id)
            for ids, prompts, c in zip(full_ids, gold_prompts, convs, strict=True)
        ]
        nlls = turn_nlls(model, full_ids, spans, pad_id, cfg.batch_size, _advance(bars, nll_bar))

        gen_bar = bars.add_task("generate (gold history)", total=sum(len(c.turns) for c in scored))
        flat = [(ci, t) for ci, c in enumerate(convs) if c.task is not None for t in range(len(c.turns))]
        outputs = generate(
            model,
            tokenizer,
            [gold_prompts[ci][t] for ci, t in flat],
            cfg.batch_size,
            cfg.max_new_tokens,
            _advance(bars, gen_bar),
        )
        gold_gen = dict(zip(flat, outputs, strict=True))

        own_bar = bars.add_task("generate (own history)", total=sum(len(c.turns) for c in scored))
        own_gen = _own_history(model, tokenizer, convs, gold_prompts, gold_gen, cfg, _advance(bars, own_bar))

    items = []
    for ci, c in enumerate(convs):
        for t, message_index in enumerate(c.turns):
            nll_sum, num_tokens = nlls[ci][t]
            item: dict[str, Any] = {
                "id": c.id,
                "task": c.task,
                "turn": t + 1,
                "nll": nll_sum / num_tokens,
                "num_tokens": num_tokens,
                "gold": c.messages[message_index]["content"],
                "correct": None,
                "stopped": None,
                "prediction": None,
                "own_correct": None,
                "own_prediction": None,
            }
            if c.task is not None:
                gold, own = gold_gen[(ci, t)], own_gen[(ci, t)]
                item.update(
                    correct=_match(gold.text, item["gold"]),
                    stopped=gold.stopped,
                    prediction=gold.text,
                    own_correct=_match(own.text, item["gold"]),
                    own_prediction=own.text,
                )
            items.append(item)
    metrics, by_depth = _aggregate(items)
    metrics["num_conversations"] = float(len(convs))
    metrics["num_nll_only_conversations"] = float(len(convs) - len(scored))
    return EvalResult(metrics=metrics, by_depth=by_depth, items=items)


def _match(prediction: str, gold: str) -> bool:
    return prediction.strip() == gold.strip()


def _parse(record: dict, position: int) -> _Conversation:
    record_id = str(record.get("id", f"#{position}"))
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"eval record {record_id!r}: field 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or "content" not in message
        ):
            raise ValueError(f"eval record {record_id!r}: messages[{i}] needs string 'role' and 'content'")
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError(f"eval record {record_id!r}: field 'messages' has no assistant message to score")
    task = record.get("task")
    return _Conversation(record_id, task if task in TASKS else None, messages, turns)


def _turn_prompts(tokenizer: PreTrainedTokenizerBase, convs: list[_Conversation]) -> list[list[list[int]]]:
    histories = [c.messages[:i] for c in convs for i in c.turns]
    flat = iter(prompt_ids(tokenizer, histories))
    return [[next(flat) for _ in c.turns] for c in convs]


def _own_history(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    convs: list[_Conversation],
    gold_prompts: list[list[list[int]]],
    gold_gen: dict[tuple[int, int], Generation],
    cfg: EvalConfig,
    on_batch: Callable[[int], None],
) -> dict[tuple[int, int], Generation]:
    """Generate turn by turn with the model's own answers as history; all conversations batched per depth.

    While a conversation's own history renders to the same ids as its gold history, the gold-history
    generation is reused: greedy decoding of the same ids gives the same answer.
    """
    own: dict[tuple[int, int], Generation] = {}
    depth = 0
    while True:
        active = [ci for ci, c in enumerate(convs) if c.task is not None and depth < len(c.turns)]
        if not active:
            return own
        histories = []
        for ci in active:
            c = convs[ci]
            history = [dict(m) for m in c.messages[: c.turns[depth]]]
            for t, message_index in enumerate(c.turns[:depth]):
                history[message_index]["content"] = own[(ci, t)].text
            histories.append(history)
        prompts = prompt_ids(tokenizer, histories)
        todo = []
        for ci, prompt in zip(active, prompts, strict=True):
            if prompt == gold_prompts[ci][depth]:
                own[(ci, depth)] = gold_gen[(ci, depth)]
            else:
                todo.append((ci, prompt))
        on_batch(len(active) - len(todo))
        outputs = generate(
            model, tokenizer, [p for _, p in todo], cfg.batch_size, cfg.max_new_tokens, on_batch
        )
        for (ci, _), output in zip(todo, outputs, strict=True):
            own[(ci, depth)] = output
        depth += 1


def _aggregate(items: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """Means over items, overall, per task and per turn depth. NLL is a mean over tokens, not over turns."""
    metrics: dict[str, float] = {}
    by_depth: dict[str, dict[int, float]] = {}
    groups: dict[str, list[dict]] = {"": items}
    for item in items:
        if item["task"] is not None:
            groups.setdefault(f"{item['task']}/", []).append(item)
    for prefix, group in groups.items():
        metrics.update({prefix + k: v for k, v in _means(group).items()})
        depth_groups: dict[int, list[dict]] = defaultdict(list)
        for item in group:
            depth_groups[item["turn"]].append(item)
        for depth in sorted(depth_groups):
            for name, value in _means(depth_groups[depth], with_conversations=False).items():
                by_depth.setdefault(prefix + name, {})[depth] = value
        if prefix:
            metrics[prefix + "num_conversations"] = float(len({item["id"] for item in group}))
    return metrics, by_depth


def _means(items: list[dict[str, Any]], with_conversations: bool = True) -> dict[str, float]:
    if not items:
        return {}
    out = {
        "assistant_nll": sum(i["nll"] * i["num_tokens"] for i in items) / sum(i["num_tokens"] for i in items)
    }
    scored = [i for i in items if i["correct"] is not None]
    if scored:
        out["turn_exact_match"] = sum(i["correct"] for i in scored) / len(scored)
        out["own_history_exact_match"] = sum(i["own_correct"] for i in scored) / len(scored)
        out["stop_rate"] = sum(i["stopped"] for i in scored) / len(scored)
        out["num_turns"] = float(len(scored))
        if with_conversations:
            success: dict[str, bool] = {}
            for i in scored:
                success[i["id"]] = success.get(i["id"], True) and i["own_correct"]
            out["conversation_success"] = sum(success.values()) / len(success)
    return out


def _advance(bars: Progress, task_id: Any) -> Callable[[int], None]:
    return lambda n: bars.advance(task_id, n)
