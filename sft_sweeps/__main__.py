"""`python -m sft_sweeps`: compose model x dataset x masking, train, evaluate, record.

One run: `python -m sft_sweeps masking=last`. The default sweep:
`python -m sft_sweeps -m masking=full,last,all,weighted`. A sweep template:
`python -m sft_sweeps -m experiment=masking_seeds`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from sft_sweeps.cli import USER_ERRORS, errors_reported, in_multirun
from sft_sweeps.cluster import init_slurm_distributed
from sft_sweeps.config import ConfigError, register_configs
from sft_sweeps.identity import job_dirname
from sft_sweeps.job import make_job

OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one job; return `optimized_metric` of its record to Hydra (None when the run did not finish)."""
    # A wrong setting is one line naming its key, before any work, in a sweep too (its other jobs would
    # most likely share it). Other user errors of a sweep's job (data, a busy run dir) are recorded per job.
    with errors_reported(ConfigError):
        job = make_job(cfg)  # validated once, here; everything below reads the job
    from sft_sweeps.pipeline import run

    init_slurm_distributed()  # a Slurm job of several tasks trains one DDP run (sft_sweeps.cluster)
    with errors_reported(*USER_ERRORS, enabled=not in_multirun()):
        record = run(job)
    return record.metric(job.optimized_metric) if record is not None else None


if __name__ == "__main__":
    main()
