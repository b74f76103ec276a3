"""Store-backed retrieval: the protocol a vector store implements so ContextFlow trains and serves against it.

Boundary: data shapes, the backend protocol and the in-memory reference backend;
no model, no prompt, no engine import (the engines live in
`contextflow_integrations.stores`). Shapes: B queries, K hits each, N rows, D embedding size.

Contract (engine backends implement exactly this):

- ``StoreHits(ids, scores, vectors, texts, metadata)``, what ``search`` returns (a NamedTuple,
  unpacks in that order): ``ids`` list[list[str]] (B, K) best first; ``scores`` float32 ndarray
  (B, K), the engine's similarity, higher = better; ``vectors`` float32 ndarray (B, K, D), the
  **stored** vectors of those hits (the model recomputes q . d from them, with gradient);
  ``texts`` list[list[str]] (B, K); ``metadata`` list[list[dict]] (B, K) JSON-able dicts.
  Fewer than k hits for a query is an error (ValueError naming ``k``), never a short row.
- ``StoreRows(ids, vectors, texts, metadata)``: ``ids`` list[str] (N,), ``vectors`` float32 (N, D),
  ``texts`` list[str] (N,), ``metadata`` list[dict] (N,).
- ``VectorStoreBackend`` (required): ``dim: int``; ``name: str`` (e.g. ``"milvus:docs"``, recorded
  in saves and errors); ``search(query_vectors (B, D) float32, k) -> StoreHits``; ``count() -> int``.
- Optional capabilities, checked with ``hasattr`` (see `OPTIONAL_CAPABILITIES`):
  ``get(ids) -> StoreRows`` (in the order asked; a missing id is a KeyError);
  ``iter_rows(batch_size) -> Iterator[StoreRows]`` (every row once, in a stable order);
  ``upsert(rows: StoreRows) -> None`` (insert or replace by id);
  ``embedding_model_hint: Optional[str]`` (the model that embedded the rows, for error messages);
  ``staging() -> backend`` (a backend over a new, empty collection with the same schema) and
  ``promote(staging) -> None`` (switch this backend's readers to the staging collection atomically);
  ``is_alias: bool`` (False: staging/promote cannot switch this one, so `refresh_store`'s "auto" upserts).
- ``search`` is called once per batch with no ``count()`` before it (a count may cost a query);
  ``count()`` is called when building a model (K capped at it) and by the strategies' pool sizes.
- The passage title is ``metadata[title_key]`` (``title_key="title"`` by default); the Passage's
  metadata is the hit's metadata without that key.

How the models use a backend (the exact calls, for the adapters):

- ``Retriever(backend, encoder, k=5)`` and ``RAGSequence(question_encoder=enc, retriever=backend_or_Retriever,
  generator_tokenizer=tok, generator=lm, store_check=True)``; the model keeps a frozen copy of the
  starting encoder as its ``context_encoder`` (the encoder that made the stored vectors) and checks
  the embedding space on construction (`contextflow_core.retrieval.space_check`).
- ``RAGSequence.from_defaults(backend)``; ``contextflow_core.building.build_rag(store=backend, model=...,
  encoder=..., generator=..., tokenizer=..., num_docs=..., title_key="title", store_check=True)``.
- ``model.store`` is the backend (None over a DocumentIndex); ``model.index`` is a `StoreIndex` view
  (``len``, ``dim``, ``search(q, k) -> Retrieved``) so index-based callers keep working.
- ``model.save_pretrained(dir)`` writes a JSON description of the store;
  ``RAGSequence.from_pretrained(dir, store=backend)`` reattaches it.
- Refresh in place: ``contextflow_core.retrieval.store_refresh.refresh_store(backend, encoder, progress_dir)``;
  ``train_rag`` runs it every ``TrainConfig.refresh_index_steps`` when ``RagConfig.train_context_encoder``
  (see `contextflow_core.store_rag`).

Example:
    >>> backend = InMemoryBackend.from_texts(["Ilo founded Tarsk.", "Tarsk is a port."], encoder)  # doctest: +SKIP
    >>> backend.search(encoder.encode(["Who founded Tarsk?"]), k=1).ids  # doctest: +SKIP
    [['0']]
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from contextflow_core.retrieval.checks import _as_matrix, _check_ids, _check_texts

#: Capabilities a backend may add to the required protocol (checked with ``hasattr``).
OPTIONAL_CAPABILITIES = ("get", "iter_rows", "upsert", "embedding_model_hint", "staging", "promote")


class StoreHits(NamedTuple):
    """Top-k hits of a batch of queries (see the module docstring for the shapes)."""

    ids: list[list[str]]
    scores: np.ndarray
    vectors: np.ndarray
    texts: list[list[str]]
    metadata: list[list[dict]]


class StoreRows(NamedTuple):
    """Rows of a store: ids (N,), vectors (N, D) float32, texts (N,), metadata (N,)."""

    ids: list[str]
    vectors: np.ndarray
    texts: list[str]
    metadata: list[dict]


@runtime_checkable
class VectorStoreBackend(Protocol):
    """What ContextFlow needs from a vector store: search with stored vectors, and a row count.

    Attributes:
        dim: Vector dimension D.
        name: A readable name, e.g. "milvus:docs" (recorded in saves and error messages).
    """

    dim: int
    name: str

    def search(self, query_vectors: np.ndarray, k: int) -> StoreHits:
        """Top-k rows per (B, D) float32 query by the engine's similarity, best first."""
        ...

    def count(self) -> int:
        """Number of rows in the store."""
        ...


