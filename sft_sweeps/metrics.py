"""The metric vocabulary, declared once: name, benchmark, direction, per-item evidence, short name.

Evaluation writes metrics under `<benchmark>/<name>` (and `<benchmark>/<task>/<name>` for a breakdown,
e.g. `synthetic/state_tracking/turn_exact_match`); the console table, the report, the W&B dashboard and
the value returned to Hydra (`optimized_metric`) all read this module to know what a key means. A key is
looked up by its last component, so records written before metrics carried a benchmark prefix
(`turn_exact_match`) are read the same way.

Every benchmark's metrics are declared here, so the report and the dashboard know them without importing
the benchmarks (torch, transformers). Add a metric by adding one `Metric` to `_DECLARED`; nothing else
lists metric names.

Example:
    >>> lookup("synthetic/state_tracking/turn_exact_match").short
    'turn EM'
    >>> lower_is_better("nll/assistant_nll"), is_compared("train_loss")
    (True, False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One metric.

    Attributes:
        name: the last component of its key, unique across benchmarks.
        benchmark: the benchmark that computes it (`sft_sweeps.evaluation.BENCHMARKS`), or `run` for
            bookkeeping about the run itself.
        higher_is_better: its direction.
        short: a column header that fits a terminal.
        description: what it measures, for tables and docs.
        item_field: the field of the benchmark's per-item records holding its evidence (paired tests over
            items), or None when it has none.
        level: `turn` (an item is one scored turn, keyed by id and turn) or `conversation` (an item is a
            conversation: 1 when `item_field` is true on all its turns).
        compared: compared across strategies in the report; False for bookkeeping (counts, times, the
            training loss, which each strategy computes over different tokens).
        headline: shown in the console table and README table, and its benchmark's dashboard panel.
        turn: the metric covers that turn only (its item test pairs the items of that turn); None: all.
        detail: shown in its benchmark's own table of the report (Multi-IF's turn x language table), not
            in the main results table.
    """

    name: str
    benchmark: str
    higher_is_better: bool
    short: str
    description: str
    item_field: str | None = None
    level: str = "turn"
    compared: bool = True
    headline: bool = False
    turn: int | None = None
    detail: bool = False

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.name}"


def _count(name: str, benchmark: str, description: str) -> Metric:
    return Metric(name, benchmark, True, name.removeprefix("num_"), description, compared=False)


