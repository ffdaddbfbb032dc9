"""The multi-turn suite as lm-eval tasks: YAML files, `utils.py`, and the data files they read.

Run it on any saved model (the folder is `TASKS_DIR`, printed by
`python -c "import sft_sweeps.lm_eval_tasks as t; print(t.TASKS_DIR)"`):

    lm_eval --model hf --model_args pretrained=<saved model dir> \\
        --include_path <TASKS_DIR> --tasks sft_sweeps_suite

Tasks: `sft_sweeps_state_tracking`, `sft_sweeps_fact_recall`, `sft_sweeps_format_persistence`, and the
group `sft_sweeps_suite`.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
DATA_DIR = TASKS_DIR / "data"
