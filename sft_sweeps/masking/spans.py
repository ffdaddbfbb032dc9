"""Where each message lies in a rendered conversation, in characters, for any chat template.

The rendered text is split into one *segment* per message by rendering every prefix of the conversation:
message k owns the text that `messages[:k+1]` adds to `messages[:k]`. An assistant message's segment is its
header (the text the generation prompt adds) followed by what the model must learn to write: the content,
the end-of-turn token and whatever else the template emits for that turn. When the template has
`{% generation %}` markers, the marked text is the assistant's instead (its author said what is generated).

Templates that do not render prefix-stably are handled where the difference is only closing special tokens
(Phi-3 puts the end-of-sequence token after the final turn only; Qwen 2.5 closes a run of tool messages once)
or a generation prompt that extends the history's header (DeepSeek's `<think>`), and refused with
`TemplateError` otherwise (Qwen3's original template drops earlier reasoning).

Prefix rendering costs O(messages^2) renders, so `LayoutCache` does it once per conversation *shape*: the
conversation with every content replaced by a placeholder. A conversation's own render is then checked to be
that shape's render with the contents spliced in (one render); if the template treats any content other than
verbatim (trims it, looks inside it), the conversation falls back to its own prefix renders.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from sft_sweeps.masking.render import Renderer, TemplateError

# Private-use characters: no template rewrites them and no tokenizer merges them with template text.
_PLACEHOLDER = "\ue000{}\ue001"


@dataclass
class Layout:
    """One rendered sample and where its messages lie in it (character offsets into `text`).

    Attributes:
        text: the rendered conversation, exactly as `apply_chat_template(..., tokenize=False)` returns it.
        starts: message k's segment is `text[starts[k]:starts[k+1]]` (the last one runs to the end).
        assistant: `(start, end, k)` spans the assistant message k is trained to write, end-of-turn included.
        content: where each message's own text lies, or None where the template rewrote it (e.g. stripped it).
        source: `markers` (from `{% generation %}` blocks) or `prefix` (from prefix rendering).
        tool_calls: `(start, end, k)`: where assistant message k's `tool_calls` lie, in its assistant span.
    """

    text: str
    starts: list[int]
    assistant: list[tuple[int, int, int]]
    content: list[tuple[int, int] | None]
    source: str
    tool_calls: list[tuple[int, int, int]] = field(default_factory=list)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _closing_cuts(text: str, specials: tuple[str, ...]) -> list[int]:
    """Positions p where `text[p:]` is made of special tokens and whitespace only, from the end backwards."""
    cuts = [len(text)]
    p = len(text)
    while p > 0:
        if text[p - 1].isspace():
            p -= 1
        else:
            token = next((s for s in specials if text.endswith(s, 0, p)), None)
            if token is None:
                break
            p -= len(token)
        cuts.append(p)
    return cuts


def _common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the longest common suffix of `a` and `b`, at most `limit`."""
    n = 0
    while n < limit and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return n


def _outside_specials(text: str, pos: int, specials: tuple[str, ...]) -> int:
    """`pos`, moved back to the start of the special token it falls inside of, if any."""
    for s in specials:
        j = text.find(s, max(0, pos - len(s) + 1), pos + len(s) - 1)
        if 0 <= j < pos:
            return j
    return pos


