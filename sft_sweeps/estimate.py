"""What a sweep will cost, before its first job: the jobs, tokens per job and, with a calibration, wall time.

Tokens per job come from the config: `max_steps x per_device_train_batch_size x gradient_accumulation_steps`
samples, each at most `max_length` tokens (an upper bound), or the mean tokens per sample measured by the
calibration when it was made on the same data, tokenizer and `max_length`. Wall time is those tokens over
the throughput (real tokens/s) of `calibration.json` (`python -m sft_sweeps.calibrate`), plus its set-up
time (loading and tokenizing the data, building the model) and its evaluation time when it measured one.
A calibration of another model gives no time (the line says so and how to calibrate); one made with other
train settings is used, and the notes say what differs.

The `SweepEstimate` Hydra callback (`sft_sweeps.callbacks`) prints this for every multirun.

Example:
    >>> jobs = sweep_jobs(["masking=full,all", "seed=0,1"])
    >>> len(jobs), jobs[0]
    (4, ['masking=full', 'seed=0'])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_sweeps.calibrate import data_signature, train_signature
from sft_sweeps.config import Config


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper expands them (cartesian product of `a=x,y` lists)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@dataclass
class JobEstimate:
    """The cost of one job.

    Attributes:
        overrides: the job's own overrides (what the sweep varies and what the command line set).
        samples: training samples it sees (steps x batch x accumulation).
        max_tokens: the upper bound, every sample `max_length` tokens long.
        tokens: the expected tokens (calibrated mean tokens per sample), None without a matching calibration.
        seconds: expected wall time (set-up, training, evaluation when calibrated), None without one.
        notes: how the calibration differs from this job, or why the job config is invalid.
    """

    overrides: list[str]
    samples: int = 0
    max_tokens: int = 0
    tokens: float | None = None
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)


# What an estimate reads from a calibration record (`python -m sft_sweeps.calibrate` writes them all).
CALIBRATION_FIELDS = {"tokens_per_s": float, "mean_tokens_per_sample": float, "train_signature": dict}


def load_calibration(path: Path) -> dict[str, Any] | None:
    """The calibration record at `path`, or None when there is none.

    Raises:
        ValueError: the file is not a calibration record (not JSON, a field missing or of the wrong type);
            the message names the file and how to remake it.
    """
    if not path.exists():
        return None
    remake = "delete it or remake it with `python -m sft_sweeps.calibrate`"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # a directory, unreadable, not UTF-8, not JSON
        raise ValueError(f"calibration file '{path}' is unreadable ({e}); {remake}") from e
    if not isinstance(record, dict):
        raise ValueError(f"calibration file '{path}' holds no calibration record; {remake}")
    for name, kind in CALIBRATION_FIELDS.items():
        value = record.get(name)
        ok = isinstance(value, dict) if kind is dict else isinstance(value, int | float) and value > 0
        if not ok or isinstance(value, bool):
            raise ValueError(f"calibration file '{path}': {name} is missing or invalid ({value!r}); {remake}")
    return record


def _differences(measured: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return [f"{k}={measured.get(k)!r} (job: {v!r})" for k, v in wanted.items() if measured.get(k) != v]


def estimate_job(overrides: list[str], settings: Config, calibration: dict[str, Any] | None) -> JobEstimate:
    """Tokens and wall time of one job, from its settings and the calibration (None: tokens only)."""
    t = settings.train
    samples = t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps
    job = JobEstimate(overrides, samples=samples, max_tokens=samples * t.max_length)
    if calibration is None:
        return job
    measured_model = calibration.get("train_signature", {}).get("model")
    if measured_model != train_signature(settings)["model"]:
        job.notes.append(f"calibration.json measured another model ({measured_model}): no time estimate")
        return job
    same_data = not _differences(calibration.get("data_signature", {}), data_signature(settings))
    mean = calibration["mean_tokens_per_sample"] if same_data else t.max_length
    job.tokens = samples * mean if same_data else None
    train_diff = _differences(calibration.get("train_signature", {}), train_signature(settings))
    if train_diff:
        job.notes.append("calibrated with " + ", ".join(train_diff))
    if not same_data:
        job.notes.append("calibration made on other data: time from the max_length upper bound")
    job.seconds = samples * mean / calibration["tokens_per_s"]
    job.seconds += calibration.get("setup_wall_s", 0.0) + calibration.get("eval_wall_s", 0.0)
    return job


def estimate_sweep(
    jobs: list[list[str]], compose: Callable[[list[str]], Config], calibration: dict[str, Any] | None
) -> list[JobEstimate]:
    """One estimate per job; a job whose config does not compose or validate gets a note saying why."""
    out = []
    for overrides in jobs:
        try:
            settings = compose(overrides)
        except Exception as e:  # noqa: BLE001 - the job itself will fail and be recorded; say why now
            out.append(JobEstimate(overrides, notes=[f"invalid config: {e}"]))
            continue
        out.append(estimate_job(overrides, settings, calibration))
    return out


def _tokens(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,.0f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def format_estimate(
    estimates: list[JobEstimate], varied: list[str], calibration: dict[str, Any] | None, path: Path, hint: str
) -> str:
    """The lines printed before a sweep: one per job, then the totals and where the figures come from.

    Args:
        estimates: from `estimate_sweep`.
        varied: the keys the sweep varies (shown per job; the rest is common to all jobs).
        calibration: the calibration used, None when missing.
        path: where the calibration was looked for.
        hint: the calibration command to suggest when it is missing.
    """
    lines = [f"Sweep of {len(estimates)} jobs (cost estimate, before any job starts):"]
    for i, job in enumerate(estimates):
        shown = (
            " ".join(o for o in job.overrides if o.split("=", 1)[0].lstrip("+~") in varied) or "(no sweep)"
        )
        if job.samples == 0:
            lines.append(f"  #{i} {shown}: {job.notes[0]}")
            continue
        expected = f", ~{_tokens(job.tokens)} expected" if job.tokens is not None else ""
        time_text = f", ~{_duration(job.seconds)}" if job.seconds is not None else ""
        lines.append(
            f"  #{i} {shown}: {job.samples:,} samples, "
            f"<= {_tokens(job.max_tokens)} tokens{expected}{time_text}"
        )
    valid = [j for j in estimates if j.samples]
    total_max = sum(j.max_tokens for j in valid)
    lines.append(
        f"Total: <= {_tokens(total_max)} training tokens (steps x batch x accumulation x max_length)"
    )
    if calibration is None:
        lines.append(
            f"No calibration at {path}: wall time unknown. Measure throughput first (a few minutes):"
        )
        lines.append(f"  {hint}")
        return "\n".join(lines)
    if valid and all(j.seconds is not None for j in valid):
        known = [j.tokens for j in valid if j.tokens is not None]
        if len(known) == len(valid):
            lines[-1] += f", ~{_tokens(sum(known))} expected"
        lines.append(
            f"Wall time: ~{_duration(sum(j.seconds for j in valid))} for the sweep, jobs one after another"
        )
    setup = f" + {calibration['setup_wall_s']:.0f} s set-up" if "setup_wall_s" in calibration else ""
    evaluation = setup + (
        f" + {calibration['eval_wall_s']:.0f} s evaluation"
        if "eval_wall_s" in calibration
        else " (no evaluation: calibrate with --eval to add it)"
    )
    lines.append(
        f"From {path}: {calibration['tokens_per_s']:.0f} tokens/s on {calibration.get('device')}, "
        f"{calibration['mean_tokens_per_sample']:.0f} tokens/sample{evaluation}, "
        f"made {calibration.get('created')}"
    )
    notes = sorted({n for j in valid for n in j.notes})
    lines.extend(f"Note: {n}" for n in notes)
    if any(j.seconds is None for j in valid):
        lines.append(f"Calibrate this sweep's model: {hint}")
    return "\n".join(lines)


def calibration_hint(overrides: list[str]) -> str:
    """The calibration command for a sweep: its model, dataset, train and masking-independent settings."""
    keep = ("model", "dataset", "train", "experiment", "cache_dir")
    chosen = [
        o for o in overrides if o.split("=", 1)[0].split(".", 1)[0].lstrip("+~") in keep and "," not in o
    ]
    return " ".join(["python -m sft_sweeps.calibrate --eval", *chosen])
