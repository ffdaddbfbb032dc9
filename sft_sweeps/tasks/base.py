"""What a synthetic multi-turn task is: a generator of conversations with gold assistant answers."""

from __future__ import annotations

import random
from typing import Protocol


class Task(Protocol):
    """A deterministic multi-turn task; every assistant message is a gold answer scored by exact match.

    Adding a task: a module in `sft_sweeps/tasks/` with a class that has these members, listed in
    `sft_sweeps.tasks.TASKS`.
    """

    name: str
    # An agent task also has `tools`: the tool schemas every record carries (`record["tools"]`).

    def generate(self, rng: random.Random, num_turns: int) -> list[dict[str, str]]:
        """Messages of one conversation with `num_turns` user/assistant pairs (a system message may lead)."""
        ...