class _Prefixes:
    """Renders of one conversation's prefixes and the checks that map them onto the whole render."""

    def __init__(
        self, renderer: Renderer, messages: list[dict], tools: Any, where: str, specials: tuple[str, ...]
    ):
        self.renderer, self.messages, self.tools, self.where, self.specials = (
            renderer,
            messages,
            tools,
            where,
            specials,
        )

    def fail(self, k: int, why: str) -> TemplateError:
        role = self.messages[k].get("role") if k < len(self.messages) else None
        return TemplateError(f"{self.renderer.name}: {why}, at message {k} ({role}) of {self.where}")

    def render(self, k: int, gen: bool = False, markers: bool = False) -> tuple[str, list[tuple[int, int]]]:
        try:
            if markers:
                return self.renderer.render_with_markers(self.messages[:k], self.tools)
            return self.renderer.render(self.messages[:k], self.tools, add_generation_prompt=gen), []
        except Exception as e:  # jinja raises whatever a template's raise_exception says
            raise self.fail(
                max(k - 1, 0), f"rendering messages[:{k}] failed ({type(e).__name__}: {e})"
            ) from e

    def render_prefix(self, k: int) -> str | None:
        """The render of `messages[:k]`, or None when it ends on a system message that the template refuses
        to render alone (Llama 3.1 puts `tools` into the first user message and raises without one)."""
        try:
            return self.render(k)[0]
        except TemplateError:
            if self.messages[k - 1].get("role") == "system" and k < len(self.messages):
                return None
            raise

    def boundary(self, prefix: str, full: str, k: int, floor: int) -> int:
        """Where message k starts in `full`, given the render `prefix` of the messages before it."""
        if full.startswith(prefix):
            b = len(prefix)
        else:
            # The prefix may close with special tokens that the whole render puts later (or only at its end):
            # cut them off at the longest common prefix, never inside a special token.
            common = _common_prefix(prefix, full)
            cuts = [c for c in _closing_cuts(prefix, self.specials) if c <= common]
            if not cuts:
                raise self.fail(
                    k - 1,
                    f"the template is not prefix-stable: messages[:{k}] render as "
                    f"{prefix[common : common + 50]!r} where the whole conversation has "
                    f"{full[common : common + 50]!r} (a template that rewrites "
                    "earlier turns, e.g. drops their reasoning, cannot be masked turn by turn; use a "
                    "prefix-preserving training template such as TRL's)",
                )
            b = max(cuts)
        if b < floor:
            raise self.fail(k - 1, "message boundaries go backwards")
        return b

    def generation_start(self, k: int, history: str, full: str, start: int, end: int) -> int:
        """Where assistant message k's own text starts: after the generation prompt, inside [start, end].

        `history` is the render of the messages before k, without a generation prompt.
        """
        prompt, _ = self.render(k, gen=True)
        if prompt == history:  # the template has no generation prompt: the model writes the header too
            g = start
        elif full.startswith(prompt):
            g = len(prompt)
        else:
            # DeepSeek-style: the generation prompt says more than the history's header (`<think>`); the
            # assistant's text starts where the two part ways, which must be after some of the header.
            g = _outside_specials(full, _common_prefix(prompt, full), self.specials)
            if g <= start:
                raise self.fail(
                    k,
                    f"the generation prompt {prompt[start : start + 50]!r} does not match the "
                    f"rendered assistant turn {full[start : start + 50]!r}",
                )
        if not start <= g <= end:
            raise self.fail(
                k, f"the generation prompt ends at {g}, outside the message's text [{start}, {end}]"
            )
        return g


def compute_layouts(
    renderer: Renderer,
    messages: list[dict[str, Any]],
    specials: tuple[str, ...],
    tools: Any = None,
    *,
    expand: bool = False,
    use_markers: bool | None = None,
    where: str = "the conversation",
) -> list[Layout]:
    """Render `messages` and every prefix of them, and find each message's segment and assistant span.

    Args:
        renderer: the tokenizer's compiled chat template.
        messages: prepared messages (`Renderer.prepare`).
        specials: the tokenizer's special-token strings (closing tokens a prefix render may add).
        tools: prepared tool schemas, passed to the template.
        expand: also return one layout per assistant message: the conversation up to and including it.
        use_markers: take assistant spans from `{% generation %}` blocks; None: when the template has them.
        where: names the conversation in errors.

    Returns:
        `[whole conversation]`, with `expand` followed by one layout per assistant message, in order.

    Raises:
        TemplateError: the template cannot be mapped onto messages without misalignment.
    """
    markers = renderer.has_markers if use_markers is None else use_markers
    if markers and not renderer.has_markers:
        raise TemplateError(f"{renderer.name} has no {{% generation %}} markers")
    n = len(messages)
    p = _Prefixes(renderer, messages, tools, where, specials)
    full, blocks = p.render(n, markers=markers)
    prefixes = [p.render_prefix(k) for k in range(1, n)] + [full]  # prefixes[k]: messages[:k+1]
    starts = [_tools_preamble(renderer, tools, full, prefixes[0])]
    for k in range(1, n):
        previous = prefixes[k - 1]
        # A system prefix the template refuses alone: its text goes to the next message (see render_prefix).
        starts.append(starts[-1] if previous is None else p.boundary(previous, full, k, starts[-1]))
    ends = starts[1:] + [len(full)]
    roles = [m.get("role") for m in messages]
    source = "markers" if markers else "prefix"
    own: dict[int, int] = {}  # without markers: where each assistant message's text starts
    if not markers:
        for k in range(n):
            if roles[k] == "assistant":
                own[k] = p.generation_start(k, prefixes[k - 1] if k else "", full, starts[k], ends[k])
    content = _content_spans(renderer, messages, tools, full, starts, ends)
    calls = _tool_call_spans(p, prefixes, starts, ends, content)

    def assistant_spans(
        text: str, text_blocks: list[tuple[int, int]], upto: int
    ) -> list[tuple[int, int, int]]:
        if not markers:  # the last message's turn runs to the end of its own render (closing tokens included)
            return [(s, ends[k] if k < upto - 1 else len(text), k) for k, s in own.items() if k < upto]
        out = []
        for s, e in text_blocks:
            if s == e:
                continue
            # A block belongs to the message holding its last character: DeepSeek's block opens with the
            # token that closes the tool outputs before it, which a prefix render puts in the tool message.
            k = max(bisect_right(starts, e - 1, 0, upto) - 1, 0)
            if roles[k] != "assistant":
                raise p.fail(
                    k, f"a {{% generation %}} block {text[s : s + 50]!r} lies in a {roles[k]} message"
                )
            out.append((s, e, k))
        return out

    layouts = [Layout(full, starts, assistant_spans(full, blocks, n), content, source, calls)]
    if expand:
        for k in range(n):
            if roles[k] == "assistant":
                text, text_blocks = (full, blocks) if k == n - 1 else p.render(k + 1, markers=markers)
                if not markers:
                    text = prefixes[k]
                layouts.append(
                    Layout(
                        text,
                        starts[: k + 1],
                        assistant_spans(text, text_blocks, k + 1),
                        content[: k + 1],
                        source,
                        [c for c in calls if c[2] <= k],
                    )
                )
    return layouts


