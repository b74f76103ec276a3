"""Tokenizing rendered prompts: the template's control tokens are real, user text is data.

Boundary: a helper of `prompts.py` (and of adapters that tokenize chat turns); it
knows tokenizers and rendered text, not models, retrieval or losses.

A prompt is a template (a chat template, the `PromptConfig` formats) with slots for
user text: questions, passages, answers, the system prompt and the instruction. Only
the template's own text may produce control tokens (the tokenizer's special tokens,
e.g. SmolLM2's ``<|im_start|>``/``<|im_end|>``); the same strings inside user text
are tokenized as the characters they are, so a passage cannot close the user turn.

How: `SlotMarkers` renders the template with a fresh marker in every slot (the user
text itself is never rendered, so nothing in it can collide with a marker), splits
the result into template pieces and slots, and `pieces_ids` tokenizes them. Template
pieces are cut at their control tokens (which become their ids); every stretch
between two control tokens is tokenized with special-token parsing off. The
tokenizer itself tokenizes the text between special tokens stretch by stretch, so a
prompt whose user text holds no control-token string gets the ids it always had.

`chat_ids` does the same for chat turns (the chat adapters' messages).

Example:
    >>> slots = SlotMarkers(["question"])  # doctest: +SKIP
    >>> items = slots.split(f"<|user|>Q: {slots['question']}\n", {"question": "<eos>?"})  # doctest: +SKIP
    >>> pieces_ids(tokenizer, [[(t, slot is None) for t, slot in items]])  # doctest: +SKIP
    [[3, 87, 64, 38, 66, 107, 117, 121, 68, 69, 16]]
"""

from __future__ import annotations

import re
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Piece = tuple[str, bool]  # (text, is_template): template text may hold control tokens, user text never does
_Plan = list[int | str]  # control-token ids and text stretches, in order


@dataclass(frozen=True)
class _Controls:
    """The tokenizer's control tokens: a pattern that finds them and the ids they map to."""

    pattern: re.Pattern | None
    ids: tuple[int, ...]  # id of the token matched by capture group i + 1
    forbidden: frozenset[int]  # ids that literal text must never produce


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _control_tokens(tokenizer) -> dict[str, tuple[int, bool, bool]]:
    """content -> (id, lstrip, rstrip) for every special (control) token of `tokenizer`."""
    found: dict[str, tuple[int, bool, bool]] = {}
    for idx, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            found[str(tok)] = (int(idx), bool(getattr(tok, "lstrip", False)), bool(getattr(tok, "rstrip", False)))
    for content in getattr(tokenizer, "all_special_tokens", []):
        idx = tokenizer.convert_tokens_to_ids(content)
        if content not in found and isinstance(idx, int):
            found[content] = (idx, False, False)
    return found


def _build_controls(tokenizer) -> _Controls:
    tokens = sorted(_control_tokens(tokenizer).items(), key=lambda kv: -len(kv[0]))  # longest match first
    alternatives = []
    for content, (_, lstrip, rstrip) in tokens:
        alternatives.append(("\\s*" if lstrip else "") + f"({re.escape(content)})" + ("\\s*" if rstrip else ""))
    pattern = re.compile("|".join(alternatives)) if alternatives else None
    ids = tuple(idx for _, (idx, _, _) in tokens)
    unk = getattr(tokenizer, "unk_token_id", None)  # unknown characters may map to it legitimately
    return _Controls(pattern, ids, frozenset(i for i in ids if i != unk))


def controls(tokenizer) -> _Controls:
    """`_Controls` of `tokenizer`, cached while its vocabulary size is unchanged."""
    key = len(tokenizer)
    try:
        cached = _CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable: no cache
        return _build_controls(tokenizer)
    if cached is None or cached[0] != key:
        cached = (key, _build_controls(tokenizer))
        _CACHE[tokenizer] = cached
    return cached[1]


def _fallback_ids(tokenizer, text: str, ctl: _Controls) -> list[int]:
    """`text` as data when the tokenizer ignored ``split_special_tokens``: control strings char by char."""
    parts: list[str] = []
    pos = 0
    for m in ctl.pattern.finditer(text) if ctl.pattern is not None else ():
        parts += [text[pos : m.start()], *text[m.start() : m.end()]]
        pos = m.end()
    parts.append(text[pos:])
    parts = [p for p in parts if p]
    rows = tokenizer(parts, add_special_tokens=False, split_special_tokens=True)["input_ids"] if parts else []
    ids = [i for row in rows for i in row]
    if ctl.forbidden.intersection(ids):
        raise ValueError(
            f"text: the generator tokenizer {type(tokenizer).__name__} turns plain text of {len(text)} characters "
            "into control tokens however it is split; remove the special-token strings from it"
        )
    return ids


