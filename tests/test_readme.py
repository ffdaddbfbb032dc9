"""The README is tested like code: every command in its fenced blocks runs as printed, in smoke mode.

`readme_commands()` reads every command of the README's ```bash blocks (continuation lines joined,
comments dropped). `PLAN` says, for each, how it is checked:

- `RUN`: run as printed, from a sandbox folder, in README order (later commands read what earlier ones
  wrote, as a user's would); Hydra apps get `debug=smoke` appended (tiny model, tiny data, one seed; job
  folders are named as without it) and `logger=none` where W&B is not the point.
- `DRY`: `make -n` shows the recipe, which must be a command that is itself run here.
- `SKIP`: needs a GPU, the network or a server we do not have; the reason is printed.

A README command missing from `PLAN`, or a `PLAN` entry no longer in the README, fails the first test: a
command cannot be added or changed without saying how it is checked. The runs are slow (a few minutes
in all), so they are `slow`: `make test-slow` and CI run them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_commands(text: str | None = None) -> list[str]:
    """Every command of the README's ```bash blocks, in order, continuation lines joined."""
    text = README.read_text() if text is None else text
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


@dataclass(frozen=True)
class Check:
    mode: str  # RUN | DRY | SKIP
    reason: str = ""
    extra: tuple[str, ...] = ()  # appended to a RUN command (smoke mode)
    replace: tuple[str, str] | None = None  # (old, new) in a RUN command, e.g. online W&B -> offline


SMOKE = ("debug=smoke",)
QUIET = ("debug=smoke", "logger=none")


def RUN(*extra: str, replace: tuple[str, str] | None = None) -> Check:  # noqa: N802 (reads like a table)
    return Check("RUN", extra=extra, replace=replace)


def SKIP(reason: str) -> Check:  # noqa: N802
    return Check("SKIP", reason)


DRY = Check("DRY")
GPU_HUB = "needs a GPU and the hub (model and dataset downloads)"
SLURM = "submits to a Slurm cluster"