def _tools_preamble(renderer: Renderer, tools: Any, full: str, first: str | None) -> int:
    """Where the first message starts: after the text the template writes for `tools` alone, when it writes
    that before any message (the embedded template's tools block without a system message): that text is
    the template's, not the first user message's. 0 otherwise (a template that puts the tools in the system
    message gives them to it)."""
    if not tools or first is None:
        return 0
    try:
        alone = renderer.render([], tools)
    except Exception:  # noqa: BLE001 - templates that index messages[0] fail on none; the tools stay with it
        return 0
    before_first = alone and alone != first and first.startswith(alone) and full.startswith(alone)
    return len(alone) if before_first else 0


def _tool_call_spans(
    p: _Prefixes,
    prefixes: list[str],
    starts: list[int],
    ends: list[int],
    content: list[tuple[int, int] | None],
) -> list[tuple[int, int, int]]:
    """Where each assistant message's tool calls lie: the text its render has beyond the same message without
    `tool_calls` (common prefix and suffix of the two renders cut off).

    Raises:
        TemplateError: the template renders no text for a message's tool calls (they would be lost silently).
    """
    out = []
    for k, message in enumerate(p.messages):
        if message.get("role") != "assistant" or not message.get("tool_calls"):
            continue
        plain = {key: value for key, value in message.items() if key != "tool_calls"}
        plain.setdefault("content", "")
        with_calls = prefixes[k]
        try:
            without = p.renderer.render([*p.messages[:k], plain], p.tools)
        except Exception as e:  # jinja raises whatever a template's raise_exception says
            why = f"rendering the message without its tool calls failed ({type(e).__name__}: {e})"
            raise p.fail(k, why) from e
        a = _common_prefix(with_calls, without)
        suffix = _common_suffix(with_calls, without, min(len(with_calls), len(without)))
        inserted, lowest = len(with_calls) - len(without), len(without) - suffix
        if inserted > 0 and lowest <= a:
            # The calls are inserted text: it may start anywhere in [lowest, a] (the renders share the
            # characters around it); the template writes them after the message's text, so start there.
            text_end = content[k][1] if content[k] is not None else starts[k]
            a = min(max(lowest, text_end), a)
            b = a + inserted
        else:  # the template changes more than the calls: what differs between the renders
            b = len(with_calls) - min(suffix, len(without) - a)
        a, b = max(a, starts[k]), min(b, ends[k])
        if b <= a:
            raise p.fail(
                k,
                "the template renders nothing for the message's tool_calls (they would be lost); use a "
                "chat template with tool support",
            )
        out.append((a, b, k))
    return out


def _content_spans(
    renderer: Renderer,
    messages: list[dict[str, Any]],
    tools: Any,
    full: str,
    starts: list[int],
    ends: list[int],
) -> list[tuple[int, int] | None]:
    """Where each message's own text lies: exact when the template copies content verbatim, else searched."""
    texts = _texts(messages)
    marked = [
        dict(m, content=_PLACEHOLDER.format(i)) if texts[i] is not None else m for i, m in enumerate(messages)
    ]
    try:
        spliced = _Splice(renderer.render(marked, tools), texts)
    except Exception:  # a template that inspects content may reject the placeholder; fall back to searching
        spliced = None
    if spliced is not None and spliced.text == full:
        return spliced.content
    # The template rewrote some content (trim, reasoning split): find the stripped text in its own segment.
    found: list[tuple[int, int] | None] = []
    for i, text in enumerate(texts):
        needle = (text or "").strip()
        at = full.find(needle, starts[i], ends[i]) if needle else -1
        found.append((at, at + len(needle)) if at >= 0 else None)
    return found


