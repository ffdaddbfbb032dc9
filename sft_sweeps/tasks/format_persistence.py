"""Keeping a format instruction, given once at the start, in every later answer.

The instruction (upper case, a closing `!`, or brackets) is in the system message or opens the first
user message; every user turn then asks the assistant to repeat a word, and every answer must be that
word in the instructed format. The content is trivial on purpose: what is scored is whether the format
persists, turn after turn, when nothing in the latest message recalls it.

Example:
    >>> import random
    >>> FormatPersistence().generate(random.Random(2), num_turns=2)  # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'system', 'content': 'Answer in upper case.'},
     {'role': 'user', 'content': 'say map'}, {'role': 'assistant', 'content': 'MAP'},
     {'role': 'user', 'content': 'say sun'}, {'role': 'assistant', 'content': 'SUN'}]
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

WORDS = ("cat", "dog", "sun", "red", "box", "map", "cup", "fox", "pen", "sky", "tea", "owl")

# Instruction -> how an answer looks when it follows it.
FORMATS: dict[str, Callable[[str], str]] = {
    "Answer in upper case.": str.upper,
    "End answers with !": lambda word: word + "!",
    "Wrap answers in [].": lambda word: f"[{word}]",
}


@dataclass
class FormatPersistence:
    name: str = "format_persistence"

    def generate(self, rng: random.Random, num_turns: int) -> list[dict[str, str]]:
        instruction = rng.choice(sorted(FORMATS))
        in_system = rng.random() < 0.5
        messages = [{"role": "system", "content": instruction}] if in_system else []
        for turn in range(num_turns):
            word = rng.choice(WORDS)
            request = f"say {word}" if in_system or turn > 0 else f"{instruction} say {word}"
            messages += [
                {"role": "user", "content": request},
                {"role": "assistant", "content": FORMATS[instruction](word)},
            ]
        return messages
