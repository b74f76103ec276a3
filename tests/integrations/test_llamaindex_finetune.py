"""finetune_from_index on real LlamaIndex indexes and stores (MockEmbedding, tiny models), QA formats, example.

Training runs are a few optimiser steps on tiny random models: they check the
plumbing (nodes in, trained model and LlamaIndex components out), not quality.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.base.response.schema import Response  # noqa: E402
from llama_index.core.bridge.pydantic import BaseModel, Field  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from llama_index.core.vector_stores.types import BasePydanticVectorStore, VectorStoreQueryResult  # noqa: E402
from llama_index.core.vector_stores.utils import node_to_metadata_dict  # noqa: E402

import tiny  # noqa: E402
from train_tiny import IDS, PASSAGES, QA, tiny_config, tiny_encoder, trainable_state  # noqa: E402

from contextflow_core.config import PromptConfig  # noqa: E402
from contextflow_integrations.llamaindex import (  # noqa: E402
    ContextFlowQueryEngine,
    ContextFlowRetriever,
    finetune_from_index,
    load_qa_pairs,
    nodes_from_index,
)
from contextflow_integrations.llamaindex.export import passages_from_nodes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHORT_PROMPT = PromptConfig(system_prompt=None, instruction="", user_format="{instruction}{passages}\n{question}",
                            passage_format="{text}", question_format="Q: {question}")


def _nodes() -> list[TextNode]:
    return [TextNode(id_=i, text=t, metadata={"title": f"Title {i}", "source": "test"}) for i, t in zip(IDS, PASSAGES)]


def _index(store=None) -> VectorStoreIndex:
    storage = StorageContext.from_defaults(vector_store=store) if store is not None else None
    return VectorStoreIndex(_nodes(), embed_model=MockEmbedding(embed_dim=8), storage_context=storage)


def _parts() -> dict:
    """Tiny models and a short prompt (byte-level tokens: prompt length is what training time scales with)."""
    return {"encoder": tiny_encoder(), "generator": tiny.tiny_generator(), "tokenizer": tiny.tiny_tokenizer(),
            "prompt": SHORT_PROMPT}


class InMemoryTextStore(BasePydanticVectorStore):
    """A minimal external store that keeps text and implements get_nodes (like Chroma, Qdrant, ...)."""

    stores_text: bool = True
    data: dict = Field(default_factory=dict)

    @property
    def client(self):
        return None

    def add(self, nodes, **kwargs):
        for node in nodes:
            self.data[node.node_id] = node.model_copy()
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id, **kwargs):
        self.data = {k: n for k, n in self.data.items() if n.ref_doc_id != ref_doc_id}

    def query(self, query, **kwargs):
        def score(node):
            return -sum(a * b for a, b in zip(node.embedding, query.query_embedding))

        scored = sorted(self.data.values(), key=score)
        top = scored[: query.similarity_top_k]
        return VectorStoreQueryResult(nodes=top, ids=[n.node_id for n in top], similarities=[1.0] * len(top))

    def get_nodes(self, node_ids=None, filters=None):
        return [n for k, n in self.data.items() if node_ids is None or k in node_ids]


class OpaqueStore(InMemoryTextStore):
    """A text-keeping store that cannot list its nodes."""

    def get_nodes(self, node_ids=None, filters=None):
        raise NotImplementedError("get_nodes not implemented")


class EmbeddingQAFinetuneDataset(BaseModel):
    """The layout of llama-index-finetuning's class of this name (not a dependency here)."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, list[str]]
    mode: str = "text"


def _layout() -> EmbeddingQAFinetuneDataset:
    return EmbeddingQAFinetuneDataset(queries={f"q{i}": q for i, (q, _, _) in enumerate(QA)},
                                      corpus=dict(zip(IDS, PASSAGES)),
                                      relevant_docs={f"q{i}": g for i, (_, _, g) in enumerate(QA)})


ANSWERS = {f"q{i}": a for i, (_, a, _) in enumerate(QA)}


# ----------------------------------------------------------------------------- end to end
def test_finetune_from_a_vector_store_index_returns_a_trained_model_and_working_components():
    index = _index()
    parts = _parts()
    start = {**trainable_state(parts["encoder"]), **trainable_state(parts["generator"])}
    result = finetune_from_index(index, QA, **parts, train_config=tiny_config(num_epochs=2), num_docs=3,
                                 query_engine_kwargs={"max_new_tokens": 4})
    assert sorted(result.model.index.ids) == sorted(IDS)
    assert result.model.index.get("p3").title == "Title p3" and result.model.index.get("p3").text == PASSAGES[3]
    assert result.history.global_step == 4 and result.history.stop_reason == "completed"
    end = {**trainable_state(parts["encoder"]), **trainable_state(parts["generator"])}
    assert all(not (start[n] == end[n]).all() for n in start), "every trainable parameter should change"
    assert result.retrieval_before["num_questions"] == 8 and result.retrieval_after["k"] == 3

    assert isinstance(result.query_engine, ContextFlowQueryEngine)
    response = result.query_engine.query(QA[0][0])
    assert isinstance(response, Response) and isinstance(response.response, str)
    assert len(response.source_nodes) == 3 and {n.node_id for n in response.source_nodes} <= set(IDS)
    assert sum(n.score for n in response.source_nodes) == pytest.approx(1.0, abs=1e-4)
    assert isinstance(result.retriever, ContextFlowRetriever)
    assert [n.node_id for n in result.retriever.retrieve(QA[0][0])] == \
        result.model.index.search(result.model.question_encoder.encode([QA[0][0]]), 3).ids[0]
    assert isinstance(result.llm(max_new_tokens=3).complete("Hi").text, str)
    assert len(nodes_from_index(index)) == 6  # the user's index is untouched


