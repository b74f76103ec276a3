"""Embedding-space check: do a store's vectors come from the passage encoder ContextFlow uses?

Boundary: reads a few rows of a backend (``get`` or ``iter_rows``), re-embeds their
texts with the given encoder, and compares; no model, no training.

Training in place scores q . d with the **stored** d, so the store must have been
embedded by the passage (context) encoder; otherwise the question encoder is trained
against vectors of another space and nothing it learns transfers. The check fetches
`probe` rows, requires the dimensions to match and every row's cosine between the
stored and the re-embedded vector to be at least `min_cosine` (0.99: fp16 storage and
another batch size move MiniLM vectors by < 1e-3; another model lands far below 0.9).

Example:
    >>> report = check_embedding_space(backend, encoder)  # doctest: +SKIP
    >>> report.min_cosine  # doctest: +SKIP
    0.99999
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contextflow_core.retrieval.checks import _as_matrix, _encoder_name
from contextflow_core.retrieval.store import StoreRows


@dataclass(frozen=True)
class SpaceReport:
    """What `check_embedding_space` measured.

    Attributes:
        store: The backend's name.
        encoder: The encoder's name.
        probed: Rows compared.
        cosines: Per-row cosine between stored and re-embedded vectors, in the order fetched.
        ids: The ids of the probed rows.
    """

    store: str
    encoder: str
    probed: int
    cosines: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @property
    def min_cosine(self) -> float:
        """The lowest per-row cosine (1.0 when nothing was probed)."""
        return min(self.cosines, default=1.0)


def probe_rows(backend: Any, probe: int) -> StoreRows:
    """Up to `probe` rows of `backend` (its first batch of `iter_rows`, else `get` of ids from a search)."""
    if callable(getattr(backend, "iter_rows", None)):
        batch = next(iter(backend.iter_rows(probe)), None)
        if batch is not None:
            ids, vectors, texts, metadata = batch
            return StoreRows(
                list(ids)[:probe], np.asarray(vectors, np.float32)[:probe], list(texts)[:probe], list(metadata)[:probe]
            )
        return StoreRows([], np.zeros((0, backend.dim), np.float32), [], [])
    # No iteration: search with a neutral query and take the hits' own stored vectors.
    k = min(probe, int(backend.count()))
    if k == 0:
        return StoreRows([], np.zeros((0, backend.dim), np.float32), [], [])
    hits = backend.search(np.full((1, backend.dim), 1.0 / np.sqrt(backend.dim), np.float32), k)
    return StoreRows(
        list(hits.ids[0]), np.asarray(hits.vectors[0], np.float32), list(hits.texts[0]), list(hits.metadata[0])
    )


def _cosines(stored: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    num = (stored * fresh).sum(1)
    den = np.linalg.norm(stored, axis=1) * np.linalg.norm(fresh, axis=1)
    return num / np.maximum(den, 1e-12)


def _mismatch(store: str, encoder: str, seen: str, hint: str | None) -> ValueError:
    need = (
        f"the store names {hint!r} as the model that embedded it"
        if hint
        else "the store does not name the model that embedded it"
    )
    return ValueError(
        f"store: the vectors of {store!r} do not come from the passage encoder {encoder!r} ({seen}); {need}. "
        "Training in place needs the encoder that made the stored vectors: pass that model as the encoder "
        "(e.g. contextflow_integrations.stores.encoder_from_embeddings(<the store's embeddings>)), or use the "
        'copy path (mode="copy": re-embed the passages into a private index); store_check=False skips this check'
    )


def check_embedding_space(backend: Any, encoder: Any, *, probe: int = 8, min_cosine: float = 0.99) -> SpaceReport:
    """Compare `probe` stored vectors of `backend` with `encoder`'s embeddings of their texts.

    Args:
        backend: A `VectorStoreBackend` (uses `iter_rows` when it has it, else a search).
        encoder: The passage encoder, with `encode(texts) -> (N, D)` and `dim`.
        probe: How many rows to compare.
        min_cosine: The lowest per-row cosine accepted.

    Returns:
        A `SpaceReport` (an empty store probes nothing and passes).

    Raises:
        ValueError: Dimensions differ, or a row's cosine is below `min_cosine`; the message names
            the store, the cosine seen, the model the store seems to need and the way out.
    """
    if isinstance(probe, bool) or not isinstance(probe, int) or probe <= 0:
        raise ValueError(f"probe: expected a positive integer, got {probe!r}")
    if isinstance(min_cosine, bool) or not isinstance(min_cosine, (int, float)) or not -1.0 <= min_cosine <= 1.0:
        raise ValueError(f"min_cosine: expected a number in [-1, 1], got {min_cosine!r}")
    store, name = str(backend.name), _encoder_name(encoder)
    hint = getattr(backend, "embedding_model_hint", None)
    enc_dim = getattr(encoder, "dim", None)
    if isinstance(enc_dim, int) and enc_dim != backend.dim:
        raise _mismatch(store, name, f"dimension {backend.dim} stored, {enc_dim} from the encoder", hint)
    rows = probe_rows(backend, probe)
    if not rows.ids:
        return SpaceReport(store, name, 0)
    fresh = _as_matrix("encoder output", encoder.encode(list(rows.texts)), rows=len(rows.ids))
    stored = _as_matrix("stored vectors", rows.vectors, rows=len(rows.ids))
    if fresh.shape[1] != stored.shape[1]:
        raise _mismatch(store, name, f"dimension {stored.shape[1]} stored, {fresh.shape[1]} from the encoder", hint)
    cos = _cosines(stored, fresh)
    report = SpaceReport(store, name, len(rows.ids), [float(c) for c in cos], [str(i) for i in rows.ids])
    if report.min_cosine < min_cosine:
        worst = int(np.argmin(cos))
        raise _mismatch(
            store, name, f"cosine {report.min_cosine:.4f} for row {rows.ids[worst]!r}, expected >= {min_cosine}", hint
        )
    return report
