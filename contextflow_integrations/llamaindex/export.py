"""Passages <-> LlamaIndex nodes, pulling nodes out of indexes and stores, and index export.

Boundary: conversion only. `node_to_passage`/`passage_to_node` map one unit of
text both ways (id = node id, text, metadata, with ``metadata["title"]`` as the
passage title); `nodes_from_index` pulls every node out of a LlamaIndex index or
vector store; `to_vector_store_index` hands a ContextFlow index back to
LlamaIndex as a `VectorStoreIndex` whose queries are embedded by the (trained)
question encoder. Nothing here trains, retrieves or generates.

Where the nodes of an index live (what `nodes_from_index` reads):
    - A `VectorStoreIndex` over a store that keeps no text (the default
      `SimpleVectorStore`): the index's docstore, for the node ids of its
      `index_struct` (other indexes sharing the docstore are left out).
    - A `VectorStoreIndex` over a text-keeping store, or a bare vector store:
      `vector_store.get_nodes()`; where a store does not implement it, the native
      client of the stores we know (Chroma: ``collection.get``, Qdrant: ``client.scroll``).
    - Anything else: a ValueError naming the store and the way out, ``nodes=[...]``.
"""
from __future__ import annotations

import json
import warnings
from typing import Any, Callable, Iterable, Optional, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, TextNode

from contextflow_core.types import Passage

TITLE_KEY = "title"

__all__ = [
    "ContextFlowEmbedding",
    "node_to_passage",
    "nodes_from_index",
    "passage_to_node",
    "passages_from_nodes",
    "to_vector_store_index",
]


# ----------------------------------------------------------------------------- one unit of text
def passage_to_node(passage: Passage, embedding: Optional[list[float]] = None) -> TextNode:
    """A `TextNode` with the passage's id, text and metadata (its title as ``metadata["title"]``)."""
    metadata = dict(passage.metadata)
    if passage.title is not None:
        metadata.setdefault(TITLE_KEY, passage.title)
    return TextNode(id_=passage.id, text=passage.text, metadata=metadata, embedding=embedding)


def _jsonable(metadata: dict) -> dict:
    """The entries of `metadata` that JSON can store (the DocumentIndex saves metadata as JSON)."""
    kept = {}
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[str(key)] = value
    return kept


def node_to_passage(node: Any) -> Passage:
    """A `Passage` from a node (or `NodeWithScore`): id = node id, text without metadata.

    Raises:
        ValueError: `node` is not a LlamaIndex node.
    """
    if isinstance(node, NodeWithScore):
        node = node.node
    if not isinstance(node, BaseNode):
        raise ValueError(f"nodes: expected LlamaIndex nodes (TextNode, Document, NodeWithScore), "
                         f"got {type(node).__name__}")
    metadata = _jsonable(dict(node.metadata or {}))
    title = metadata.get(TITLE_KEY)
    return Passage(id=str(node.node_id), text=node.get_content(metadata_mode=MetadataMode.NONE),
                   title=title if isinstance(title, str) and title else None, metadata=metadata)


def passages_from_nodes(nodes: Iterable[Any]) -> list[Passage]:
    """Passages of `nodes`, first occurrence of each id kept, nodes without text skipped (with a warning).

    Raises:
        ValueError: No node has text.
    """
    passages, seen, empty = [], set(), []
    for node in nodes:
        passage = node_to_passage(node)
        if not passage.text.strip():
            empty.append(passage.id)
        elif passage.id not in seen:
            seen.add(passage.id)
            passages.append(passage)
    if empty:
        warnings.warn(f"nodes: skipped {len(empty)} node(s) without text, e.g. {empty[:3]}", stacklevel=2)
    if not passages:
        raise ValueError("nodes: expected at least one node with text, got none")
    return passages


# ----------------------------------------------------------------------------- pulling nodes
def _struct_node_ids(index_struct: Any) -> list[str]:
    nodes_dict = getattr(index_struct, "nodes_dict", None)
    if isinstance(nodes_dict, dict):
        return list(nodes_dict.values())
    return list(getattr(index_struct, "nodes", None) or [])


def _nodes_of_docstore_index(index: Any) -> list[BaseNode]:
    ids = _struct_node_ids(index.index_struct)
    if ids:
        return list(index.docstore.get_nodes(ids))
    return list(index.docstore.docs.values())


def _chroma_nodes(store: Any) -> list[BaseNode]:
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    collection = getattr(store, "_collection", None) or store.client
    got = collection.get(include=["documents", "metadatas"])
    nodes = []
    for node_id, text, metadata in zip(got["ids"], got["documents"], got["metadatas"]):
        metadata = {k: v for k, v in (metadata or {}).items() if k != "__index_id__"}
        try:
            node = metadata_dict_to_node(metadata, text=text)
        except Exception:  # metadata written without "_node_content": keep what is there
            node = TextNode(id_=node_id, text=text or "", metadata=metadata)
        nodes.append(node)
    return nodes


def _qdrant_nodes(store: Any, batch: int = 256) -> list[BaseNode]:
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    nodes, offset = [], None
    while True:
        points, offset = store.client.scroll(collection_name=store.collection_name, limit=batch, offset=offset,
                                             with_payload=True, with_vectors=False)
        nodes += [metadata_dict_to_node(point.payload) for point in points]
        if offset is None:
            return nodes