_DECLARED = (
    # synthetic: generation on the project's own multi-turn tasks, exact match against the reference.
    Metric(
        "turn_exact_match",
        "synthetic",
        True,
        "turn EM",
        "per-turn exact match, the reference history before each turn",
        item_field="correct",
        headline=True,
    ),
    Metric(
        "own_history_exact_match",
        "synthetic",
        True,
        "own EM",
        "per-turn exact match, the model's own earlier answers as history",
        item_field="own_correct",
    ),
    Metric(
        "conversation_success",
        "synthetic",
        True,
        "conv",
        "conversations with every turn right, own history",
        item_field="own_correct",
        level="conversation",
        headline=True,
    ),
    Metric(
        "stop_rate",
        "synthetic",
        True,
        "stop",
        "answers that end with an end-of-turn token",
        item_field="stopped",
        headline=True,
    ),
    _count("num_turns", "synthetic", "assistant turns scored"),
    _count("num_conversations", "synthetic", "conversations scored"),
    # heldout: the dataset's own held-out assistant turns, generated and scored (evaluation/heldout.py).
    # Before nll, which `all` wins by construction: in a report on the user's own data it comes first.
    Metric(
        "heldout_score",
        "heldout",
        True,
        "held-out",
        "held-out assistant turns scored against the reference (eval.heldout.metric), reference history",
        item_field="score",
        headline=True,
    ),
    Metric(
        "own_heldout_score",
        "heldout",
        True,
        "own held-out",
        "held-out assistant turns scored against the reference, the model's own earlier answers as history",
        item_field="own_score",
        headline=True,
    ),
    _count("num_heldout_turns", "heldout", "held-out assistant turns scored"),
    _count("num_heldout_conversations", "heldout", "held-out conversations scored"),
    # nll: teacher-forced held-out NLL of assistant turns, in windows of the training length.
    Metric(
        "assistant_nll",
        "nll",
        False,
        "nll",
        "held-out NLL per assistant token (nats); `all` minimises it by construction",
        item_field="nll",
        headline=True,
    ),
    _count("num_scored_tokens", "nll", "assistant tokens scored"),
    _count("num_cut_tokens", "nll", "assistant tokens beyond the window, not scored"),
    _count("num_windowed_turns", "nll", "turns scored in a window shorter than their history"),
    _count("num_nll_conversations", "nll", "conversations scored"),
    # agent: tool use (sft_sweeps.evaluation.agent): gold history per reference step, own history per user
    # turn.
    Metric(
        "step_exact_match",
        "agent",
        True,
        "step EM",
        "assistant steps right (the reference calls, or the reference answer), reference history before each",
        item_field="correct",
        headline=True,
    ),
    Metric(
        "tool_call_exact_match",
        "agent",
        True,
        "call EM",
        "steps that should call tools, calling exactly them (names, JSON-equal arguments), reference history",
        item_field="call_correct",
    ),
    Metric(
        "answer_exact_match",
        "agent",
        True,
        "answer EM",
        "final answers right after the tool results, reference history",
        item_field="answer_correct",
    ),
    Metric(
        "tool_call_validity",
        "agent",
        True,
        "valid call",
        "messages attempting a call whose calls parse, name a declared tool and give its required arguments",
        item_field="valid_call",
    ),
    Metric(
        "fabricated_result_rate",
        "agent",
        False,
        "fabricated",
        "messages in which the model writes tool-result markup itself instead of ending (reference history)",
        item_field="fabricated",
        headline=True,
    ),
    Metric(
        "own_turn_success",
        "agent",
        True,
        "own turn",
        "user turns with exactly the reference calls, then the reference answer; the model's own history",
        item_field="own_correct",
    ),
    Metric(
        "task_success",
        "agent",
        True,
        "task",
        "conversations with every user turn right (calls and answer), own history and own tool results",
        item_field="own_correct",
        level="conversation",
        headline=True,
    ),
    Metric(
        "own_fabricated_result_rate",
        "agent",
        False,
        "own fabricated",
        "messages with a fabricated tool result, the model's own history",
    ),
    _count("num_agent_conversations", "agent", "trajectories with tool calls scored"),
    _count("num_agent_steps", "agent", "reference assistant steps scored"),
    _count("num_own_messages", "agent", "assistant messages generated with the model's own history"),
    # multi_if: multi-turn instruction following (sft_sweeps.evaluation.multi_if), own history. The headline
    # is the number the Multi-IF paper leads with: the third turn's overall (mean of prompt/instruction
    # strict/loose) over all languages; every turn x language cell is the `turn_<k>_<language>_<rate>`
    # family below (`MULTI_IF_CELL`).
    Metric(
        "turn_3_all_languages_overall",
        "multi_if",
        True,
        "IF T3 overall",
        "Multi-IF's overall (mean of prompt/instruction strict/loose) at turn 3, all languages, own history",
        item_field="overall",
        headline=True,
        turn=3,
    ),
    Metric(
        "if_prompt_strict",
        "multi_if",
        True,
        "IF prompt",
        "answers following every instruction in force (strict), all turns pooled, own history",
        item_field="prompt_strict",
    ),
    Metric(
        "if_prompt_loose",
        "multi_if",
        True,
        "IF prompt loose",
        "answers following every instruction (loose)",
        item_field="prompt_loose",
    ),
    Metric(
        "if_instruction_strict",
        "multi_if",
        True,
        "IF inst",
        "instructions followed, over all instructions of all answers (strict)",
        item_field="instruction_strict",
    ),
    Metric(
        "if_instruction_loose",
        "multi_if",
        True,
        "IF inst loose",
        "instructions followed, over all instructions of all answers (loose)",
        item_field="instruction_loose",
    ),
    Metric(
        "if_all_turns_strict",
        "multi_if",
        True,
        "IF all turns",
        "conversations whose every answer follows all its instructions (strict)",
        item_field="prompt_strict",
        level="conversation",
    ),
    _count("num_if_conversations", "multi_if", "Multi-IF conversations scored"),
    _count("num_if_turns", "multi_if", "Multi-IF answers scored"),
    # judge: an LLM judge grades each answer (sft_sweeps.evaluation.judge).
    Metric(
        "mean_grade",
        "judge",
        True,
        "judge",
        "mean judge grade (1-10, MT-Bench single grading) over graded turns; failures counted, not averaged",
        item_field="grade",
        headline=True,
    ),
    _count("num_judge_questions", "judge", "questions answered and judged"),
    _count("num_judge_turns", "judge", "answers sent to the judge"),
    _count("num_graded_turns", "judge", "answers with a grade"),
    _count("num_parse_failures", "judge", "judgments without a [[rating]] in 1-10, refusals included"),
    _count("num_request_failures", "judge", "judge requests that failed after their retries"),
    _count("num_cached_judgments", "judge", "judgments read from the cache instead of the judge"),
    # run: bookkeeping about training.
    Metric("train_loss", "run", False, "train loss", "final training loss (not comparable)", compared=False),
    Metric("train_runtime_s", "run", False, "train s", "training wall time", compared=False),
    Metric("train_steps", "run", True, "steps", "optimizer steps", compared=False),
    Metric("num_parameters", "run", True, "params", "model parameters", compared=False),
    Metric("num_truncated_prompts", "run", False, "cut prompts", "prompts left-truncated", compared=False),
)

