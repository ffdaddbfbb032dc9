"""Batched greedy generation of one assistant turn per prompt: left padding, KV cache, stop at end of turn.

Every benchmark generates through one dispatch point, `generate_turns`, which picks the engine that
`eval.generation_backend` names: `hf` (default: `generate`, the trained model in this process) or `vllm`
(`generate_vllm`: the saved model served by vLLM on the GPU, imported only when asked). Both return the
same `Generation` objects, prompts left-cut to the window the same way.

Every own-history evaluation plays its conversations through one loop, `rollout`: per depth, the
conversations still going, each one's history with the model's own earlier answers (an `Episode` says
what comes next: the next user turn, a tool's result, or the end), one batched `generate_turns` call.
`Replay` replays a list of user turns (Multi-IF, the judge's questions); `OwnHistory` replays a reference
conversation with the model's answers in its assistant slots (the synthetic tasks).

Example:
    >>> ids = prompt_ids(tokenizer, [[{"role": "user", "content": "a=1"}]])  # doctest: +SKIP
    >>> generate(model, tokenizer, ids, batch_size=64, max_new_tokens=32)[0].text  # doctest: +SKIP
    'a=1'
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft_sweeps.config import ConfigError

GENERATION_BACKENDS = ("hf", "vllm")


@dataclass
class Generation:
    """One generated assistant turn.

    Attributes:
        text: what the model said before the end-of-turn token (all it said, when it never stopped).
        stopped: the model emitted an end-of-turn token within `max_new_tokens`.
        num_tokens: tokens generated, the end-of-turn token included.
        prompt_cut: tokens dropped from the start of the prompt to fit the model's window.
    """

    text: str
    stopped: bool
    num_tokens: int
    prompt_cut: int = 0


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    histories: list[list[dict]],
    tools: Sequence[list[dict] | None] | None = None,
) -> list[list[int]]:
    """Token ids of each history rendered by the chat template, ending with the assistant header.

    Args:
        tokenizer: its chat template renders the histories.
        histories: message lists.
        tools: per history, the tool schemas the template declares (`tools=`), or None for none.
    """
    if not histories:
        return []
    if tools is None or all(t is None for t in tools):
        return tokenizer.apply_chat_template(
            histories, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    # Each conversation declares its own tools: one template call each.
    return [
        tokenizer.apply_chat_template(
            history, tools=t, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for history, t in zip(histories, tools, strict=True)
    ]


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus any in the model's generation config (e.g. Llama-3's eot)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    ids.discard(None)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config has an eos token id")
    return sorted(ids)


@torch.no_grad()
def pad_rows(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id rows to one width on `side` ("left" for generation, "right" for scoring).

    Example:
        >>> ids, mask = pad_rows([[5, 6], [7]], pad_id=0, side="left")
        >>> ids.tolist(), mask.tolist()
        ([[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    tensors = [torch.tensor(row, dtype=torch.long) for row in rows]
    input_ids = pad_sequence(tensors, batch_first=True, padding_value=pad_id, padding_side=side)
    attention_mask = pad_sequence(
        [torch.ones_like(t) for t in tensors], batch_first=True, padding_value=0, padding_side=side
    )
    return input_ids, attention_mask


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
    window: int | None = None,
) -> list[Generation]:
    """Greedy-decode one assistant turn for every prompt, `batch_size` prompts per `model.generate` call.

    Prompts are sorted by length so a batch carries little padding, and padded on the left so every
    row's next token sits in the last column. Outputs come back in the order of `prompts`. A prompt
    longer than `window - max_new_tokens` keeps its last tokens (the most recent turns) and records how
    many it lost in `Generation.prompt_cut`.

    Args:
        model: a causal LM (its device is used).
        tokenizer: gives the pad token and the end-of-turn token.
        prompts: token ids, e.g. from `prompt_ids`.
        batch_size: prompts per forward pass.
        max_new_tokens: generation budget per prompt.
        on_batch: called with the number of prompts after each batch (progress bars).
        window: the model's usable context (prompt plus answer); None keeps whole prompts.

    Returns:
        One `Generation` per prompt, in input order.
    """
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    prompts, cuts = left_cut(prompts, window, max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        input_ids, attention_mask = pad_rows([prompts[i] for i in batch], pad_id, side="left")
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            # Unset sampling knobs a hub model's generation config may carry: greedy decoding, no warnings.
            temperature=None,
            top_p=None,
            top_k=None,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=stops,
        )
        for row, i in enumerate(batch):
            results[i] = _cut(output[row, input_ids.shape[1] :].tolist(), stops, tokenizer)
            results[i].prompt_cut = cuts[i]
        if on_batch is not None:
            on_batch(len(batch))
    return results  # type: ignore[return-value]


def left_cut(
    prompts: list[list[int]], window: int | None, max_new_tokens: int
) -> tuple[list[list[int]], list[int]]:
    """Each prompt's last `window - max_new_tokens` tokens (at least one), and how many each lost.

    Example:
        >>> left_cut([[1, 2, 3, 4], [5]], window=5, max_new_tokens=2)
        ([[2, 3, 4], [5]], [1, 0])
    """
    keep = None if window is None else max(1, window - max_new_tokens)
    cuts = [0 if keep is None else max(0, len(p) - keep) for p in prompts]
    return [p[cut:] for p, cut in zip(prompts, cuts, strict=True)], cuts


@dataclass(frozen=True)
class GenerationBackend:
    """Which engine answers (`eval.generation_backend`) and, for vLLM, the saved model it loads.

    Attributes:
        name: `hf` (the in-memory model) or `vllm` (the model saved at `model_path`).
        model_path: the trained model on disk (`<run dir>/model`, written when `train.save_model=true`).
    """

    name: str = "hf"
    model_path: str | None = None


def generate_turns(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
    window: int | None = None,
    backend: GenerationBackend | None = None,
) -> list[Generation]:
    """The one dispatch point of generation: `generate` (hf, the default) or `generate_vllm`.

    Arguments as for `generate`; `backend` None means hf. `model` gives the end-of-turn ids either way.

    Raises:
        ConfigError: `vllm` without a saved model (`train.save_model`), or vllm not installed.
    """
    if backend is None or backend.name == "hf":
        return generate(model, tokenizer, prompts, batch_size, max_new_tokens, on_batch, window)
    if backend.name != "vllm":
        raise ConfigError(
            f"eval.generation_backend must be one of {GENERATION_BACKENDS}, got {backend.name!r}"
        )
    if backend.model_path is None:
        raise ConfigError(
            "eval.generation_backend=vllm serves the trained model from disk, but none was saved: set "
            "train.save_model=true (or eval.generation_backend=hf)"
        )
    outputs = generate_vllm(
        backend.model_path, tokenizer, prompts, max_new_tokens, window, stops=stop_token_ids(model, tokenizer)
    )
    if on_batch is not None:
        on_batch(len(prompts))
    return outputs


def require_vllm() -> None:
    """Raise a ConfigError naming `eval.generation_backend` when vllm is missing (found, not imported)."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "eval.generation_backend=vllm, but vllm is not installed: `pip install vllm` (Linux, CUDA GPU), "
            "or use eval.generation_backend=hf (batched KV-cache generation, works everywhere)"
        )


