"""Passages <-> LlamaIndex nodes, pulling nodes out of indexes and stores, and index export.

Boundary: conversion only. `node_to_passage`/`passage_to_node` map one unit of
text both ways (id = node id, text, metadata, with ``metadata["title"]`` as the
passage title, and the node's relationships, so ``ref_doc_id`` and
SOURCE/PREVIOUS/NEXT/PARENT/CHILD round-trip); metadata becomes JSON by the core
rule `contextflow_core.metadata.json_metadata` (dates to ISO 8601 strings, tuples
and sets to lists, non-string keys to strings; other objects are refused, naming
the node id and key); `nodes_from_index` pulls the current nodes out of a
LlamaIndex index or vector store; `to_vector_store_index` hands a ContextFlow index back to
LlamaIndex as a `VectorStoreIndex` whose queries are embedded by the (trained)
question encoder. Nothing here trains, retrieves or generates.

Where the nodes of an index live (what `nodes_from_index` reads):
    - A `VectorStoreIndex` over a store that keeps no text (the default
      `SimpleVectorStore`): the index's docstore, for the node ids of its
      `index_struct` (other indexes sharing the docstore are left out) that the
      vector store still holds where it can say so (`SimpleVectorStore`): nodes
      removed with `delete_ref_doc` or `delete_nodes` stay out even when the
      docstore keeps them. An index whose nodes were all deleted is an error.
    - A `VectorStoreIndex` over a text-keeping store, or a bare vector store:
      `vector_store.get_nodes()`; where a store does not implement it, the native
      client of the stores we know (Chroma: ``collection.get``, Qdrant: ``client.scroll``).
    - Anything else: a ValueError naming the store and the way out, ``nodes=[...]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.data_structs.data_structs import IndexDict, IndexGraph, IndexList, KeywordTable
from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    ObjectType,
    RelatedNodeInfo,
    TextNode,
)

from contextflow_core.metadata import json_metadata
from contextflow_core.types import Passage

TITLE_KEY = "title"
RELATIONSHIPS_KEY = "_node_relationships"

__all__ = [
    "ContextFlowEmbedding",
    "node_to_passage",
    "nodes_from_index",
    "passage_to_node",
    "passages_from_nodes",
    "to_vector_store_index",
]


# ----------------------------------------------------------------------------- one unit of text
def _relationships_to_json(relationships: dict) -> dict:
    """{relation name: related info (or list of them) as plain data}; metadata converted later."""

    def info(related: RelatedNodeInfo) -> dict:
        node_type = related.node_type
        return {
            "node_id": related.node_id,
            "node_type": node_type.name if isinstance(node_type, ObjectType) else node_type,
            "metadata": dict(related.metadata or {}),
            "hash": related.hash,
        }

    return {
        NodeRelationship(rel).name: [info(r) for r in value] if isinstance(value, list) else info(value)
        for rel, value in relationships.items()
    }


def _relationships_from_json(data: Any, passage_id: str) -> dict:
    def info(raw: dict) -> RelatedNodeInfo:
        node_type = raw.get("node_type")
        node_type = (
            ObjectType[node_type] if isinstance(node_type, str) and node_type in ObjectType.__members__ else node_type
        )
        return RelatedNodeInfo(
            node_id=raw["node_id"], node_type=node_type, metadata=raw.get("metadata") or {}, hash=raw.get("hash")
        )

    try:
        return {
            NodeRelationship[name]: [info(v) for v in value] if isinstance(value, list) else info(value)
            for name, value in data.items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"passage: {passage_id!r} has a malformed metadata[{RELATIONSHIPS_KEY!r}] "
            f"({type(e).__name__}: {e}); that key is reserved for node relationships"
        ) from e


def passage_to_node(passage: Passage, embedding: list[float] | None = None) -> TextNode:
    """A `TextNode` with the passage's id, text, metadata (its title as ``metadata["title"]``) and the
    relationships (SOURCE = ``ref_doc_id``, PREVIOUS, NEXT, PARENT, CHILD) of the node it came from."""
    metadata = dict(passage.metadata)
    relationships = metadata.pop(RELATIONSHIPS_KEY, None)
    if passage.title is not None:
        metadata.setdefault(TITLE_KEY, passage.title)
    return TextNode(
        id_=passage.id,
        text=passage.text,
        metadata=metadata,
        embedding=embedding,
        relationships=_relationships_from_json(relationships, passage.id) if relationships else {},
    )


def node_to_passage(node: Any) -> Passage:
    """A `Passage` from a node (or `NodeWithScore`): id = node id, text without metadata.

    The metadata goes through `contextflow_core.metadata.json_metadata` (dates to ISO 8601
    strings, tuples and sets to lists, non-string keys to strings); the node's relationships
    are kept under ``metadata["_node_relationships"]`` so that `passage_to_node` restores
    them (and with them ``ref_doc_id``).

    Raises:
        ValueError: `node` is not a LlamaIndex node, or its metadata cannot be held as JSON
            (the message names the node id and the key).
    """
    if isinstance(node, NodeWithScore):
        node = node.node
    if not isinstance(node, BaseNode):
        raise ValueError(
            f"nodes: expected LlamaIndex nodes (TextNode, Document, NodeWithScore), got {type(node).__name__}"
        )
    node_id = str(node.node_id)
    metadata = dict(node.metadata or {})
    if RELATIONSHIPS_KEY in metadata:
        raise ValueError(
            f"nodes: node {node_id!r} has a metadata key {RELATIONSHIPS_KEY!r}, which ContextFlow "
            "reserves for node relationships; rename it"
        )
    if node.relationships:
        metadata[RELATIONSHIPS_KEY] = _relationships_to_json(node.relationships)
    metadata = json_metadata(metadata, node_id)
    title = metadata.get(TITLE_KEY)
    return Passage(
        id=node_id,
        text=node.get_content(metadata_mode=MetadataMode.NONE),
        title=title if isinstance(title, str) and title else None,
        metadata=metadata,
    )


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
# index_struct class -> the node ids it lists (vector, summary, keyword and tree indexes)
STRUCT_NODE_IDS: list[tuple[type, Callable[[Any], list[str]]]] = [
    (IndexDict, lambda struct: list(struct.nodes_dict.values())),
    (IndexList, lambda struct: list(struct.nodes)),
    (KeywordTable, lambda struct: sorted(struct.node_ids)),
    (IndexGraph, lambda struct: [struct.all_nodes[i] for i in sorted(struct.all_nodes)]),
]

# vector store class -> the node ids it still holds (`index.delete_nodes(ids)` without
# delete_from_docstore=True removes them from the store but not from the index_struct)
LIVE_NODE_IDS: dict[str, Callable[[Any], set[str]]] = {
    "SimpleVectorStore": lambda store: set(store.data.embedding_dict),
}


def _struct_node_ids(index_struct: Any) -> list[str] | None:
    """The node ids the index_struct lists, or None for a struct kind not in STRUCT_NODE_IDS."""
    return next((read(index_struct) for kind, read in STRUCT_NODE_IDS if isinstance(index_struct, kind)), None)


def _nodes_of_docstore_index(index: Any) -> list[BaseNode]:
    """The index's current nodes: its index_struct's ids still held by its vector store, from the docstore."""
    ids = _struct_node_ids(index.index_struct)
    if ids is None:
        warnings.warn(
            f"index_or_vector_store: cannot tell which docstore nodes a {type(index).__name__} "
            f"({type(index.index_struct).__name__}) holds; using every node of its docstore. Pass "
            "nodes=[...] to choose them",
            stacklevel=4,
        )
        return list(index.docstore.docs.values())
    store = getattr(index, "vector_store", None)
    live = LIVE_NODE_IDS.get(type(store).__name__)
    if live is not None:
        held = live(store)
        ids = [i for i in ids if i in held]
    if not ids:
        raise ValueError(
            f"index_or_vector_store: the {type(index).__name__} holds no nodes (none indexed, or "
            "all deleted); index some documents first or pass nodes=[...]"
        )
    return list(index.docstore.get_nodes(ids))


def _chroma_nodes(store: Any) -> list[BaseNode]:
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    collection = getattr(store, "_collection", None) or store.client
    got = collection.get(include=["documents", "metadatas"])
    nodes = []
    for node_id, text, metadata in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
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
        points, offset = store.client.scroll(
            collection_name=store.collection_name, limit=batch, offset=offset, with_payload=True, with_vectors=False
        )
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
        f"whose docstore holds them"
    )


def nodes_from_index(index_or_vector_store: Any) -> list[BaseNode]:
    """The current nodes (id, text, metadata, relationships) of a LlamaIndex index or vector store.

    Args:
        index_or_vector_store: A `VectorStoreIndex` (or any index with a docstore),
            or a vector store (`BasePydanticVectorStore`).

    Returns:
        The nodes, in the store's order.

    Raises:
        ValueError: Nothing can be pulled, or every node was deleted (the message names the
            argument and says to pass `nodes=`).
    """
    obj = index_or_vector_store
    if obj is None:
        raise ValueError(
            "index_or_vector_store: expected a LlamaIndex index or vector store, got None; pass nodes=[...] instead"
        )
    if hasattr(obj, "index_struct") and hasattr(obj, "docstore"):
        store = getattr(obj, "vector_store", None)
        keeps_nodes = store is None or not store.stores_text or getattr(obj, "_store_nodes_override", False)
        nodes = _nodes_of_docstore_index(obj) if keeps_nodes else _nodes_of_store(store)
        if not nodes:
            raise ValueError(
                f"index_or_vector_store: the {type(obj).__name__} holds no nodes; "
                "index some documents first or pass nodes=[...]"
            )
        return nodes
    if hasattr(obj, "get_nodes") or hasattr(obj, "stores_text"):
        return _nodes_of_store(obj)
    raise ValueError(
        f"index_or_vector_store: expected a LlamaIndex index (e.g. VectorStoreIndex) or "
        f"vector store, got {type(obj).__name__}; or pass nodes=[...]"
    )


# ----------------------------------------------------------------------------- export
class ContextFlowEmbedding(BaseEmbedding):
    """A ContextFlow model's encoders as a LlamaIndex embedding model (asymmetric when given two).

    Queries are embedded by `encoder` (the trained question encoder); texts (nodes
    being indexed) by `passage_encoder`, the frozen encoder that produced the stored
    vectors, so ``VectorStoreIndex.from_vector_store(store, embed_model=...)`` (or
    ``index.as_retriever(embed_model=...)``) on the **unchanged** store ranks with the
    trained question side, and nodes inserted later land in the stored vectors' space.
    With one encoder (the old constructor) both sides use it.

    Args:
        encoder: Query side: anything with `encode(texts) -> (N, D)` (a `TextEncoder`, or a
            RAGSequence's `question_encoder`).
        passage_encoder: Text side; None: `encoder` (one shared space).
        **kwargs: `BaseEmbedding` fields (model_name, embed_batch_size, ...).

    Example:
        >>> embed = ContextFlowEmbedding.from_rag(model)  # doctest: +SKIP
        >>> index.as_retriever(embed_model=embed).retrieve("Who founded Tarsk?")  # doctest: +SKIP
    """

    _encoder: Any = PrivateAttr()
    _passage_encoder: Any = PrivateAttr()

    def __init__(self, encoder: Any, passage_encoder: Any = None, **kwargs: Any) -> None:
        passage_encoder = encoder if passage_encoder is None else passage_encoder
        for arg, value in (("encoder", encoder), ("passage_encoder", passage_encoder)):
            if not hasattr(value, "encode"):
                raise ValueError(f"{arg}: expected an encoder with encode(texts), got {type(value).__name__}")
        dims = (getattr(encoder, "dim", None), getattr(passage_encoder, "dim", None))
        if all(isinstance(d, int) for d in dims) and dims[0] != dims[1]:
            raise ValueError(f"passage_encoder: expected dimension {dims[0]} (the encoder's), got {dims[1]}")
        kwargs.setdefault("model_name", str(getattr(encoder, "name", None) or type(encoder).__name__))
        super().__init__(**kwargs)
        self._encoder = encoder
        self._passage_encoder = passage_encoder

    @classmethod
    def from_rag(cls, model: Any, **kwargs: Any) -> ContextFlowEmbedding:
        """Queries by the model's question encoder, texts by its (frozen) context encoder."""
        if not hasattr(model, "question_encoder"):
            raise ValueError(f"model: expected a RAGSequence, got {type(model).__name__}")
        return cls(model.question_encoder, getattr(model, "context_encoder", None), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's serialization name."""
        return "ContextFlowEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encoder.encode([query]).float()[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._passage_encoder.encode(list(texts)).float().tolist()


def to_vector_store_index(model: Any, *, storage_context: Any = None, show_progress: bool = False):
    """The ContextFlow index of `model` as a LlamaIndex `VectorStoreIndex`.

    Every passage becomes a `TextNode` (same id, text, metadata) carrying its stored
    embedding, so nothing is re-embedded; the index's `embed_model` is a
    `ContextFlowEmbedding` of the question encoder (queries) and the context encoder
    (nodes inserted later), so `index.as_retriever()` embeds queries with the trained
    encoder. Note that LlamaIndex's
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
        raise ValueError(f"model: expected a RAGSequence with .index and .question_encoder, got {type(model).__name__}")
    vectors = index.embeddings.tolist()
    nodes = [passage_to_node(p, embedding=v) for p, v in zip(index.passages, vectors, strict=True)]
    embed_model = ContextFlowEmbedding(encoder, getattr(model, "context_encoder", None))
    return VectorStoreIndex(
        nodes, embed_model=embed_model, storage_context=storage_context, show_progress=show_progress
    )