NATIVE_READERS: dict[str, Callable[[Any], list[BaseNode]]] = {
    "ChromaVectorStore": _chroma_nodes,
    "QdrantVectorStore": _qdrant_nodes,
}


def _nodes_of_store(store: Any) -> list[BaseNode]:
    name = type(store).__name__
    reason = f"{name} keeps no text" if getattr(store, "stores_text", True) is False else ""
    if not reason:
        try:
            nodes = store.get_nodes()
            if nodes:
                return list(nodes)
            reason = f"{name}.get_nodes() returned no node"
        except (NotImplementedError, ValueError, TypeError) as e:
            reason = f"{name}.get_nodes() failed ({type(e).__name__}: {e})"
        if name in NATIVE_READERS:
            try:
                nodes = NATIVE_READERS[name](store)
                if nodes:
                    return nodes
            except Exception as e:  # native clients raise their own error types
                reason += f"; reading its native client failed ({type(e).__name__}: {e})"
    raise ValueError(
        f"index_or_vector_store: could not pull the nodes out of a {name}: {reason}. Pass the nodes "
        f"yourself with nodes=[...] (the TextNodes or Documents you indexed), or the VectorStoreIndex "
        f"whose docstore holds them")


def nodes_from_index(index_or_vector_store: Any) -> list[BaseNode]:
    """Every node (id, text, metadata) of a LlamaIndex index or vector store.

    Args:
        index_or_vector_store: A `VectorStoreIndex` (or any index with a docstore),
            or a vector store (`BasePydanticVectorStore`).

    Returns:
        The nodes, in the store's order.

    Raises:
        ValueError: Nothing can be pulled (the message names the store and says to pass `nodes=`).
    """
    obj = index_or_vector_store
    if obj is None:
        raise ValueError("index_or_vector_store: expected a LlamaIndex index or vector store, got None; "
                         "pass nodes=[...] instead")
    if hasattr(obj, "index_struct") and hasattr(obj, "docstore"):
        store = getattr(obj, "vector_store", None)
        keeps_nodes = store is None or not store.stores_text or getattr(obj, "_store_nodes_override", False)
        nodes = _nodes_of_docstore_index(obj) if keeps_nodes else _nodes_of_store(store)
        if not nodes:
            raise ValueError(f"index_or_vector_store: the {type(obj).__name__} holds no nodes; "
                             "index some documents first or pass nodes=[...]")
        return nodes
    if hasattr(obj, "get_nodes") or hasattr(obj, "stores_text"):
        return _nodes_of_store(obj)
    raise ValueError(f"index_or_vector_store: expected a LlamaIndex index (e.g. VectorStoreIndex) or "
                     f"vector store, got {type(obj).__name__}; or pass nodes=[...]")


# ----------------------------------------------------------------------------- export
class ContextFlowEmbedding(BaseEmbedding):
    """A ContextFlow question encoder as a LlamaIndex embedding model.

    Queries and texts are both embedded by the question encoder (inner-product
    space of the DocumentIndex); the stored passage embeddings of an exported
    index keep the vectors they were indexed with.

    Args:
        encoder: Anything with `encode(texts) -> (N, D)` (a `TextEncoder`, or a
            RAGSequence's `question_encoder`).
    """

    _encoder: Any = PrivateAttr()

    def __init__(self, encoder: Any, **kwargs: Any) -> None:
        if not hasattr(encoder, "encode"):
            raise ValueError(f"encoder: expected an encoder with encode(texts), got {type(encoder).__name__}")
        kwargs.setdefault("model_name", str(getattr(encoder, "name", None) or type(encoder).__name__))
        super().__init__(**kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "ContextFlowEmbedding"

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._encoder.encode(list(texts)).float().tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)


def to_vector_store_index(model: Any, *, storage_context: Any = None, show_progress: bool = False):
    """The ContextFlow index of `model` as a LlamaIndex `VectorStoreIndex`.

    Every passage becomes a `TextNode` (same id, text, metadata) carrying its stored
    embedding, so nothing is re-embedded; the index's `embed_model` is a
    `ContextFlowEmbedding` of the question encoder, so `index.as_retriever()`
    embeds queries with the trained encoder. Note that LlamaIndex's
    `SimpleVectorStore` ranks by cosine similarity, the DocumentIndex by inner
    product: rankings agree when the encoder normalises its embeddings.

    Args:
        model: A RAGSequence (its `index` and `question_encoder` are used).
        storage_context: Where the nodes go (default: a fresh in-memory one).
        show_progress: Show LlamaIndex's progress bar.

    Raises:
        ValueError: `model` has no index or question encoder.
    """
    from llama_index.core import VectorStoreIndex

    index, encoder = getattr(model, "index", None), getattr(model, "question_encoder", None)
    if index is None or encoder is None:
        raise ValueError(f"model: expected a RAGSequence with .index and .question_encoder, "
                         f"got {type(model).__name__}")
    vectors = index.embeddings.tolist()
    nodes = [passage_to_node(p, embedding=v) for p, v in zip(index.passages, vectors)]
    return VectorStoreIndex(nodes, embed_model=ContextFlowEmbedding(encoder), storage_context=storage_context,
                            show_progress=show_progress)
