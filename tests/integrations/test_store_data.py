"""Data pulled from the user's stores stays true (issue 13, items 16 and 17).

Real engines in-process: a LlamaIndex `VectorStoreIndex` (default SimpleVectorStore and
docstore), LangChain `InMemoryVectorStore`, Chroma's ephemeral client, Qdrant local mode
and community FAISS. Models are tiny and random; training runs are one optimiser step.
"""
from __future__ import annotations

import datetime
import json
import uuid

import numpy as np
import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore  # noqa: E402
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode  # noqa: E402

import contextflow_integrations.langchain.finetune as lc_finetune  # noqa: E402
import contextflow_integrations.llamaindex.finetune as li_finetune  # noqa: E402
from contextflow_core.config import PromptConfig  # noqa: E402
from contextflow_core.retrieval import DocumentIndex, Retriever  # noqa: E402
from contextflow_integrations.langchain import finetune_from_vectorstore, register_exporter  # noqa: E402
from contextflow_integrations.langchain.export import EXPORTERS  # noqa: E402
from contextflow_integrations.llamaindex import ContextFlowRetriever, finetune_from_index, nodes_from_index  # noqa: E402

# after the package imports: train_tiny puts the repository first on sys.path
import tiny  # noqa: E402
from train_tiny import IDS, PASSAGES, QA, tiny_config, tiny_encoder  # noqa: E402

PAIRS = [(q, a) for q, a, _ in QA]  # no gold ids: some tests delete the gold nodes
SHORT_PROMPT = PromptConfig(system_prompt=None, instruction="", user_format="{instruction}{passages}\n{question}",
                            passage_format="{text}", question_format="Q: {question}")
DOC_OF = {"p0": "doc-a", "p1": "doc-a", "p2": "doc-b", "p3": "doc-b", "p4": "doc-c", "p5": "doc-c"}
WHEN = datetime.datetime(2024, 5, 1, 12, 30)
ODD_METADATA = {"published": WHEN, "day": datetime.date(2024, 5, 2), "tags": ("a", "b"), "labels": {"y", "x"},
                "nested": {7: "seven", "at": datetime.time(9, 15)}}  # a LlamaIndex docstore holds these
NUMPY_METADATA = {"count": np.int64(3), "score": np.float32(0.5), "flags": np.array([True, False])}
CONVERTED = {"published": "2024-05-01T12:30:00", "day": "2024-05-02", "tags": ["a", "b"], "labels": ["x", "y"],
             "nested": {"7": "seven", "at": "09:15:00"}}
NUMPY_CONVERTED = {"count": 3, "score": 0.5, "flags": [True, False]}


class Opaque:
    """A metadata value no JSON rule can hold."""


@pytest.fixture
def parts():
    """Tiny models and a short prompt, as keyword arguments of both fine-tune helpers."""
    return {"encoder": tiny_encoder(), "generator": tiny.tiny_generator(), "tokenizer": tiny.tiny_tokenizer(),
            "prompt": SHORT_PROMPT}


def one_step(output_dir=None):
    return tiny_config(output_dir, num_epochs=1, max_steps=1)


@pytest.fixture
def train_calls(monkeypatch):
    """Record every entry into train_rag from either helper (and still train)."""
    calls = []

    def spy(original):
        def train_rag(*args, **kwargs):
            calls.append(args)
            return original(*args, **kwargs)
        return train_rag

    monkeypatch.setattr(lc_finetune, "train_rag", spy(lc_finetune.train_rag))
    monkeypatch.setattr(li_finetune, "train_rag", spy(li_finetune.train_rag))
    return calls


# ----------------------------------------------------------------------------- LlamaIndex: current nodes
def _chunked_nodes(metadata=None) -> list[TextNode]:
    """PASSAGES as chunks of three documents, with SOURCE/PREVIOUS/NEXT/PARENT relationships."""
    nodes = [TextNode(id_=i, text=t, metadata={"title": f"Title {i}", **(metadata or {})})
             for i, t in zip(IDS, PASSAGES)]
    for k, node in enumerate(nodes):
        doc = DOC_OF[node.node_id]
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(
            node_id=doc, node_type="4", metadata={"file": f"{doc}.txt"}, hash=f"h-{doc}")
        node.relationships[NodeRelationship.PARENT] = RelatedNodeInfo(node_id=f"section-{doc}")
        if k % 2 == 1:
            node.relationships[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id=nodes[k - 1].node_id)
            nodes[k - 1].relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id=node.node_id)
    return nodes


def _index(nodes=None) -> VectorStoreIndex:
    return VectorStoreIndex(nodes or _chunked_nodes(), embed_model=MockEmbedding(embed_dim=8))


