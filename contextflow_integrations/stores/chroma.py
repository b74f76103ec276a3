"""Chroma as a ContextFlow store backend, through a `chromadb` collection.

Boundary: reads (and, on request, writes) one collection; knows nothing of models.
Works with any client (``chromadb.EphemeralClient()``, ``PersistentClient(path)``,
``HttpClient``): pass the collection object.

Scores. Chroma returns distances (lower is better) in the collection's HNSW
space, **"l2" (squared Euclidean) by default**; the backend turns them into
"higher is better" scores: l2 -> ``-distance``, cosine -> ``1 - distance``
(the cosine similarity), ip -> ``1 - distance`` (the inner product). Only the
order matters to the model, which recomputes q . d from the stored vectors it
gets back (``include=["embeddings"]``). For unit-length embeddings (MiniLM, most
sentence-transformers) all three spaces rank alike.

Example:
    >>> import chromadb  # doctest: +SKIP
    >>> backend = ChromaBackend(chromadb.PersistentClient("/data/chroma").get_collection("docs"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from contextflow_core.retrieval.store import StoreHits, StoreRows

from ._common import as_queries, check_ids, check_positive, check_rows, hits_from_lists, rows_in_order

SPACE_TO_SCORE = {"l2": lambda d: -d, "cosine": lambda d: 1.0 - d, "ip": lambda d: 1.0 - d}
_INCLUDE = ["embeddings", "documents", "metadatas"]


def collection_space(collection: Any) -> str:
    """The collection's HNSW space ("l2", "cosine" or "ip"): its configuration, else metadata, else "l2"."""
    config = getattr(collection, "configuration", None) or {}
    hnsw = config.get("hnsw") if isinstance(config, dict) else None
    space = (hnsw or {}).get("space") if isinstance(hnsw, dict) else None
    space = space or (collection.metadata or {}).get("hnsw:space") or "l2"
    return str(getattr(space, "value", space)).lower()


class ChromaBackend:
    """One Chroma collection as a `VectorStoreBackend`.

    Args:
        collection: A `chromadb` Collection (its rows must hold embeddings and documents).
        dim: Vector dimension; None: read from a stored row (an empty collection needs it).
        embedding_model_hint: The model that embedded the rows (for error messages).

    Raises:
        ValueError: Not a collection, an unknown space, or an empty collection without `dim`.
    """

    def __init__(self, collection: Any, *, dim: int | None = None, embedding_model_hint: str | None = None) -> None:
        if not all(hasattr(collection, a) for a in ("query", "get", "count", "upsert")):
            raise ValueError(f"collection: expected a chromadb Collection, got {type(collection).__name__}")
        self.collection = collection
        self.space = collection_space(collection)
        if self.space not in SPACE_TO_SCORE:
            raise ValueError(
                f"collection: unknown Chroma space {self.space!r}; expected one of {sorted(SPACE_TO_SCORE)}"
            )
        self.dim = check_positive(dim, "dim") if dim is not None else self._stored_dim()
        self.embedding_model_hint = embedding_model_hint

    def _stored_dim(self) -> int:
        got = self.collection.get(limit=1, include=["embeddings"])
        embeddings = got.get("embeddings")
        if embeddings is None or len(embeddings) == 0:
            raise ValueError(
                f"dim: the Chroma collection {self.collection.name!r} is empty, so its dimension "
                "cannot be read; pass dim=..."
            )
        return len(embeddings[0])

    @property
    def name(self) -> str:
        """``"chroma:<collection>"``, recorded in saved models and errors."""
        return f"chroma:{self.collection.name}"

    def search(self, query_vectors: Any, k: int) -> StoreHits:
        """Top-k rows per query (one batched query), with stored vectors, texts and metadata.

        Raises:
            ValueError: Wrong query shape, or fewer than k rows in the collection.
        """
        k = check_positive(k, "k")
        queries = as_queries(query_vectors, self.dim, self.name)
        got = self.collection.query(query_embeddings=queries, n_results=k, include=[*_INCLUDE, "distances"])
        to_score = SPACE_TO_SCORE[self.space]
        per_query = [
            list(zip(ids, [to_score(float(d)) for d in dists], vecs, docs, metas or [None] * len(ids), strict=True))
            for ids, dists, vecs, docs, metas in zip(
                got["ids"],
                got["distances"],
                got["embeddings"],
                got["documents"],
                got["metadatas"] or [None] * len(queries),
                strict=True,
            )
        ]
        return hits_from_lists(per_query, k, self.dim, self.name, self.count)

    def count(self) -> int:
        """Rows in the collection."""
        return int(self.collection.count())

    def _found(self, got: dict) -> dict:
        metadatas = got.get("metadatas") or [None] * len(got["ids"])
        return {
            str(i): (v, t, m)
            for i, v, t, m in zip(got["ids"], got["embeddings"], got["documents"], metadatas, strict=True)
        }

    def get(self, ids: Sequence[str]) -> StoreRows:
        """The rows with these ids, in that order.

        Raises:
            KeyError: Some ids are not in the collection.
        """
        wanted = check_ids(ids)
        found = self._found(self.collection.get(ids=wanted, include=_INCLUDE)) if wanted else {}
        return rows_in_order(wanted, found, self.dim, self.name)

    def iter_rows(self, batch_size: int = 1000) -> Iterator[StoreRows]:
        """Every row, `batch_size` at a time (offset paging)."""
        batch_size = check_positive(batch_size, "batch_size")
        offset = 0
        while True:
            got = self.collection.get(limit=batch_size, offset=offset, include=_INCLUDE)
            if not got["ids"]:
                return
            ids = [str(i) for i in got["ids"]]
            yield rows_in_order(ids, self._found(got), self.dim, self.name)
            offset += len(ids)

    def upsert(self, rows: StoreRows) -> None:
        """Insert or replace rows by id (Chroma metadata values must be str, int, float or bool).

        A replaced row's metadata is the new dict (Chroma's own upsert would merge it with the
        old one), so existing ids are deleted first, then every row is added.
        """
        rows = check_rows(rows, self.dim, self.name)
        if rows.ids:
            present = self.collection.get(ids=rows.ids, include=[])["ids"]
            if present:
                self.collection.delete(ids=list(present))
            self.collection.add(
                ids=rows.ids,
                embeddings=rows.vectors,
                documents=rows.texts,
                metadatas=[m or None for m in rows.metadata],
            )

    def __repr__(self) -> str:
        return f"ChromaBackend({self.collection.name!r}, dim={self.dim}, space={self.space!r})"
