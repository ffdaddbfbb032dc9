"""lm-eval on a model object: the project's own multi-turn tasks plus any installed lm-eval task.

The suite's tasks live in `sft_sweeps/lm_eval_tasks/` (`LM_EVAL_TASKS_DIR`); they are on the task path
here, so `eval.lm_eval_tasks=[sft_sweeps_suite]` works alongside e.g. `ifeval` or `gsm8k`.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft_sweeps.config import EvalConfig
from sft_sweeps.lm_eval_tasks import TASKS_DIR as LM_EVAL_TASKS_DIR

# Keys of lm-eval's results kept in result.json; `configs` and `samples` are large and repeat the task files.
_KEPT = (
    "results",
    "groups",
    "group_subtasks",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "config",
)


def run_lm_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    limit: int | None,
    batch_size: int,
) -> dict[str, Any]:
    """Run lm-eval's `simple_evaluate` on an in-memory model, prompts rendered by its chat template.

    Args:
        model: the trained causal LM (on its device).
        tokenizer: its tokenizer; its chat template renders every prompt (`apply_chat_template=True`),
            which is how a chat-tuned model is meant to be asked.
        tasks: lm-eval task or group names, e.g. `["sft_sweeps_suite", "gsm8k"]`.
        limit: documents per task (None: all).
        batch_size: lm-eval batch size.

    Returns:
        lm-eval's results (`results`, `versions`, `n-samples`, ...) made JSON-serializable.

    Example:
        >>> run_lm_eval(model, tok, ["sft_sweeps_state_tracking"], 20, 16)["results"]  # doctest: +SKIP
        {'sft_sweeps_state_tracking': {'exact_match,none': 0.85, 'exact_match_stderr,none': 0.08, ...}}
    """
    # Imported here: lm-eval takes seconds to import and most runs list no tasks.
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    # Indexing lm-eval's ~15k built-in tasks takes ~15 s on a CPU; skip it when only our tasks are asked for.
    manager = TaskManager(include_path=str(LM_EVAL_TASKS_DIR), include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=str(LM_EVAL_TASKS_DIR))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        limit=limit,
        task_manager=manager,
        apply_chat_template=True,
        log_samples=False,
    )
    kept = {key: results[key] for key in _KEPT if key in results}
    return json.loads(json.dumps(kept, default=handle_non_serializable))


def run_configured_lm_eval(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig
) -> dict[str, Any] | None:
    """`run_lm_eval` on `cfg.lm_eval_tasks` with its limit and batch size; None when it lists none."""
    if not cfg.lm_eval_tasks:
        return None
    return run_lm_eval(model, tokenizer, list(cfg.lm_eval_tasks), cfg.lm_eval_limit, cfg.batch_size)
