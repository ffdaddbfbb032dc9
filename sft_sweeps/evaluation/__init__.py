"""Evaluation of a trained model: the benchmarks `eval.benchmarks` lists (`BENCHMARKS`).

Example:
    >>> from sft_sweeps.evaluation import EvalContext, run_benchmarks
    >>> out = run_benchmarks(EvalContext(model, tokenizer, splits, settings, window=1024))  # doctest: +SKIP
    >>> out["metrics"]["synthetic/conversation_success"]  # doctest: +SKIP
    0.62
"""

from sft_sweeps.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkResult,
    BenchmarkUnavailable,
    EvalContext,
    check_benchmarks,
    run_benchmarks,
)
from sft_sweeps.evaluation.generation import (
    Generation,
    GenerationBackend,
    generate,
    generate_turns,
    generate_vllm,
    prompt_ids,
)
from sft_sweeps.evaluation.harness import LM_EVAL_TASKS_DIR, run_configured_lm_eval, run_lm_eval
from sft_sweeps.evaluation.multiturn import (
    EvalResult,
    evaluate,
    evaluate_nll,
    evaluate_synthetic,
    exact_match,
)

__all__ = [
    "BENCHMARKS",
    "BenchmarkResult",
    "BenchmarkUnavailable",
    "EvalContext",
    "EvalResult",
    "Generation",
    "GenerationBackend",
    "LM_EVAL_TASKS_DIR",
    "check_benchmarks",
    "evaluate",
    "evaluate_nll",
    "evaluate_synthetic",
    "exact_match",
    "generate",
    "generate_turns",
    "generate_vllm",
    "prompt_ids",
    "run_benchmarks",
    "run_configured_lm_eval",
    "run_lm_eval",
]
