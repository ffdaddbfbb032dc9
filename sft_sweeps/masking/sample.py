"""One conversation, checked, rendered and tokenized: tokens with their message, role, turn and kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from sft_sweeps.data.validate import check_messages
from sft_sweeps.masking.render import Renderer
from sft_sweeps.masking.spans import Layout, LayoutCache
from sft_sweeps.masking.tokens import Annotated, special_strings, tokenize_layouts


@dataclass
class Conversation:
    """A tokenized conversation, or one per-turn sample of it.

    Attributes:
        layout: the rendered text and where each message lies in it.
        tokens: input ids with each token's message index and kind.
        roles: role of each message in the sample.
        target: for a per-turn sample, the index of the assistant message it supervises; else None.
    """

    layout: Layout
    tokens: Annotated
    roles: list[str]
    target: int | None = None


class Annotator:
    """Renders and tokenizes conversations for one tokenizer; the compiled templates are reused.

    Args:
        tokenizer: a fast tokenizer with a chat template.
        use_markers: take assistant spans from `{% generation %}` blocks (None: when the template has them).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, use_markers: bool | None = None) -> None:
        self.tokenizer = tokenizer
        self.use_markers = use_markers
        self.specials = special_strings(tokenizer)
        self.uses_markers = (
            False  # whether the last conversation's assistant spans came from generation markers
        )
        self._caches: dict[bool, LayoutCache] = {}

    def cache(self, with_tools: bool) -> LayoutCache:
        """The layout cache of the template for conversations with (or without) tools."""
        if with_tools not in self._caches:
            renderer = Renderer(self.tokenizer, with_tools)
            self._caches[with_tools] = LayoutCache(renderer, self.specials, self.use_markers)
        return self._caches[with_tools]

    def layouts(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict] | None = None,
        expand: bool = False,
        where: str = "the conversation",
    ) -> list[tuple[Layout, list[str], int | None]]:
        """Checked and rendered: `(layout, roles, target)` of the conversation, then of per-turn samples."""
        check_messages(messages, where)
        prepared, plain_tools = Renderer.prepare(messages, tools)
        layouts = self.cache(tools is not None).layouts(prepared, plain_tools, expand=expand, where=where)
        self.uses_markers = layouts[0].source == "markers"
        roles = [m["role"] for m in messages]
        out = [(layouts[0], roles, None)]
        targets = [k for k, role in enumerate(roles) if role == "assistant"] if expand else []
        for layout, k in zip(layouts[1:], targets, strict=True):
            out.append((layout, roles[: k + 1], k))
        return out

    def samples(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict] | None = None,
        expand: bool = False,
        where: str = "the conversation",
    ) -> list[Conversation]:
        """Render and tokenize a conversation: all of it, then with `expand` one sample per assistant turn."""
        items = self.layouts(messages, tools, expand=expand, where=where)
        tokens = tokenize_layouts(self.tokenizer, [layout for layout, _, _ in items])
        return [
            Conversation(layout, t, roles, target)
            for (layout, roles, target), t in zip(items, tokens, strict=True)
        ]

    def annotate(
        self, messages: list[dict[str, Any]], tools: list[dict] | None = None, where: str = "the conversation"
    ) -> Conversation:
        """Render and tokenize one conversation."""
        return self.samples(messages, tools, where=where)[0]