def test_nodes_deleted_from_the_index_stay_deleted(parts, train_calls):
    index = _index()
    index.delete_ref_doc("doc-a")  # docstore keeps p0, p1 (delete_from_docstore=False, the default)
    index.delete_nodes(["p5"])  # only the vector store forgets p5
    assert {"p0", "p1", "p5"} <= set(index.docstore.docs)
    assert sorted(n.node_id for n in nodes_from_index(index)) == ["p2", "p3", "p4"]
    result = finetune_from_index(index, PAIRS, **parts, num_docs=2, train_config=one_step())
    assert sorted(result.model.index.ids) == ["p2", "p3", "p4"] and len(train_calls) == 1
    assert {n.node_id for n in result.retriever.retrieve(QA[0][0])} <= {"p2", "p3", "p4"}


@pytest.mark.parametrize("delete", ["ref_docs", "nodes", "ref_docs_and_docstore"])
def test_an_index_with_every_node_deleted_is_an_error_not_the_whole_docstore(parts, train_calls, delete):
    index = _index()
    if delete == "nodes":
        index.delete_nodes(list(IDS))
    else:
        for doc in sorted(set(DOC_OF.values())):
            index.delete_ref_doc(doc, delete_from_docstore=delete == "ref_docs_and_docstore")
    with pytest.raises(ValueError, match=r"index_or_vector_store: the VectorStoreIndex holds no nodes \(none "
                                         r"indexed, or all deleted\).*nodes=\[\.\.\.\]"):
        finetune_from_index(index, PAIRS, **parts, train_config=one_step())
    assert train_calls == []


def _provenance(node) -> tuple:
    return node.node_id, node.ref_doc_id, node.relationships


def test_chunk_provenance_round_trips_to_the_engines_source_nodes(parts, tmp_path):
    index = _index()
    users = {i: _provenance(index.docstore.get_node(i)) for i in IDS}
    assert users["p1"][1] == "doc-a" and set(users["p0"][2]) == {NodeRelationship.SOURCE, NodeRelationship.PARENT,
                                                                 NodeRelationship.NEXT}
    result = finetune_from_index(index, PAIRS, **parts, num_docs=3, train_config=one_step(),
                                 query_engine_kwargs={"max_new_tokens": 2})
    retrieved = result.retriever.retrieve(QA[1][0])
    sources = result.query_engine.query(QA[1][0]).source_nodes
    wide = ContextFlowRetriever(result.model, similarity_top_k=6).retrieve(QA[1][0])
    assert len(retrieved) == 3 and len(sources) == 3 and len(wide) == 6
    result.model.index.save(tmp_path / "index")  # and through the saved index
    reloaded = Retriever(DocumentIndex.load(tmp_path / "index"), result.model.question_encoder, k=6)
    for hit in retrieved + sources + wide + ContextFlowRetriever(reloaded).retrieve(QA[1][0]):
        assert _provenance(hit.node) == users[hit.node.node_id]
        assert hit.node.metadata == {"title": f"Title {hit.node.node_id}"}  # nothing internal leaks


# ----------------------------------------------------------------------------- metadata JSON cannot hold
def _store(metadatas, ids=None, texts=PASSAGES) -> InMemoryVectorStore:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    store.add_texts(list(texts), metadatas=metadatas, ids=list(ids or IDS))
    return store


def test_datetime_and_other_metadata_convert_the_same_way_on_both_adapters(parts):
    lc = finetune_from_vectorstore(_store([dict(ODD_METADATA) for _ in IDS]), PAIRS, **parts, num_docs=2,
                                   train_config=one_step())
    parts = {**parts, "encoder": tiny_encoder(), "generator": tiny.tiny_generator()}
    li = finetune_from_index(_index(_chunked_nodes(ODD_METADATA)), PAIRS, **parts, num_docs=2,
                             train_config=one_step())
    assert lc.documents[0].metadata == CONVERTED
    assert all(d.metadata["published"] == "2024-05-01T12:30:00" for d in lc.retriever.invoke(QA[0][0]))
    for hit in li.retriever.retrieve(QA[0][0]):
        assert hit.node.metadata == {"title": f"Title {hit.node.node_id}", **CONVERTED}
    for model in (lc.model, li.model):  # the index stores JSON: what it holds is what the adapters return
        for passage in model.index.passages:
            assert json.loads(json.dumps(passage.metadata)) == passage.metadata
    li_metadata = {k: v for k, v in li.model.index.get("p3").metadata.items() if k != "_node_relationships"}
    assert li_metadata == {**lc.model.index.get("p3").metadata, "title": "Title p3"}


