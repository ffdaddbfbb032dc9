"""Tracking a state that changes turn by turn.

The first user message sets a few variables; each later one changes one of them; the assistant always
reports the whole state. Answering turn k needs the state after turn k-1, so later turns depend on
earlier ones, and a model must read the history, not only the last message.

Example:
    >>> import random
    >>> StateTracking().generate(random.Random(0), num_turns=3)  # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'system', 'content': 'Track a b c.'},
     {'role': 'user', 'content': 'a=6 b=6 c=0'}, {'role': 'assistant', 'content': 'a=6 b=6 c=0'},
     {'role': 'user', 'content': 'b=8'}, {'role': 'assistant', 'content': 'a=6 b=8 c=0'},
     {'role': 'user', 'content': 'b=6'}, {'role': 'assistant', 'content': 'a=6 b=6 c=0'}]
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class StateTracking:
    name: str = "state_tracking"
    variables: str = "abc"
    max_value: int = 9

    def generate(self, rng: random.Random, num_turns: int) -> list[dict[str, str]]:
        state = {v: rng.randint(0, self.max_value) for v in self.variables}
        messages = [{"role": "system", "content": "Track a b c."}]
        for turn in range(num_turns):
            if turn == 0:
                change = " ".join(f"{v}={x}" for v, x in state.items())
            else:
                variable = rng.choice(self.variables)
                state[variable] = rng.randint(0, self.max_value)
                change = f"{variable}={state[variable]}"
            messages.append({"role": "user", "content": change})
            messages.append({"role": "assistant", "content": " ".join(f"{v}={x}" for v, x in state.items())})
        return messages
