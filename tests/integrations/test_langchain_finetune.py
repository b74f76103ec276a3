"""finetune_from_vectorstore on tiny models: the loss falls and the result plugs into LangChain."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

import torch  # noqa: E402

import tiny  # noqa: E402
from train_tiny import PASSAGES, QA, build_rag, tiny_config, tiny_encoder  # noqa: E402

from contextflow_integrations.langchain import (  # noqa: E402
    ChatContextFlow,
    ContextFlowRAG,
    ContextFlowRetriever,
    FinetuneResult,
    finetune_from_vectorstore,
    rag_from_vectorstore,
)

STORE_IDS = [f"doc-{i}" for i in range(len(PASSAGES))]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and far faster on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def store():
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    store.add_texts(PASSAGES, metadatas=[{"row": i} for i in range(len(PASSAGES))], ids=STORE_IDS)
    return store


def test_finetune_from_store_lowers_the_loss_and_returns_langchain_parts(store):
    questions, answers = [q for q, _, _ in QA], [a for _, a, _ in QA]
    model = build_rag(num_docs=2)
    loss_before = rag_from_vectorstore(store, model=model)(questions=questions, answers=answers).loss.item()
    result = finetune_from_vectorstore(store, QA, model=model, train_config=tiny_config(learning_rate=2e-2),
                                       batch_size=2, k=3, max_new_tokens=4)
    assert isinstance(result, FinetuneResult)
    losses = [r["loss"] for r in result.history.train]
    assert len(losses) == result.history.global_step == 12 and result.history.stop_reason == "completed"
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    assert result.model(questions=questions, answers=answers).loss.item() < 0.7 * loss_before
    assert sorted(result.model.index.ids) == sorted(STORE_IDS)
    assert result.model.generator is model.generator  # trained in place
    docs = result.retriever.invoke(QA[0][0])
    assert isinstance(result.retriever, ContextFlowRetriever) and len(docs) == 3
    assert all(d.id in STORE_IDS and d.page_content == PASSAGES[d.metadata["row"]] for d in docs)
    out = result.chain.invoke(QA[0][0])
    assert isinstance(result.chain, ContextFlowRAG) and len(out["source_documents"]) == 2
    assert isinstance(result.chat_model(max_tokens=3), ChatContextFlow)
    assert sorted(d.id for d in result.documents) == sorted(STORE_IDS)


def test_qa_pairs_from_dicts_and_jsonl_with_documents_and_max_steps(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a, _ in QA))
    docs = [Document(page_content=t, metadata={"title": f"T{i}"}) for i, t in enumerate(PASSAGES)]
    for qa in (path, [{"question": q, "answer": a} for q, a, _ in QA]):
        result = finetune_from_vectorstore(None, qa, documents=docs, ids=STORE_IDS, model=build_rag(num_docs=2),
                                           train_config=tiny_config(max_steps=2), batch_size=4)
        assert result.history.global_step == 2
        assert result.model.index.ids == STORE_IDS
        assert result.model.index.get("doc-1").title == "T1"


def test_parts_instead_of_a_model(store):
    result = finetune_from_vectorstore(store, QA[:2], encoder=tiny_encoder(), generator=tiny.tiny_generator(),
                                       tokenizer=tiny.tiny_tokenizer(), train_config=tiny_config(max_steps=1),
                                       num_docs=2)
    assert result.history.global_step == 1 and result.model.config.num_docs == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"documents": [Document(page_content="x")]}, "vectorstore, documents: expected one source of documents"),
    ({"encoder": "enc"}, "model, encoder: pass a RAGSequence or its parts, not both"),
])
def test_conflicting_arguments_are_refused(store, kwargs, message):
    with pytest.raises(ValueError, match=message):
        finetune_from_vectorstore(store, QA, model=build_rag(), **kwargs)


def test_bad_inputs_are_refused(store):
    with pytest.raises(ValueError, match="generator, tokenizer: expected both"):
        finetune_from_vectorstore(store, QA, encoder=tiny_encoder(), generator=tiny.tiny_generator())
    with pytest.raises(ValueError, match="vectorstore: expected a LangChain vector store"):
        finetune_from_vectorstore(None, QA, model=build_rag())
    with pytest.raises(ValueError, match="qa_pairs"):
        finetune_from_vectorstore(store, [], model=build_rag())
    with pytest.raises(TypeError, match="vectorstore: no exporter for dict.*documents="):
        finetune_from_vectorstore({"a": 1}, QA, model=build_rag())
