"""LlamaIndex indexes and vector stores as ContextFlow store backends (train in place, no copy).

Boundary: maps a LlamaIndex vector store onto `contextflow_core.retrieval.store.VectorStoreBackend`.
Searches go through the store's own ``query`` (so the backend ranks exactly as the
index's retriever does: cosine similarity for `SimpleVectorStore`); the stored
vectors come from the query result's nodes when they carry embeddings, else
from the store (``SimpleVectorStore.get``); texts and metadata from the result's
nodes, else the index's docstore (a `SimpleVectorStore` keeps no text).
Metadata follows `export.node_to_passage` (title under ``"title"``, relationships
kept). `embedding_model_hint` is the index's embed model name.

Texts. LlamaIndex embeds a node's content with its metadata lines first
(``MetadataMode.EMBED``: ``"title: ...\n\n<text>"``, minus
``excluded_embed_metadata_keys``). Search hits carry the plain text (the prompt
renders the title from metadata); rows from `get`/`iter_rows` carry the text **as
the index embedded it**, which is what the embedding-space check and a refresh
re-embed, so both compare like with like.

Supported: a `VectorStoreIndex` over `SimpleVectorStore` (the default), and any
vector store whose query results carry nodes with embeddings (pass the
`VectorStoreIndex` or the store itself).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core.schema import MetadataMode, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from contextflow_core.retrieval.store import StoreHits, StoreRows, VectorStoreBackend
from contextflow_integrations.llamaindex.export import node_to_passage
from contextflow_integrations.stores._common import (
    as_queries,
    check_positive,
    check_rows,
    hits_from_lists,
    rows_in_order,
)


def _text_and_metadata(node: Any, as_embedded: bool = False) -> tuple[str, dict]:
    passage = node_to_passage(node)
    text = node.get_content(metadata_mode=MetadataMode.EMBED) if as_embedded else passage.text
    return text, dict(passage.metadata)


class LlamaIndexStoreBackend:
    """A LlamaIndex vector store (with its index's docstore) as a backend.

    Args:
        vector_store: The store (e.g. ``index.vector_store``).
        index: The `VectorStoreIndex` over it (its docstore gives texts when the store keeps
            none; new rows are inserted through it); None for a text-keeping store.
        dim: Vector dimension; None: read from a stored vector.

    Raises:
        ValueError: An empty store without `dim`, or a store that keeps no text without its index.
    """

    def __init__(self, vector_store: Any, index: Any = None, *, dim: int | None = None) -> None:
        self.store, self.index = vector_store, index
        self.docstore = getattr(index, "docstore", None)
        if not getattr(vector_store, "stores_text", False) and self.docstore is None:
            raise ValueError(
                f"index_or_vector_store: a {type(vector_store).__name__} keeps no text; pass the "
                "VectorStoreIndex built on it (its docstore holds the texts)"
            )
        self.dim = check_positive(dim, "dim") if dim is not None else self._stored_dim()
        embed_model = getattr(index, "_embed_model", None)
        self.embedding_model_hint = getattr(embed_model, "model_name", None)
        self.name = f"llamaindex:{type(vector_store).__name__}@{id(vector_store):x}"

    def _embedding_dict(self) -> dict | None:
        data = getattr(self.store, "data", None)
        return getattr(data, "embedding_dict", None)

    def _stored_dim(self) -> int:
        table = self._embedding_dict()
        if table:
            return len(next(iter(table.values())))
        nodes = self._nodes(None)
        if nodes and nodes[0].embedding is not None:
            return len(nodes[0].embedding)
        raise ValueError(
            f"dim: cannot read the dimension of the {type(self.store).__name__} (empty, or its nodes "
            "carry no embeddings); pass dim=..."
        )

    def _nodes(self, ids: Sequence[str] | None) -> list[Any]:
        table = self._embedding_dict()
        if self.docstore is not None and table is not None:
            wanted = list(table) if ids is None else list(ids)
            return [self.docstore.get_node(i, raise_error=False) for i in wanted]
        return list(self.store.get_nodes(node_ids=None if ids is None else list(ids)))

    def _vector(self, node_id: str, node: Any) -> Any:
        table = self._embedding_dict()
        if table is not None and node_id in table:
            return table[node_id]
        if node is not None and node.embedding is not None:
            return node.embedding
        raise ValueError(
            f"{self.name}: node {node_id!r} comes back without its embedding; this store cannot "
            "serve in place (use mode='copy')"
        )

    def search(self, query_vectors: Any, k: int) -> StoreHits:
        """Top-k nodes per query through the store's own ``query``, with stored vectors."""
        k = check_positive(k, "k")
        per_query = []
        for q in as_queries(query_vectors, self.dim, self.name):
            result = self.store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k))
            ids = [str(i) for i in (result.ids or [n.node_id for n in result.nodes or []])]
            nodes = list(result.nodes) if result.nodes else self._nodes(ids)
            sims = result.similarities or [0.0] * len(ids)
            per_query.append(
                [
                    (i, float(s), self._vector(i, n), *_text_and_metadata(n))
                    for i, s, n in zip(ids, sims, nodes, strict=True)
                    if n is not None
                ]
            )
        return hits_from_lists(per_query, k, self.dim, self.name, self.count)

    def count(self) -> int:
        """Nodes in the store."""
        table = self._embedding_dict()
        return len(table) if table is not None else len(self._nodes(None))

    def _rows(self, ids: Sequence[str], nodes: Sequence[Any], as_embedded: bool = True) -> StoreRows:
        found = {
            str(n.node_id): (self._vector(str(n.node_id), n), *_text_and_metadata(n, as_embedded=as_embedded))
            for n in nodes
            if n is not None
        }
        return rows_in_order([str(i) for i in ids], found, self.dim, self.name)

    def get(self, ids: Sequence[str]) -> StoreRows:
        """The nodes with these ids, in that order, texts as embedded (KeyError for missing ones)."""
        ids = [str(i) for i in ids]
        return self._rows(ids, self._nodes(ids))

    def iter_rows(self, batch_size: int = 1000, *, as_embedded: bool = True) -> Iterator[StoreRows]:
        """Every node, `batch_size` at a time; texts as embedded, or plain with ``as_embedded=False``
        (what the prompt shows, e.g. to write questions from)."""
        batch_size = check_positive(batch_size, "batch_size")
        table = self._embedding_dict()
        ids = list(table) if table is not None else [str(n.node_id) for n in self._nodes(None)]
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            yield self._rows(chunk, self._nodes(chunk), as_embedded)

    def upsert(self, rows: StoreRows) -> None:
        """Replace vectors by id (and changed texts in the docstore); new ids go in through the index.

        A row's text may be the plain text or the text as embedded (what `get` returns): a
        docstore node whose content matches either is left as it is.
        """
        rows = check_rows(rows, self.dim, self.name)
        table = self._embedding_dict()
        fresh = []
        for doc_id, vector, text, meta in zip(rows.ids, rows.vectors, rows.texts, rows.metadata, strict=True):
            node = TextNode(id_=doc_id, text=text, metadata=meta, embedding=vector.tolist())
            if table is not None and doc_id in table:
                table[doc_id] = vector.tolist()
                if self.docstore is not None:
                    old = self.docstore.get_node(doc_id, raise_error=False)
                    same = old is not None and text in (
                        old.get_content(),
                        old.get_content(metadata_mode=MetadataMode.EMBED),
                    )
                    if not same:
                        self.docstore.add_documents([node], allow_update=True)
            else:
                fresh.append(node)
        if fresh:
            (self.index.insert_nodes if self.index is not None else self.store.add)(fresh)


def backend_from_index(index_or_vector_store: Any) -> Any:
    """A `VectorStoreBackend` over a LlamaIndex `VectorStoreIndex` or vector store (a backend as is).

    Raises:
        ValueError: Neither an index with a vector store nor a vector store.
    """
    obj = index_or_vector_store
    if isinstance(obj, VectorStoreBackend):
        return obj
    store = getattr(obj, "vector_store", None)
    if store is not None and hasattr(obj, "docstore"):
        return LlamaIndexStoreBackend(store, obj)
    if hasattr(obj, "query") and hasattr(obj, "stores_text"):
        return LlamaIndexStoreBackend(obj)
    raise ValueError(
        f"index_or_vector_store: expected a LlamaIndex VectorStoreIndex, a vector store or a "
        f"VectorStoreBackend for mode='in_place', got {type(obj).__name__}"
    )
