"""Recalling a fact given several turns earlier, with distractor turns in between.

The first user message states a few facts; later turns are either a distractor (a one-digit sum,
answerable from that message alone) or a question about one of the facts. The last turn is always a
question, so every conversation ends by reaching back to the first message across the turns between.

Example:
    >>> import random
    >>> FactRecall().generate(random.Random(0), num_turns=3)  # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'system', 'content': 'Remember the facts. Answer briefly.'},
     {'role': 'user', 'content': 'key=15 room=43'}, {'role': 'assistant', 'content': 'ok'},
     {'role': 'user', 'content': '7+6'}, {'role': 'assistant', 'content': '13'},
     {'role': 'user', 'content': 'room?'}, {'role': 'assistant', 'content': '43'}]
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KEYS = ("pin", "box", "door", "room", "code", "key")


@dataclass
class FactRecall:
    name: str = "fact_recall"
    num_facts: int = 2
    # Chance that a middle turn asks about a fact rather than being a distractor.
    question_rate: float = 0.3

    def generate(self, rng: random.Random, num_turns: int) -> list[dict[str, str]]:
        facts = {key: str(rng.randint(10, 99)) for key in sorted(rng.sample(KEYS, self.num_facts))}
        messages = [
            {"role": "system", "content": "Remember the facts. Answer briefly."},
            {"role": "user", "content": " ".join(f"{k}={v}" for k, v in facts.items())},
            {"role": "assistant", "content": "ok"},
        ]
        for turn in range(1, num_turns):
            if turn == num_turns - 1 or rng.random() < self.question_rate:
                key = rng.choice(sorted(facts))
                question, answer = f"{key}?", facts[key]
            else:
                a, b = rng.randint(0, 9), rng.randint(0, 9)
                question, answer = f"{a}+{b}", str(a + b)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages
