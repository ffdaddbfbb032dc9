"""`hydra/launcher=sft_sweeps_parallel` (what `launcher=parallel` picks): the launcher's parameters.

No `from __future__ import annotations` here: Hydra's plugin scanner runs this module before it is in
`sys.modules`, where a dataclass cannot resolve string annotations.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class ProcessPerJobLauncherConf:
    _target_: str = "hydra_plugins.sft_sweeps_launcher.launcher.ProcessPerJobLauncher"
    # Jobs running at once: a positive number, or negative as in joblib (-1: one per usable core, -2: all
    # but one, ...; at least 1). 0 is an error.
    n_jobs: int = -1


ConfigStore.instance().store(
    group="hydra/launcher", name="sft_sweeps_parallel", node=ProcessPerJobLauncherConf, provider="sft_sweeps"
)
