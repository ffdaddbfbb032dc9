"""Run identity lives in one module: labels derived from MaskingConfig's fields, groups, hashes, folders."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sft_sweeps import identity
from sft_sweeps.config import MaskingConfig, masking_param
from sft_sweeps.identity import RunRecord, config_hash, job_dirname, masking_label, run_group
from sft_sweeps.report import analyze
from tests.conftest import TINY_OVERRIDES, compose_config

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class MaskingWithSmoothing(MaskingConfig):
    """MaskingConfig as a developer extends it: one more parameter, declared the usual way."""

    label_smoothing: float = masking_param(0.0, "ls", ("all",))


def _record(config: dict, smoothing: float, seed: int) -> RunRecord:
    config = copy.deepcopy(config)
    config["masking"]["label_smoothing"], config["seed"] = smoothing, seed
    return RunRecord.from_dict(
        {"status": "done", "seed": seed, "config": config, "metrics": {"synthetic/turn_exact_match": 0.5}},
        f"run-{smoothing}-{seed}",
    )


def test_a_new_masking_parameter_gets_its_own_label_group_and_report_row(monkeypatch) -> None:
    """Nothing in identity lists parameters by hand: a field added to MaskingConfig names runs at once."""
    monkeypatch.setattr(identity, "MaskingConfig", MaskingWithSmoothing)
    config = OmegaConf.to_container(compose_config(["masking=all"]), resolve=True)
    records = [_record(config, s, seed) for s in (0.1, 0.2) for seed in (0, 1)]
    labels = {masking_label(r.config["masking"]) for r in records}
    assert labels == {"all(ls=0.1)", "all(ls=0.2)"}
    assert len({run_group(r.config) for r in records}) == 2
    (setting,) = analyze(records).settings
    assert setting.strategies == ["all(ls=0.1)", "all(ls=0.2)"]
    assert setting.seeds == {"all(ls=0.1)": [0, 1], "all(ls=0.2)": [0, 1]}
    # At its default the parameter says nothing: `all` stays `all`.
    assert masking_label({**config["masking"], "label_smoothing": 0.0}) == "all"


def test_hash_and_label_ignore_observation_keys() -> None:
    base = compose_config(["masking=weighted"])
    observed = compose_config(["masking=weighted", "logger=none", "resume=false", "cache_dir=/elsewhere"])
    assert config_hash(base) == config_hash(observed)
    assert config_hash(base) != config_hash(compose_config(["masking=weighted", "masking.prompt_weight=0.5"]))
    assert masking_label(base.masking) == "weighted(pw=0.1)"


@pytest.mark.parametrize(
    "overrides",
    [
        "masking=all",
        "masking=weighted,masking.prompt_weight=0.25",
        "model=hf,model.pretrained=meta-llama/Llama-3.2-1B-Instruct",
        "eval.benchmarks=[nll,multi_if],dataset=sharegpt",
    ],
)
def test_job_folders_have_no_comma_or_equals(overrides: str) -> None:
    name = job_dirname(overrides, 3)
    assert not set(name) & set(",=/ ") and name.endswith("__seed-3")
    assert job_dirname(overrides, 3) == name  # stable: resume finds it again


def test_saved_model_path_works_in_evaluate_and_lm_eval_as_printed(tmp_path: Path) -> None:
    """The README's commands take a sweep's model path as it is: Hydra parses it as an override value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    model_dir = f"multirun/default/{job_dirname('masking=all', 0)}/model"
    (override,) = OverridesParser.create().parse_overrides([f"eval.model_path={model_dir}"])
    assert override.value() == model_dir
    assert "," not in f"pretrained={model_dir}".split("=", 1)[1]  # lm-eval splits --model_args at commas


@pytest.mark.slow
def test_optuna_searches_the_prompt_weight_for_a_few_trials(tmp_path: Path) -> None:
    """`-m experiment=optuna_prompt_weight`: real Optuna trials, each a run returning optimized_metric."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sft_sweeps",
            "-m",
            "experiment=optuna_prompt_weight",
            "hydra.sweeper.n_trials=2",
            *TINY_OVERRIDES,
            "logger=none",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert 0.0 <= results.best_params["masking.prompt_weight"] <= 1.0
    assert 0.0 <= results.best_value <= 1.0
    records = sorted((tmp_path / "sweep").glob("*/result.json"))
    assert len(records) == 2
    labels = {masking_label(json.loads(r.read_text())["config"]["masking"]) for r in records}
    assert len(labels) == 2 and all(label.startswith("weighted(pw=") for label in labels)