def literal_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with special-token strings read as plain characters.

    Args:
        tokenizer: A Hugging Face tokenizer (fast or slow).
        texts: User text (questions, passages, answers).

    Returns:
        One id list per text; none holds a control-token id. A row that does (a
        tokenizer without ``split_special_tokens`` support, or another thread that
        switched a shared fast tokenizer's mode mid-call) is tokenized again, and
        then split at the control strings.
    """
    texts = list(texts)
    if not texts:
        return []
    rows = [list(r) for r in tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]]
    ctl = controls(tokenizer)
    bad = [i for i, row in enumerate(rows) if ctl.forbidden.intersection(row)]
    if bad:
        again = tokenizer([texts[i] for i in bad], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        for i, row in zip(bad, again, strict=True):
            rows[i] = list(row) if not ctl.forbidden.intersection(row) else _fallback_ids(tokenizer, texts[i], ctl)
    return rows


def _plan(pieces: Iterable[Piece], ctl: _Controls) -> _Plan:
    """Cut template pieces at their control tokens; join everything between them into stretches."""
    plan: _Plan = []
    text = ""
    for piece, is_template in pieces:
        if not is_template or ctl.pattern is None:
            text += piece
            continue
        pos = 0
        for m in ctl.pattern.finditer(piece):
            text += piece[pos : m.start()]
            if text:
                plan.append(text)
                text = ""
            assert m.lastindex is not None  # the pattern is an alternation of groups
            plan.append(ctl.ids[m.lastindex - 1])
            pos = m.end()
        text += piece[pos:]
    if text:
        plan.append(text)
    return plan


def pieces_ids(tokenizer, rows: Sequence[Sequence[Piece]]) -> list[list[int]]:
    """Token ids of each row of pieces: template control tokens real, user text literal.

    All text stretches of all rows are tokenized in one batched call.
    """
    ctl = controls(tokenizer)
    plans = [_plan(row, ctl) for row in rows]
    stretches = iter(literal_ids(tokenizer, [item for plan in plans for item in plan if isinstance(item, str)]))
    out = []
    for plan in plans:
        ids: list[int] = []
        for item in plan:
            ids += [item] if isinstance(item, int) else next(stretches)
        out.append(ids)
    return out


def _fresh_tag(texts: Sequence[str]) -> str:
    """A random tag that occurs in none of `texts`."""
    while True:
        tag = uuid.uuid4().hex.upper()
        if not any(tag in t for t in texts):
            return tag


def chat_ids(tokenizer, turns: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of chat `turns` under the tokenizer's chat template, message contents as data.

    Control-token strings inside each message's content are wrapped in fresh
    markers before rendering, so the template sees the content as it is (its own
    string handling, e.g. ``trim``, still applies) and the wrapped strings are then
    tokenized as characters. A marker the template split from its partner is dropped.

    Args:
        tokenizer: A tokenizer with a ``chat_template``.
        turns: ``{"role": ..., "content": str}`` messages.
        add_generation_prompt: End with the assistant header.
    """
    ctl = controls(tokenizer)
    contents = [t.get("content") for t in turns]
    tag = _fresh_tag([c for c in contents if isinstance(c, str)] + [str(tokenizer.chat_template)])
    start, end = f"CFDATA{tag}[", f"]{tag}CFDATA"

    def wrap(content):
        if not isinstance(content, str) or ctl.pattern is None:
            return content
        return ctl.pattern.sub(lambda m: start + m.group(0) + end, content)

    marked = [{**t, "content": wrap(c)} for t, c in zip(turns, contents, strict=True)]
    text = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=add_generation_prompt)
    pieces: list[Piece] = []
    pos = 0
    for m in re.finditer(re.escape(start) + "(.*?)" + re.escape(end), text, re.S):
        pieces += [(text[pos : m.start()], True), (m.group(1), False)]
        pos = m.end()
    pieces.append((text[pos:], True))
    pieces = [(t.replace(start, "").replace(end, "") if is_template else t, is_template) for t, is_template in pieces]
    return pieces_ids(tokenizer, [pieces])[0]


class SlotMarkers:
    """Fresh markers for the named user-text slots of one rendering.

    Args:
        names: Slot names (e.g. ``"question"``, ``"passages"``).
        template_texts: Every template text the rendering may copy (formats, the
            chat template source); markers are drawn until none of them holds one.
    """

    def __init__(self, names: Sequence[str], template_texts: Iterable[str | None] = ()) -> None:
        tag = _fresh_tag([t for t in template_texts if t])
        self.names = list(names)
        self._marks = {name: f"CFSLOT{tag}N{i}E" for i, name in enumerate(self.names)}
        self._pattern = re.compile(f"CFSLOT{tag}N(\\d+)E")

    def __getitem__(self, name: str) -> str:
        return self._marks[name]

    def split(self, rendered: str, values: Mapping[str, str]) -> list[tuple[str, str | None]]:
        """`rendered` as (text, slot) items: template text has slot None, a slot item holds its value.

        A slot without a value in `values` keeps its name and an empty text.
        """
        items: list[tuple[str, str | None]] = []
        pos = 0
        for m in self._pattern.finditer(rendered):
            if m.start() > pos:
                items.append((rendered[pos : m.start()], None))
            name = self.names[int(m.group(1))]
            items.append((values.get(name, ""), name))
            pos = m.end()
        if pos < len(rendered):
            items.append((rendered[pos:], None))
        return items