def _texts(messages: list[dict[str, Any]]) -> list[str | None]:
    # Empty content gets no placeholder: templates test it (`if message.content`) before tool calls.
    return [
        m.get("content") if isinstance(m.get("content"), str) and m["content"] else None for m in messages
    ]


class _Splice:
    """A placeholder render with the real contents put in, and the map from its offsets to the real text's."""

    def __init__(self, rendered: str, texts: list[str | None]) -> None:
        pieces, pos, shift = [], 0, 0
        self.content: list[tuple[int, int] | None] = [None] * len(texts)
        self._ends: list[int] = []  # placeholder ends, in the placeholder render
        self._shifts: list[int] = []  # offset change after each placeholder
        self.ok = True
        for i, text in enumerate(texts):
            if text is None:
                continue
            mark = _PLACEHOLDER.format(i)
            at = rendered.find(mark, pos)
            if at < 0:  # a template that drops a message (or its content) says nothing about where it is
                self.ok = False
                continue
            pieces += [rendered[pos:at], text]
            self.content[i] = (at + shift, at + shift + len(text))
            shift += len(text) - len(mark)
            pos = at + len(mark)
            self._ends.append(pos)
            self._shifts.append(shift)
        pieces.append(rendered[pos:])
        self.text = "".join(pieces) if self.ok else None

    def map(self, pos: int) -> int:
        i = bisect_right(self._ends, pos)
        return pos + (self._shifts[i - 1] if i else 0)


class LayoutCache:
    """`compute_layouts` done once per conversation shape (roles, fields, tools; not contents).

    Args:
        renderer: the tokenizer's compiled chat template.
        specials: the tokenizer's special-token strings.
        use_markers: as in `compute_layouts`.
        max_shapes: shapes kept; the cache is cleared when full (real data has few shapes).
    """

    def __init__(
        self,
        renderer: Renderer,
        specials: tuple[str, ...],
        use_markers: bool | None = None,
        max_shapes: int = 4096,
    ) -> None:
        self.renderer, self.specials, self.use_markers, self.max_shapes = (
            renderer,
            specials,
            use_markers,
            max_shapes,
        )
        self._shapes: dict[str, list[Layout] | TemplateError] = {}
        self.hits = self.misses = self.fallbacks = 0

    def layouts(
        self,
        messages: list[dict[str, Any]],
        tools: Any = None,
        *,
        expand: bool = False,
        where: str = "the conversation",
    ) -> list[Layout]:
        """As `compute_layouts(renderer, messages, ...)`, in one render when the shape is known."""
        texts = _texts(messages)
        marked = [
            dict(m, content=_PLACEHOLDER.format(i)) if texts[i] is not None else m
            for i, m in enumerate(messages)
        ]
        key = json.dumps([marked, tools, expand], sort_keys=True, default=str)
        shape = self._shapes.get(key)
        if shape is None:
            self.misses += 1
            try:
                shape = compute_layouts(
                    self.renderer,
                    marked,
                    self.specials,
                    tools,
                    expand=expand,
                    use_markers=self.use_markers,
                    where=where,
                )
            except TemplateError as e:
                shape = e
            if len(self._shapes) >= self.max_shapes:
                self._shapes.clear()
            self._shapes[key] = shape
        else:
            self.hits += 1
        if isinstance(shape, list):
            try:
                real = self.renderer.render(messages, tools)
            except Exception:
                real = None  # reported with the message index by compute_layouts below
            spliced = [_Splice(layout.text, texts[: len(layout.starts)]) for layout in shape]
            if real is not None and spliced[0].text == real and all(s.ok for s in spliced):
                return [_mapped(layout, s) for layout, s in zip(shape, spliced, strict=True)]
        # The template rewrites some content, or the shape failed: the conversation's own prefix renders
        # decide (and any error quotes the real text).
        self.fallbacks += 1
        return compute_layouts(
            self.renderer,
            messages,
            self.specials,
            tools,
            expand=expand,
            use_markers=self.use_markers,
            where=where,
        )


def _mapped(layout: Layout, splice: _Splice) -> Layout:
    return Layout(
        text=splice.text,
        starts=[splice.map(s) for s in layout.starts],
        assistant=[(splice.map(s), splice.map(e), k) for s, e, k in layout.assistant],
        content=splice.content[: len(layout.starts)],
        source=layout.source,
        tool_calls=[(splice.map(s), splice.map(e), k) for s, e, k in layout.tool_calls],
    )
