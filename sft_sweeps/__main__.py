"""`python -m sft_sweeps`: compose model x dataset x masking, train, evaluate, record.

One run: `python -m sft_sweeps masking=last`. The default sweep:
`python -m sft_sweeps -m masking=full,last,all,weighted`. A sweep template:
`python -m sft_sweeps -m experiment=masking_seeds`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from sft_sweeps.cli import USER_ERRORS, errors_reported, in_multirun
from sft_sweeps.config import ConfigError, register_configs, validate
from sft_sweeps.files import check_writable_dir
from sft_sweeps.identity import job_dirname

OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one job; return `optimized_metric` of its record to Hydra (None when the run did not finish)."""
    # A wrong setting is one line naming its key, before any work, in a sweep too (its other jobs would
    # most likely share it). Other user errors of a sweep's job (data, a busy run dir) are recorded per job.
    with errors_reported(ConfigError):
        settings = validate(cfg)  # range errors name their key before the heavy imports below
        from sft_sweeps.evaluation.benchmarks import optimized_metric
        from sft_sweeps.pipeline import check_before_work, run

        check_before_work(settings)
        # A read-only or full cache disk: one line now, not a failure after the data is read.
        check_writable_dir(settings.cache_dir, "cache_dir", "set cache_dir=<dir> or $SFT_SWEEPS_CACHE")
    with errors_reported(*USER_ERRORS, enabled=not in_multirun()):
        record = run(cfg)
    return record.metric(optimized_metric(settings)) if record is not None else None


if __name__ == "__main__":
    main()
