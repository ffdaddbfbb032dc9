"""What a job is, settled once at the entry point: the typed settings, the resolved config the record
stores, and the metric returned to Hydra.

Every entry point (`python -m sft_sweeps`, `sft_sweeps.evaluate`, `sft_sweeps.calibrate`) turns its composed
config into a `Job` with `make_job`, which runs every check the config alone can fail (ranges, the masking
strategy, benchmarks that cannot run, `optimized_metric`) before any data, model or training. Below the
entry point nothing validates again: the stages (`sft_sweeps.stages`) read `job.settings`, the record and
the tracker read `job.config`.

Example:
    >>> job = make_job(compose_config(["masking=last"]))  # doctest: +SKIP
    >>> job.settings.masking.name, job.config["masking"]["name"], job.optimized_metric  # doctest: +SKIP
    ('last', 'last', 'synthetic/turn_exact_match')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from sft_sweeps.config import Config, ConfigError, validate
from sft_sweeps.files import check_writable_dir
from sft_sweeps.identity import as_dict


@dataclass(frozen=True)
class Job:
    """A validated job.

    Attributes:
        settings: the typed config every stage reads.
        config: the resolved config as a plain dict: what result.json stores and W&B logs; the config hash,
            the group and the labels derive from it (`sft_sweeps.identity`).
        optimized_metric: the metric returned to Hydra, resolved (`optimized_metric` may be null); None for
            a job made without its evaluation (`make_job(..., evaluation=False)`).
    """

    settings: Config
    config: dict[str, Any]
    optimized_metric: str | None


def make_job(cfg: DictConfig, evaluation: bool = True) -> Job:
    """Validate a composed config once and check everything it alone can refuse.

    Args:
        cfg: the composed config.
        evaluation: also check what evaluation needs (benchmarks, `optimized_metric`, the generation
            backend); False for work that trains only (the calibration's timing run).

    Raises:
        ConfigError: a value out of range, an unknown masking strategy, a listed benchmark that cannot run
            (`BenchmarkUnavailable` says how to fix it), an `optimized_metric` no listed benchmark computes,
            or vLLM generation without a saved model. Each message names its key.
    """
    settings = validate(cfg)  # range errors first, before the heavy imports below
    from sft_sweeps.evaluation.benchmarks import check_benchmarks
    from sft_sweeps.masking.strategies import check_strategy

    check_strategy(settings.masking.name)
    # A read-only or full cache disk: one line now, not a failure after the data is read.
    check_writable_dir(settings.cache_dir, "cache_dir", "set cache_dir=<dir> or $SFT_SWEEPS_CACHE")
    if not evaluation:
        return Job(settings, as_dict(cfg), None)
    check_benchmarks(settings)
    if settings.eval.generation_backend == "vllm" and not settings.train.save_model:
        raise ConfigError(
            "eval.generation_backend=vllm serves the trained model from disk: set train.save_model=true "
            "(or eval.generation_backend=hf)"
        )
    return Job(settings, as_dict(cfg), optimized_metric(settings))


def optimized_metric(settings: Config) -> str:
    """The metric returned to Hydra: `optimized_metric` when set, else the first headline metric
    (`sft_sweeps.metrics`) of the first listed benchmark that declares one.

    Raises:
        ConfigError: it is not computed by any listed benchmark, or none declares a headline metric.
    """
    from sft_sweeps.metrics import METRICS

    listed = list(settings.eval.benchmarks)
    key = settings.optimized_metric
    if key is None:
        heads = [m.key for name in listed for m in METRICS.values() if m.benchmark == name and m.headline]
        if not heads:
            raise ConfigError(
                f"optimized_metric: none of eval.benchmarks={listed} declares a headline metric; set "
                "optimized_metric=<benchmark>/<metric>, e.g. lm_eval/ifeval/prompt_level_strict_acc_none"
            )
        return heads[0]
    benchmark = key.split("/", 1)[0]
    if benchmark not in (*listed, "run"):
        raise ConfigError(
            f"optimized_metric={key!r} is computed by benchmark {benchmark!r}, which "
            f"eval.benchmarks={listed} does not run; pick a metric of one of them"
        )
    return key