def test_text_keeping_store_is_read_through_get_nodes_and_the_id_layout_trains():
    store = InMemoryTextStore()
    index = _index(store)
    assert index.docstore.docs == {}  # the nodes live only in the store
    assert sorted(n.node_id for n in nodes_from_index(store)) == sorted(IDS)
    result = finetune_from_index(index, _layout(), answers=ANSWERS, **_parts(), num_docs=2,
                                 train_config=tiny_config(num_epochs=1, max_steps=1),
                                 query_engine_kwargs={"max_new_tokens": 3})
    assert sorted(result.model.index.ids) == sorted(IDS) and result.history.global_step == 1
    assert [e.gold_ids for e in result.examples] == [g for _, _, g in QA]
    assert [e.answer for e in result.examples] == [a for _, a, _ in QA]
    assert len(result.query_engine.query(QA[1][0]).source_nodes) == 2


def test_without_an_index_the_layouts_corpus_is_the_collection(tmp_path):
    layout = _layout().model_dump()
    layout["relevant_docs"]["q0"] = ["p0", "missing-node"]
    layout["answers"] = ANSWERS
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(layout))
    with pytest.warns(UserWarning, match="1 of 7 gold ids are not node ids"):
        result = finetune_from_index(None, path, **_parts(), num_docs=2, train_config=tiny_config(max_steps=1))
    assert sorted(result.model.index.ids) == sorted(IDS)
    assert result.examples[0].gold_ids == ["p0", "missing-node"]


def test_a_store_that_cannot_list_nodes_names_itself_and_nodes_is_the_way_out():
    store = OpaqueStore()
    index = _index(store)
    with pytest.raises(ValueError, match=r"could not pull the nodes out of a OpaqueStore: OpaqueStore\.get_nodes\(\) "
                                         r"failed \(NotImplementedError.*nodes=\[\.\.\.\]"):
        finetune_from_index(index, QA, **_parts())
    result = finetune_from_index(None, QA, nodes=_nodes(), **_parts(), num_docs=2,
                                 train_config=tiny_config(max_steps=1))
    assert sorted(result.model.index.ids) == sorted(IDS)


# ----------------------------------------------------------------------------- pulling nodes
def test_default_index_from_documents_is_read_from_its_docstore():
    docs = [Document(text=t, metadata={"title": f"Doc {i}"}) for i, t in enumerate(PASSAGES)]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    other = VectorStoreIndex.from_documents([Document(text="Unrelated.")], embed_model=MockEmbedding(embed_dim=8),
                                            storage_context=index.storage_context)  # shares the docstore
    nodes = nodes_from_index(index)
    assert [n.node_id for n in nodes] == list(index.index_struct.nodes_dict.values())
    passages = passages_from_nodes(nodes)
    assert sorted(p.text for p in passages) == sorted(PASSAGES)
    assert {p.title for p in passages} == {f"Doc {i}" for i in range(6)}
    assert [p.text for p in passages_from_nodes(nodes_from_index(other))] == ["Unrelated."]


def test_bare_simple_vector_store_keeps_no_text_and_says_so():
    with pytest.raises(ValueError, match=r"a SimpleVectorStore: SimpleVectorStore keeps no text\. Pass the nodes "
                                         r"yourself with nodes=\[\.\.\.\]"):
        nodes_from_index(_index().vector_store)


def _chroma_like():
    class Collection:
        def get(self, include):
            nodes = _nodes()
            metas = [{**node_to_metadata_dict(n, remove_text=True, flat_metadata=True), "__index_id__": "x"}
                     for n in nodes]
            return {"ids": [n.node_id for n in nodes], "documents": [n.text for n in nodes], "metadatas": metas}

    class ChromaVectorStore(OpaqueStore):
        _collection: object = None

    store = ChromaVectorStore()
    store._collection = Collection()
    return store


