"""Documents and ids out of real LangChain vector stores, all in-process (no server, no network)."""
from __future__ import annotations

import uuid

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore  # noqa: E402

from contextflow_integrations.langchain import documents_to_passages, export_documents, register_exporter  # noqa: E402
from contextflow_integrations.langchain.export import EXPORTERS  # noqa: E402

TEXTS = ["Zorblat is the capital of Quenia.", "The river Mivo flows through Tarsk.", "Quenia exports blue salt."]
METAS = [{"title": "Quenia", "n": 0}, {"source": "atlas", "n": 1}, {"n": 2}]
UUIDS = [str(uuid.UUID(int=i + 1)) for i in range(len(TEXTS))]  # Qdrant wants UUIDs or integers


@pytest.fixture
def embedding():
    return DeterministicFakeEmbedding(size=8)


def _as_triples(docs):
    return sorted((d.id, d.page_content, d.metadata) for d in docs)


def _expected(ids):
    return sorted(zip(ids, TEXTS, METAS))


def test_in_memory_vector_store(embedding):
    store = InMemoryVectorStore(embedding)
    store.add_texts(TEXTS, metadatas=METAS, ids=["a", "b", "c"])
    assert _as_triples(export_documents(store)) == _expected(["a", "b", "c"])


def test_community_faiss(embedding):
    pytest.importorskip("langchain_community")
    pytest.importorskip("faiss")
    from langchain_community.vectorstores import FAISS

    store = FAISS.from_texts(TEXTS, embedding, metadatas=METAS, ids=["a", "b", "c"])
    docs = export_documents(store)
    assert _as_triples(docs) == _expected(["a", "b", "c"])
    assert [d.id for d in docs] == ["a", "b", "c"]  # FAISS row order


def test_chroma_in_memory(embedding):
    chromadb = pytest.importorskip("chromadb")
    langchain_chroma = pytest.importorskip("langchain_chroma")
    from chromadb.config import Settings

    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    store = langchain_chroma.Chroma(collection_name=f"t{uuid.uuid4().hex}", embedding_function=embedding,
                                    client=client)
    store.add_texts(TEXTS, metadatas=METAS, ids=["a", "b", "c"])
    assert _as_triples(export_documents(store)) == _expected(["a", "b", "c"])


@pytest.mark.parametrize("flavour", ["QdrantVectorStore", "Qdrant"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_qdrant_in_memory(embedding, flavour):
    pytest.importorskip("qdrant_client")
    langchain_qdrant = pytest.importorskip("langchain_qdrant")
    from qdrant_client import QdrantClient
    from qdrant_client.models import Distance, VectorParams

    client = QdrantClient(":memory:")
    name = f"t{uuid.uuid4().hex}"
    client.create_collection(name, vectors_config=VectorParams(size=8, distance=Distance.COSINE))
    if flavour == "QdrantVectorStore":
        store = langchain_qdrant.QdrantVectorStore(client=client, collection_name=name, embedding=embedding)
    else:  # the older class, kept by langchain-qdrant (once also in langchain-community)
        store = langchain_qdrant.Qdrant(client=client, collection_name=name, embeddings=embedding)
    store.add_texts(TEXTS, metadatas=METAS, ids=UUIDS)
    assert _as_triples(export_documents(store)) == _expected(UUIDS)


def test_qdrant_pages_through_large_collections(embedding, monkeypatch):
    pytest.importorskip("qdrant_client")
    QdrantVectorStore = pytest.importorskip("langchain_qdrant").QdrantVectorStore
    from contextflow_integrations.langchain import export

    monkeypatch.setattr(export, "QDRANT_PAGE", 2)
    store = QdrantVectorStore.from_texts(TEXTS, embedding, metadatas=METAS, ids=UUIDS, location=":memory:",
                                         collection_name="paged")
    assert _as_triples(export_documents(store)) == _expected(UUIDS)


def test_any_store_by_ids_via_get_by_ids(embedding):
    store = InMemoryVectorStore(embedding)
    store.add_texts(TEXTS, metadatas=METAS, ids=["a", "b", "c"])
    docs = export_documents(store, ids=["c", "a"])
    assert [(d.id, d.page_content) for d in docs] == [("c", TEXTS[2]), ("a", TEXTS[0])]
    with pytest.raises(ValueError, match=r"ids: 1 of 2 ids are not in the InMemoryVectorStore store, e.g. \['zz'\]"):
        export_documents(store, ids=["a", "zz"])


class NotAStore(VectorStore):
    """A store with no exporter and no get_by_ids."""

    def add_texts(self, texts, metadatas=None, **kwargs):
        return []

    def similarity_search(self, query, k=4, **kwargs):
        return []

    @classmethod
    def from_texts(cls, texts, embedding, metadatas=None, **kwargs):
        return cls()


def test_unsupported_store_names_its_class_and_the_way_out():
    with pytest.raises(TypeError, match="vectorstore: no exporter for NotAStore.*documents=") as info:
        export_documents(NotAStore())
    assert "InMemoryVectorStore" in str(info.value)
    with pytest.raises(TypeError, match="NotAStore cannot look documents up by id.*documents="):
        export_documents(NotAStore(), ids=["a"])


def test_registered_exporter_is_found_by_class_name(monkeypatch):
    monkeypatch.setattr("contextflow_integrations.langchain.export.EXPORTERS", dict(EXPORTERS))
    register_exporter("NotAStore")(lambda store: [Document(page_content="x", id="only")])
    assert [d.id for d in export_documents(NotAStore())] == ["only"]


def test_empty_store_is_an_error(embedding):
    with pytest.raises(ValueError, match="vectorstore: the InMemoryVectorStore store holds no documents"):
        export_documents(InMemoryVectorStore(embedding))


def test_documents_to_passages_ids_titles_and_metadata():
    docs = [Document(page_content=t, metadata=m, id=i) for t, m, i in zip(TEXTS, METAS, ["a", None, "c"])]
    passages = documents_to_passages(docs)
    assert [p.id for p in passages] == ["a", "1", "c"]
    assert passages[0].title == "Quenia" and passages[0].metadata == {"n": 0}
    assert passages[1].title is None and passages[1].metadata == {"source": "atlas", "n": 1}
    assert [p.id for p in documents_to_passages(docs, ids=["x", "y", "z"])] == ["x", "y", "z"]
    assert documents_to_passages(docs, title_key=None)[0].metadata == METAS[0]
    with pytest.raises(ValueError, match="ids: expected 3 ids, one per document, got 1"):
        documents_to_passages(docs, ids=["x"])
    with pytest.raises(ValueError, match=r"documents\[0\]: expected a langchain Document, got str"):
        documents_to_passages(["text"])
