"""lm-eval glue for the sft_sweeps multi-turn suite: docs, the multi-turn prompt, the metric.

Every YAML file in this folder names `utils.MultiTurnTask` as its class. A document is one assistant turn
of a held-out conversation with the reference history before it (`process_docs`); the prompt is that
history rendered by the model's own chat template; the metric is `sft_sweeps.metrics.exact_match`, the
rule the pipeline uses (lm-eval scores the gold history only; conversation success needs the model's own
answers as history and is measured by `python -m sft_sweeps.evaluate`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import datasets
from lm_eval.api.task import ConfigurableTask

from sft_sweeps.metrics import exact_match

TASKS_DIR = Path(__file__).resolve().parent


class MultiTurnTask(ConfigurableTask):
    """A ConfigurableTask whose prompt is a whole chat history, not a single user message.

    Relative `data_files` in the YAML are read from this folder, so the task runs from any working directory.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        kwargs = dict(config.get("dataset_kwargs") or {})
        if isinstance(kwargs.get("data_files"), dict):
            kwargs["data_files"] = {
                split: str(TASKS_DIR / path) for split, path in kwargs["data_files"].items()
            }
            config["dataset_kwargs"] = kwargs
        super().__init__(config=config)

    def fewshot_context(
        self,
        doc: dict,
        num_fewshot: int,
        system_instruction: str | None = None,
        apply_chat_template: bool = False,
        fewshot_as_multiturn: bool = False,
        chat_template=None,
        gen_prefix: str | None = None,
    ) -> str:
        """The doc's history rendered by the model's chat template, ending with the assistant header.

        With `--apply_chat_template` lm-eval hands over the model's template; without it, the template of
        the tokenizer at `--model_args pretrained=<dir>` is used, so both commands give the same prompt.

        Raises:
            ValueError: few-shot examples are asked for (the history is the context), or no chat template
                can be found.
        """
        if num_fewshot:
            raise ValueError(
                f"{self.config.task}: multi-turn docs carry their own history; use --num_fewshot 0"
            )
        messages = [dict(m) for m in doc["history"]]
        if system_instruction and messages[0]["role"] == "system":  # one system message, lm-eval's first
            messages[0]["content"] = f"{system_instruction}\n{messages[0]['content']}"
        elif system_instruction:
            messages.insert(0, {"role": "system", "content": system_instruction})
        if apply_chat_template and chat_template is not None:
            return chat_template(messages, add_generation_prompt=True)
        pretrained = (self.config.metadata or {}).get("pretrained")
        if not isinstance(pretrained, str):
            raise ValueError(
                f"{self.config.task}: the prompt is a chat history; pass --apply_chat_template, or "
                "--model_args pretrained=<dir> whose tokenizer has a chat template"
            )
        return _tokenizer(pretrained).apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


@functools.cache
def _tokenizer(pretrained: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer at {pretrained!r} has no chat template")
    return tokenizer


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """One doc per assistant turn: `{"id", "task", "turn", "history", "answer"}`, history up to that turn."""
    docs = []
    for record in dataset:
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        turn = 0
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                turn += 1
                docs.append(
                    {
                        "id": record["id"],
                        "task": record["task"],
                        "turn": turn,
                        "history": messages[:i],
                        "answer": message["content"],
                    }
                )
    return datasets.Dataset.from_list(docs)


def doc_to_text(doc: dict) -> str:
    """The last user message (what sample logs show; the prompt itself is `MultiTurnTask.fewshot_context`)."""
    return doc["history"][-1]["content"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match of the generated answer with the reference, surrounding whitespace ignored."""
    return {"exact_match": float(exact_match(results[0], doc["answer"]))}
