"""Concurrent adapter calls share batched `generate` calls (the model's RequestBatcher), answers unchanged.

LangChain `ContextFlowRAG.ainvoke` / `invoke` from 16 tasks or threads and LlamaIndex
`ContextFlowQueryEngine.aquery` from 16 tasks: the answers and sources of one call per
question, in fewer `generate` calls; `batching=False` gives one call each and the same answers;
traced calls are not batched; one bad input fails alone.
"""
import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from train_tiny import build_rag

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402

from contextflow_integrations.langchain import ContextFlowRAG  # noqa: E402
from contextflow_integrations.llamaindex import ContextFlowQueryEngine  # noqa: E402

QUESTIONS = [f"Question number {i}: what is the capital of Quenia?" if i % 2 else f"Where does river {i} flow?"
             for i in range(16)]


@pytest.fixture(scope="module")
def rag():
    return build_rag(num_docs=2)


@pytest.fixture(scope="module")
def sequential(rag):
    return [rag.generate(questions=[q], max_new_tokens=5, decoding="fast")[0] for q in QUESTIONS]


@pytest.fixture
def counted(rag, monkeypatch):
    """The number of questions of each `rag.generate` call."""
    calls = []
    original = type(rag).generate

    def generate(self, *args, **kwargs):
        calls.append(len(kwargs.get("questions") or args[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(rag), "generate", generate)
    return calls


def _check_chain(results, expected):
    assert [r["answer"] for r in results] == [a.text for a in expected]
    for r, a in zip(results, expected):
        assert [d.id for d in r["source_documents"]] == [p.id for p, _ in a.sources]
        assert [d.metadata["weight"] for d in r["source_documents"]] == \
            pytest.approx([w for _, w in a.sources], abs=1e-4)


def test_langchain_ainvoke_from_16_tasks_is_batched_with_the_sequential_answers(rag, sequential, counted):
    chain = ContextFlowRAG(model=rag, max_new_tokens=5, decoding="fast")

    async def many():
        return await asyncio.gather(*[chain.ainvoke(q) for q in QUESTIONS])

    _check_chain(asyncio.run(many()), sequential)
    assert sum(counted) == 16 and len(counted) < 16


def test_langchain_invoke_from_16_threads_is_batched(rag, sequential, counted):
    chain = ContextFlowRAG(model=rag, max_new_tokens=5, decoding="fast")
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(chain.invoke, QUESTIONS))
    _check_chain(results, sequential)
    assert sum(counted) == 16 and len(counted) < 16


def test_langchain_batching_off_is_one_call_per_invoke_with_the_same_answers(rag, sequential, counted):
    chain = ContextFlowRAG(model=rag, max_new_tokens=5, decoding="fast", batching=False)

    async def many():
        return await asyncio.gather(*[chain.ainvoke(q) for q in QUESTIONS[:6]])

    _check_chain(asyncio.run(many()), sequential[:6])
    assert counted == [1] * 6


class _Runs(BaseCallbackHandler):
    def __init__(self):
        self.llm_runs = 0

    def on_llm_start(self, *args, **kwargs):
        self.llm_runs += 1


def test_langchain_traced_calls_keep_their_runs_and_answers(rag, sequential, counted):
    chain = ContextFlowRAG(model=rag, max_new_tokens=5, decoding="fast")
    handler = _Runs()

    async def many():
        return await asyncio.gather(*[chain.ainvoke(q, config={"callbacks": [handler]}) for q in QUESTIONS[:3]])

    _check_chain(asyncio.run(many()), sequential[:3])
    assert counted == [1, 1, 1] and handler.llm_runs == 3 * 2  # one LLM run per passage prompt


def test_langchain_a_bad_input_fails_alone(rag, sequential):
    chain = ContextFlowRAG(model=rag, max_new_tokens=5, decoding="fast")

    async def many():
        inputs = QUESTIONS[:4] + [{"query": "wrong key"}]
        return await asyncio.gather(*[chain.ainvoke(q) for q in inputs], return_exceptions=True)

    results = asyncio.run(many())
    assert isinstance(results[4], ValueError) and "'question' key" in str(results[4])
    _check_chain(results[:4], sequential[:4])


def test_llamaindex_aquery_from_16_tasks_is_batched_with_the_sequential_answers(rag, sequential, counted):
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=5, decoding="fast")

    async def many():
        return await asyncio.gather(*[engine.aquery(q) for q in QUESTIONS])

    responses = asyncio.run(many())
    assert [str(r.response) for r in responses] == [a.text for a in sequential]
    for r, a in zip(responses, sequential):
        assert [n.node.node_id for n in r.source_nodes] == [p.id for p, _ in a.sources]
        assert [n.score for n in r.source_nodes] == pytest.approx([w for _, w in a.sources], abs=1e-4)
    assert sum(counted) == 16 and len(counted) < 16


def test_llamaindex_batching_off_or_observed_is_one_call_per_query(rag, sequential, counted):
    from llama_index.core.callbacks import CallbackManager, LlamaDebugHandler

    plain = ContextFlowQueryEngine(rag=rag, max_new_tokens=5, decoding="fast", batching=False)
    debug = LlamaDebugHandler()
    traced = ContextFlowQueryEngine(rag=rag, max_new_tokens=5, decoding="fast",
                                    callback_manager=CallbackManager([debug]))

    async def many(engine, questions):
        return await asyncio.gather(*[engine.aquery(q) for q in questions])

    for engine, questions in ((plain, QUESTIONS[:3]), (traced, QUESTIONS[3:6])):
        responses = asyncio.run(many(engine, questions))
        assert [str(r.response) for r in responses] == [a.text for a in sequential[QUESTIONS.index(questions[0]):][:3]]
    assert counted == [1] * 6 and len(debug.get_event_pairs("llm")) == 3 * 2


def test_llamaindex_aquery_from_16_tasks_reaches_the_batcher_together_whatever_the_loops_default_pool(
        rag, sequential, counted, monkeypatch):
    # The loop's default executor is capped at 2 threads here (it is min(32, CPUs + 4) normally: 6 on
    # 2 cores): aquery must not depend on it, or 16 concurrent queries would reach the batcher 2 at a time.
    from contextflow_core.serving import RequestBatcher

    with RequestBatcher(rag, max_batch_size=16, max_wait_ms=5000) as batcher:  # waits for all 16
        monkeypatch.setattr(type(rag), "batcher", lambda self, **kw: batcher)
        engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=5, decoding="fast")

        async def many():
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
            return await asyncio.gather(*[engine.aquery(q) for q in QUESTIONS])

        responses = asyncio.run(many())
    assert [str(r.response) for r in responses] == [a.text for a in sequential]
    assert counted == [16]
