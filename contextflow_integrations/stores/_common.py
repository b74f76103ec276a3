"""Shared checks and assembly for the engine backends (no engine imports here).

Shapes: B queries, K hits each, N rows, D embedding size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from contextflow_core.retrieval.store import StoreHits, StoreRows

# Engine distance -> "higher is better" score, by metric name (upper case).
HIGHER_IS_BETTER: dict[str, Callable[[float], float]] = {
    "IP": lambda d: d,
    "COSINE": lambda d: d,
    "DOT": lambda d: d,
    "L2": lambda d: -d,
    "EUCLID": lambda d: -d,
    "MANHATTAN": lambda d: -d,
}


def check_positive(value: Any, arg: str) -> int:
    """`value` as a positive int, else a ValueError naming `arg`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{arg}: expected a positive integer, got {value!r}")
    return int(value)


def check_name(value: Any, arg: str) -> str:
    """`value` as a non-empty string, else a ValueError naming `arg`."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{arg}: expected a non-empty string, got {value!r}")
    return value


def as_queries(query_vectors: Any, dim: int, name: str) -> np.ndarray:
    """(B, D) float32 queries from an array, tensor or nested list, checked against the store's dimension."""
    if hasattr(query_vectors, "detach"):
        query_vectors = query_vectors.detach().cpu().float().numpy()
    queries = np.asarray(query_vectors, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim or queries.shape[0] == 0:
        raise ValueError(
            f"query_vectors: expected a (B, {dim}) array for the store {name!r} (B >= 1), "
            f"got shape {tuple(queries.shape)}"
        )
    return queries


def check_ids(ids: Any, arg: str = "ids") -> list[str]:
    """A list of string ids (a single string is refused: wrap it in a list)."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ValueError(f"{arg}: expected a list of ids, got {type(ids).__name__}")
    return [str(i) for i in ids]


def check_rows(rows: Any, dim: int, name: str) -> StoreRows:
    """`rows` as a consistent StoreRows of dimension `dim` (upsert's input)."""
    if not isinstance(rows, StoreRows):
        raise ValueError(f"rows: expected a StoreRows(ids, vectors, texts, metadata), got {type(rows).__name__}")
    ids = check_ids(rows.ids, "rows.ids")
    vectors = (
        np.asarray(rows.vectors, dtype=np.float32).reshape(len(ids), -1) if ids else np.zeros((0, dim), np.float32)
    )
    if vectors.shape != (len(ids), dim):
        raise ValueError(
            f"rows.vectors: expected shape ({len(ids)}, {dim}) for the store {name!r}, "
            f"got {tuple(np.asarray(rows.vectors).shape)}"
        )
    texts, metadata = list(rows.texts), list(rows.metadata)
    if len(texts) != len(ids) or len(metadata) != len(ids):
        raise ValueError(
            f"rows: expected {len(ids)} texts and metadata dicts, one per id, "
            f"got {len(texts)} texts and {len(metadata)} metadata"
        )
    return StoreRows(ids, vectors, [str(t) for t in texts], [dict(m or {}) for m in metadata])


def hits_from_lists(
    per_query: Sequence[Sequence[tuple[Any, float, Any, str | None, dict | None]]],
    k: int,
    dim: int,
    name: str,
    count: Callable[[], int],
) -> StoreHits:
    """StoreHits from, per query, the engine's (id, score, vector, text, metadata) hits, best first.

    Raises:
        ValueError: A query got fewer than `k` hits (the store holds fewer rows than k).
    """
    short = next((len(hits) for hits in per_query if len(hits) < k), None)
    if short is not None:
        raise ValueError(
            f"k: expected at most the number of rows the store {name!r} returns, asked for {k}, "
            f"got {short} hits (the store holds {count()} rows); lower k (num_docs)"
        )
    ids = [[str(h[0]) for h in hits[:k]] for hits in per_query]
    scores = np.array([[h[1] for h in hits[:k]] for hits in per_query], dtype=np.float32).reshape(len(ids), k)
    vectors = np.array([[h[2] for h in hits[:k]] for hits in per_query], dtype=np.float32)
    if vectors.shape != (len(ids), k, dim):
        raise ValueError(
            f"the store {name!r} returned vectors of shape {vectors.shape[1:]} per query, expected "
            f"({k}, {dim}); it must return the stored vectors of its hits"
        )
    texts = [[str(h[3] if h[3] is not None else "") for h in hits[:k]] for hits in per_query]
    metadata = [[dict(h[4] or {}) for h in hits[:k]] for hits in per_query]
    return StoreHits(ids, scores, vectors, texts, metadata)


def rows_in_order(
    wanted: Sequence[str], found: Mapping[str, tuple[Any, str | None, dict | None]], dim: int, name: str
) -> StoreRows:
    """StoreRows in the order of `wanted` from {id: (vector, text, metadata)}; missing ids are an error."""
    missing = [i for i in wanted if i not in found]
    if missing:
        raise KeyError(f"ids: {len(missing)} of {len(wanted)} ids are not in the store {name!r}, e.g. {missing[:3]}")
    vectors = np.array([found[i][0] for i in wanted], dtype=np.float32).reshape(len(wanted), dim)
    return StoreRows(
        list(wanted), vectors, [str(found[i][1] or "") for i in wanted], [dict(found[i][2] or {}) for i in wanted]
    )


def split_metadata(record: dict, skip: Iterable[str], keep: Sequence[str] | None) -> dict:
    """The record's metadata: `keep` keys only when given, else every key not in `skip`."""
    if keep is not None:
        return {k: record[k] for k in keep if k in record}
    skip = set(skip)
    return {k: v for k, v in record.items() if k not in skip}