# Every README command and how it is checked, in README order.
PLAN: dict[str, Check] = {
    "make sweep": DRY,
    "make test": SKIP("this suite is what it runs (CI runs it on every submission)"),
    "python -m sft_sweeps -m masking=full,last,all,weighted": RUN(*QUIET),
    "python -m sft_sweeps.evaluation.multi_if_build --out multi_if_builtin.jsonl": RUN(),
    "python -m sft_sweeps.inspect masking=weighted": RUN(*SMOKE),
    "python -m sft_sweeps.inspect masking=last inspect.format=json": RUN(*SMOKE),
    "python -m sft_sweeps -m experiment=agent_masking": RUN(*QUIET),
    "python -m sft_sweeps -m experiment=agent_masking seed=0,1,2": RUN(*QUIET),
    "python -m sft_sweeps.report multirun/agent_masking --out reports/agent_masking": RUN(),
    "python -m sft_sweeps -m masking=full,last,all,weighted dataset=local_jsonl "
    "dataset.path=tests/fixtures/data/calc_chats.jsonl dataset.test_fraction=0.25 eval.heldout.metric=exact "
    "train.max_steps=400 sweep_name=my_chats": RUN(
        *QUIET, replace=("tests/fixtures/", f"{ROOT}/tests/fixtures/")
    ),
    "python -m sft_sweeps.report multirun/my_chats --out reports/my_chats": RUN(),
    "python -m sft_sweeps -m masking=full,last,all,weighted model=qwen2_5_0_5b dataset=ultrachat_200k train=gpu": SKIP(
        GPU_HUB
    ),
    "python -m sft_sweeps -m masking=all,weighted model=hf model.pretrained=meta-llama/Llama-3.2-1B-Instruct "
    "train=lora": SKIP(GPU_HUB),
    "python -m sft_sweeps -m masking=full,last,all,weighted model=smollm2_135m dataset=local_jsonl "
    "dataset.path=data/chats.jsonl train=gpu": SKIP("needs a GPU, the hub and the user's own file"),
    "accelerate launch --multi_gpu --num_processes 4 -m sft_sweeps model=qwen2_5_0_5b dataset=ultrachat_200k "
    "train=gpu hydra.run.dir=outputs/qwen_ddp": SKIP(
        "needs 4 GPUs and the hub (DDP is tested on CPU: test_ddp)"
    ),
    "python -m sft_sweeps.inspect masking=last_round dataset=local_jsonl "
    "dataset.path=tests/fixtures/data/agent_llamafactory.json dataset.num_validation=0 dataset.num_test=0": RUN(
        *SMOKE, replace=("tests/fixtures/", f"{ROOT}/tests/fixtures/")
    ),
    "python -m sft_sweeps -m masking=full,last,all,weighted dataset=sharegpt": RUN(*QUIET),
    "python -m sft_sweeps.calibrate --eval experiment=paper_run model=qwen2_5_0_5b dataset=ultrachat_200k": SKIP(
        GPU_HUB + " (calibration runs on the embedded model: test_paper_run)"
    ),
    "python -m sft_sweeps -m experiment=paper_run model=qwen2_5_0_5b dataset=ultrachat_200k": SKIP(
        GPU_HUB + " (every job config composes and validates: test_config, test_paper_run)"
    ),
    "python -m sft_sweeps -m experiment=masking_seeds": RUN(*QUIET),
    "python -m sft_sweeps -m experiment=prompt_weight": RUN(*QUIET),
    "python -m sft_sweeps -m experiment=model_scale": RUN(*QUIET),
    "python -m sft_sweeps -m experiment=parallel_local": RUN(*QUIET),
    "python -m sft_sweeps -m experiment=slurm hydra.launcher.partition=gpu": SKIP(
        SLURM + " with GPUs; the CPU commands of 'Running on Slurm' run in tests/test_slurm.py"
    ),
    "python -m sft_sweeps -m experiment=slurm hydra.launcher.partition=gpu model=smollm2_135m train=gpu dataset=smoltalk": SKIP(
        SLURM + " with GPUs and the hub; its CPU form runs in tests/test_slurm.py"
    ),
    "python -m sft_sweeps -m experiment=slurm hydra.launcher.partition=gpu hydra.launcher.tasks_per_node=4 hydra.launcher.gpus_per_node=4 masking=all seed=0 model=qwen2_5_0_5b dataset=ultrachat_200k train=gpu": SKIP(
        SLURM + " with 4 GPUs and the hub; the 2-task CPU form runs in tests/test_slurm.py"
    ),
    "scripts/slurm_cluster.sh start": SKIP(
        "installs Debian packages as root and starts daemons: `make test-slurm` runs it, then the commands below"
    ),
    "python -m sft_sweeps -m experiment=slurm hydra.launcher.partition=debug hydra.launcher.gpus_per_node=null hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=2 hydra.launcher.timeout_min=10 masking=full,last": SKIP(
        SLURM + ": tests/test_slurm.py runs it as printed in smoke mode (`make test-slurm`)"
    ),
    "python -m sft_sweeps -m experiment=slurm hydra.launcher.partition=debug hydra.launcher.gpus_per_node=null hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=2 hydra.launcher.timeout_min=10 hydra.launcher.tasks_per_node=2 masking=full": SKIP(
        SLURM + ": tests/test_slurm.py runs it as printed in smoke mode (`make test-slurm`)"
    ),
    "scripts/slurm_cluster.sh stop": SKIP("stops the cluster `scripts/slurm_cluster.sh start` started"),
    "python -m sft_sweeps -m experiment=optuna_prompt_weight hydra.sweeper.n_trials=4": RUN(*QUIET),
    "python -m sft_sweeps -m experiment=lr_tuning": RUN(*QUIET),
    "python -m sft_sweeps.report multirun/masking_seeds --out reports/masking_seeds": RUN(),
    'python -m sft_sweeps.report "multirun/*" --wandb my-entity/sft_sweeps --out reports/all': SKIP(
        "reads runs from W&B: needs a login and the network"
    ),
    "make paper": DRY,
    "python -m sft_sweeps.report reports/lr_tuning/runs.csv --select-key train.learning_rate "
    "--out reports/lr_tuning": RUN(),
    "python -m sft_sweeps.report multirun/lr_tuning --select-key train.learning_rate --out reports/lr_tuning": RUN(),
    # The chosen rates on seeds 3-9: one seed here (smoke mode sweeps seed 0 only unless told otherwise).
    **{
        f"python -m sft_sweeps -m experiment=lr_tuning masking={strategy} train.learning_rate={rate} "
        "'seed=range(3,10)'": RUN(*QUIET, replace=("'seed=range(3,10)'", "seed=3"))
        for strategy, rate in (("full", 0.002), ("last", 0.001), ("all", 0.001), ("weighted", 0.002))
    },
    "wandb login": SKIP("needs a W&B account and the network"),
    "python -m sft_sweeps -m masking=full,last,all,weighted sweep_name=masks logger.mode=online "
    "logger.entity=my-team logger.project=sft_sweeps": RUN(
        "debug=smoke", replace=("logger.mode=online", "logger.mode=offline")
    ),
    "python -m sft_sweeps.report multirun/masks --out reports/masks --dashboard my-team/sft_sweeps": RUN(),
    "python -m sft_sweeps.report --dashboard-from reports/masks/wandb_report.json": SKIP(
        "saves to the W&B server: needs a login and the network (the offline failure is tested: test_dashboard)"
    ),
    "python -m sft_sweeps.evaluate eval.model_path=multirun/default/masking-all__seed-0/model": RUN(*SMOKE),
    "HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf --model_args "
    "pretrained=multirun/default/masking-all__seed-0/model --include_path "
    '$(python -c "import sft_sweeps.lm_eval_tasks as t; print(t.TASKS_DIR)") --tasks sft_sweeps_suite': RUN(),
    "vllm serve Qwen/Qwen2.5-7B-Instruct --host 127.0.0.1 --port 8000": SKIP("needs a GPU and vllm"),
    "python -m sft_sweeps -m masking=full,last,all,weighted model=smollm2_135m dataset=smoltalk train=gpu "
    "eval.benchmarks=[nll,judge] eval.judge.base_url=http://127.0.0.1:8000/v1 "
    "eval.judge.model=Qwen/Qwen2.5-7B-Instruct eval.judge.api_key_env=null "
    "eval.judge.questions=/path/to/FastChat/fastchat/llm_judge/data/mt_bench/question.jsonl": SKIP(
        "needs a GPU, the hub and a judge server (the judge runs against a real local server: test_judge)"
    ),
    "export OPENAI_API_KEY=...": SKIP("a placeholder for the user's key"),
    "python -m sft_sweeps -m masking=full,last,all,weighted eval.benchmarks=[nll,judge] "
    "eval.judge.base_url=https://api.openai.com/v1 eval.judge.model=gpt-4o-2024-08-06 "
    "eval.judge.api_key_env=OPENAI_API_KEY eval.judge.concurrency=16": SKIP(
        "needs a hosted API key and the network"
    ),
    "make test-slow": SKIP("this suite's slow half: what runs this test"),
    "make test-slurm": SKIP("starts a Slurm cluster as root and runs tests/test_slurm.py (CI runs it)"),
}


