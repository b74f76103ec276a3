"""Retriever: a DocumentIndex (or a vector-store backend) plus the question encoder that queries it.

Boundary: turns questions into top-K passages (via `encoder.encode` and
`DocumentIndex.search`, or a `VectorStoreBackend` through its `StoreIndex` view).
It knows nothing of prompts or generators; the model recomputes differentiable
scores itself from `Retrieved.embeddings`.

Shapes: B questions, K passages each, D embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from contextflow_core.retrieval.index import ArrayLike, DocumentIndex
from contextflow_core.retrieval.store import is_backend
from contextflow_core.retrieval.store_index import StoreIndex, check_store_strategy, select_from_store
from contextflow_core.retrieval.strategies import StrategyConfig, select
from contextflow_core.types import Retrieved


def _check_k(k: Any, arg: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"{arg}: expected a positive integer, got {k!r}")
    return k


class Retriever:
    """Query-time wrapper of a `DocumentIndex` or of a `VectorStoreBackend`.

    Args:
        index: The passages to search: a DocumentIndex, or a store backend
            (`contextflow_core.retrieval.store`), searched through a `StoreIndex` view.
        encoder: Question encoder with `encode(texts) -> (B, D)`; needed by
            `retrieve`, not by `search`.
        k: Default number of passages per question.
        strategy: A `StrategyConfig` or a strategy name ("dense", "pool", "hybrid", "mmr");
            over a store "hybrid" is refused (it needs the whole corpus).
        title_key: Over a store, the metadata key holding the passage title.

    Example:
        >>> retriever = Retriever(index, question_encoder, k=3)  # doctest: +SKIP
        >>> retriever.retrieve(["Who founded Tarsk?"]).ids  # doctest: +SKIP
        [['3', '1', '0']]
    """

    def __init__(
        self, index: Any, encoder: Any = None, *, k: int = 5, strategy: Any = "dense", title_key: str = "title"
    ) -> None:
        if is_backend(index):
            index = StoreIndex(index, title_key)
        elif not isinstance(index, (DocumentIndex, StoreIndex)):
            raise ValueError(
                f"index: expected a DocumentIndex or a vector-store backend (search(query_vectors, k), "
                f"count(), dim, name; see contextflow_core.retrieval.store), got {type(index).__name__}"
            )
        elif title_key != "title":
            raise ValueError(
                f"title_key: only a store-backed retriever reads titles from metadata, got "
                f"{title_key!r} with a {type(index).__name__}; drop title_key"
            )
        enc_dim = getattr(encoder, "dim", None)
        if isinstance(enc_dim, int) and enc_dim != index.dim:
            raise ValueError(
                f"encoder: expected embeddings of dimension {index.dim} (the "
                f"{'store' if isinstance(index, StoreIndex) else 'index'}'s), "
                f"got an encoder of dimension {enc_dim}"
            )
        self._index = index
        self._encoder = encoder
        self.k = _check_k(k)
        self.strategy = strategy if isinstance(strategy, StrategyConfig) else StrategyConfig(name=strategy)
        if isinstance(index, StoreIndex):
            check_store_strategy(self.strategy.name, index.name)
        self._bm25 = None
        self._bm25_version = None

    @property
    def index(self) -> Any:
        """The wrapped DocumentIndex, or the `StoreIndex` view of a store backend."""
        return self._index

    @property
    def store(self) -> Any:
        """The store backend searched (None over a DocumentIndex)."""
        return self._index.backend if isinstance(self._index, StoreIndex) else None

    @property
    def encoder(self) -> Any:
        """The question encoder (None when only `search` is used)."""
        return self._encoder

    def retrieve(self, questions: Sequence[str], k: int | None = None) -> Retrieved:
        """Encode `questions` and return their top-k passages (k defaults to `self.k`)."""
        if self._encoder is None:
            raise ValueError(
                "encoder: expected a question encoder to embed questions, got None; "
                "build the Retriever with encoder=... or call search() with embeddings"
            )
        if isinstance(questions, str):
            raise ValueError("questions: expected a list of strings, got a single string; wrap it in a list")
        questions = list(questions)
        for i, q in enumerate(questions):
            if not isinstance(q, str):
                raise ValueError(f"questions: expected strings, got {type(q).__name__} at position {i}")
        return self.search(self._encoder.encode(questions), k)

    def search(self, query_embeddings: ArrayLike, k: int | None = None) -> Retrieved:
        """Top-k passages for (B, D) query embeddings (delegates to `DocumentIndex.search`)."""
        return self._index.search(query_embeddings, self.k if k is None else k)

    def set_index(self, index: DocumentIndex) -> None:
        """Replace the index (same dimension), e.g. after a refresh; derived structures rebuild."""
        if isinstance(self._index, StoreIndex):
            raise ValueError(
                f"index: this retriever searches the store {self._index.name!r}; refresh the store "
                "in place (contextflow_core.retrieval.store_refresh) instead of swapping an index"
            )
        if not isinstance(index, DocumentIndex) or index.dim != self._index.dim:
            raise ValueError(
                f"index: expected a DocumentIndex of dimension {self._index.dim}, "
                f"got {type(index).__name__} of dimension {getattr(index, 'dim', None)}"
            )
        self._index = index
        self._bm25 = None

    def candidates(self, questions: Sequence[str], query_embeddings: ArrayLike, k: int) -> Retrieved:
        """The k passages per question chosen by `self.strategy` (the model re-scores them with gradient)."""
        queries = np.asarray(
            query_embeddings.detach().cpu() if hasattr(query_embeddings, "detach") else query_embeddings,
            dtype=np.float32,
        )
        if isinstance(self._index, StoreIndex):
            return select_from_store(self._index, questions, queries, _check_k(k), self.strategy)
        return select(self._index, questions, queries, _check_k(k), self.strategy, self._lexical())

    def _lexical(self):
        """BM25 over the index's passages, rebuilt when the index changed (hybrid only)."""
        if self.strategy.name != "hybrid":
            return None
        if self._bm25 is None or self._bm25_version != self._index.version:
            from contextflow_core.retrieval.bm25 import BM25

            texts = [f"{p.title or ''} {p.text}" for p in self._index.passages]
            self._bm25, self._bm25_version = BM25(texts), self._index.version
        return self._bm25

    def __repr__(self) -> str:
        return f"Retriever(index={self._index!r}, encoder={getattr(self._encoder, 'name', None)!r}, k={self.k})"


def as_retriever(obj: Any, encoder: Any = None, *, k: int = 5) -> Retriever:
    """`obj` as a Retriever: a Retriever is returned as is, a DocumentIndex or a store backend is wrapped.

    Args:
        obj: A Retriever, a DocumentIndex or a `VectorStoreBackend`.
        encoder: Question encoder for a wrapped DocumentIndex (ignored for a Retriever
            that has one; set on one that has none).
        k: Default k for a wrapped DocumentIndex.
    """
    if isinstance(obj, Retriever):
        if obj.encoder is None and encoder is not None:
            return Retriever(obj.index, encoder, k=obj.k, strategy=obj.strategy)
        return obj
    if isinstance(obj, DocumentIndex) or is_backend(obj):
        return Retriever(obj, encoder, k=k)
    raise TypeError(
        f"retriever: expected a Retriever or a DocumentIndex (or a vector-store backend, see "
        f"contextflow_core.retrieval.store), got {type(obj).__name__}"
    )
