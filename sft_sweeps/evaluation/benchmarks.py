"""Benchmarks by name: what `eval.benchmarks` lists, checked before training, run after it.

A benchmark is an object with a `name`, a `check(settings)` that fails before any training when it cannot
run (data missing offline, a judge not configured), and a `run(context)` that scores the trained model.
Its metrics land in result.json and W&B under `<name>/`, its per-item records under `eval_items[<name>]`
(the report's paired tests read them through `sft_sweeps.metrics`), and anything that identifies how it
scored (data version, judge model) under `benchmarks[<name>]`.

Add one: write a module with a class like those below (its types come from `sft_sweeps.evaluation.base`),
declare its metrics in `sft_sweeps.metrics` (the one place every metric is declared: the report reads them
there without importing any benchmark), and add it to `BENCHMARKS`.

Example:
    >>> check_benchmarks(settings)                           # doctest: +SKIP
    >>> out = run_benchmarks(EvalContext(model, tok, splits, settings))   # doctest: +SKIP
    >>> out["metrics"]["synthetic/turn_exact_match"]        # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from sft_sweeps.config import Config
from sft_sweeps.evaluation.agent import AgentBenchmark
from sft_sweeps.evaluation.base import Benchmark, BenchmarkResult, BenchmarkUnavailable, EvalContext
from sft_sweeps.evaluation.generation import require_vllm
from sft_sweeps.evaluation.heldout import HeldOutGeneration
from sft_sweeps.evaluation.judge import JudgeBenchmark
from sft_sweeps.evaluation.multi_if import MultiIFBenchmark

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkResult",
    "BenchmarkUnavailable",
    "EvalContext",
    "check_benchmarks",
    "get_benchmark",
    "run_benchmarks",
]


def _held_out(evaluate_split: Any, context: EvalContext, **extra: Any) -> Any:
    """`evaluate_synthetic` or `evaluate_nll` on the context's held-out split."""
    return evaluate_split(
        context.model,
        context.tokenizer,
        context.conversations,
        context.settings.eval,
        context.progress,
        context.window,
        **extra,
    )


class SyntheticBenchmark:
    """The project's own multi-turn tasks: exact match with gold and own history, stop rate."""

    name = "synthetic"
    scores_dataset_splits = True  # reads the held-out splits of the run's data (validation too)

    def check(self, settings: Config) -> None:
        if settings.dataset.source != "synthetic":
            raise BenchmarkUnavailable(
                f"eval.benchmarks lists 'synthetic', which scores the project's synthetic tasks, but "
                f"dataset={settings.dataset.name} has none; drop it (e.g. eval.benchmarks=[nll,multi_if])"
            )

    def run(self, context: EvalContext) -> BenchmarkResult:
        from sft_sweeps.evaluation.multiturn import evaluate_synthetic

        result = _held_out(evaluate_synthetic, context, backend=context.generation_backend)
        return BenchmarkResult(result.metrics, result.by_depth, result.items)


class HeldOutNLL:
    """Teacher-forced NLL of held-out assistant turns. `all` minimises it by construction: not a judge."""

    name = "nll"
    scores_dataset_splits = True

    def check(self, settings: Config) -> None:
        pass

    def run(self, context: EvalContext) -> BenchmarkResult:
        from sft_sweeps.evaluation.multiturn import evaluate_nll

        result = _held_out(evaluate_nll, context)
        items = [{k: v for k, v in item.items() if k != "gold"} for item in result.items]
        return BenchmarkResult(result.metrics, result.by_depth, items)


class LmEvalBenchmark:
    """Any lm-eval task (`eval.lm_eval_tasks`) on the trained model, prompts through its chat template."""

    name = "lm_eval"

    def check(self, settings: Config) -> None:
        if not settings.eval.lm_eval_tasks:
            raise BenchmarkUnavailable(
                "eval.benchmarks lists 'lm_eval' but eval.lm_eval_tasks is empty; name the tasks, e.g. "
                "eval.lm_eval_tasks=[sft_sweeps_suite]"
            )

    def run(self, context: EvalContext) -> BenchmarkResult:
        from sft_sweeps.evaluation.harness import run_configured_lm_eval

        raw = run_configured_lm_eval(context.model, context.tokenizer, context.settings.eval) or {}
        metrics = {}
        for task, values in (raw.get("results") or {}).items():
            for metric, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and "stderr" not in metric:
                    metrics[f"{task}/{metric.replace(',', '_')}"] = float(value)
        return BenchmarkResult(metrics, info={"results": raw})


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        SyntheticBenchmark(),
        HeldOutNLL(),
        HeldOutGeneration(),
        AgentBenchmark(),
        LmEvalBenchmark(),
        MultiIFBenchmark(),
        JudgeBenchmark(),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`. Raises BenchmarkUnavailable listing the known names."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise BenchmarkUnavailable(
            f"eval.benchmarks: unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}"
        ) from None


def check_benchmarks(settings: Config) -> None:
    """Fail before training when a listed benchmark cannot run (BenchmarkUnavailable says how to fix it),
    or when `eval.generation_backend=vllm` and vllm is not installed (checked without importing it)."""
    for name in settings.eval.benchmarks:
        get_benchmark(name).check(settings)
    if settings.eval.generation_backend == "vllm":
        require_vllm()


def run_benchmarks(context: EvalContext) -> dict[str, Any]:
    """Run every benchmark of `eval.benchmarks`; their outputs merged under each one's name.

    Returns:
        `metrics` and `by_depth` with keys `<benchmark>/<metric>`, `eval_items` {benchmark: items} and
        `benchmarks` {benchmark: info}.
    """
    out: dict[str, Any] = {"metrics": {}, "by_depth": {}, "eval_items": {}, "benchmarks": {}}
    for name in context.settings.eval.benchmarks:
        result = get_benchmark(name).run(context)
        out["metrics"].update({f"{name}/{k}": v for k, v in result.metrics.items()})
        out["by_depth"].update(
            {f"{name}/{k}": {str(d): v for d, v in values.items()} for k, values in result.by_depth.items()}
        )
        out["eval_items"][name] = result.items
        out["benchmarks"][name] = result.info
    return out
