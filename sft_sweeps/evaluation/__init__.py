"""Evaluation of a trained model: the held-out multi-turn suite, and lm-eval tasks.

Example:
    >>> from sft_sweeps.evaluation import evaluate
    >>> result = evaluate(model, tokenizer, splits["test"], cfg.eval)  # doctest: +SKIP
    >>> result.metrics["conversation_success"]  # doctest: +SKIP
    0.62
"""

from sft_sweeps.evaluation.generation import Generation, generate, prompt_ids
from sft_sweeps.evaluation.harness import LM_EVAL_TASKS_DIR, run_configured_lm_eval, run_lm_eval
from sft_sweeps.evaluation.multiturn import EvalResult, evaluate

__all__ = [
    "EvalResult",
    "Generation",
    "LM_EVAL_TASKS_DIR",
    "evaluate",
    "generate",
    "prompt_ids",
    "run_configured_lm_eval",
    "run_lm_eval",
]