def generate_vllm(
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    max_new_tokens: int,
    window: int | None,
    stops: list[int] | None = None,
) -> list[Generation]:
    """`generate` served by vLLM: greedy, the same left cut to the window, the same `Generation`s.

    The engine is built once per (model, window) and kept for the later turns of the run; it takes half of
    the GPU's memory, leaving the rest to the trained model still loaded in this process.

    Args:
        model_path: a saved Hugging Face model folder (the run's `model/`).
        tokenizer: decodes the answers (special tokens kept, as `generate` does).
        prompts, max_new_tokens, window: as for `generate`.
        stops: end-of-turn ids; None takes the tokenizer's eos.

    Raises:
        ConfigError: vllm is not installed.
    """
    require_vllm()
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    stops = stops or [tokenizer.eos_token_id]
    prompts, cuts = left_cut(prompts, window, max_new_tokens)
    params = SamplingParams(
        temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stops, skip_special_tokens=False
    )
    requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    outputs = _vllm_engine(model_path, window).generate(requests, params, use_tqdm=False)
    results = []
    for output, cut in zip(outputs, cuts, strict=True):
        completion = output.outputs[0]
        result = _cut(list(completion.token_ids), stops, tokenizer)
        if not result.stopped and completion.finish_reason == "stop":  # vLLM may leave the stop id out
            result = Generation(result.text, stopped=True, num_tokens=result.num_tokens + 1)
        result.prompt_cut = cut
        results.append(result)
    return results


@lru_cache(maxsize=1)
def _vllm_engine(model_path: str, window: int | None) -> Any:
    from vllm import LLM

    return LLM(model=model_path, max_model_len=window, gpu_memory_utilization=0.5, seed=0)


