"""mode="in_place" on both fine-tune helpers, the embedding-space refusal, the asymmetric embeddings
handed back (the unchanged store's own retriever ranks exactly like ContextFlowRetriever), parity of
a training step against Milvus Lite with the FAISS path, and the Milvus example's smoke run."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

import tiny
from train_tiny import IDS, PASSAGES, QA, tiny_config, tiny_encoder

from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.retrieval.store import StoreRows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUESTIONS = [q for q, _, _ in QA]


def _parts(seed: int = 0) -> dict:
    return {"generator": tiny.tiny_generator(seed=seed, hidden=32), "tokenizer": tiny.tiny_tokenizer()}


def _params(module) -> dict:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before: dict, module) -> bool:
    return any(not torch.equal(before[n], p) for n, p in module.named_parameters())


# ----------------------------------------------------------------------------- parity with FAISS
def test_training_step_against_milvus_lite_equals_the_faiss_path(tmp_path):
    from pymilvus import MilvusClient

    from contextflow_integrations.stores import MilvusBackend

    index = DocumentIndex.from_texts(PASSAGES, tiny_encoder(0), ids=IDS, show_progress=False)
    backend = MilvusBackend.create(MilvusClient(str(tmp_path / "m.db")), "docs", index.dim, metric="IP")
    backend.upsert(StoreRows(IDS, index.embeddings.numpy(), PASSAGES, [{} for _ in IDS]))
    models = [RAGSequence(tiny_encoder(0), source, tiny.tiny_tokenizer(), tiny.tiny_generator(seed=0, hidden=32),
                          num_docs=3) for source in (index, backend)]
    answers = [a for _, a, _ in QA]
    outputs = [m(questions=QUESTIONS, answers=answers) for m in models]
    assert [[p.id for p in row] for row in outputs[0].passages] == [[p.id for p in row] for row in outputs[1].passages]
    assert outputs[0].loss.item() == pytest.approx(outputs[1].loss.item(), abs=1e-6)
    for out in outputs:
        out.loss.backward()
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None} for m in models]
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("question_encoder") for n in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-6, rtol=1e-5, msg=name)
    assert [a.text for a in models[0].generate(questions=QUESTIONS[:2], max_new_tokens=3)] == \
        [a.text for a in models[1].generate(questions=QUESTIONS[:2], max_new_tokens=3)]


# ----------------------------------------------------------------------------- LangChain
@pytest.fixture
def lc_store():
    from langchain_core.vectorstores import InMemoryVectorStore

    from contextflow_integrations.langchain import ContextFlowEmbeddings

    store = InMemoryVectorStore(ContextFlowEmbeddings(tiny_encoder(0)))
    store.add_texts(PASSAGES, ids=IDS, metadatas=[{"title": f"T{i}"} for i in range(len(IDS))])
    return store


def test_langchain_in_place_trains_the_question_side_and_leaves_the_store_alone(lc_store):
    from langchain_core.vectorstores import InMemoryVectorStore

    from contextflow_integrations.langchain import ContextFlowEmbeddings, finetune_from_vectorstore

    stored = {i: list(r["vector"]) for i, r in lc_store.store.items()}
    encoder = tiny_encoder(0)
    start = _params(encoder)
    result = finetune_from_vectorstore(lc_store, QA, encoder=encoder, mode="in_place", batch_size=4, num_docs=3,
                                       k=3, train_config=tiny_config(num_epochs=1, learning_rate=2e-2), **_parts())
    assert result.history.global_step == 2 and result.documents == []
    assert result.model.store is not None and result.model.store.count() == len(IDS)
    assert {i: list(r["vector"]) for i, r in lc_store.store.items()} == stored  # nothing re-embedded or written
    assert _changed(start, result.model.question_encoder)
    assert not _changed(start, result.model.context_encoder)  # the passage side is the frozen start
    embeddings = result.embeddings
    assert isinstance(embeddings, ContextFlowEmbeddings)
    assert embeddings.question_encoder is result.model.question_encoder
    np.testing.assert_allclose(embeddings.embed_documents([PASSAGES[2]])[0], stored[IDS[2]], atol=1e-5)
    # the unchanged store, its own retriever, the trained query side: the same top-k as ContextFlowRetriever
    unchanged = InMemoryVectorStore(embeddings)
    unchanged.store = lc_store.store
    for question in QUESTIONS:
        theirs = [d.id for d in unchanged.as_retriever(search_kwargs={"k": 3}).invoke(question)]
        ours = [d.id for d in result.retriever.invoke(question)]
        assert theirs == ours, question
    assert [d.id for d in lc_store.as_retriever(search_kwargs={"k": 3}).invoke(QUESTIONS[0])] != [] and \
        result.chain.invoke(QUESTIONS[0])["source_documents"]


def test_langchain_chroma_in_place_unchanged_store_ranks_like_contextflow():
    import chromadb
    from langchain_chroma import Chroma

    from contextflow_integrations.langchain import ContextFlowEmbeddings, finetune_from_vectorstore

    client, name = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False)), f"docs-{uuid.uuid4().hex[:8]}"
    store = Chroma(name, ContextFlowEmbeddings(tiny_encoder(0)), client=client,
                   collection_metadata={"hnsw:space": "ip"})
    store.add_texts(PASSAGES, ids=IDS)
    result = finetune_from_vectorstore(store, QA, encoder=tiny_encoder(0), mode="in_place", num_docs=3, k=3,
                                       train_config=tiny_config(num_epochs=1, learning_rate=2e-2), **_parts())
    unchanged = Chroma(name, result.embeddings, client=client)  # the same collection, the trained query side
    for question in QUESTIONS:
        assert [d.id for d in unchanged.as_retriever(search_kwargs={"k": 3}).invoke(question)] == \
            [d.id for d in result.retriever.invoke(question)], question


def test_in_place_refuses_a_store_embedded_by_another_model(lc_store):
    from contextflow_integrations.langchain import finetune_from_vectorstore

    with pytest.raises(ValueError, match="do not come from the passage encoder") as info:
        finetune_from_vectorstore(lc_store, QA, encoder=tiny_encoder(seed=7), mode="in_place",
                                  train_config=tiny_config(num_epochs=1), **_parts())
    assert "mode=\"copy\"" in str(info.value) and "tiny-bert" in str(info.value)  # the hint: the store's model
    # the copy path takes the same store with that encoder
    result = finetune_from_vectorstore(lc_store, QA, encoder=tiny_encoder(seed=7), mode="copy", num_docs=2,
                                       train_config=tiny_config(num_epochs=1, max_steps=1), **_parts())
    assert result.history.global_step == 1 and len(result.documents) == len(IDS)


def test_mode_and_copy_only_arguments_are_checked_by_name(lc_store):
    from contextflow_integrations.langchain import finetune_from_vectorstore

    with pytest.raises(ValueError, match=r"mode: expected one of \['copy', 'in_place'\]"):
        finetune_from_vectorstore(lc_store, QA, mode="inplace", **_parts())
    with pytest.raises(ValueError, match="filter, index_factory: only apply to mode='copy'"):
        finetune_from_vectorstore(lc_store, QA, mode="in_place", filter=lambda d: True, index_factory="HNSW32",
                                  **_parts())


def test_in_place_over_a_milvus_backend_and_the_store_model_as_the_start(tmp_path):
    from pymilvus import MilvusClient

    from contextflow_integrations.langchain import finetune_from_vectorstore
    from contextflow_integrations.stores import MilvusBackend

    encoder = tiny_encoder(0)
    backend = MilvusBackend.create(MilvusClient(str(tmp_path / "m.db")), "docs", encoder.dim, metric="IP",
                                   embedding_model=encoder.name)
    backend.upsert(StoreRows(IDS, encoder.encode(PASSAGES).numpy(), PASSAGES, [{} for _ in IDS]))
    result = finetune_from_vectorstore(backend, QA, encoder=encoder, mode="in_place", num_docs=3, k=3,
                                       train_config=tiny_config(num_epochs=1, learning_rate=2e-2), **_parts())
    for question in QUESTIONS[:4]:  # the app's own Milvus search with the handed-back query side
        q = result.embeddings.embed_query(question)
        hits = backend.client.search("docs", data=[q], limit=3, search_params={"metric_type": "IP"})
        assert [h["id"] for h in hits[0]] == [d.id for d in result.retriever.invoke(question)]


# ----------------------------------------------------------------------------- LlamaIndex
def test_llamaindex_in_place_and_asymmetric_embedding_rank_like_contextflow():
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import MetadataMode, TextNode

    from contextflow_integrations.llamaindex import ContextFlowEmbedding, finetune_from_index

    nodes = [TextNode(id_=i, text=t, metadata={"title": f"T{n}"}) for n, (i, t) in enumerate(zip(IDS, PASSAGES))]
    index = VectorStoreIndex(nodes, embed_model=ContextFlowEmbedding(tiny_encoder(0)))
    stored = dict(index.vector_store.data.embedding_dict)
    qa = [(q, a, g) for q, a, g in QA]
    result = finetune_from_index(index, qa, encoder=tiny_encoder(0), mode="in_place", num_docs=3,
                                 train_config=tiny_config(num_epochs=1, learning_rate=2e-2), **_parts())
    assert result.history.global_step == 2 and result.retrieval_after is not None
    assert index.vector_store.data.embedding_dict == stored
    embed = result.embed_model
    assert isinstance(embed, ContextFlowEmbedding)
    as_embedded = nodes[0].get_content(metadata_mode=MetadataMode.EMBED)  # "title: T0\n\n<text>", as LlamaIndex did
    assert embed.get_text_embedding(as_embedded) == pytest.approx(stored[IDS[0]], abs=1e-5)
    assert embed.get_query_embedding(QUESTIONS[0]) != pytest.approx(stored[IDS[0]], abs=1e-3)
    for question in QUESTIONS:
        theirs = [n.node.node_id for n in index.as_retriever(similarity_top_k=3, embed_model=embed).retrieve(question)]
        assert theirs == [n.node.node_id for n in result.retriever.retrieve(question)][:3], question
    with pytest.raises(ValueError, match="nodes: only applies to mode='copy'"):
        finetune_from_index(index, qa, nodes=nodes, mode="in_place", **_parts())


def test_llamaindex_embedding_keeps_the_single_encoder_constructor():
    from contextflow_integrations.llamaindex import ContextFlowEmbedding

    encoder = tiny_encoder(0)
    embed = ContextFlowEmbedding(encoder)
    assert embed.get_query_embedding("a") == pytest.approx(embed.get_text_embedding("a"), abs=1e-6)
    with pytest.raises(ValueError, match="passage_encoder: expected dimension 16"):
        ContextFlowEmbedding(encoder, tiny.tiny_encoder(hidden=8))


# ----------------------------------------------------------------------------- the store's own model
@pytest.mark.embedded
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*HuggingFaceEmbeddings.*")
def test_store_embedding_model_becomes_the_starting_encoder():
    from langchain_community.embeddings import HuggingFaceEmbeddings
    from langchain_core.vectorstores import InMemoryVectorStore

    from contextflow_core.models.defaults import ENCODER_PACKAGE, _package_dir
    from contextflow_integrations.langchain import finetune_from_vectorstore
    from contextflow_integrations.stores import encoder_from_embeddings

    folder = str(_package_dir(ENCODER_PACKAGE) / "model")
    hf = HuggingFaceEmbeddings(model_name=folder)
    encoder = encoder_from_embeddings(hf)
    assert encoder.pooling == "mean" and encoder.normalize
    np.testing.assert_allclose(encoder.encode(PASSAGES[:3]).numpy(), np.asarray(hf.embed_documents(PASSAGES[:3])),
                               atol=1e-5)
    store = InMemoryVectorStore(hf)
    store.add_texts(PASSAGES, ids=IDS)
    result = finetune_from_vectorstore(store, QA, mode="in_place", num_docs=2,  # no encoder: the store's model
                                       train_config=tiny_config(num_epochs=1, max_steps=1), **_parts())
    assert result.model.question_encoder.name == folder and result.history.global_step == 1
    first = next(p for p in result.model.question_encoder.parameters())
    assert first.data_ptr() != next(p for p in hf.client.parameters()).data_ptr()  # a copy, never the store's


# ----------------------------------------------------------------------------- the example
@pytest.mark.embedded
def test_milvus_example_smoke_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "milvus_in_place.py"), "--smoke",
                          "--db", str(tmp_path / "docs.db")], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "passages re-embedded: 0" in out.stdout
    assert "unchanged retriever ranks exactly like ContextFlowRetriever: True" in out.stdout
