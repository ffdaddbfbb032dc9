"""Data parallelism: two CPU processes (gloo) under `accelerate launch` give the gradients of one process.

The test launches this file as a worker: `accelerate launch --multi_gpu --num_processes 2 tests/test_ddp.py
OUT NORMALIZER` (on a machine without CUDA, two CPU processes over gloo). Each rank trains one optimizer
step (2 samples x 2 accumulation steps per rank) through `build_trainer(...).train()`, the path the
pipeline uses, and saves the samples it saw and the gradients before the optimizer step. The test checks
that every rank holds the same gradients, that the ranks saw the whole batch between them, and that the
gradients and logged loss are those of sum(w * nll) / normalizer over the whole batch, computed directly
in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = (7, 12, 5, 9, 11, 6, 8, 10)  # one optimizer step: 2 ranks x 2 samples x 2 accumulation steps


def _worker(out_dir: str, normalizer: str) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback

    from sft_sweeps.training import build_trainer
    from tests.test_training import TOKENIZER, _cfg, _model, _samples

    rows = [{**r, "id": i} for i, r in enumerate(_samples(LENGTHS))]
    cfg = _cfg(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        loss_normalizer=normalizer,
        max_grad_norm=0.0,  # no clipping: compare raw gradients
        train_sampling_strategy="random",
    )
    trainer = build_trainer(
        _model(),
        TOKENIZER,
        Dataset.from_list(rows).select_columns(["input_ids", "weights"]),
        cfg,
        seed=0,
        output_dir=f"{out_dir}/trainer",
    )
    by_ids = {tuple(r["input_ids"]): r["id"] for r in rows}
    collate, seen, grads = trainer.data_collator, [], {}

    def recording(examples: list[dict]) -> dict:
        seen.extend(by_ids[tuple(e["input_ids"])] for e in examples)
        return collate(examples)

    class KeepGrads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update(
                {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            )

    trainer.data_collator = recording
    trainer.add_callback(KeepGrads())
    output = trainer.train()
    rank = trainer.args.process_index
    torch.save(
        {"world_size": trainer.args.world_size, "seen": seen, "grads": grads, "loss": output.training_loss},
        f"{out_dir}/rank{rank}.pt",
    )


@pytest.mark.slow
@pytest.mark.parametrize("normalizer", ["weight_sum", "tokens", "sequences"])
def test_two_process_ddp_step_equals_one_process_reference(normalizer: str, tmp_path: Path) -> None:
    from sft_sweeps.config import LossNormalizer
    from tests.test_training import _grads, _model, _reference_loss, _samples

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # `--cpu` would start a single process (accelerate needs mpirun for several CPU processes); `--multi_gpu`
    # starts them with torchrun, and without CUDA each process joins a gloo group on the CPU.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = subprocess.run(
        [*launch, __file__, str(tmp_path), normalizer],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # the step's micro-batches are collated one ahead, so each rank may have collated its next batch too
    step_samples = [r["seen"][:4] for r in ranks]
    assert sorted(step_samples[0] + step_samples[1]) == list(range(len(LENGTHS)))

    rows = _samples(LENGTHS)
    model = _model()
    loss = _reference_loss(model, rows, LossNormalizer(normalizer))
    loss.backward()
    reference = _grads(model)
    assert ranks[0]["grads"].keys() == reference.keys()
    for name, grad in reference.items():
        assert_close(ranks[1]["grads"][name], ranks[0]["grads"][name], rtol=0, atol=0, msg=name)
        assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert ranks[0]["loss"] == pytest.approx(loss.item(), rel=1e-5)


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
