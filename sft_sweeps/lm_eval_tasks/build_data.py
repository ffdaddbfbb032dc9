"""Write the lm-eval data files: for each synthetic task, the test split of a run on that task alone.

`data/<task>.jsonl` holds `make_splits([task], ...)["test"]` with the sizes, turns and seed of the dataset
schema's defaults (`sft_sweeps.config.DatasetConfig`), so it is the test split `python -m sft_sweeps
dataset.tasks=[<task>]` evaluates on, and is held out from that run's training data and from
`dataset=synthetic_suite` (see `sft_sweeps.tasks._stream`).

    python -m sft_sweeps.lm_eval_tasks.build_data          # rewrite the files
    python -m sft_sweeps.lm_eval_tasks.build_data --check  # exit 1 if a file is out of date
"""

from __future__ import annotations

import argparse
import json
import sys

from sft_sweeps.config import DatasetConfig
from sft_sweeps.lm_eval_tasks import DATA_DIR
from sft_sweeps.tasks import TEXT_TASKS, make_splits


def build(task: str) -> str:
    """The JSONL text of `data/<task>.jsonl`: one `{"id", "task", "split", "messages"}` record a line."""
    cfg = DatasetConfig()
    sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
    records = make_splits([task], sizes, cfg.min_turns, cfg.max_turns, cfg.seed)["test"]
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for task in sorted(TEXT_TASKS):
        path = DATA_DIR / f"{task}.jsonl"
        text = build(task)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            DATA_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({text.count(chr(10))} conversations)")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