def _cut(new_ids: list[int], stops: list[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
    for position, token in enumerate(new_ids):
        if token in stops:
            return Generation(_decode(tokenizer, new_ids[:position]), stopped=True, num_tokens=position + 1)
    return Generation(_decode(tokenizer, new_ids), stopped=False, num_tokens=len(new_ids))


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    # Special tokens stay in the text: an answer running on into `<|im_start|>user` must not read as correct.
    return tokenizer.decode(ids, skip_special_tokens=False)


# --------------------------------------------------------------------------------------- own-history rollout


class Episode(Protocol):
    """One conversation the model plays turn by turn, with its own earlier answers as history.

    Attributes:
        tools: the tool schemas its chat template declares, or None.
    """

    tools: list[dict] | None

    def history(self, depth: int, answers: list[Generation]) -> list[dict] | None:
        """The messages the model answers at `depth` (0-based), given its answers at depths 0..depth-1;
        None when the conversation is over. Where the next message comes from (a user turn replayed, a
        tool's result computed from the model's call) is the episode's business."""


@dataclass
class Replay:
    """User turns replayed one by one, each answered with the model's own history.

    Attributes:
        turns: the user messages, in order.
        system: an optional system message put first.
    """

    turns: list[str]
    system: str | None = None
    tools: list[dict] | None = None

    def history(self, depth: int, answers: list[Generation]) -> list[dict] | None:
        if depth >= len(self.turns):
            return None
        history = [{"role": "system", "content": self.system}] if self.system is not None else []
        for t in range(depth):
            history += [
                {"role": "user", "content": self.turns[t]},
                {"role": "assistant", "content": answers[t].text},
            ]
        return history + [{"role": "user", "content": self.turns[depth]}]


@dataclass
class OwnHistory:
    """A reference conversation whose assistant messages the model answers, its own answers standing in
    for the reference ones in the history.

    Attributes:
        messages: the reference conversation.
        turns: index in `messages` of each assistant message to answer.
    """

    messages: list[dict]
    turns: list[int]
    tools: list[dict] | None = None

    def history(self, depth: int, answers: list[Generation]) -> list[dict] | None:
        if depth >= len(self.turns):
            return None
        history = [dict(m) for m in self.messages[: self.turns[depth]]]
        for t, message_index in enumerate(self.turns[:depth]):
            history[message_index]["content"] = answers[t].text
        return history


# Returns a generation already made for the same prompt ids (greedy decoding of the same ids gives the same
# answer), or None: (episode index, depth, prompt ids) -> Generation | None.
Reuse = Callable[[int, int, list[int]], "Generation | None"]


def rollout(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    episodes: Sequence[Episode],
    batch_size: int,
    max_new_tokens: int,
    window: int | None = None,
    backend: GenerationBackend | None = None,
    on_batch: Callable[[int], None] | None = None,
    reuse: Reuse | None = None,
) -> list[list[Generation]]:
    """Play every episode turn by turn with the model's own answers; all episodes batched per depth.

    Per depth: the episodes still going give their histories, rendered with their tools; `reuse` may
    answer some from earlier work; the rest are generated in one `generate_turns` call (batched,
    left-cut to `window` with the cut counted in each `Generation.prompt_cut`).

    Args:
        model, tokenizer, batch_size, max_new_tokens, window, backend: as for `generate_turns`.
        episodes: the conversations to play.
        on_batch: progress, called with the number of answers produced (reused ones included).
        reuse: answers known in advance, e.g. a gold-history generation for an identical prompt.

    Returns:
        `answers[i][d]`: episode i's answer at depth d (as many as the episode asked for).
    """
    answers: list[list[Generation]] = [[] for _ in episodes]
    depth = 0
    while True:
        active, histories = [], []
        for i, episode in enumerate(episodes):
            if len(answers[i]) < depth:  # finished at an earlier depth
                continue
            history = episode.history(depth, answers[i])
            if history is not None:
                active.append(i)
                histories.append(history)
        if not active:
            return answers
        prompts = prompt_ids(tokenizer, histories, [getattr(episodes[i], "tools", None) for i in active])
        todo = []
        for i, prompt in zip(active, prompts, strict=True):
            known = reuse(i, depth, prompt) if reuse is not None else None
            if known is not None:
                answers[i].append(known)
            else:
                todo.append((i, prompt))
        if on_batch is not None and len(todo) < len(active):
            on_batch(len(active) - len(todo))
        outputs = generate_turns(
            model, tokenizer, [p for _, p in todo], batch_size, max_new_tokens, on_batch, window, backend
        )
        for (i, _), output in zip(todo, outputs, strict=True):
            answers[i].append(output)
        depth += 1
