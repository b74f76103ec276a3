"""Qdrant as a ContextFlow store backend, through `qdrant_client` (server, or local mode).

Boundary: reads (and, on request, writes) one collection; knows nothing of models.
Works with a server (``QdrantClient(url=...)``) and with local mode
(``QdrantClient(":memory:")`` or ``QdrantClient(path=...)``).

Payload mapping: the passage text is ``payload[text_key]``; metadata is
``payload[metadata_key]`` when `metadata_key` is given (LangChain's layout:
``{"page_content": ..., "metadata": {...}}``), else every other payload key.
Named vectors: pass `vector_name`. Point ids are unsigned integers or UUIDs in
Qdrant; ContextFlow sees them as strings, and `get`/`upsert` turn digit strings
back into integers (other strings must be UUIDs). Scores are "higher is better":
Cosine and Dot as Qdrant returns them, Euclid and Manhattan negated. With the
Cosine distance Qdrant stores unit-length vectors, so the stored vectors handed
to the model are the normalised ones (what Qdrant itself compares).

Example:
    >>> from qdrant_client import QdrantClient  # doctest: +SKIP
    >>> backend = QdrantBackend(QdrantClient(path="/data/qdrant"), "docs")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from contextflow_core.retrieval.store import StoreHits, StoreRows

from ._common import (
    HIGHER_IS_BETTER,
    as_queries,
    check_ids,
    check_name,
    check_positive,
    check_rows,
    hits_from_lists,
    rows_in_order,
    split_metadata,
)


def point_id(doc_id: str) -> Any:
    """A ContextFlow string id as a Qdrant point id (an int for digit strings, else the UUID string)."""
    if doc_id.isdigit():
        return int(doc_id)
    import uuid

    try:
        return str(uuid.UUID(doc_id))
    except ValueError:
        raise ValueError(f"ids: Qdrant point ids are unsigned integers or UUIDs, got {doc_id!r}") from None


class QdrantBackend:
    """One Qdrant collection as a `VectorStoreBackend`.

    Args:
        client: A `qdrant_client.QdrantClient`.
        collection: Collection name.
        text_key: Payload key holding the passage text.
        metadata_key: Payload key holding a metadata dict; None: every other payload key.
        vector_name: The named vector to use; None: the collection's unnamed vector
            (or its only named one).
        embedding_model_hint: The model that embedded the points (for error messages).

    Raises:
        ValueError: No such collection, or an unknown / ambiguous vector name.
    """

    def __init__(
        self,
        client: Any,
        collection: str,
        *,
        text_key: str = "text",
        metadata_key: str | None = None,
        vector_name: str | None = None,
        embedding_model_hint: str | None = None,
    ) -> None:
        self.client = client
        self.collection = check_name(collection, "collection")
        self.text_key = check_name(text_key, "text_key")
        self.metadata_key = metadata_key
        if not client.collection_exists(collection):
            names = [c.name for c in client.get_collections().collections]
            raise ValueError(f"collection: no collection {collection!r} in this Qdrant (it has {names})")
        self.vector_name, params = self._vector_params(vector_name or None)
        self.dim = int(params.size)
        self.distance = str(getattr(params.distance, "name", params.distance)).upper()
        self.embedding_model_hint = embedding_model_hint

    def _vector_params(self, vector_name: str | None) -> tuple[str | None, Any]:
        vectors = self.client.get_collection(self.collection).config.params.vectors
        if not isinstance(vectors, dict):
            if vector_name is not None:
                raise ValueError(
                    f"vector_name: the collection {self.collection!r} has one unnamed vector, "
                    f"got {vector_name!r}; pass vector_name=None"
                )
            return None, vectors
        if vector_name is None and len(vectors) == 1:
            vector_name = next(iter(vectors))
        if vector_name not in vectors:
            raise ValueError(
                f"vector_name: expected one of the collection's named vectors {sorted(vectors)}, got {vector_name!r}"
            )
        return vector_name, vectors[vector_name]

    @property
    def name(self) -> str:
        """``"qdrant:<collection>"``, recorded in saved models and errors."""
        return f"qdrant:{self.collection}"

    def _row(self, point: Any) -> tuple[Any, str | None, dict]:
        vector = point.vector[self.vector_name] if isinstance(point.vector, dict) else point.vector
        payload = dict(point.payload or {})
        if self.metadata_key is not None:
            metadata = dict(payload.get(self.metadata_key) or {})
        else:
            metadata = split_metadata(payload, (self.text_key,), None)
        return vector, payload.get(self.text_key), metadata

    def search(self, query_vectors: Any, k: int) -> StoreHits:
        """Top-k points per query (one batched request), with stored vectors, texts and metadata.

        Raises:
            ValueError: Wrong query shape, or fewer than k points in the collection.
        """
        from qdrant_client import models

        k = check_positive(k, "k")
        queries = as_queries(query_vectors, self.dim, self.name)
        with_vector: Any = [self.vector_name] if self.vector_name else True
        requests = [
            models.QueryRequest(
                query=q.tolist(), limit=k, with_vector=with_vector, with_payload=True, using=self.vector_name
            )
            for q in queries
        ]
        responses = self.client.query_batch_points(self.collection, requests=requests)
        to_score = HIGHER_IS_BETTER[self.distance]
        per_query = [[(str(p.id), to_score(p.score), *self._row(p)) for p in r.points] for r in responses]
        return hits_from_lists(per_query, k, self.dim, self.name, self.count)

    def count(self) -> int:
        """Points in the collection (exact count)."""
        return int(self.client.count(self.collection, exact=True).count)

    def get(self, ids: Sequence[str]) -> StoreRows:
        """The points with these ids, in that order.

        Raises:
            KeyError: Some ids are not in the collection.
        """
        wanted = check_ids(ids)
        keys = [point_id(i) for i in wanted]
        with_vector: Any = [self.vector_name] if self.vector_name else True
        points = self.client.retrieve(self.collection, ids=keys, with_vectors=with_vector, with_payload=True)
        return rows_in_order(wanted, {str(p.id): self._row(p) for p in points}, self.dim, self.name)

    def iter_rows(self, batch_size: int = 256) -> Iterator[StoreRows]:
        """Every point, `batch_size` at a time (Qdrant's scroll)."""
        batch_size = check_positive(batch_size, "batch_size")
        with_vector: Any = [self.vector_name] if self.vector_name else True
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.collection, limit=batch_size, offset=offset, with_payload=True, with_vectors=with_vector
            )
            if points:
                ids = [str(p.id) for p in points]
                yield rows_in_order(
                    ids, {i: self._row(p) for i, p in zip(ids, points, strict=True)}, self.dim, self.name
                )
            if offset is None:
                return

    def upsert(self, rows: StoreRows) -> None:
        """Insert or replace points by id (vector, text, metadata in this backend's payload layout)."""
        from qdrant_client import models

        rows = check_rows(rows, self.dim, self.name)
        points = []
        for doc_id, vector, text, meta in zip(rows.ids, rows.vectors, rows.texts, rows.metadata, strict=True):
            payload = (
                {self.text_key: text, self.metadata_key: meta} if self.metadata_key else {**meta, self.text_key: text}
            )
            stored: Any = {self.vector_name: vector.tolist()} if self.vector_name else vector.tolist()
            points.append(models.PointStruct(id=point_id(doc_id), vector=stored, payload=payload))
        if points:
            self.client.upsert(self.collection, points=points, wait=True)

    def __repr__(self) -> str:
        return f"QdrantBackend({self.collection!r}, dim={self.dim}, distance={self.distance!r})"
