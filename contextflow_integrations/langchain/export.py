"""Pull every document and its id out of a LangChain vector store.

Boundary: reads stores, never writes them, and imports none of their packages:
an exporter is looked up by the store's class name (and its base classes'
names) in `EXPORTERS`. Add one with `register_exporter`.

Supported out of the box: `InMemoryVectorStore`, langchain-community `FAISS`,
`Chroma` (langchain-chroma or community), `QdrantVectorStore` (langchain-qdrant)
and community `Qdrant`; any store whose ids you pass goes through `get_by_ids`.
Each of the built-in exporters also applies the store's own search `filter`
(see `export_documents`). Metadata becomes JSON-safe in `documents_to_passages`
by the core rule (`contextflow_core.metadata.json_metadata`: dates to ISO 8601
strings, tuples and sets to lists, non-string keys to strings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.documents import Document

from contextflow_core.metadata import json_metadata
from contextflow_core.types import Passage

Exporter = Callable[..., list[Document]]
EXPORTERS: dict[str, Exporter] = {}
FILTERING: set[str] = set()  # class names whose exporter takes the store's own `filter`
QDRANT_PAGE = 256


def register_exporter(*class_names: str, takes_filter: bool = False) -> Callable[[Exporter], Exporter]:
    """Register `fn(store) -> list[Document]` (every Document with its `id`) for these class names.

    With ``takes_filter=True`` the exporter is `fn(store, filter)` and applies the store's
    own filter (None: no filter); stores registered without it refuse ``filter=``.
    """

    def add(fn: Exporter) -> Exporter:
        for name in class_names:
            EXPORTERS[name] = fn
            (FILTERING.add if takes_filter else FILTERING.discard)(name)
        return fn

    return add


def _refuse_filter(store: Any, expected: str, filter: Any) -> None:
    raise ValueError(f"filter: {type(store).__name__} takes {expected} as its filter, got {type(filter).__name__}")


@register_exporter("InMemoryVectorStore", takes_filter=True)
def _in_memory(store: Any, filter: Any = None) -> list[Document]:
    if filter is not None and not callable(filter):
        _refuse_filter(store, "a callable Document -> bool (as in similarity_search)", filter)
    docs = [
        Document(page_content=r["text"], metadata=dict(r.get("metadata") or {}), id=str(doc_id))
        for doc_id, r in store.store.items()
    ]
    return docs if filter is None else [d for d in docs if filter(d)]


@register_exporter("FAISS", takes_filter=True)
def _faiss(store: Any, filter: Any = None) -> list[Document]:
    if filter is not None and not (callable(filter) or isinstance(filter, dict)):
        _refuse_filter(store, "a metadata dict or a callable metadata -> bool", filter)
    make = getattr(store, "_create_filter_func", None)  # how FAISS itself reads a filter in its searches
    if isinstance(filter, dict) and make is None:
        _refuse_filter(store, "a callable metadata -> bool (this FAISS version reads no dict filter)", filter)
    keep = None if filter is None else make(filter) if make is not None else filter
    docs = []
    for row in sorted(store.index_to_docstore_id):
        doc_id = store.index_to_docstore_id[row]
        doc = store.docstore.search(doc_id)
        if not isinstance(doc, Document):
            raise ValueError(f"vectorstore: FAISS row {row} points to id {doc_id!r}, which its docstore lacks")
        if keep is None or keep(doc.metadata):
            docs.append(Document(page_content=doc.page_content, metadata=dict(doc.metadata), id=str(doc_id)))
    return docs


@register_exporter("Chroma", takes_filter=True)
def _chroma(store: Any, filter: Any = None) -> list[Document]:
    if filter is not None and not isinstance(filter, dict):
        _refuse_filter(store, "a `where` dict (e.g. {'source': 'atlas'})", filter)
    got = store.get(where=filter, include=["documents", "metadatas"])
    metadatas = got.get("metadatas") or [None] * len(got["ids"])
    return [
        Document(page_content=text or "", metadata=dict(meta or {}), id=str(doc_id))
        for doc_id, text, meta in zip(got["ids"], got["documents"], metadatas, strict=True)
    ]


def _qdrant_filter(store: Any, filter: Any) -> Any:
    """`filter` as a qdrant `models.Filter` (the legacy `Qdrant` class also takes its metadata dicts)."""
    if filter is None or (type(filter).__name__ == "Filter" and type(filter).__module__.startswith("qdrant_client")):
        return filter
    if isinstance(filter, dict) and hasattr(store, "_qdrant_filter_from_dict"):
        return store._qdrant_filter_from_dict(filter)
    _refuse_filter(store, "a qdrant_client.models.Filter", filter)


@register_exporter("Qdrant", "QdrantVectorStore", takes_filter=True)
def _qdrant(store: Any, filter: Any = None) -> list[Document]:
    scroll_filter = _qdrant_filter(store, filter)
    content_key = getattr(store, "content_payload_key", "page_content")
    metadata_key = getattr(store, "metadata_payload_key", "metadata")
    docs, offset = [], None
    while True:
        points, offset = store.client.scroll(
            collection_name=store.collection_name,
            limit=QDRANT_PAGE,
            offset=offset,
            with_payload=True,
            with_vectors=False,
            scroll_filter=scroll_filter,
        )
        for point in points:
            payload = point.payload or {}
            meta = {
                k: v for k, v in dict(payload.get(metadata_key) or {}).items() if k not in ("_id", "_collection_name")
            }
            docs.append(Document(page_content=payload.get(content_key) or "", metadata=meta, id=str(point.id)))
        if offset is None:
            return docs


def _by_ids(store: Any, ids: Sequence[str]) -> list[Document]:
    ids = [str(i) for i in ids]
    try:
        found = store.get_by_ids(ids)
    except (NotImplementedError, AttributeError) as e:
        raise TypeError(
            f"vectorstore: {type(store).__name__} cannot look documents up by id ({e}); "
            "pass documents=[Document(...), ...] instead"
        ) from e
    by_id = {str(d.id): d for d in found}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(
            f"ids: {len(missing)} of {len(ids)} ids are not in the {type(store).__name__} store, e.g. {missing[:3]}"
        )
    return [Document(page_content=by_id[i].page_content, metadata=dict(by_id[i].metadata), id=i) for i in ids]


def _exporter(vectorstore: Any, filter: Any) -> Callable[[Any], list[Document]]:
    """The registered exporter of the store's class (or a base class), bound to `filter`."""
    names = [cls.__name__ for cls in type(vectorstore).__mro__]
    name = next((n for n in names if n in EXPORTERS), None)
    if name is None:
        raise TypeError(
            f"vectorstore: no exporter for {type(vectorstore).__name__}; supported: {sorted(EXPORTERS)}. "
            "Pass ids=[...] if it implements get_by_ids, pass documents=[Document(...), ...] directly, "
            "or add one with contextflow_integrations.langchain.export.register_exporter"
        )
    if name in FILTERING:
        return lambda store: EXPORTERS[name](store, filter)
    if filter is not None:
        raise ValueError(
            f"filter: cannot apply a filter to a {type(vectorstore).__name__} store (its exporter "
            f"takes none; stores with filters: {sorted(FILTERING)}); select the documents "
            "yourself and pass documents=[...] (or ids=[...])"
        )
    return EXPORTERS[name]


