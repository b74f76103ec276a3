"""Pull every document and its id out of a LangChain vector store.

Boundary: reads stores, never writes them, and imports none of their packages:
an exporter is looked up by the store's class name (and its base classes'
names) in `EXPORTERS`. Add one with `register_exporter`.

Supported out of the box: `InMemoryVectorStore`, langchain-community `FAISS`,
`Chroma` (langchain-chroma or community), `QdrantVectorStore` (langchain-qdrant)
and community `Qdrant`; any store whose ids you pass goes through `get_by_ids`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional

from langchain_core.documents import Document

from contextflow_core.types import Passage

Exporter = Callable[[Any], list[Document]]
EXPORTERS: dict[str, Exporter] = {}
QDRANT_PAGE = 256


def register_exporter(*class_names: str) -> Callable[[Exporter], Exporter]:
    """Register `fn(store) -> list[Document]` (every Document with its `id`) for these class names."""
    def add(fn: Exporter) -> Exporter:
        for name in class_names:
            EXPORTERS[name] = fn
        return fn
    return add


@register_exporter("InMemoryVectorStore")
def _in_memory(store: Any) -> list[Document]:
    return [Document(page_content=r["text"], metadata=dict(r.get("metadata") or {}), id=str(doc_id))
            for doc_id, r in store.store.items()]


@register_exporter("FAISS")
def _faiss(store: Any) -> list[Document]:
    docs = []
    for row in sorted(store.index_to_docstore_id):
        doc_id = store.index_to_docstore_id[row]
        doc = store.docstore.search(doc_id)
        if not isinstance(doc, Document):
            raise ValueError(f"vectorstore: FAISS row {row} points to id {doc_id!r}, which its docstore lacks")
        docs.append(Document(page_content=doc.page_content, metadata=dict(doc.metadata), id=str(doc_id)))
    return docs


@register_exporter("Chroma")
def _chroma(store: Any) -> list[Document]:
    got = store.get(include=["documents", "metadatas"])
    metadatas = got.get("metadatas") or [None] * len(got["ids"])
    return [Document(page_content=text or "", metadata=dict(meta or {}), id=str(doc_id))
            for doc_id, text, meta in zip(got["ids"], got["documents"], metadatas)]


@register_exporter("Qdrant", "QdrantVectorStore")
def _qdrant(store: Any) -> list[Document]:
    content_key = getattr(store, "content_payload_key", "page_content")
    metadata_key = getattr(store, "metadata_payload_key", "metadata")
    docs, offset = [], None
    while True:
        points, offset = store.client.scroll(collection_name=store.collection_name, limit=QDRANT_PAGE, offset=offset,
                                             with_payload=True, with_vectors=False)
        for point in points:
            payload = point.payload or {}
            meta = {k: v for k, v in dict(payload.get(metadata_key) or {}).items()
                    if k not in ("_id", "_collection_name")}
            docs.append(Document(page_content=payload.get(content_key) or "", metadata=meta, id=str(point.id)))
        if offset is None:
            return docs


def _by_ids(store: Any, ids: Sequence[str]) -> list[Document]:
    ids = [str(i) for i in ids]
    try:
        found = store.get_by_ids(ids)
    except (NotImplementedError, AttributeError) as e:
        raise TypeError(f"vectorstore: {type(store).__name__} cannot look documents up by id ({e}); "
                        "pass documents=[Document(...), ...] instead") from e
    by_id = {str(d.id): d for d in found}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"ids: {len(missing)} of {len(ids)} ids are not in the {type(store).__name__} store, "
                         f"e.g. {missing[:3]}")
    return [Document(page_content=by_id[i].page_content, metadata=dict(by_id[i].metadata), id=i) for i in ids]


def export_documents(vectorstore: Any, ids: Optional[Sequence[str]] = None) -> list[Document]:
    """Every document of `vectorstore`, each with its store id as `Document.id`.

    Args:
        vectorstore: A LangChain vector store.
        ids: Only these documents, fetched with `vectorstore.get_by_ids` (works for any
            store that implements it, registered or not).

    Raises:
        TypeError: No exporter for the store's class and no `ids`; the message names the
            class and how to pass documents directly.
        ValueError: Some `ids` are not in the store, or the store is empty.
    """
    if ids is not None:
        docs = _by_ids(vectorstore, ids)
    else:
        names = [cls.__name__ for cls in type(vectorstore).__mro__]
        exporter = next((EXPORTERS[n] for n in names if n in EXPORTERS), None)
        if exporter is None:
            raise TypeError(
                f"vectorstore: no exporter for {type(vectorstore).__name__}; supported: {sorted(EXPORTERS)}. "
                "Pass ids=[...] if it implements get_by_ids, pass documents=[Document(...), ...] directly, "
                "or add one with contextflow_integrations.langchain.export.register_exporter")
        docs = exporter(vectorstore)
    if not docs:
        raise ValueError(f"vectorstore: the {type(vectorstore).__name__} store holds no documents")
    return docs


def documents_to_passages(documents: Iterable[Document], ids: Optional[Sequence[str]] = None,
                          title_key: Optional[str] = "title") -> list[Passage]:
    """`Passage`s from Documents: id from `ids`, else `Document.id`, else the position.

    Args:
        documents: LangChain Documents.
        ids: Explicit ids, one per document.
        title_key: Metadata key whose string value becomes the passage title (None: no titles).

    Raises:
        ValueError: An item is not a Document, or `ids` has the wrong length.
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
        passages.append(Passage(id=doc_id, text=doc.page_content, title=title if isinstance(title, str) else None,
                                metadata=metadata))
    return passages
