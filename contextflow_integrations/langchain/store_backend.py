"""LangChain vector stores as ContextFlow store backends (train in place, no copy).

Boundary: maps a LangChain store onto `contextflow_core.retrieval.store.VectorStoreBackend`;
imports no store package at module level. A backend is looked up by the store's
class name (and its base classes') in `BACKENDS`; add one with `register_backend`.

Supported out of the box:
    - `InMemoryVectorStore` (langchain-core): its ``store`` dict holds the vectors;
      searched by cosine similarity, exactly as the store ranks (`InMemoryStoreBackend`).
    - community `FAISS`: vectors reconstructed from the faiss index through the
      docstore ids; searched with the faiss index itself (L2 distances negated,
      queries L2-normalised when the store normalises) (`FaissStoreBackend`).
    - `Chroma` (langchain-chroma / community) -> `stores.ChromaBackend` on its collection.
    - `QdrantVectorStore` (langchain-qdrant) and community `Qdrant` ->
      `stores.QdrantBackend` with the store's payload keys and vector name.
    - any `VectorStoreBackend` is returned as is (e.g. a `stores.MilvusBackend`:
      langchain-milvus is not needed).
`embedding_model_hint` is the name the store's embeddings object reports
(``HuggingFaceEmbeddings.model_name``, ...), used by the embedding-space check's error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from contextflow_core.retrieval.store import StoreHits, StoreRows, VectorStoreBackend
from contextflow_integrations.stores._common import (
    as_queries,
    check_positive,
    check_rows,
    hits_from_lists,
    rows_in_order,
)
from contextflow_integrations.stores.embedding_models import embedding_model_name

BackendFactory = Callable[[Any], Any]
BACKENDS: dict[str, BackendFactory] = {}


def register_backend(*class_names: str) -> Callable[[BackendFactory], BackendFactory]:
    """Register `fn(store) -> VectorStoreBackend` for LangChain stores of these class names."""

    def add(fn: BackendFactory) -> BackendFactory:
        for name in class_names:
            BACKENDS[name] = fn
        return fn

    return add


def store_embeddings(store: Any) -> Any:
    """The embeddings object a LangChain store embeds with (``embeddings`` or ``embedding``), or None."""
    for attr in ("embeddings", "embedding", "_embedding_function", "embedding_function"):
        value = getattr(store, attr, None)
        if value is not None and hasattr(value, "embed_query"):
            return value
    return None


def _hint(store: Any) -> str | None:
    embeddings = store_embeddings(store)
    return None if embeddings is None else embedding_model_name(embeddings)


class InMemoryStoreBackend:
    """A LangChain `InMemoryVectorStore` as a backend: cosine search over its ``store`` dict, as the store does.

    Args:
        store: The `InMemoryVectorStore` (read live: rows added later are seen).
    """

    def __init__(self, store: Any) -> None:
        if not store.store:
            raise ValueError(
                "vectorstore: the InMemoryVectorStore holds no documents (its dimension is unknown); "
                "add documents first"
            )
        self.store = store
        self.dim = len(next(iter(store.store.values()))["vector"])
        self.name = f"langchain:InMemoryVectorStore@{id(store):x}"
        self.embedding_model_hint = _hint(store)

    def _matrix(self) -> tuple[list[dict], np.ndarray]:
        docs = list(self.store.store.values())
        return docs, np.asarray([d["vector"] for d in docs], dtype=np.float32).reshape(len(docs), self.dim)

    def search(self, query_vectors: Any, k: int) -> StoreHits:
        """Top-k documents by cosine similarity (the store's own ranking), with their stored vectors."""
        k = check_positive(k, "k")
        queries = as_queries(query_vectors, self.dim, self.name)
        docs, matrix = self._matrix()
        unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        q_unit = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        sims = q_unit @ unit.T  # (B, N)
        per_query = [
            [
                (docs[j]["id"], float(row[j]), matrix[j], docs[j]["text"], docs[j].get("metadata"))
                for j in row.argsort()[::-1][:k]
            ]
            for row in sims
        ]
        return hits_from_lists(per_query, k, self.dim, self.name, self.count)

    def count(self) -> int:
        """Documents in the store."""
        return len(self.store.store)

    def _found(self, docs: Sequence[dict]) -> dict:
        return {str(d["id"]): (d["vector"], d["text"], d.get("metadata")) for d in docs}

    def get(self, ids: Sequence[str]) -> StoreRows:
        """The documents with these ids, in that order (KeyError for missing ones)."""
        wanted = [str(i) for i in ids]
        return rows_in_order(
            wanted, self._found([self.store.store[i] for i in wanted if i in self.store.store]), self.dim, self.name
        )

    def iter_rows(self, batch_size: int = 1000) -> Iterator[StoreRows]:
        """Every document, `batch_size` at a time (a snapshot of the ids taken at the start)."""
        batch_size = check_positive(batch_size, "batch_size")
        ids = list(self.store.store)
        for start in range(0, len(ids), batch_size):
            yield self.get(ids[start : start + batch_size])

    def upsert(self, rows: StoreRows) -> None:
        """Insert or replace documents by id in the store's own format."""
        rows = check_rows(rows, self.dim, self.name)
        for doc_id, vector, text, meta in zip(rows.ids, rows.vectors, rows.texts, rows.metadata, strict=True):
            self.store.store[doc_id] = {"id": doc_id, "vector": vector.tolist(), "text": text, "metadata": meta}


class FaissStoreBackend:
    """A langchain-community `FAISS` store as a backend: its faiss index searched, vectors reconstructed.

    Args:
        store: The `FAISS` store (read live).
    """

    def __init__(self, store: Any) -> None:
        if store.index.ntotal == 0:
            raise ValueError("vectorstore: the FAISS store holds no documents; add documents first")
        self.store = store
        self.dim = int(store.index.d)
        self.name = f"langchain:FAISS@{id(store):x}"
        self.embedding_model_hint = _hint(store)
        strategy = str(getattr(store.distance_strategy, "value", store.distance_strategy)).upper()
        self._negate = "EUCLIDEAN" in strategy

    def _row(self, position: int) -> tuple[np.ndarray, str, dict]:
        doc_id = self.store.index_to_docstore_id[position]
        doc = self.store.docstore.search(doc_id)
        if isinstance(doc, str):  # InMemoryDocstore answers a missing id with a message
            raise ValueError(f"vectorstore: FAISS row {position} points to id {doc_id!r}, which its docstore lacks")
        return self.store.index.reconstruct(int(position)), doc.page_content, dict(doc.metadata)

    def search(self, query_vectors: Any, k: int) -> StoreHits:
        """Top-k rows by the faiss index (as the store searches), with reconstructed stored vectors."""
        k = check_positive(k, "k")
        queries = as_queries(query_vectors, self.dim, self.name).copy()
        if getattr(self.store, "_normalize_L2", False):
            queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        distances, positions = self.store.index.search(queries, k)
        per_query = [
            [
                (self.store.index_to_docstore_id[int(p)], -float(d) if self._negate else float(d), *self._row(int(p)))
                for d, p in zip(dist_row, pos_row, strict=True)
                if p >= 0
            ]
            for dist_row, pos_row in zip(distances, positions, strict=True)
        ]
        return hits_from_lists(per_query, k, self.dim, self.name, self.count)

    def count(self) -> int:
        """Rows in the faiss index."""
        return int(self.store.index.ntotal)

    def _position_of(self) -> dict[str, int]:
        return {str(doc_id): int(pos) for pos, doc_id in self.store.index_to_docstore_id.items()}

    def get(self, ids: Sequence[str]) -> StoreRows:
        """The rows with these ids, in that order (KeyError for missing ones)."""
        positions, wanted = self._position_of(), [str(i) for i in ids]
        return rows_in_order(
            wanted, {i: self._row(positions[i]) for i in wanted if i in positions}, self.dim, self.name
        )

    def iter_rows(self, batch_size: int = 1000) -> Iterator[StoreRows]:
        """Every row in index order, `batch_size` at a time."""
        batch_size = check_positive(batch_size, "batch_size")
        ids = [str(self.store.index_to_docstore_id[p]) for p in sorted(self.store.index_to_docstore_id)]
        for start in range(0, len(ids), batch_size):
            yield self.get(ids[start : start + batch_size])

    def upsert(self, rows: StoreRows) -> None:
        """Replace rows by id (delete, then `add_embeddings` with the same ids)."""
        rows = check_rows(rows, self.dim, self.name)
        present = [i for i in rows.ids if i in self._position_of()]
        if present:
            self.store.delete(present)
        if rows.ids:
            self.store.add_embeddings(
                list(zip(rows.texts, rows.vectors.tolist(), strict=True)), metadatas=rows.metadata, ids=rows.ids
            )


register_backend("InMemoryVectorStore")(InMemoryStoreBackend)
register_backend("FAISS")(FaissStoreBackend)


@register_backend("Chroma")
def _chroma(store: Any) -> Any:
    from contextflow_integrations.stores.chroma import ChromaBackend

    return ChromaBackend(store._collection, embedding_model_hint=_hint(store))


@register_backend("QdrantVectorStore", "Qdrant")
def _qdrant(store: Any) -> Any:
    from contextflow_integrations.stores.qdrant import QdrantBackend

    return QdrantBackend(
        store.client,
        store.collection_name,
        text_key=getattr(store, "content_payload_key", "page_content"),
        metadata_key=getattr(store, "metadata_payload_key", "metadata"),
        vector_name=getattr(store, "vector_name", None) or None,
        embedding_model_hint=_hint(store),
    )


def backend_from_vectorstore(vectorstore: Any) -> Any:
    """A `VectorStoreBackend` over a LangChain vector store (a backend is returned as is).

    Args:
        vectorstore: A supported LangChain store (see the module docstring) or a backend.

    Returns:
        The backend, reading (and on refresh writing) the store live.

    Raises:
        TypeError: No backend for the store's class (the message lists the supported ones).
        ValueError: An empty store.

    Example:
        >>> backend = backend_from_vectorstore(InMemoryVectorStore.from_texts(texts, embeddings))  # doctest: +SKIP
        >>> backend.search(question_vectors, k=4).ids  # doctest: +SKIP
    """
    if isinstance(vectorstore, VectorStoreBackend):
        return vectorstore
    names = [cls.__name__ for cls in type(vectorstore).__mro__]
    name = next((n for n in names if n in BACKENDS), None)
    if name is None:
        raise TypeError(
            f"vectorstore: no in-place backend for {type(vectorstore).__name__}; supported: {sorted(BACKENDS)} "
            "or any VectorStoreBackend (contextflow_integrations.stores: MilvusBackend, QdrantBackend, "
            "ChromaBackend). Use mode='copy', or add one with "
            "contextflow_integrations.langchain.store_backend.register_backend"
        )
    return BACKENDS[name](vectorstore)
