"""The types every benchmark shares: what it gets (`EvalContext`), what it returns (`BenchmarkResult`), its
interface (`Benchmark`) and the error that says it cannot run (`BenchmarkUnavailable`).

They live apart from the registry (`sft_sweeps.evaluation.benchmarks`) so that a benchmark module imports
them without importing the registry that lists it: the arrows run one way, registry -> benchmark -> base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sft_sweeps.config import Config, ConfigError
from sft_sweeps.evaluation.generation import GenerationBackend


class BenchmarkUnavailable(ConfigError):
    """A listed benchmark cannot run with this config; the message says how to make it runnable."""


@dataclass
class EvalContext:
    """What every benchmark gets: the trained model, its tokenizer, the data splits and the settings.

    Attributes:
        window: the longest token sequence to feed the model (training `max_length`, capped by the model's
            own context): NLL windows and generation prompts are cut to it, with the cut counted.
        split: which held-out split to score (`test`; `validation` for model selection).
        model_path: the saved trained model, for `eval.generation_backend=vllm`.
    """

    model: Any
    tokenizer: Any
    splits: Any  # sft_sweeps.data.Splits
    settings: Config
    window: int | None = None
    split: str = "test"
    progress: bool = True
    # The trained model on disk (`<run dir>/model`): what `eval.generation_backend=vllm` serves.
    model_path: str | None = None

    @property
    def generation_backend(self) -> GenerationBackend:
        """The engine `eval.generation_backend` names, with the saved model vLLM would load."""
        return GenerationBackend(self.settings.eval.generation_backend, self.model_path)

    @property
    def conversations(self) -> list[dict[str, Any]]:
        return getattr(self.splits, self.split)


@dataclass
class BenchmarkResult:
    """Metrics (keys without the benchmark prefix), metrics by turn depth, per-item records, identity."""

    metrics: dict[str, float]
    by_depth: dict[str, dict[int, float]] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Benchmark(Protocol):
    name: str

    def check(self, settings: Config) -> None:
        """Raise BenchmarkUnavailable (saying how to fix it) when this benchmark cannot run."""

    def run(self, context: EvalContext) -> BenchmarkResult:
        """Score `context.model`."""
