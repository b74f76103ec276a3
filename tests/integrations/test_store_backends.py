"""Store backends against the real engines, in-process: Milvus Lite, Qdrant local, Chroma ephemeral,
LangChain InMemoryVectorStore / community FAISS / Chroma / QdrantVectorStore, LlamaIndex VectorStoreIndex.

Every backend is checked for the same contract: exact top-k (against brute-force inner product on
unit vectors, where every metric ranks alike), the stored vectors / texts / metadata of the hits,
count, get (order, missing ids), iter_rows (every row once), upsert (replace and insert).
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from contextflow_core.retrieval.store import StoreRows, VectorStoreBackend

N, D = 40, 16
IDS = [f"doc-{i}" for i in range(N)]


def _rows(ids=IDS, seed=0) -> StoreRows:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(ids), D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    meta = [{"title": f"Title {i}", "source": "atlas" if i % 2 else "wiki", "n": i} for i in range(len(ids))]
    return StoreRows(list(ids), vectors, [f"passage number {i}" for i in range(len(ids))], meta)


ROWS = _rows()
QUERIES = np.random.default_rng(1).standard_normal((3, D)).astype(np.float32)


def _exact(k: int, rows: StoreRows = ROWS, queries=QUERIES) -> list[list[str]]:
    order = np.argsort(-(queries @ rows.vectors.T), axis=1, kind="stable")[:, :k]
    return [[rows.ids[j] for j in row] for row in order]


# ----------------------------------------------------------------------------- engines
def _milvus(tmp_path):
    from pymilvus import MilvusClient

    from contextflow_integrations.stores import MilvusBackend

    backend = MilvusBackend.create(MilvusClient(str(tmp_path / "milvus.db")), "docs", D, metric="IP")
    backend.upsert(ROWS)
    return backend


def _qdrant(tmp_path):
    from qdrant_client import QdrantClient, models

    from contextflow_integrations.stores import QdrantBackend

    client = QdrantClient(":memory:")
    client.create_collection("docs", vectors_config=models.VectorParams(size=D, distance=models.Distance.DOT))
    backend = QdrantBackend(client, "docs")
    backend.upsert(StoreRows(QDRANT_IDS, ROWS.vectors, ROWS.texts, ROWS.metadata))
    return backend


def _chroma(tmp_path):
    import chromadb

    from contextflow_integrations.stores import ChromaBackend

    name = f"docs-{uuid.uuid4().hex[:8]}"
    collection = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False)).create_collection(name, configuration={"hnsw": {"space": "ip"}})
    backend = ChromaBackend(collection, dim=D)
    backend.upsert(ROWS)
    return backend


QDRANT_IDS = [str(uuid.uuid5(uuid.NAMESPACE_URL, i)) for i in IDS]  # Qdrant ids: UUIDs or integers
ENGINES = {"milvus": (_milvus, IDS), "qdrant": (_qdrant, QDRANT_IDS), "chroma": (_chroma, IDS)}


@pytest.fixture(params=sorted(ENGINES))
def engine(request, tmp_path):
    make, ids = ENGINES[request.param]
    return make(tmp_path), ids


def _translate(ids_of_engine: list[str], rows_ids: list[list[str]]) -> list[list[str]]:
    where = {i: n for n, i in enumerate(IDS)}
    return [[ids_of_engine[where[i]] for i in row] for row in rows_ids]


def test_engine_search_returns_exact_top_k_with_stored_vectors(engine):
    backend, ids = engine
    assert isinstance(backend, VectorStoreBackend) and backend.dim == D and backend.count() == N
    hits = backend.search(QUERIES, 5)
    assert hits.ids == _translate(ids, _exact(5))
    position = {i: n for n, i in enumerate(ids)}
    rows = [[position[i] for i in row] for row in hits.ids]
    np.testing.assert_allclose(hits.vectors, ROWS.vectors[rows], atol=1e-6)  # (B, K, D) the stored vectors
    np.testing.assert_allclose(hits.scores, np.einsum("bd,bkd->bk", QUERIES, hits.vectors), atol=1e-4)
    assert hits.texts[0][0] == ROWS.texts[rows[0][0]]
    assert hits.metadata[0][0] == ROWS.metadata[rows[0][0]]  # title stays in metadata: the model reads it
    assert hits.scores.dtype == np.float32 and hits.vectors.dtype == np.float32


def test_engine_get_iter_rows_and_upsert(engine):
    backend, ids = engine
    got = backend.get([ids[7], ids[2]])
    assert got.ids == [ids[7], ids[2]] and got.texts == [ROWS.texts[7], ROWS.texts[2]]
    np.testing.assert_allclose(got.vectors, ROWS.vectors[[7, 2]], atol=1e-6)
    assert got.metadata[0] == ROWS.metadata[7]
    with pytest.raises(KeyError, match="not in the store"):
        backend.get([ids[0], str(uuid.uuid4()) if ids is QDRANT_IDS else "doc-missing"])
    seen = [i for rows in backend.iter_rows(7) for i in rows.ids]
    assert sorted(seen) == sorted(ids) and len(seen) == N
    new_vec = -ROWS.vectors[3:4]
    fresh = QDRANT_IDS[0].replace(QDRANT_IDS[0][:8], "0" * 8) if ids is QDRANT_IDS else "doc-new"
    backend.upsert(StoreRows([ids[3], fresh], np.concatenate([new_vec, ROWS.vectors[4:5]]),
                             ["replaced text", "a new row"], [{"title": "T"}, {}]))
    assert backend.count() == N + 1
    again = backend.get([ids[3], fresh])
    assert again.texts == ["replaced text", "a new row"] and again.metadata[0] == {"title": "T"}
    np.testing.assert_allclose(again.vectors[0], new_vec[0], atol=1e-6)
    assert backend.search(new_vec, 1).ids == [[ids[3]]]  # searches see the replaced vector


def test_engine_refuses_bad_queries_and_k(engine):
    backend, _ = engine
    with pytest.raises(ValueError, match=r"query_vectors: expected a \(B, 16\) array"):
        backend.search(np.zeros((2, D + 1), np.float32), 3)
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        backend.search(QUERIES, 0)
    with pytest.raises(ValueError, match="k: expected at most"):
        backend.search(QUERIES, N + 5)
    with pytest.raises(ValueError, match="rows.vectors: expected shape"):
        backend.upsert(StoreRows(["x"], np.zeros((1, 3), np.float32), ["t"], [{}]))


# ----------------------------------------------------------------------------- engine specifics
def test_milvus_alias_staging_promotes_atomically_and_keeps_the_old_collection(tmp_path):
    from pymilvus import MilvusClient

    from contextflow_integrations.stores import MilvusBackend

    client = MilvusClient(str(tmp_path / "m.db"))
    live = MilvusBackend.create(client, "docs_v1", D, metric="COSINE", alias="docs", embedding_model="mini-lm")
    live.upsert(ROWS)
    assert live.name == "milvus:docs" and live.is_alias and live.embedding_model_hint == "mini-lm"
    staging = live.staging()
    staging.upsert(StoreRows(ROWS.ids, -ROWS.vectors, ROWS.texts, ROWS.metadata))
    assert live.search(QUERIES[:1], 1).ids == _exact(1, queries=QUERIES[:1])  # still the old rows
    live.promote(staging)
    assert live.search(QUERIES[:1], 1).ids == _exact(1, queries=-QUERIES[:1])  # the new rows, same alias
    assert set(client.list_collections()) == {"docs_v1", staging.collection}  # nothing dropped
    plain = MilvusBackend(client, "docs_v1")
    with pytest.raises(ValueError, match="is a collection, not an alias"):
        plain.staging()


def test_milvus_custom_fields_metadata_fields_and_integer_ids(tmp_path):
    from pymilvus import DataType, MilvusClient

    from contextflow_integrations.stores import MilvusBackend

    client = MilvusClient(str(tmp_path / "m.db"))
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("emb", DataType.FLOAT_VECTOR, dim=D)
    schema.add_field("body", DataType.VARCHAR, max_length=1000)
    index = client.prepare_index_params()
    index.add_index("emb", index_type="FLAT", metric_type="L2")
    client.create_collection("c", schema=schema, index_params=index)
    client.insert("c", [{"pk": i, "emb": ROWS.vectors[i].tolist(), "body": ROWS.texts[i], **ROWS.metadata[i]}
                        for i in range(N)])
    with pytest.raises(ValueError, match="vector_field: the collection 'c' has no field 'vector'"):
        MilvusBackend(client, "c", id_field="pk")
    backend = MilvusBackend(client, "c", id_field="pk", vector_field="emb", text_field="body",
                            metadata_fields=["title"])
    assert backend.metric == "L2"  # read from the index
    hits = backend.search(QUERIES, 4)
    exact = np.argsort(((QUERIES[:, None] - ROWS.vectors[None]) ** 2).sum(-1), axis=1)[:, :4]
    assert hits.ids == [[str(j) for j in row] for row in exact]
    assert (np.diff(hits.scores, axis=1) <= 1e-6).all()  # negated L2: higher is better, best first
    assert hits.metadata[0][0] == {"title": ROWS.metadata[int(hits.ids[0][0])]["title"]}
    assert backend.get(["5"]).texts == [ROWS.texts[5]]
    with pytest.raises(ValueError, match="integer ids"):
        backend.get(["five"])
    with pytest.raises(ValueError, match="collection: no collection or alias 'nope'"):
        MilvusBackend(client, "nope")


def test_qdrant_named_vectors_langchain_payload_and_euclid(tmp_path):
    from qdrant_client import QdrantClient, models

    from contextflow_integrations.stores import QdrantBackend

    client = QdrantClient(":memory:")
    client.create_collection("named", vectors_config={
        "dense": models.VectorParams(size=D, distance=models.Distance.EUCLID),
        "other": models.VectorParams(size=4, distance=models.Distance.DOT)})
    with pytest.raises(ValueError, match=r"vector_name: expected one of the collection's named vectors"):
        QdrantBackend(client, "named")
    backend = QdrantBackend(client, "named", text_key="page_content", metadata_key="metadata",
                            vector_name="dense")
    int_ids = [str(i) for i in range(N)]
    client.upsert("named", [models.PointStruct(id=i, vector={"dense": ROWS.vectors[i].tolist(), "other": [0.0] * 4},
                                               payload={"page_content": ROWS.texts[i], "metadata": ROWS.metadata[i]})
                            for i in range(N)])
    hits = backend.search(QUERIES, 3)
    assert hits.ids == [[int_ids[IDS.index(i)] for i in row] for row in _exact(3)]  # unit vectors: L2 ~ IP
    assert (hits.scores <= 0).all() and hits.metadata[0][0] == ROWS.metadata[int(hits.ids[0][0])]
    with pytest.raises(ValueError, match="Qdrant point ids are unsigned integers or UUIDs"):
        backend.get(["doc-1"])


def test_chroma_default_l2_space_scores_are_negated_distances():
    import chromadb

    from contextflow_integrations.stores import ChromaBackend

    collection = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False)).create_collection(f"l2-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ValueError, match="dim: the Chroma collection .* is empty"):
        ChromaBackend(collection)
    ChromaBackend(collection, dim=D).upsert(ROWS)
    backend = ChromaBackend(collection)  # dimension read from a stored row
    assert backend.space == "l2" and backend.dim == D
    hits = backend.search(QUERIES, 4)
    assert hits.ids == _exact(4)
    squared = ((QUERIES[:, None, :] - hits.vectors) ** 2).sum(-1)
    np.testing.assert_allclose(hits.scores, -squared, atol=1e-4)


# ----------------------------------------------------------------------------- LangChain stores
@pytest.fixture
def lc_embeddings(encoder):
    from contextflow_integrations.langchain import ContextFlowEmbeddings

    return ContextFlowEmbeddings(encoder)


TEXTS = [f"passage number {i} about {w}" for i, w in enumerate(["salt", "rivers", "herons", "ports", "towers",
                                                                  "bells", "maps", "kings"])]


def _lc_stores(name, embeddings, tmp_path):
    if name == "memory":
        from langchain_core.vectorstores import InMemoryVectorStore

        return InMemoryVectorStore.from_texts(TEXTS, embeddings, ids=[f"m{i}" for i in range(len(TEXTS))],
                                              metadatas=[{"title": f"T{i}"} for i in range(len(TEXTS))])
    if name == "faiss":
        from langchain_community.vectorstores import FAISS

        return FAISS.from_texts(TEXTS, embeddings, ids=[f"f{i}" for i in range(len(TEXTS))],
                                metadatas=[{"title": f"T{i}"} for i in range(len(TEXTS))])
    if name == "chroma":
        import chromadb
        from langchain_chroma import Chroma

        # one ephemeral Chroma per process: every test passes the same settings
        client = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False))
        return Chroma.from_texts(TEXTS, embeddings, ids=[f"c{i}" for i in range(len(TEXTS))],
                                 metadatas=[{"title": f"T{i}"} for i in range(len(TEXTS))],
                                 collection_name=f"lc-{uuid.uuid4().hex[:8]}", client=client)
    from langchain_qdrant import QdrantVectorStore

    return QdrantVectorStore.from_texts(TEXTS, embeddings, location=":memory:", collection_name="lc",
                                        ids=[str(uuid.uuid5(uuid.NAMESPACE_URL, t)) for t in TEXTS],
                                        metadatas=[{"title": f"T{i}"} for i in range(len(TEXTS))])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", ["memory", "faiss", "chroma", "qdrant"])
def test_langchain_store_backend_ranks_like_the_store(kind, lc_embeddings, tmp_path):
    from contextflow_integrations.langchain import backend_from_vectorstore

    store = _lc_stores(kind, lc_embeddings, tmp_path)
    backend = backend_from_vectorstore(store)
    assert backend_from_vectorstore(backend) is backend
    assert backend.count() == len(TEXTS) and backend.embedding_model_hint == lc_embeddings.model_name
    questions = ["which passage is about herons?", "ports and kings"]
    q = np.asarray([lc_embeddings.embed_query(x) for x in questions], dtype=np.float32)
    hits = backend.search(q, 3)
    for row, question, qv in zip(hits.ids, questions, q):
        found = store.similarity_search_by_vector(qv.tolist(), k=3)
        expected = [str(d.id if d.id is not None else d.metadata["_id"]) for d in found]  # Qdrant: metadata _id
        assert row == expected, (kind, question)
    stored = np.asarray(lc_embeddings.embed_documents([hits.texts[0][0]]), dtype=np.float32)[0]
    np.testing.assert_allclose(hits.vectors[0][0] / np.linalg.norm(hits.vectors[0][0]),
                               stored / np.linalg.norm(stored), atol=1e-5)
    assert hits.metadata[0][0]["title"].startswith("T")
    first = hits.ids[0][0]
    backend.upsert(StoreRows([first], -hits.vectors[0][:1], ["changed"], [{"title": "new"}]))
    assert backend.get([first]).texts == ["changed"] and backend.count() == len(TEXTS)


def test_langchain_unknown_store_is_refused_by_name():
    from contextflow_integrations.langchain import backend_from_vectorstore

    with pytest.raises(TypeError, match="vectorstore: no in-place backend for dict"):
        backend_from_vectorstore({})


# ----------------------------------------------------------------------------- LlamaIndex
def test_llamaindex_vector_store_index_backend_ranks_like_its_retriever(encoder):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from contextflow_integrations.llamaindex import ContextFlowEmbedding, backend_from_index

    embed = ContextFlowEmbedding(encoder)
    nodes = [TextNode(id_=f"n{i}", text=t, metadata={"title": f"T{i}"}) for i, t in enumerate(TEXTS)]
    index = VectorStoreIndex(nodes, embed_model=embed)
    backend = backend_from_index(index)
    assert backend.count() == len(TEXTS) and backend.dim == encoder.dim
    question = "which passage is about herons?"
    hits = backend.search(np.asarray([embed.get_query_embedding(question)], np.float32), 4)
    assert hits.ids[0] == [n.node.node_id for n in index.as_retriever(similarity_top_k=4).retrieve(question)]
    assert hits.texts[0][0] in TEXTS and hits.metadata[0][0]["title"].startswith("T")
    assert backend.get(["n2"]).texts == [f"title: T2\n\n{TEXTS[2]}"]  # rows: the text as LlamaIndex embedded it
    backend.upsert(StoreRows(["n9"], hits.vectors[0][:1], ["brand new"], [{"title": "N"}]))
    assert backend.count() == len(TEXTS) + 1
    assert index.as_retriever(similarity_top_k=1).retrieve(question)[0].node.node_id in ("n9", hits.ids[0][0])