METRICS: dict[str, Metric] = {}

# Multi-IF's per turn x language metrics (`turn_2_Chinese_prompt_loose`, `turn_1_all_languages_overall`,
# and each one's `_ci_low`/`_ci_high` bootstrap bounds): one family, since the languages come from the data.
MULTI_IF_RATES = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose", "overall")
MULTI_IF_CELL = re.compile(rf"turn_(\d+)_(\w+?)_({'|'.join(MULTI_IF_RATES)})(_ci_low|_ci_high)?")


def _multi_if_cell(name: str) -> Metric | None:
    match = MULTI_IF_CELL.fullmatch(name)
    if match is None:
        return None
    turn, language, rate, bound = match.groups()
    return Metric(
        name,
        "multi_if",
        True,
        f"T{turn} {language} {rate}{(bound or '').replace('_ci_', ' ')}",
        f"Multi-IF {rate.replace('_', ' ')} at turn {turn}, {language}"
        + (f" ({bound[4:]} bound of its 95% bootstrap interval)" if bound else ""),
        item_field=None if bound else rate,
        compared=bound is None,
        turn=int(turn),
        detail=True,
    )


def register(metric: Metric) -> Metric:
    """Add a metric of `_DECLARED` to `METRICS` (every metric is declared above, never in a benchmark's
    module: the report reads them without importing any benchmark). Raises ValueError on a clash."""
    known = METRICS.get(metric.name)
    if known is not None and known != metric:
        raise ValueError(f"metric {metric.name!r} is declared twice: {known} and {metric}")
    METRICS[metric.name] = metric
    return metric


for _metric in _DECLARED:
    register(_metric)


# Metrics scored on the validation split for model selection (`validation/synthetic/turn_exact_match`):
# the report selects on them and never compares them as if they were test metrics.
VALIDATION_PREFIX = "validation/"


def is_validation(key: str) -> bool:
    """True for a metric scored on the validation split (selection only, never a test result)."""
    return key.startswith(VALIDATION_PREFIX)


