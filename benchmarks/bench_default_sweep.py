"""Benchmark: `make sweep` (the default sweep) against the previous default configuration, back to back.

Runs `python -m sft_sweeps -m masking=full,last,all,weighted` twice from a cold start (a fresh cache
folder, so tokenization is included, as on a fresh clone), each in its own sweep folder:

- previous: the configuration before issue 15 (one job at a time on every core, state tracking only,
  400 steps), on today's code, so the difference is the configuration, not the code;
- current: the default as it is (`conf/`), jobs in parallel sized to the cores.

Prints each sweep's wall time, the peak memory of its process tree (the sum of the RSS of every live
process of the sweep, sampled every 0.2 s: parallel jobs add up) and the largest single process, the load
average before and after, and on the last line the speedup previous/current.

    python benchmarks/bench_default_sweep.py                      # both sweeps in full (~20 min, 2 cores)
    python benchmarks/bench_default_sweep.py --only current       # the README figure only
    python benchmarks/bench_default_sweep.py --step-fraction 0.25 # both shortened alike, for a quick ratio
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SWEEP = ["-m", "masking=full,last,all,weighted"]
# What the default was before issue 15 (conf/ at b6c212b): the basic launcher runs one job at a time with
# torch on every core, on state tracking alone, 400 steps of 32 conversations.
PREVIOUS = {
    "overrides": ["launcher=sequential", "dataset.tasks=[state_tracking]"],
    "max_steps": 400,
}
CURRENT = {"overrides": [], "max_steps": None}  # None: conf/train/default.yaml's value
DEFAULT_MAX_STEPS = 150  # conf/train/default.yaml; scaled by --step-fraction


@dataclass
class Result:
    name: str
    wall_s: float
    peak_tree_rss_mb: float
    peak_process_rss_mb: float
    returncode: int


def _tree_rss(root: psutil.Process) -> tuple[float, float]:
    """(sum, max) RSS in MB over `root` and its live descendants."""
    sizes = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.Error:  # exited between listing and reading
            pass
    return sum(sizes) / 2**20, max(sizes, default=0) / 2**20


def run_sweep(name: str, overrides: list[str], workdir: Path, log: Path) -> Result:
    """Run one sweep in a fresh sweep dir and cache; wall time and peak memory of its process tree."""
    command = [
        sys.executable,
        "-m",
        "sft_sweeps",
        *SWEEP,
        *overrides,
        f"hydra.sweep.dir={workdir / name}",
        f"cache_dir={workdir / name / 'cache'}",
        f"sweep_name=bench_{name}",
    ]
    print(f"[{name}] {' '.join(command[1:])}", flush=True)
    peak = [0.0, 0.0]
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                total, largest = _tree_rss(root)
                peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = proc.wait()
        done.set()
        sampler.join()
    return Result(name, time.monotonic() - start, peak[0], peak[1], returncode)


def _steps(config: dict, fraction: float) -> list[str]:
    steps = config["max_steps"] or DEFAULT_MAX_STEPS
    if fraction == 1.0 and config["max_steps"] is None:
        return []
    return [f"train.max_steps={max(1, round(steps * fraction))}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["previous", "current"], help="run one of the two sweeps")
    parser.add_argument(
        "--step-fraction",
        type=float,
        default=1.0,
        help="scale both sweeps' training steps alike (evaluation and start-up are not scaled)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for both sweeps (repeatable), e.g. logger=none",
    )
    parser.add_argument("--keep", action="store_true", help="keep the sweep folders (printed)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_default_sweep."))
    env_note = f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    print(f"{env_note}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results = []
    for name, config in (("previous", PREVIOUS), ("current", CURRENT)):
        if args.only and args.only != name:
            continue
        overrides = config["overrides"] + _steps(config, args.step_fraction) + args.override
        result = run_sweep(name, overrides, workdir, workdir / f"{name}.log")
        results.append(result)
        status = (
            "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode}, see {workdir}/{name}.log)"
        )
        print(
            f"[{name}] wall {result.wall_s:.0f} s ({result.wall_s / 60:.1f} min), peak RSS of the sweep "
            f"{result.peak_tree_rss_mb / 1024:.2f} GB (largest process "
            f"{result.peak_process_rss_mb / 1024:.2f} GB): {status}",
            flush=True,
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.keep:
        print(f"sweep folders kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if len(results) == 2:
        previous, current = results
        print(f"speedup previous/current: {previous.wall_s / current.wall_s:.2f}x")
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