def test_numpy_metadata_converts_the_same_way_on_both_adapters(parts):
    lc = finetune_from_vectorstore(_store([dict(NUMPY_METADATA) for _ in IDS]), PAIRS, **parts, num_docs=2,
                                   train_config=one_step())
    li = finetune_from_index(None, PAIRS, nodes=_chunked_nodes(NUMPY_METADATA), **parts, num_docs=2,
                             train_config=one_step())
    assert lc.model.index.get("p1").metadata == NUMPY_CONVERTED
    assert li.retriever.retrieve(QA[0][0])[0].node.metadata["count"] == 3
    assert type(lc.documents[0].metadata["count"]) is int and type(lc.documents[0].metadata["score"]) is float


def test_metadata_that_cannot_be_converted_is_refused_before_training(parts, train_calls, tmp_path):
    lc_metas = [{"n": i} for i in range(len(IDS))]
    lc_metas[3]["blob"] = Opaque()
    with pytest.raises(ValueError, match=r"metadata: passage 'p3', key metadata\['blob'\]: JSON cannot hold a "
                                         r"Opaque value.*Convert or drop that key"):
        finetune_from_vectorstore(_store(lc_metas), PAIRS, **parts, train_config=one_step(tmp_path / "lc"))
    nodes = _chunked_nodes()  # a LlamaIndex docstore cannot serialise such a node: nodes= is how it comes in
    nodes[4].metadata["deep"] = {"inner": [1, Opaque()]}
    with pytest.raises(ValueError, match=r"metadata: passage 'p4', key metadata\['deep'\]\['inner'\]\[1\]: JSON "
                                         r"cannot hold a Opaque value"):
        finetune_from_index(None, PAIRS, nodes=nodes, **parts, train_config=one_step(tmp_path / "li"))
    assert train_calls == [] and list(tmp_path.iterdir()) == []


def test_keys_that_collide_once_converted_are_refused_before_training(parts, train_calls):
    with pytest.raises(ValueError, match=r"metadata: passage 'p0', key metadata\['1'\]: another key also becomes "
                                         r"the string '1'"):
        finetune_from_vectorstore(_store([{1: "a", "1": "b"}] + [{}] * 5), PAIRS, **parts)
    assert train_calls == []


# ----------------------------------------------------------------------------- LangChain: filter=
TOPICS = ["quenia", "rivers", "quenia", "tarsk", "quenia", "rivers"]
QUENIA = sorted(i for i, t in zip(IDS, TOPICS) if t == "quenia")
UUIDS = [str(uuid.UUID(int=k + 1)) for k in range(len(IDS))]  # Qdrant wants UUIDs or integers


def _chroma(embedding):
    chromadb = pytest.importorskip("chromadb")
    langchain_chroma = pytest.importorskip("langchain_chroma")
    from chromadb.config import Settings

    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    return langchain_chroma.Chroma(collection_name=f"t{uuid.uuid4().hex}", embedding_function=embedding,
                                   client=client)


def _qdrant(embedding, legacy=False):
    pytest.importorskip("qdrant_client")
    langchain_qdrant = pytest.importorskip("langchain_qdrant")
    from qdrant_client import QdrantClient
    from qdrant_client.models import Distance, VectorParams

    client, name = QdrantClient(":memory:"), f"t{uuid.uuid4().hex}"
    client.create_collection(name, vectors_config=VectorParams(size=8, distance=Distance.COSINE))
    if legacy:  # the older class, which also takes metadata dicts as filters
        return langchain_qdrant.Qdrant(client=client, collection_name=name, embeddings=embedding)
    return langchain_qdrant.QdrantVectorStore(client=client, collection_name=name, embedding=embedding)


def _qdrant_filter():
    from qdrant_client import models

    return models.Filter(must=[models.FieldCondition(key="metadata.topic", match=models.MatchValue(value="quenia"))])


def _faiss(embedding):
    pytest.importorskip("faiss")
    from langchain_community.vectorstores import FAISS

    return FAISS.from_texts(["seed"], embedding, ids=["seed"])


STORES = {  # name -> (make store, its own filter for topic == "quenia", ids the store uses)
    "in_memory": (lambda e: InMemoryVectorStore(e), lambda: lambda doc: doc.metadata["topic"] == "quenia", IDS),
    "chroma": (_chroma, lambda: {"topic": "quenia"}, IDS),
    "qdrant": (_qdrant, _qdrant_filter, UUIDS),
    "qdrant_legacy_dict": (lambda e: _qdrant(e, legacy=True), lambda: {"topic": "quenia"}, UUIDS),
    "faiss_dict": (_faiss, lambda: {"topic": "quenia"}, IDS),
    "faiss_callable": (_faiss, lambda: lambda meta: meta["topic"] == "quenia", IDS),
}


def _topic_store(name):
    make, _, ids = STORES[name]
    store = make(DeterministicFakeEmbedding(size=8))
    store.add_texts(PASSAGES, metadatas=[{"topic": t} for t in TOPICS], ids=ids)
    if name.startswith("faiss"):
        store.delete(["seed"])
    return store, ids