def lookup(key: str) -> Metric | None:
    """The metric of a result key (`synthetic/turn_exact_match`, `turn_exact_match`, `a/b/name`), or None."""
    name = key.rsplit("/", 1)[-1]
    return METRICS.get(name) or _multi_if_cell(name)


def is_detail(key: str) -> bool:
    """True for a metric its benchmark's own report table shows (Multi-IF's turn x language cells), left out
    of the main results and training tables."""
    metric = lookup(key)
    return metric is not None and metric.detail


def lower_is_better(key: str) -> bool:
    """Direction of a metric key; undeclared keys rise (e.g. lm-eval accuracies) unless named like a loss."""
    metric = lookup(key)
    if metric is not None:
        return not metric.higher_is_better
    base = key.rsplit("/", 1)[-1]
    return any(word in base for word in ("nll", "loss", "perplexity", "ppl"))


def is_compared(key: str) -> bool:
    """True for metrics the report compares across strategies; False for counts, times, training loss and
    validation metrics (those select a setting; the comparison is on test)."""
    if is_validation(key):
        return False
    metric = lookup(key)
    if metric is not None:
        return metric.compared
    base = key.rsplit("/", 1)[-1]
    return not (base.startswith(("train_", "num_")) or base.endswith(("_s", "_stderr")))


def short_name(key: str) -> str:
    """A column header for a key: the metric's short name, with any task breakdown in front."""
    metric = lookup(key)
    if metric is None:
        return key
    parts = key.split("/")
    task = parts[1] if len(parts) == 3 else None
    return f"{task} {metric.short}" if task else metric.short


def headline_keys(keys: list[str] | set[str]) -> list[str]:
    """The headline metrics among `keys` (overall, not per-task), in declaration order."""
    present = {}
    for key in keys:
        metric = lookup(key)
        if metric is not None and metric.headline and key.count("/") <= 1:
            present[metric.name] = key
    return [present[m.name] for m in METRICS.values() if m.name in present]


def sort_keys(keys: list[str] | set[str]) -> list[str]:
    """Keys in a stable reading order: headline first, then declared, then the rest by name."""
    order = {name: i for i, name in enumerate(METRICS)}
    heads = headline_keys(keys)
    return heads + sorted(
        (k for k in keys if k not in heads),
        key=lambda k: (k.count("/") > 1, order.get(k.rsplit("/", 1)[-1], len(order)), k),
    )


def canonical_key(key: str) -> str:
    """The key a metric has today: records written before benchmark prefixes said `turn_exact_match` and
    `state_tracking/turn_exact_match`; they become `synthetic/turn_exact_match` and
    `synthetic/state_tracking/turn_exact_match`. Other keys are returned unchanged."""
    if is_validation(key):
        return VALIDATION_PREFIX + canonical_key(key.removeprefix(VALIDATION_PREFIX))
    metric = lookup(key)
    if metric is None or metric.benchmark == "run":
        return key
    benchmarks = {m.benchmark for m in METRICS.values()}
    return key if key.split("/", 1)[0] in benchmarks else f"{metric.benchmark}/{key}"


def exact_match(prediction: str, gold: str) -> bool:
    """The one exact-match rule (the synthetic tasks, the agent task, the lm-eval tasks): equal after
    stripping surrounding whitespace; special tokens stay in the prediction, so running on into a new turn
    is wrong."""
    return prediction.strip() == gold.strip()


def arrow(key: str) -> str:
    """The direction of a metric as an arrow beside its name: ↓ lower is better, ↑ higher is better."""
    return "↓" if lower_is_better(key) else "↑"


def fmt(value: float | None, digits: int = 3, dash: str = "—") -> str:
    """A metric value as every table shows it: fixed point, `digits` places, never `-0.000`; `dash` for
    a missing value."""
    if value is None:
        return dash
    text = f"{value:.{digits}f}"
    return text[1:] if re.fullmatch(r"-0\.0*", text) else text
