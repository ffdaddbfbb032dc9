"""Your own held-out turns, answered: every assistant turn of the test split generated and scored against
the reference answer, with the reference history and with the model's own.

For each held-out conversation, each assistant message (its text; tool calls are left to the `agent`
benchmark) is generated twice through the shared machinery of `multiturn.answer_every_turn`: with the
reference messages before it (`heldout_score`), and with the model's own earlier answers in their place
(`own_heldout_score`, errors compound). The score of one answer is `eval.heldout.metric`:

* `exact`: 1 when prediction and reference are equal after normalisation (case, surrounding whitespace and
  punctuation, inner whitespace runs), else 0. For assistants whose answers are short facts or numbers.
* `contains`: 1 when the normalised reference occurs in the normalised prediction.
* `rouge_l`: ROUGE-L F-measure (Google's `rouge_score`, stemming on), for open-ended answers.
* `chrf`: chrF (`sacrebleu.sentence_chrf`) / 100, character n-grams, robust to inflection and other
  languages.

Generation is greedy and ends at the end-of-turn token; prompts are left-cut to the window as everywhere.
For answers no string metric judges well, the `judge` benchmark grades the same held-out turns (own history)
against the conversation's answers as references: `eval.judge.held_out_references=true`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sft_sweeps.config import Config
    from sft_sweeps.evaluation.base import BenchmarkResult, EvalContext

HELDOUT_METRICS = ("exact", "contains", "rouge_l", "chrf")
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lower case, punctuation removed, whitespace runs made one space, stripped."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _chrf(prediction: str, reference: str) -> float:
    from sacrebleu import sentence_chrf

    return sentence_chrf(prediction, [reference]).score / 100.0


SCORERS: dict[str, Callable[[str, str], float]] = {
    "exact": lambda prediction, reference: float(normalize(prediction) == normalize(reference)),
    "contains": lambda prediction, reference: float(normalize(reference) in normalize(prediction)),
    "rouge_l": lambda prediction, reference: _rouge().score(reference, prediction)["rougeL"].fmeasure,
    "chrf": _chrf,
}


class HeldOutGeneration:
    """The user's own held-out turns answered and scored; see the module docstring."""

    name = "heldout"
    scores_dataset_splits = True  # reads the held-out splits of the run's data (validation too)

    def check(self, settings: Config) -> None:
        pass  # every dataset has a test split of conversations with assistant turns

    def run(self, context: EvalContext) -> BenchmarkResult:
        from sft_sweeps.evaluation.base import BenchmarkResult
        from sft_sweeps.evaluation.multiturn import answer_every_turn, parse_conversations

        settings = context.settings
        cfg = settings.eval.heldout
        score = SCORERS[cfg.metric]
        convs = []
        for conv in parse_conversations(context.conversations, settings.eval):
            conv.turns = [i for i in conv.turns if not conv.messages[i].get("tool_calls")]
            if conv.turns:
                convs.append(conv)
        gold, own = answer_every_turn(
            context.model,
            context.tokenizer,
            convs,
            settings.eval.batch_size,
            cfg.max_new_tokens,
            context.progress,
            context.window,
            context.generation_backend,
        )
        items = []
        for ci, conv in enumerate(convs):
            for t, message_index in enumerate(conv.turns):
                reference = conv.messages[message_index]["content"]
                items.append(
                    {
                        "id": conv.id,
                        "task": None,
                        "turn": t + 1,
                        "gold": reference,
                        "score": score(gold[(ci, t)].text, reference),
                        "own_score": score(own[(ci, t)].text, reference),
                        "prediction": gold[(ci, t)].text,
                        "own_prediction": own[(ci, t)].text,
                        "stopped": gold[(ci, t)].stopped,
                        "prompt_cut": gold[(ci, t)].prompt_cut,
                    }
                )
        metrics, by_depth = aggregate(items)
        return BenchmarkResult(metrics, by_depth, items, {"metric": cfg.metric})


def aggregate(items: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """Mean scores over turns, overall and by turn depth, and the counts."""
    metrics: dict[str, float] = {}
    by_depth: dict[str, dict[int, float]] = {}
    for name, field_name in (("heldout_score", "score"), ("own_heldout_score", "own_score")):
        if items:
            metrics[name] = sum(item[field_name] for item in items) / len(items)
        for depth in sorted({item["turn"] for item in items}):
            values = [item[field_name] for item in items if item["turn"] == depth]
            by_depth.setdefault(name, {})[depth] = sum(values) / len(values)
    metrics["num_heldout_turns"] = float(len(items))
    metrics["num_heldout_conversations"] = float(len({item["id"] for item in items}))
    return metrics, by_depth
