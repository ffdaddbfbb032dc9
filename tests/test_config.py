"""Every option of every config group composes and validates; bad overrides fail with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from sft_sweeps.config import ConfigError, validate
from sft_sweeps.masking.strategies import strategy_names
from tests.conftest import CONF_DIR, compose_config

GROUPS = ["model", "dataset", "masking", "train", "eval", "logger"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


# Options that need a value a user must give (a hub id or a file path), supplied here.
REQUIRED_VALUES = {
    ("model", "hf"): ["model.pretrained=some-org/some-model"],
    ("dataset", "local_jsonl"): ["dataset.path=tests/fixtures/data/messages.jsonl"],
}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(group: str, option: str) -> None:
    extra = REQUIRED_VALUES.get((group, option), [])
    cfg = compose_config([f"{group}={option}", *extra])
    settings = validate(cfg)
    # A masking option is a strategy (last_round), or a preset of one named `<strategy>_<preset>`
    # (weighted_pw001, all_toolcall2).
    expected = option
    if group == "masking" and option not in strategy_names():
        expected = option.rsplit("_", 1)[0]
    assert getattr(settings, group).name == expected


def test_every_experiment_composes() -> None:
    experiments = _options("experiment")
    for name in experiments:
        validate(compose_config([f"experiment={name}"]))


def test_default_is_the_embedded_offline_setup() -> None:
    settings = validate(compose_config())
    assert settings.model.pretrained is None and settings.model.tokenizer == "embedded"
    assert settings.dataset.source == "synthetic"
    assert settings.logger.mode == "offline"


def test_unknown_strategy_option_is_refused() -> None:
    with pytest.raises(MissingConfigException, match="masking/foo"):
        compose_config(["masking=foo"])


def test_unknown_strategy_name_is_refused() -> None:
    """Strategies are a registry (sft_sweeps.masking.strategies), checked when the job is made."""
    from sft_sweeps.job import make_job

    with pytest.raises(
        ConfigError, match=r"masking.name must be one of \('full', 'last', 'last_round', 'all', 'weighted'\)"
    ):
        make_job(compose_config(["masking.name=foo"]))


@pytest.mark.parametrize(
    "override,key",
    [
        ("masking.prompt_weight=-1", "masking.prompt_weight"),
        ("masking.prompt_weight=1.5", "masking.prompt_weight"),
        ("masking.turn_decay=0", "masking.turn_decay"),
        ("train.max_steps=0", "train.max_steps"),
        ("train.learning_rate=-0.1", "train.learning_rate"),
        ("dataset.source=ftp", "dataset.source"),
        ("logger.mode=sometimes", "logger.mode"),
        ("model=hf", "model.pretrained"),
    ],
)
def test_out_of_range_value_names_its_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config([override]))


def test_wrong_type_is_refused_at_composition() -> None:
    with pytest.raises(ConfigCompositionException, match="train.max_steps"):
        compose_config(["train.max_steps=many"])


EXPERIMENTS = sorted(
    p.stem for p in (Path(CONF_DIR).parent / "multirun_templates" / "experiment").glob("*.yaml")
)


def _job_overrides(params: dict[str, str]) -> list[list[str]]:
    """The overrides of every job a sweeper would launch from `hydra.sweeper.params`: the basic sweeper's
    expansion (`sft_sweeps.estimate.sweep_jobs`), an Optuna interval standing for both of its ends."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    from sft_sweeps.estimate import sweep_jobs

    parser = OverridesParser.create()
    grid = []
    for key, value in params.items():
        sweep = parser.parse_overrides([f"{key}={value}"])[0].value()
        grid.append(
            f"{key}={sweep.start},{sweep.end}" if isinstance(sweep, IntervalSweep) else f"{key}={value}"
        )
    return sweep_jobs(grid)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_into_its_jobs(experiment: str) -> None:
    """`-m experiment=NAME`: the experiment group is on the search path, and every job it launches
    composes and validates (not only its `hydra` node)."""
    from omegaconf import OmegaConf

    from sft_sweeps.identity import job_dirname

    cfg = compose_config([f"experiment={experiment}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params, f"{experiment} sweeps nothing"
    jobs = _job_overrides(params)
    names = set()
    for overrides in jobs:
        job = compose_config([f"experiment={experiment}", *overrides])
        settings = validate(job)
        assert settings.sweep_name == job.sweep_name != "default"
        names.add(job_dirname(",".join(o for o in overrides if not o.startswith("seed=")), settings.seed))
    assert len(names) == len(jobs)  # every job gets its own folder


@pytest.mark.parametrize(
    "overrides,launcher",
    [
        ([], "ProcessPerJobLauncher"),  # the default: jobs in parallel, sized to the cores, one process each
        (["launcher=sequential"], "BasicLauncher"),
        (["experiment=parallel_local"], "LocalLauncher"),  # a template's own launcher wins
        (["experiment=slurm"], "SlurmLauncher"),
        (["experiment=lr_tuning"], "ProcessPerJobLauncher"),
    ],
)
def test_launcher_default_and_templates(overrides: list[str], launcher: str) -> None:
    cfg = compose_config(overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(f".{launcher}")
    assert (
        "launcher" not in cfg
    )  # the group only picks Hydra's launcher: no key, no change to the config hash
