"""DDP across the tasks of one Slurm job: `hydra.launcher.tasks_per_node=N` (and/or `nodes`) trains one run.

Hydra's submitit launcher starts the job's function once per Slurm task (`srun`). Before the run starts,
`init_slurm_distributed` exports what torch.distributed's `env://` initialisation reads (MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) from the Slurm environment, through submitit's
`TorchDistributedEnvironment`; transformers then trains one DDP job over the tasks (gloo on CPU, NCCL on
GPUs), exactly as under `accelerate launch`, and rank 0 alone evaluates and writes the record.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_slurm_distributed() -> bool:
    """In a submitit job of several tasks, export the torch.distributed variables; True when it did.

    Does nothing outside submitit, in a job of one task, or when RANK is already set (a user's own
    `torchrun`/`accelerate launch` inside the job).
    """
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return False
    import submitit

    if submitit.JobEnvironment().num_tasks <= 1:
        return False
    # CUDA_VISIBLE_DEVICES is left as Slurm set it (the job's GPUs): each rank takes cuda:LOCAL_RANK among
    # them. submitit would set it to the local rank, which names the wrong GPU when Slurm allotted, e.g., 2,5.
    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info(
        "DDP over Slurm tasks: rank %d of %d (local rank %d), master %s:%d",
        env.rank,
        env.world_size,
        env.local_rank,
        env.master_addr,
        env.master_port,
    )
    return True
