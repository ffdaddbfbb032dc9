"""Every option of every config group composes and validates; bad overrides fail with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from sft_sweeps.config import ConfigError, Strategy, validate
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
    assert getattr(settings, group).name == (Strategy(option) if group == "masking" else option)


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
    with pytest.raises(ConfigCompositionException, match="masking.name"):
        compose_config(["masking.name=foo"])


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


TEMPLATES = sorted(p.stem for p in (Path(CONF_DIR).parent / "multirun_templates").glob("*.yaml"))


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_multirun_template_composes(template: str) -> None:
    """Composed through the real CLI (`--config-dir`), the way the README runs them."""
    import subprocess
    import sys

    root = Path(CONF_DIR).parent
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sft_sweeps",
            "--config-dir",
            "multirun_templates",
            "--config-name",
            template,
            "--cfg",
            "hydra",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "mode: MULTIRUN" in out.stdout
    assert "params:" in out.stdout


@pytest.mark.parametrize(
    "overrides,launcher",
    [
        ([], "JoblibLauncher"),  # the default: jobs in parallel, sized to the cores
        (["launcher=sequential"], "BasicLauncher"),
        (["experiment=parallel_local"], "LocalLauncher"),  # a template's own launcher wins
        (["experiment=slurm"], "SlurmLauncher"),
        (["experiment=lr_tuning"], "JoblibLauncher"),
    ],
)
def test_launcher_default_and_templates(overrides: list[str], launcher: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sft_sweeps.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith(f".{launcher}")
    assert (
        "launcher" not in cfg
    )  # the group only picks Hydra's launcher: no key, no change to the config hash