def is_backend(obj: Any) -> bool:
    """Whether `obj` implements `VectorStoreBackend` (a DocumentIndex does not)."""
    from contextflow_core.retrieval.index import DocumentIndex

    return not isinstance(obj, DocumentIndex) and isinstance(obj, VectorStoreBackend)


def require(backend: Any, capabilities: Sequence[str], purpose: str) -> None:
    """Raise ValueError naming the store and the missing capabilities `purpose` needs."""
    missing = [c for c in capabilities if not callable(getattr(backend, c, None))]
    if missing:
        raise ValueError(
            f"store: {purpose} needs a backend with {', '.join(missing)}(), got "
            f"{getattr(backend, 'name', type(backend).__name__)!r} ({type(backend).__name__}) without it; "
            "use a backend that offers it (see contextflow_core.retrieval.store) or the copy path "
            "(a DocumentIndex)"
        )


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    return int(batch_size)


def _json_dict(arg: str, meta: Any) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ValueError(f"{arg}: expected a dict or None, got {type(meta).__name__}")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{arg}: expected JSON-serialisable metadata, got {meta!r} ({e})") from e
    return dict(meta)


class InMemoryBackend:
    """The reference `VectorStoreBackend`: rows in numpy, exact inner-product search, every capability.

    Ranks exactly like a Flat FAISS index over the same vectors; for tests and small data.

    Args:
        ids: Row ids (unique, non-empty strings).
        vectors: (N, D) float32 stored vectors.
        texts: The N passage texts.
        metadata: N JSON-able dicts (None: empty); the title is `metadata["title"]` by default.
        name: The store's name ("memory:<name>").
        embedding_model_hint: The model that embedded the rows (for error messages).

    Example:
        >>> b = InMemoryBackend(["a", "b"], np.eye(2, dtype=np.float32), ["x", "y"])
        >>> b.search(np.array([[0.0, 1.0]], dtype=np.float32), k=1).ids
        [['b']]
    """

    def __init__(
        self,
        ids: Sequence[str],
        vectors: Any,
        texts: Sequence[str],
        metadata: Sequence[dict | None] | None = None,
        *,
        name: str = "default",
        embedding_model_hint: str | None = None,
    ) -> None:
        texts = _check_texts(texts)
        ids = list(ids) if not isinstance(ids, str) else ids
        if isinstance(ids, str) or len(ids) != len(texts):
            raise ValueError(f"ids: expected {len(texts)} ids, one per text, got {ids!r:.60}")
        _check_ids(ids, "ids")
        metadata = [None] * len(texts) if metadata is None else list(metadata)
        if len(metadata) != len(texts):
            raise ValueError(f"metadata: expected {len(texts)} dicts, one per text, got {len(metadata)}")
        self._vectors = _as_matrix("vectors", vectors, rows=len(texts))  # (N, D)
        self._ids, self._texts = list(ids), list(texts)
        self._meta = [_json_dict(f"metadata[{i}]", m) for i, m in enumerate(metadata)]
        self._rows = {i: r for r, i in enumerate(self._ids)}
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        self._name = name
        self.embedding_model_hint = embedding_model_hint
        self.promoted = 0  # how many times `promote` switched the rows

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        encoder: Any,
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict | None] | None = None,
        name: str = "default",
        batch_size: int = 64,
    ) -> InMemoryBackend:
        """Embed `texts` with `encoder.encode` and store them (ids default to "0", "1", ...)."""
        from contextflow_core.retrieval.checks import _encode, _encoder_name

        texts = _check_texts(texts)
        vectors = _encode(encoder, texts, _check_batch_size(batch_size), False)
        ids = [str(i) for i in range(len(texts))] if ids is None else ids
        return cls(ids, vectors, texts, metadata, name=name, embedding_model_hint=_encoder_name(encoder))

    @classmethod
    def from_index(cls, index: Any, *, name: str = "default", title_key: str = "title") -> InMemoryBackend:
        """The rows of a `DocumentIndex` (titles go to `metadata[title_key]`)."""
        meta = [{**p.metadata, **({title_key: p.title} if p.title is not None else {})} for p in index.passages]
        return cls(
            index.ids,
            index.embeddings.numpy(),
            [p.text for p in index.passages],
            meta,
            name=name,
            embedding_model_hint=index.encoder_name,
        )

    @property
    def name(self) -> str:
        """ "memory:<name>"."""
        return f"memory:{self._name}"

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return int(self._vectors.shape[1])

    def count(self) -> int:
        """Number of rows."""
        return len(self._ids)

    def search(self, query_vectors: Any, k: int) -> StoreHits:
        """Exact inner-product top-k, best first (ties: lower row first)."""
        queries = _as_matrix("query_vectors", query_vectors, dim=self.dim)  # (B, D)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        if k > self.count():
            raise ValueError(
                f"k: expected at most the {self.count()} rows of the store {self.name!r}, got {k}; lower k (num_docs)"
            )
        scores = queries @ self._vectors.T  # (B, N)
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (B, K)
        return StoreHits(
            ids=[[self._ids[r] for r in row] for row in rows.tolist()],
            scores=np.take_along_axis(scores, rows, axis=1).astype(np.float32),
            vectors=self._vectors[rows].copy(),  # (B, K, D)
            texts=[[self._texts[r] for r in row] for row in rows.tolist()],
            metadata=[[dict(self._meta[r]) for r in row] for row in rows.tolist()],
        )

    def get(self, ids: Sequence[str]) -> StoreRows:
        """The rows with these ids, in that order; KeyError naming the missing ones."""
        if isinstance(ids, str):
            raise ValueError("ids: expected a list of ids, got a single string; wrap it in a list")
        ids = list(ids)
        missing = [i for i in ids if i not in self._rows]
        if missing:
            raise KeyError(
                f"ids: {len(missing)} of {len(ids)} ids are not in the store {self.name!r}, e.g. {missing[:3]}"
            )
        rows = [self._rows[i] for i in ids]
        return StoreRows(
            ids, self._vectors[rows].copy(), [self._texts[r] for r in rows], [dict(self._meta[r]) for r in rows]
        )

    def iter_rows(self, batch_size: int = 1000) -> Iterator[StoreRows]:
        """Every row once, in insertion order, `batch_size` at a time."""
        batch_size = _check_batch_size(batch_size)
        ids = list(self._ids)
        for start in range(0, len(ids), batch_size):
            yield self.get(ids[start : start + batch_size])

    def upsert(self, rows: StoreRows) -> None:
        """Insert or replace rows by id."""
        if not isinstance(rows, StoreRows):
            raise ValueError(f"rows: expected a StoreRows(ids, vectors, texts, metadata), got {type(rows).__name__}")
        ids, texts = list(rows.ids), list(rows.texts)
        _check_ids(ids, "rows.ids")
        if len(texts) != len(ids) or len(rows.metadata) != len(ids):
            raise ValueError(
                f"rows: expected {len(ids)} texts and metadata dicts, one per id, "
                f"got {len(texts)} and {len(rows.metadata)}"
            )
        vectors = _as_matrix("rows.vectors", rows.vectors, rows=len(ids), dim=self.dim)
        for i, (pid, text, meta) in enumerate(zip(ids, texts, rows.metadata, strict=True)):
            row = self._rows.get(pid)
            if row is None:
                row = self._rows[pid] = len(self._ids)
                self._ids.append(pid)
                self._texts.append(text)
                self._meta.append({})
                self._vectors = np.concatenate([self._vectors, vectors[i : i + 1]])
            self._vectors[row], self._texts[row] = vectors[i], text
            self._meta[row] = _json_dict(f"rows.metadata[{i}]", meta)

    def staging(self) -> InMemoryBackend:
        """A new, empty backend of the same dimension and name, to fill with `upsert` and then `promote`."""
        empty = copy.copy(self)
        empty._vectors, empty._ids, empty._texts, empty._meta, empty._rows = (
            np.zeros((0, self.dim), np.float32),
            [],
            [],
            [],
            {},
        )
        empty.promoted = 0
        return empty

    def promote(self, staging: InMemoryBackend) -> None:
        """Switch this backend's rows to `staging`'s in one assignment."""
        if not isinstance(staging, InMemoryBackend) or staging.dim != self.dim:
            raise ValueError(
                f"staging: expected an InMemoryBackend of dimension {self.dim} from staging(), "
                f"got {type(staging).__name__}"
            )
        self._vectors, self._ids, self._texts, self._meta, self._rows = (
            staging._vectors.copy(),
            list(staging._ids),
            list(staging._texts),
            [dict(m) for m in staging._meta],
            dict(staging._rows),
        )
        self.promoted += 1

    def __repr__(self) -> str:
        return f"InMemoryBackend(name={self.name!r}, count={self.count()}, dim={self.dim})"
