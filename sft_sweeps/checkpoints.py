"""Training checkpoints and continuation: an interrupted run goes on from where it stopped.

With `train.save_steps` set, the trainer saves a checkpoint every `save_steps` optimizer steps and at the
last one, under `<run_dir>/trainer/checkpoint-<step>/`, keeping the newest `train.save_total_limit`.
A checkpoint is transformers' own (model, optimizer, scheduler, RNG states, trainer state), plus
`sft_sweeps_checkpoint.json`, written last, so a checkpoint without it (a process killed while saving) is
never used. That file holds:

- `identity`: a digest of the config (the keys that change what is computed, checkpoint settings left
  out) and of the data fingerprint. A run continues only from a checkpoint of the same identity; changed
  config or data deletes the old checkpoints and starts from step 0, saying so.
- `loss_sum`: the sum of the per-step training losses up to that step, so a continued run reports the
  mean loss over all its steps (`train_loss`), as an uninterrupted run does (transformers' own figure
  covers only the steps of the last call).

transformers restores the data order too: the same seeded sampler, and the batches of the interrupted
epoch already trained are skipped, so on CPU the continued run ends with the same weights, bit for bit,
as an uninterrupted one (tests/test_checkpoints.py kills a real run and compares).

The pipeline uses it as:

    continuation = Continuation.prepare(trainer, settings, data_fingerprint)
    train_output = trainer.train(resume_from_checkpoint=continuation.checkpoint)
    train_loss = continuation.train_loss(train_output)
    ...                           # evaluate, record `continuation.resumed_from_step`
    continuation.finish()         # the run is done: delete its checkpoints unless keep_checkpoints
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_sweeps.config import Config
from sft_sweeps.identity import UNHASHED_KEYS, config_digest

log = logging.getLogger(__name__)

MARKER = "sft_sweeps_checkpoint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# How often and how many checkpoints are kept changes nothing a run computes: changing them continues it.
_CHECKPOINT_KEYS = ("save_steps", "save_total_limit", "keep_checkpoints")


def checkpoint_identity(settings: Config, data_fingerprint: str) -> str:
    """What a checkpoint must match to be continued from: the config and the data.

    Args:
        settings: the validated config of the run.
        data_fingerprint: the fingerprint of its splits (`Splits.fingerprint`).
    """
    resolved = json.loads(json.dumps(dataclasses.asdict(settings), default=str))
    for key in _CHECKPOINT_KEYS:
        resolved["train"].pop(key, None)
    return f"{config_digest(resolved, UNHASHED_KEYS, 16)}-{data_fingerprint[:16]}"


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """`(step, folder)` of the `checkpoint-<step>` folders in `output_dir`, oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_marker(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's `sft_sweeps_checkpoint.json`, or None when it is missing or unreadable."""
    try:
        return json.loads((checkpoint / MARKER).read_text())
    except (OSError, ValueError):
        return None


def latest_checkpoint(output_dir: str | Path, identity: str) -> tuple[int, Path] | None:
    """The newest complete checkpoint of `identity` in `output_dir`, or None."""
    for step, path in reversed(checkpoints(output_dir)):
        marker = read_marker(path)
        if marker is not None and marker.get("identity") == identity:
            return step, path
    return None


def write_marker(checkpoint: Path, identity: str, loss_sum: float, step: int) -> None:
    """Write the marker last: from then on the checkpoint counts as complete."""
    tmp = checkpoint / f"{MARKER}.tmp"
    tmp.write_text(json.dumps({"identity": identity, "step": step, "loss_sum": loss_sum}))
    tmp.replace(checkpoint / MARKER)


@dataclass
class Continuation:
    """Where a run's training starts: a checkpoint of the same run, or step 0.

    Attributes:
        checkpoint: the folder to pass as `trainer.train(resume_from_checkpoint=...)`, or None.
        resumed_from_step: its optimizer step (None when training starts from step 0).
        loss_sum: the sum of per-step losses up to that step.
        output_dir: the trainer's output folder (where checkpoints go).
        keep: keep the checkpoints once the run is done (`train.keep_checkpoints`).
        is_main: this process writes and deletes checkpoints (rank 0).
    """

    checkpoint: str | None
    resumed_from_step: int | None
    loss_sum: float
    output_dir: Path
    keep: bool
    is_main: bool

    @classmethod
    def prepare(cls, trainer: Any, settings: Config, data_fingerprint: str) -> Continuation:
        """Find the checkpoint to continue from; on rank 0, delete checkpoints of another config or data.

        Every rank finds the same checkpoint (they read the same folder; rank 0 deletes only checkpoints
        no rank would pick). The trainer (`WeightedSFTTrainer`) is told the identity, so that the
        checkpoints it saves carry it.
        """
        output_dir = Path(trainer.args.output_dir)
        identity = checkpoint_identity(settings, data_fingerprint)
        is_main = bool(trainer.args.should_save)
        found = latest_checkpoint(output_dir, identity) if settings.train.save_steps else None
        if is_main:
            stale = [path for step, path in checkpoints(output_dir) if found is None or step > found[0]]
            stale += [
                path
                for step, path in checkpoints(output_dir)
                if found is not None and step < found[0] and read_marker(path) is None
            ]
            if stale:
                log.warning(
                    "deleting %d checkpoint(s) in %s of another config or data, or incomplete: %s",
                    len(stale),
                    output_dir,
                    ", ".join(p.name for p in stale),
                )
            for path in stale:
                shutil.rmtree(path, ignore_errors=True)
        trainer.checkpoint_identity = identity
        if found is None:
            if settings.train.save_steps:
                log.info("training from step 0 (no checkpoint of this config and data in %s)", output_dir)
            return cls(None, None, 0.0, output_dir, settings.train.keep_checkpoints, is_main)
        step, path = found
        marker = read_marker(path) or {}
        log.warning(
            "continuing from %s: step %d of %d (model, optimizer, scheduler, RNG and data order restored)",
            path,
            step,
            settings.train.max_steps,
        )
        return cls(
            str(path),
            step,
            float(marker.get("loss_sum", 0.0)),
            output_dir,
            settings.train.keep_checkpoints,
            is_main,
        )

    def train_loss(self, train_output: Any) -> float:
        """The mean per-step training loss over all steps, the ones before the checkpoint included."""
        steps = int(train_output.global_step)
        if not steps:
            return float(train_output.training_loss)
        steps_run = steps - (self.resumed_from_step or 0)
        return (self.loss_sum + float(train_output.training_loss) * steps_run) / steps

    def finish(self) -> None:
        """The run is done: delete its checkpoints (rank 0), unless `train.keep_checkpoints`."""
        if self.keep or not self.is_main:
            return
        for _, path in checkpoints(self.output_dir):
            shutil.rmtree(path, ignore_errors=True)