def export_documents(vectorstore: Any, ids: Sequence[str] | None = None, *, filter: Any = None) -> list[Document]:
    """Every document of `vectorstore` (or those its `filter` selects), each with its store id as `Document.id`.

    Args:
        vectorstore: A LangChain vector store.
        ids: Only these documents, fetched with `vectorstore.get_by_ids` (works for any
            store that implements it, registered or not).
        filter: The store's own filter, passed the way the store takes it in its searches:
            `InMemoryVectorStore` a callable over Documents, `Chroma` a `where` dict,
            `QdrantVectorStore` a `qdrant_client.models.Filter` (the legacy `Qdrant` also a
            metadata dict), community `FAISS` a metadata dict or a callable over metadata.

    Raises:
        TypeError: No exporter for the store's class and no `ids`; the message names the
            class and how to pass documents directly.
        ValueError: Some `ids` are not in the store, the store is empty, the filter selects
            nothing, a filter the store does not take (or with `ids`).
    """
    if ids is not None:
        if filter is not None:
            raise ValueError(
                "filter, ids: expected one way to select documents, got both; pass ids=None to "
                "filter the store, or filter=None to fetch those ids"
            )
        docs = _by_ids(vectorstore, ids)
    else:
        docs = _exporter(vectorstore, filter)(vectorstore)
    if not docs:
        if filter is not None:
            raise ValueError(f"filter: selected none of the documents of the {type(vectorstore).__name__} store")
        raise ValueError(f"vectorstore: the {type(vectorstore).__name__} store holds no documents")
    return docs


def documents_to_passages(
    documents: Iterable[Document], ids: Sequence[str] | None = None, title_key: str | None = "title"
) -> list[Passage]:
    """`Passage`s from Documents: id from `ids`, else `Document.id`, else the position.

    Args:
        documents: LangChain Documents.
        ids: Explicit ids, one per document.
        title_key: Metadata key whose string value becomes the passage title (None: no titles).

    Returns:
        The passages, metadata converted by `contextflow_core.metadata.json_metadata`.

    Raises:
        ValueError: An item is not a Document, `ids` has the wrong length, or metadata JSON
            cannot hold even converted (the message names the id and key).
    """
    documents = list(documents)
    if ids is not None and len(ids) != len(documents):
        raise ValueError(f"ids: expected {len(documents)} ids, one per document, got {len(ids)}")
    passages = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise ValueError(f"documents[{i}]: expected a langchain Document, got {type(doc).__name__}")
        doc_id = str(ids[i]) if ids is not None else (str(doc.id) if doc.id is not None else str(i))
        title = doc.metadata.get(title_key) if title_key else None
        metadata = {k: v for k, v in doc.metadata.items() if k != title_key or not isinstance(title, str)}
        metadata = json_metadata(metadata, doc_id)
        passages.append(
            Passage(
                id=doc_id, text=doc.page_content, title=title if isinstance(title, str) else None, metadata=metadata
            )
        )
    return passages
