"""Passage data pulled from a user's store, made exact and storable: JSON-safe metadata, merged duplicates.

Boundary: pure conversion of `Passage` data (no models, no I/O). Both adapters'
fine-tune helpers (LangChain `finetune_from_vectorstore`, LlamaIndex
`finetune_from_index`) and `building.build_rag` go through `json_metadata`, so a
store's metadata becomes the same JSON on either side, **before** any training
starts (a `DocumentIndex` saves metadata as JSON).

The conversion rule (applied recursively, keys and values):
    - ``str``, ``int``, ``float``, ``bool``, ``None``: kept (subclasses become the
      plain type);
    - ``datetime``, ``date``, ``time``: their ISO 8601 string (``value.isoformat()``);
    - ``list``, ``tuple``: a list; ``set``, ``frozenset``: a sorted list;
    - ``dict`` (any mapping): a dict whose keys are strings (a non-string key
      becomes its converted value as a string: ``1`` -> ``"1"``, a date -> its ISO
      string, a tuple -> its JSON list text); two keys that become the same string
      are an error;
    - numpy and torch scalars and arrays: their Python number or (nested) list;
    - ``Enum``: its value; ``UUID``, ``Decimal``, paths: their string.
    - Anything else is an error that names the passage id and the metadata key.

Duplicates: `merge_duplicates` keeps one passage per exact (text, title) and
records every merged id, first one included, in ``metadata["duplicate_ids"]``.

Example:
    >>> import datetime
    >>> json_metadata({"when": datetime.date(2024, 5, 1), "tags": ("a", "b"), 3: {"x"}}, "p0")
    {'when': '2024-05-01', 'tags': ['a', 'b'], '3': ['x']}
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from .types import Passage

DUPLICATE_IDS_KEY = "duplicate_ids"
MAX_DEPTH = 64
PLAIN = (str, bool, int, float)
ARRAY_MODULES = ("numpy", "torch")

__all__ = ["DUPLICATE_IDS_KEY", "json_metadata", "json_safe_passages", "merge_duplicates"]


class _Refused(Exception):
    """A value the rule cannot convert (carries the key path inside the metadata)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path)
        self.path, self.reason = path, reason


def _plain(value: Any) -> Any:
    for kind in (bool, int, float, str):  # bool first: it is an int
        if isinstance(value, kind):
            return kind(value)
    return value


def _is_array(value: Any) -> bool:
    return type(value).__module__.split(".")[0] in ARRAY_MODULES and hasattr(value, "tolist")


def _sorted_items(items: list) -> list:
    return sorted(items, key=lambda v: (type(v).__name__, json.dumps(v, sort_keys=True)))


# (test, convert) pairs, first match wins; `convert` gets (value, path, depth) and returns JSON data.
CONVERTERS: list[tuple[Callable[[Any], bool], Callable[[Any, str, int], Any]]] = [
    (lambda v: v is None, lambda v, path, depth: None),
    (lambda v: isinstance(v, enum.Enum), lambda v, path, depth: _convert(v.value, path, depth + 1)),
    (lambda v: isinstance(v, PLAIN), lambda v, path, depth: _plain(v)),
    (lambda v: isinstance(v, (datetime.date, datetime.time)), lambda v, path, depth: v.isoformat()),
    (lambda v: isinstance(v, (uuid.UUID, decimal.Decimal, PurePath)), lambda v, path, depth: str(v)),
    (_is_array, lambda v, path, depth: _convert(v.tolist(), path, depth + 1)),
    (lambda v: isinstance(v, Mapping), lambda v, path, depth: _convert_mapping(v, path, depth)),
    (
        lambda v: isinstance(v, (list, tuple)),
        lambda v, path, depth: [_convert(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v)],
    ),
    (
        lambda v: isinstance(v, (set, frozenset)),
        lambda v, path, depth: _sorted_items([_convert(x, f"{path}[...]", depth + 1) for x in v]),
    ),
]


def _convert(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _Refused(path[:200] + "...", f"nested more than {MAX_DEPTH} levels deep (a cycle?)")
    for test, convert in CONVERTERS:
        if test(value):
            return convert(value, path, depth)
    raise _Refused(path, f"JSON cannot hold a {type(value).__name__} value")


def _key(key: Any, path: str, depth: int) -> str:
    if isinstance(key, str):
        return str(key)
    converted = _convert(key, f"{path}[{key!r}]", depth + 1)
    return converted if isinstance(converted, str) else json.dumps(converted)


def _convert_mapping(mapping: Mapping, path: str, depth: int) -> dict:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = _key(key, path, depth)
        if name in out:
            raise _Refused(f"{path}[{key!r}]", f"another key also becomes the string {name!r}")
        out[name] = _convert(value, f"{path}[{key!r}]", depth + 1)
    return out


def json_metadata(metadata: Any, passage_id: Any) -> dict[str, Any]:
    """`metadata` converted by the module's rule into data JSON holds exactly.

    Args:
        metadata: A mapping (None: empty).
        passage_id: The passage it belongs to (named in errors).

    Returns:
        A new dict with string keys and JSON values.

    Raises:
        ValueError: A value (or key) the rule cannot convert, or two keys that become the
            same string; the message names the passage id, the key and the way out.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(
            f"metadata: passage {passage_id!r} has metadata of type {type(metadata).__name__}; expected a dict"
        )
    try:
        return _convert_mapping(metadata, "metadata", 0)
    except _Refused as e:
        raise ValueError(
            f"metadata: passage {passage_id!r}, key {e.path}: {e.reason}. ContextFlow converts dates to ISO "
            "8601 strings, tuples and sets to lists, non-string keys to strings, numpy/torch numbers to Python "
            "numbers, and refuses anything else. Convert or drop that key in the store's metadata before "
            "fine-tuning"
        ) from None


def json_safe_passages(passages: Iterable[Passage]) -> list[Passage]:
    """The passages with their metadata converted by `json_metadata` (ids, text, titles unchanged).

    Raises:
        ValueError: See `json_metadata`.
    """
    return [Passage(id=p.id, text=p.text, title=p.title, metadata=json_metadata(p.metadata, p.id)) for p in passages]


def merge_duplicates(passages: Sequence[Passage]) -> list[Passage]:
    """One passage per exact (text, title): the first, with every merged id in ``metadata["duplicate_ids"]``.

    Passages without a duplicate are returned as they are; the order is that of the
    first occurrences.

    Raises:
        ValueError: A merged passage's metadata already has a ``"duplicate_ids"`` key.
    """
    groups: dict[tuple[str, Any], list[Passage]] = {}
    for passage in passages:
        groups.setdefault((passage.text, passage.title), []).append(passage)
    merged = []
    for group in groups.values():
        first = group[0]
        if len(group) == 1:
            merged.append(first)
            continue
        if DUPLICATE_IDS_KEY in first.metadata:
            raise ValueError(
                f"dedupe: passage {first.id!r} has duplicates but its metadata already holds "
                f"{DUPLICATE_IDS_KEY!r}; rename that key, or pass dedupe=False to keep duplicates"
            )
        metadata = {**first.metadata, DUPLICATE_IDS_KEY: [p.id for p in group]}
        merged.append(Passage(id=first.id, text=first.text, title=first.title, metadata=metadata))
    return merged
