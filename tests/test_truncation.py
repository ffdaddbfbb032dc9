"""Truncation by turns (`train.truncation_mode=turns`, the default): what each strategy trains on when a
conversation is longer than `train.max_length` (`sft_sweeps.masking.dataset.turn_window`)."""

from __future__ import annotations

import numpy as np
import pytest

from sft_sweeps.config import MaskingConfig, validate
from sft_sweeps.data import load_splits
from sft_sweeps.masking import build_dataset
from sft_sweeps.masking.dataset import turn_window
from sft_sweeps.tasks import make_splits
from sft_sweeps.tokenizer import build_embedded_tokenizer
from tests.conftest import compose_config

ROLES = ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
# Two tokens per message, one token of template text before the first message.
MESSAGE = np.array([-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])


def test_the_system_message_and_the_latest_turns_stay() -> None:
    kept, dropped = turn_window(MESSAGE, ROLES, 11)  # 3 head + 8 of the last two turns
    assert MESSAGE[kept].tolist() == [-1, 0, 0, 3, 3, 4, 4, 5, 5, 6, 6] and dropped == 1
    kept, dropped = turn_window(MESSAGE, ROLES, 8)  # only the last turn fits beside the head
    assert MESSAGE[kept].tolist() == [-1, 0, 0, 5, 5, 6, 6] and dropped == 2


def test_a_last_turn_too_long_loses_its_start_never_its_answer() -> None:
    kept, _ = turn_window(MESSAGE, ROLES, 5)
    assert MESSAGE[kept].tolist() == [-1, 0, 0, 6, 6]  # the final assistant message survives
    kept, _ = turn_window(MESSAGE, ROLES, 2)  # the head alone is too long: the end is kept
    assert MESSAGE[kept].tolist() == [6, 6]


def test_a_turn_expanded_sample_keeps_its_own_target_turn() -> None:
    sample = MESSAGE[MESSAGE <= 4]  # the sample of the second assistant turn ends there
    kept, dropped = turn_window(sample, ROLES, 7)
    assert sample[kept].tolist() == [-1, 0, 0, 3, 3, 4, 4] and dropped == 1


def _sharegpt(n: int = 300):
    settings = validate(
        compose_config(["dataset=sharegpt", f"dataset.max_records={n}", "dataset.num_test=10"])
    )
    return load_splits(settings.dataset).train


@pytest.mark.parametrize("mode", ["turns", "keep_start"])
def test_last_and_all_train_on_the_same_real_conversations_only_by_turns(mode: str, tmp_path) -> None:
    """Real ShareGPT conversations, most longer than the window: by turns, `last` and `all` keep the same
    conversations and `last` keeps every final answer; keeping the start, `last` loses most of them."""
    tok = build_embedded_tokenizer()
    conversations = _sharegpt()
    made = {}
    for strategy in ("last", "all"):
        ds, stats = build_dataset(tok, conversations, MaskingConfig(name=strategy), 256, mode, str(tmp_path))
        made[strategy] = (set(ds["id"]), stats)
    (last_ids, last), (all_ids, all_) = made["last"], made["all"]
    assert last.truncated == all_.truncated > len(conversations) / 2  # the window is short for real chats
    if mode == "turns":
        assert last_ids == all_ids and last.dropped_zero_weight == all_.dropped_zero_weight == 0
        assert last.truncated_turns > 0
    else:
        assert last.dropped_zero_weight > len(conversations) / 4 and last_ids < all_ids


def test_agent_trajectories_keep_their_last_calls_results_and_answer(tmp_path) -> None:
    tok = build_embedded_tokenizer()
    records = make_splits(["tool_use"], {"train": 50}, 3, 3, seed=0)["train"]
    masking = MaskingConfig(name="last_round")
    ds, stats = build_dataset(tok, records, masking, 760, "turns", str(tmp_path))
    assert stats.truncated_turns > 0 and stats.dropped_zero_weight == 0 and len(ds) == len(records)
    for row, record in zip(ds, records, strict=True):
        text = tok.decode(row["input_ids"])
        assert text.startswith("<|im_start|>system\nUse the tools.")  # the tools block stays
        last_user = [m for m in record["messages"] if m["role"] == "user"][-1]["content"]
        assert last_user in text and text.endswith(record["messages"][-1]["content"] + "<|im_end|>\n")
        assert len(row["input_ids"]) <= 760


def test_the_report_accounts_for_what_each_strategy_trained_on(tmp_path) -> None:
    """Records whose masking statistics come from real data preparation: keeping the start, `last` trains
    on fewer conversations and the report and sweep table say why; by turns, no warning."""
    from sft_sweeps.identity import RunRecord
    from sft_sweeps.report.accounting import accounting_csv, accounting_md, warnings
    from sft_sweeps.report.analysis import place_runs
    from sft_sweeps.report.render import md_table

    tok = build_embedded_tokenizer()
    conversations = _sharegpt(200)
    for mode in ("keep_start", "turns"):
        records = []
        for strategy in ("last", "all"):
            _, stats = build_dataset(
                tok, conversations, MaskingConfig(name=strategy), 256, mode, str(tmp_path)
            )
            cfg = compose_config([f"masking={strategy}", f"train.truncation_mode={mode}"])
            record = RunRecord.start(cfg, run_dir=str(tmp_path / strategy))
            record.status, record.metrics = "done", {"synthetic/turn_exact_match": 0.5}
            record.data = {"fingerprint": "f" * 64, "stats": {}, "masking": stats.to_dict()}
            records.append(record)
        runs = place_runs(records)
        lines = warnings(runs)
        if mode == "keep_start":
            (line,) = lines
            assert "strategies trained on different conversations (last " in line
            assert "nothing left to supervise after truncation (train.truncation_mode=keep_start" in line
        else:
            assert lines == []
        assert "| last " in accounting_md(runs, md_table) and accounting_csv(runs).count("\n") == 3