@pytest.mark.parametrize("name", list(STORES))
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # langchain-community, legacy Qdrant
def test_the_stores_own_filter_selects_the_training_subset(parts, name):
    store, ids = _topic_store(name)
    expected = sorted(ids[IDS.index(i)] for i in QUENIA)
    result = finetune_from_vectorstore(store, PAIRS, **parts, num_docs=2, train_config=one_step(),
                                       filter=STORES[name][1]())
    assert sorted(result.model.index.ids) == expected
    assert sorted(d.id for d in result.documents) == expected
    assert {d.metadata["topic"] for d in result.retriever.invoke(QA[0][0])} == {"quenia"}


class NoFilterStore(VectorStore):
    """A store whose registered exporter takes no filter."""

    def add_texts(self, texts, metadatas=None, **kwargs):
        return []

    def similarity_search(self, query, k=4, **kwargs):
        return []

    @classmethod
    def from_texts(cls, texts, embedding, metadatas=None, **kwargs):
        return cls()


def test_a_filter_the_store_cannot_take_is_refused_by_name(parts, train_calls, monkeypatch):
    store, _ = _topic_store("in_memory")
    refused = [
        (store, {"filter": {"topic": "quenia"}}, r"filter: InMemoryVectorStore takes a callable Document -> bool"),
        (_topic_store("chroma")[0], {"filter": lambda d: True}, r"filter: Chroma takes a `where` dict"),
        (_topic_store("qdrant")[0], {"filter": {"topic": "quenia"}},
         r"filter: QdrantVectorStore takes a qdrant_client.models.Filter as its filter, got dict"),
        (store, {"filter": lambda d: True, "ids": ["p0"]}, r"filter, ids: expected one way to select documents"),
        (None, {"filter": lambda d: True, "documents": [Document(page_content="x")]},
         r"filter: applies to a vector store's documents, got it with documents=\[\.\.\.\]"),
        (store, {"filter": lambda d: False}, r"filter: selected none of the documents of the InMemoryVectorStore"),
    ]
    monkeypatch.setattr("contextflow_integrations.langchain.export.EXPORTERS", dict(EXPORTERS))
    register_exporter("NoFilterStore")(lambda s: [Document(page_content="x", id="only")])
    refused.append((NoFilterStore(), {"filter": {"a": 1}}, r"filter: cannot apply a filter to a NoFilterStore store"))
    for vectorstore, kwargs, message in refused:
        with pytest.raises(ValueError, match=message):
            finetune_from_vectorstore(vectorstore, PAIRS, **parts, train_config=one_step(), **kwargs)
    assert train_calls == []


# ----------------------------------------------------------------------------- LangChain: duplicates
def _store_with_duplicates() -> InMemoryVectorStore:
    texts = PASSAGES + [PASSAGES[0], PASSAGES[0], PASSAGES[2], PASSAGES[3]]
    ids = IDS + ["dup-0a", "dup-0b", "dup-2", "p3-retitled"]
    metadatas = [{"n": k} for k in range(len(IDS))] + [{"n": 10}, {"n": 11}, {"n": 12}, {"title": "Other"}]
    return _store(metadatas, ids=ids, texts=texts)


def test_exact_duplicates_are_merged_with_every_id_kept(parts):
    result = finetune_from_vectorstore(_store_with_duplicates(), PAIRS, **parts, num_docs=2, train_config=one_step())
    assert result.model.index.ids == IDS + ["p3-retitled"]  # a different title is not a duplicate
    assert result.model.index.get("p0").metadata == {"n": 0, "duplicate_ids": ["p0", "dup-0a", "dup-0b"]}
    assert result.model.index.get("p2").metadata == {"n": 2, "duplicate_ids": ["p2", "dup-2"]}
    assert "duplicate_ids" not in result.model.index.get("p1").metadata
    assert next(d for d in result.documents if d.id == "p0").metadata["duplicate_ids"] == ["p0", "dup-0a", "dup-0b"]
    texts = [d.page_content for d in result.retriever.invoke(QA[0][0])]
    assert len(texts) == len(set(texts))


def test_dedupe_false_keeps_every_duplicate(parts):
    result = finetune_from_vectorstore(_store_with_duplicates(), PAIRS, **parts, num_docs=2, train_config=one_step(),
                                       dedupe=False)
    assert result.model.index.ids == IDS + ["dup-0a", "dup-0b", "dup-2", "p3-retitled"]
    assert all("duplicate_ids" not in p.metadata for p in result.model.index.passages)
    with pytest.raises(ValueError, match=r"dedupe: expected True or False, got 'no'"):
        finetune_from_vectorstore(_store_with_duplicates(), PAIRS, **parts, dedupe="no")