def _plan() -> list[tuple[int, str, Check]]:
    return [(i, c, PLAN.get(c, Check("MISSING"))) for i, c in enumerate(readme_commands())]


def test_every_readme_command_has_a_plan() -> None:
    commands = readme_commands()
    missing = [c for c in commands if c not in PLAN]
    stale = [c for c in PLAN if c not in commands]
    assert not missing, f"README commands with no entry in tests/test_readme.py PLAN: {missing}"
    assert not stale, f"PLAN entries no longer in the README: {stale}"
    assert all(check.reason for check in PLAN.values() if check.mode == "SKIP")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the commands run one after the other, as in a user's checkout (its shipped reports
    included: `make paper` rebuilds them)."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "reports", root / "reports")
    return root


def _env(sandbox: Path) -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        PATH=f"{venv_bin}:{env.get('PATH', '')}",
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        SFT_SWEEPS_CACHE=str(sandbox / ".cache"),
        WANDB_DIR=str(sandbox),
        WANDB_DATA_DIR=str(sandbox / ".wandb_data"),
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.mark.slow
@pytest.mark.parametrize(("index", "command", "check"), _plan(), ids=lambda x: str(x)[:60])
def test_readme_command_works_as_printed(sandbox: Path, index: int, command: str, check: Check) -> None:
    if check.mode == "SKIP":
        pytest.skip(check.reason)
    if check.mode == "MISSING":
        pytest.fail(f"no plan for README command {command!r}")
    env = _env(sandbox)
    if check.mode == "DRY":
        recipe = subprocess.run(
            ["make", "-n", *shlex.split(command)[1:]], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert recipe.returncode == 0, recipe.stderr
        tested = {c for c, p in PLAN.items() if p.mode == "RUN"}
        assert any(c in recipe.stdout for c in tested), f"{command} runs none of the tested commands"
        return
    full = command.replace(*check.replace) if check.replace else command
    full = f"{full} {shlex.join(check.extra)}" if check.extra else full
    out = subprocess.run(
        ["bash", "-c", full],  # `python` is this venv's: its bin folder leads PATH
        cwd=sandbox,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, f"{full}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