def _qdrant_like():
    class Client:
        def scroll(self, collection_name, limit, offset, with_payload, with_vectors):
            start = offset or 0
            points = [SimpleNamespace(payload=node_to_metadata_dict(n, remove_text=False, flat_metadata=False))
                      for n in _nodes()[start : start + 4]]
            return points, (start + 4 if start + 4 < 6 else None)

    class QdrantVectorStore(OpaqueStore):
        collection_name: str = "docs"

        @property
        def client(self):
            return Client()

    return QdrantVectorStore()


@pytest.mark.parametrize("make_store", [_chroma_like, _qdrant_like], ids=["chroma", "qdrant"])
def test_stores_without_get_nodes_fall_back_to_their_native_client(make_store):
    nodes = nodes_from_index(make_store())
    passages = passages_from_nodes(nodes)
    assert [(p.id, p.text, p.title) for p in passages] == [(i, t, f"Title {i}") for i, t in zip(IDS, PASSAGES)]
    assert "__index_id__" not in passages[0].metadata


def test_nodes_and_index_together_or_model_and_parts_together_are_refused():
    with pytest.raises(ValueError, match="index_or_vector_store, nodes: expected one source of nodes, got both"):
        finetune_from_index(_index(), QA, nodes=_nodes())
    with pytest.raises(ValueError, match="model, encoder: pass a RAGSequence or its parts, not both"):
        finetune_from_index(None, QA, nodes=_nodes(), model=object(), encoder=tiny_encoder())
    with pytest.raises(ValueError, match="generator, tokenizer: expected both"):
        finetune_from_index(None, QA, nodes=_nodes(), encoder=tiny_encoder(), generator=tiny.tiny_generator())


# ----------------------------------------------------------------------------- QA formats
def test_qa_pairs_as_tuples_dicts_and_jsonl(tmp_path):
    from_tuples = load_qa_pairs(QA)
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a, "gold_ids": g}) + "\n" for q, a, g in QA))
    for examples in (from_tuples, load_qa_pairs([{"question": q, "answer": a, "gold_ids": g} for q, a, g in QA]),
                     load_qa_pairs(path)):
        assert [(e.question, e.answer, e.gold_ids) for e in examples] == [(q, a, g) for q, a, g in QA]


def test_id_layout_takes_answers_from_the_argument_the_layout_or_the_queries():
    by_argument = load_qa_pairs(_layout(), answers=ANSWERS)
    own = load_qa_pairs({**_layout().model_dump(), "answers": ANSWERS})
    inline = load_qa_pairs({"queries": {f"q{i}": {"question": q, "answer": a} for i, (q, a, _) in enumerate(QA)}})
    pairs = load_qa_pairs({"queries": {f"q{i}": (q, a) for i, (q, a, _) in enumerate(QA)}})
    for examples in (by_argument, own, inline, pairs):
        assert [(e.question, e.answer) for e in examples] == [(q, a) for q, a, _ in QA]
    assert by_argument[2].metadata == {"query_id": "q2"} and by_argument[2].gold_ids == ["p2"]
    assert inline[0].gold_ids == []


def test_query_response_dataset_is_accepted_alone_or_as_the_answers():
    from llama_index.core.evaluation import QueryResponseDataset

    with pytest.warns(DeprecationWarning):
        responses = QueryResponseDataset(queries=_layout().queries, responses=ANSWERS)
    assert [e.answer for e in load_qa_pairs(responses)] == [a for _, a, _ in QA]
    assert [e.answer for e in load_qa_pairs(_layout(), answers=responses)] == [a for _, a, _ in QA]


def test_id_layout_without_answers_lists_the_queries_and_the_way_out():
    with pytest.raises(ValueError, match=r"answers: no answer for 8 of 8 queries \(ids \['q0', 'q1', 'q2', 'q3', "
                                         r"'q4'\]\).*pass answers=\{query_id: answer\}"):
        load_qa_pairs(_layout())
    with pytest.raises(ValueError, match=r"answers: no answer for 1 of 8 queries \(ids \['q7'\]\)"):
        load_qa_pairs(_layout(), answers={k: v for k, v in ANSWERS.items() if k != "q7"})


def test_answers_with_rows_that_carry_their_own_is_refused():
    with pytest.raises(ValueError, match="answers: only used with the id-keyed layout"):
        load_qa_pairs(QA, answers=ANSWERS)
    with pytest.raises(ValueError, match="answers: expected a mapping"):
        load_qa_pairs(_layout(), answers=["Zorblat"])


# ----------------------------------------------------------------------------- example
def test_example_script_runs_on_tiny_models_in_under_a_minute():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    script = ROOT / "examples" / "llamaindex_finetune_query_engine.py"
    done = subprocess.run([sys.executable, str(script), "--entities", "3", "--epochs", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"pulled \d+ nodes; trained \d+ steps", done.stdout), done.stdout
    assert "p(z|x,y)" in done.stdout and "retrieved [" in done.stdout and "done in" in done.stdout
    assert elapsed < 60, f"example took {elapsed:.0f} s"
