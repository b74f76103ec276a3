"""Passages in and the passage sampler of `generate_qa`.

Boundary: plain data. Turns the accepted passage sources into a list of `Passage` and
draws the passages questions are written for (all, random n, or n stratified by a
metadata key). No models, no I/O.

Example:
    >>> from contextflow_core.types import Passage
    >>> ps = [Passage(str(i), f"text {i}", metadata={"kind": "a" if i < 6 else "b"}) for i in range(8)]
    >>> sorted(p.metadata["kind"] for p in sample_passages(ps, 4, "kind", seed=0))
    ['a', 'a', 'b', 'b']
"""

from __future__ import annotations

import json
import random
from typing import Any

from contextflow_core.types import Passage

__all__ = ["as_passages", "sample_passages"]

_ACCEPTED = (
    "a list of str, a list of Passage, a DocumentIndex, or an object with an `index` holding one "
    "(a RAGSequence, a Retriever)"
)


def as_passages(source: Any) -> list[Passage]:
    """The passages of `source` (see `generate_qa`), checked: non-empty, texts are str, ids unique.

    Raises:
        TypeError: An unsupported source (the message lists what is accepted).
        ValueError: No passages, a non-string text, or a repeated id.
    """
    if isinstance(source, (str, bytes)):
        raise TypeError(f"passages: expected {_ACCEPTED}, got a single {type(source).__name__}; wrap it in a list")
    items = _items(source)
    passages = []
    for i, item in enumerate(items):
        if isinstance(item, Passage):
            passages.append(item)
        elif isinstance(item, str):
            passages.append(Passage(id=str(i), text=item))
        else:
            raise TypeError(f"passages[{i}]: expected a str or a Passage, got {type(item).__name__}")
        if not isinstance(passages[-1].text, str):
            raise ValueError(f"passages[{i}]: expected the text to be a str, got {type(passages[-1].text).__name__}")
    if not passages:
        raise ValueError("passages: expected at least one passage, got none")
    seen: dict[str, int] = {}
    for i, p in enumerate(passages):
        if p.id in seen:
            raise ValueError(f"passages: ids must be unique, got {p.id!r} at positions {seen[p.id]} and {i}")
        seen[p.id] = i
    return passages


def _items(source: Any) -> list[Any]:
    index = getattr(source, "index", None)
    if index is not None and not isinstance(source, (list, tuple)) and hasattr(index, "passages"):
        source = index  # a RAGSequence or a Retriever
    if hasattr(source, "passages") and not isinstance(source, (list, tuple)):
        return list(source.passages)  # a DocumentIndex
    if isinstance(source, (list, tuple)):
        return list(source)
    raise TypeError(f"passages: expected {_ACCEPTED}, got {type(source).__name__}")


def sample_passages(passages: list[Passage], sample: int | None, stratify_by: str | None, seed: int) -> list[Passage]:
    """The passages to write questions for, in their original order.

    Args:
        passages: All passages.
        sample: None (all), or how many to draw at random (all when >= their number).
        stratify_by: With `sample`: a metadata key whose values are drawn from evenly, round robin
            over the values in an order drawn from `seed`; passages without the key form one group.
        seed: The sampler's seed.

    Raises:
        ValueError: `sample` not a positive integer, or `stratify_by` not a non-empty str or
            given without `sample`.
    """
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise ValueError(f"sample: expected None (every passage) or a positive integer, got {sample!r}")
    if stratify_by is not None:
        if not isinstance(stratify_by, str) or not stratify_by:
            raise ValueError(f"stratify_by: expected a metadata key (a non-empty str), got {stratify_by!r}")
        if sample is None:
            raise ValueError(
                f"stratify_by: draws `sample` passages evenly across the values of {stratify_by!r}, "
                "got sample=None (every passage); pass sample=n, or drop stratify_by"
            )
    if sample is None or sample >= len(passages):
        return list(passages)
    rng = random.Random(seed)
    if stratify_by is None:
        rows = rng.sample(range(len(passages)), sample)
    else:
        rows = _stratified_rows(passages, sample, stratify_by, rng)
    return [passages[i] for i in sorted(rows)]


def _stratified_rows(passages: list[Passage], sample: int, key: str, rng: random.Random) -> list[int]:
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(passages):
        value = p.metadata.get(key) if isinstance(p.metadata, dict) and key in p.metadata else _MISSING
        groups.setdefault(_group_key(value), []).append(i)
    queues = [groups[k] for k in sorted(groups)]
    for rows in queues:
        rng.shuffle(rows)
    rng.shuffle(queues)
    chosen: list[int] = []
    while len(chosen) < sample:
        for rows in queues:
            if rows and len(chosen) < sample:
                chosen.append(rows.pop())
    return chosen


_MISSING = object()


def _group_key(value: Any) -> str:
    if value is _MISSING:
        return "\x00missing"
    return json.dumps(value, sort_keys=True, default=str)
