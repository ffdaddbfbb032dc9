"""Rendering conversations with a chat template exactly as `apply_chat_template` does, but cheaply.

Span extraction renders every prefix of a conversation, so it skips `apply_chat_template`'s per-call work
(template lookup, input copies) and calls transformers' compiled template directly, with the same inputs:
messages without `None` values, reasoning-field aliases, and the tokenizer's special tokens as variables.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import (
    _alias_reasoning_fields,
    _compile_jinja_template,
    _plain_template_data,
    _render_with_assistant_indices,
)

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateError(ValueError):
    """A chat template cannot be mapped onto tokens without misalignment; names the template and turn."""


@cache
def _trl_templates() -> dict[str, str]:
    # TRL ships the templates of the model families it knows; naming a template after its file says more
    # than a hash in an error message. Found without importing TRL (slow, and not needed here).
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = Path(next(iter(spec.submodule_search_locations))) / "chat_templates"
    return {p.read_text(): p.stem for p in sorted(root.glob("*.jinja"))}


def template_name(tokenizer: PreTrainedTokenizerBase, template: str) -> str:
    """A human name for `template`: TRL's file name when it is one of TRL's, else tokenizer path and hash.

    Example:
        >>> from sft_sweeps.tokenizer import build_embedded_tokenizer
        >>> tok = build_embedded_tokenizer()
        >>> template_name(tok, tok.chat_template)[:36]
        "chat template of 'embedded' (sha256 "
    """
    known = _trl_templates().get(template)
    if known is not None:
        return f"TRL chat template {known!r}"
    digest = hashlib.sha256(template.encode()).hexdigest()[:12]
    return f"chat template of {tokenizer.name_or_path or 'embedded'!r} (sha256 {digest})"


class Renderer:
    """One tokenizer's chat template, compiled once, rendering messages the way `apply_chat_template` does.

    Args:
        tokenizer: a tokenizer with a chat template.
        with_tools: pick the template for conversations with tools (tokenizers may keep a `tool_use` variant).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, with_tools: bool = False) -> None:
        self.template: str = tokenizer.get_chat_template(None, [] if with_tools else None)
        self.name = template_name(tokenizer, self.template)
        self.has_markers = bool(_GENERATION_TAG.search(self.template))
        self._compiled = _compile_jinja_template(self.template)
        self._variables = _plain_template_data({**tokenizer.special_tokens_map})

    @staticmethod
    def prepare(messages: list[dict[str, Any]], tools: list[dict] | None = None) -> tuple[list[dict], Any]:
        """Messages and tools as the template sees them: plain data, no `None` values, reasoning aliased."""
        plain = _plain_template_data([{k: v for k, v in m.items() if v is not None} for m in messages])
        return _alias_reasoning_fields(plain), _plain_template_data(tools)

    def render(
        self, messages: list[dict[str, Any]], tools: Any = None, add_generation_prompt: bool = False
    ) -> str:
        """Render prepared messages to text (no tokenization)."""
        return self._compiled.render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self._variables,
        )

    def render_with_markers(
        self, messages: list[dict[str, Any]], tools: Any = None
    ) -> tuple[str, list[tuple[int, int]]]:
        """Render prepared messages and return the character spans inside `{% generation %}` blocks."""
        return _render_with_assistant_indices(self._compiled, messages, tools, None, False, **self._variables)
