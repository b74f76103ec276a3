"""16 concurrent calls on one model give the same answers as sequential calls, with no cross-talk."""
import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from train_tiny import build_rag

QUESTIONS = [f"Question number {i}: what is the capital of Quenia?" if i % 2 else f"Where does river {i} flow?"
             for i in range(16)]


@pytest.fixture(scope="module")
def rag():
    return build_rag(num_docs=2)


@pytest.fixture(scope="module")
def sequential(rag):
    return [rag.generate(questions=[q], max_new_tokens=5, decoding="fast")[0] for q in QUESTIONS]


def _key(answer):
    return answer.text, [(p.id, round(w, 4)) for p, w in answer.sources]


def test_threads_calling_generate_concurrently(rag, sequential):
    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(lambda q: rag.generate(questions=[q], max_new_tokens=5, decoding="fast")[0], QUESTIONS))
    assert [_key(a) for a in got] == [_key(a) for a in sequential]


def test_langchain_runnable_batch_and_abatch(rag, sequential):
    pytest.importorskip("langchain_core")
    from contextflow_integrations.langchain import ContextFlowRAG

    chain = ContextFlowRAG(model=rag, max_new_tokens=5, decoding="fast")
    expected = [a.text for a in sequential]
    batched = chain.batch(QUESTIONS, config={"max_concurrency": 16})
    assert [r["answer"] for r in batched] == expected

    async def many():
        return await asyncio.gather(*[chain.ainvoke(q) for q in QUESTIONS])

    assert [r["answer"] for r in asyncio.run(many())] == expected
    assert [r["answer"] for r in asyncio.run(chain.abatch(QUESTIONS))] == expected
    for r, a in zip(batched, sequential):
        assert [d.id for d in r["source_documents"]] == [p.id for p, _ in a.sources]


def test_llamaindex_engine_aquery(rag, sequential):
    pytest.importorskip("llama_index.core")
    from contextflow_integrations.llamaindex import ContextFlowQueryEngine

    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=5, decoding="fast")

    async def many():
        return await asyncio.gather(*[engine.aquery(q) for q in QUESTIONS])

    responses = asyncio.run(many())
    assert [str(r.response) for r in responses] == [a.text for a in sequential]
    for r, a in zip(responses, sequential):
        assert [n.node.node_id for n in r.source_nodes] == [p.id for p, _ in a.sources]
