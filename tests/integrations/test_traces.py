"""Traces show the RAG path (issue 16 item 1): retrieval and every decoding pass, in both ecosystems.

LangChain: `ContextFlowRAG` runs seen by langchain-core's own `RunCollectorCallbackHandler`,
by `astream_events(version="v2")` and by a real OpenTelemetry pipeline
(openinference-instrumentation-langchain + opentelemetry-sdk's in-memory exporter).
LlamaIndex: `ContextFlowQueryEngine` seen by an event handler and a span handler on the
root instrumentation dispatcher, and by `LlamaDebugHandler` on the legacy callback manager.

Each trace is checked against the model itself: the priors against p(z|x) from
`RAGSequence.forward`, the prompts against the core `PromptBuilder`'s rendering of
f(x, z_k), the generated texts against HF `generate` on that prompt alone.
"""
from __future__ import annotations

import asyncio
import functools
import json

import pytest
import torch

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.tracers.run_collector import RunCollectorCallbackHandler  # noqa: E402
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler  # noqa: E402
from llama_index.core.schema import QueryBundle  # noqa: E402

from contextflow_integrations.langchain import ChatContextFlow, ContextFlowRAG  # noqa: E402
from contextflow_integrations.llamaindex import ContextFlowQueryEngine  # noqa: E402

# isort: split
# after the package imports: train_tiny puts the repository first on sys.path, and a run against
# another checkout (PYTHONPATH=/tmp/cf-old) must test that checkout's code
import tiny  # noqa: E402
from train_tiny import build_rag  # noqa: E402

Q = "What is the capital of Quenia?"
Q2 = "Which river flows through Tarsk?"
K = 3
NEW = 4


@functools.lru_cache(maxsize=None)
def _rag():
    return build_rag(num_docs=K)


@pytest.fixture
def rag():
    return _rag()


def _priors(rag, question):
    """p(z|x) and the passages, from the model's own forward pass."""
    with torch.no_grad(), rag.inference():
        out = rag(questions=[question])
    return out.doc_logprobs[0].exp().tolist(), out.passages[0]


def _prompt(rag, question, passages):
    """f(x, z) rendered by the core PromptBuilder, special tokens shown."""
    return rag.generator_tokenizer.decode(rag.prompts.encode(question, passages).input_ids, skip_special_tokens=False)


def _hf_text(rag, question, passages, max_new_tokens=NEW):
    """Greedy HF generate on the one prompt f(x, z): the text up to EOS."""
    ids = torch.tensor([rag.prompts.encode(question, passages).input_ids])
    with torch.no_grad():
        out = rag.generator.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=rag.generator_tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    new = new[: new.index(tiny.EOS)] if tiny.EOS in new else new
    return rag.generator_tokenizer.decode(new, skip_special_tokens=True).strip()


def _collect(chain, value, method="invoke"):
    collector = RunCollectorCallbackHandler()
    out = getattr(chain, method)(value, config={"callbacks": [collector]})
    return out, collector.traced_runs


# ----------------------------------------------------------------------------- LangChain
def test_rag_run_holds_a_retriever_run_with_priors_and_one_llm_run_per_passage_prompt(rag):
    chain = ContextFlowRAG(model=rag, max_new_tokens=NEW)
    out, runs = _collect(chain, Q)
    (run,) = runs
    assert run.name == "ContextFlowRAG" and run.run_type == "chain"
    kinds = [c.run_type for c in run.child_runs]
    assert kinds == ["retriever"] + ["llm"] * K
    retriever, llms = run.child_runs[0], run.child_runs[1:]
    assert all(c.parent_run_id == run.id for c in run.child_runs)
    priors, passages = _priors(rag, Q)
    docs = retriever.outputs["documents"]
    assert retriever.inputs == {"query": Q}
    assert [d.id for d in docs] == [p.id for p in passages]
    assert [d.page_content for d in docs] == [p.text for p in passages]
    assert [d.metadata["prior"] for d in docs] == pytest.approx(priors, abs=1e-5)
    answer = out["answer"]
    posterior = {d.id: d.metadata["weight"] for d in out["source_documents"]}
    for llm, passage, prior in zip(llms, passages, priors):
        assert llm.name == "ContextFlowLLM"
        assert llm.inputs["prompts"] == [_prompt(rag, Q, [passage])]  # the real f(x, z_k)
        generation = llm.outputs["generations"][0][0]
        assert generation["text"] == _hf_text(rag, Q, [passage])  # what the generator said under z_k
        info = generation["generation_info"]
        assert info["passage_id"] == passage.id and info["captured"] is True
        assert info["prior"] == pytest.approx(prior, abs=1e-5)
        assert info["posterior"] == pytest.approx(posterior[passage.id], abs=1e-6)
        assert info["chosen"] == (generation["text"] == answer)
        assert llm.outputs["llm_output"]["answer"] == answer
    score = rag.generate(questions=[Q], max_new_tokens=NEW)[0].score
    assert llms[0].outputs["llm_output"]["score"] == pytest.approx(score, abs=1e-4)


def test_concat_decoding_is_one_llm_run_whose_prompt_holds_all_k_passages(rag):
    out, (run,) = _collect(ContextFlowRAG(model=rag, max_new_tokens=NEW, decoding="concat"), Q)
    assert [c.run_type for c in run.child_runs] == ["retriever", "llm"]
    _, passages = _priors(rag, Q)
    llm = run.child_runs[1]
    assert llm.inputs["prompts"] == [_prompt(rag, Q, passages)]
    generation = llm.outputs["generations"][0][0]
    assert generation["text"] == out["answer"] == _hf_text(rag, Q, passages)
    assert generation["generation_info"]["passage_ids"] == [p.id for p in passages]


def test_beam_search_passes_are_rebuilt_from_the_retrieved_passages(rag):
    out, (run,) = _collect(ContextFlowRAG(model=rag, max_new_tokens=NEW, generate_kwargs={"num_beams": 2}), Q)
    _, passages = _priors(rag, Q)
    llms = run.child_runs[1:]
    assert [llm.inputs["prompts"] for llm in llms] == [[_prompt(rag, Q, [p])] for p in passages]
    infos = [llm.outputs["generations"][0][0] for llm in llms]
    assert all(g["generation_info"]["captured"] is False and g["text"] == out["answer"] for g in infos)


def test_micro_batched_decoding_reports_each_pass_with_its_own_rows():
    from contextflow_core.config import RagConfig

    rag = build_rag(num_docs=K, config=RagConfig(micro_batch_size=2))  # K = 3 prompts: passes of 2 and 1
    out, (run,) = _collect(ContextFlowRAG(model=rag, max_new_tokens=NEW), Q)
    _, passages = _priors(rag, Q)
    llms = run.child_runs[1:]
    assert [llm.outputs["llm_output"]["pass"] for llm in llms] == [0, 0, 1]
    assert [llm.inputs["prompts"][0] for llm in llms] == [_prompt(rag, Q, [p]) for p in passages]
    assert [llm.outputs["generations"][0][0]["generation_info"]["passage_id"] for llm in llms] == \
        [p.id for p in passages]
    assert [llm.outputs["generations"][0][0]["text"] for llm in llms] == [_hf_text(rag, Q, [p]) for p in passages]


def test_batch_nests_each_questions_steps_under_its_own_run(rag):
    outs, runs = _collect(ContextFlowRAG(model=rag, max_new_tokens=NEW), [Q, Q2], method="batch")
    assert [r.inputs["input"] for r in runs] == [Q, Q2]
    for run, question, out in zip(runs, [Q, Q2], outs):
        retriever, *llms = run.child_runs
        assert retriever.inputs == {"query": question} and len(llms) == K
        _, passages = _priors(rag, question)
        assert [llm.inputs["prompts"][0] for llm in llms] == [_prompt(rag, question, [p]) for p in passages]
        assert {llm.outputs["llm_output"]["answer"] for llm in llms} == {out["answer"]}


def test_a_plain_invoke_without_callbacks_is_one_generate_call(rag):
    chain = ContextFlowRAG(model=rag, max_new_tokens=NEW)
    assert chain.invoke(Q) == _collect(chain, Q)[0]  # traced or not, the same answer and sources


def test_astream_events_shows_retriever_and_llm_ends_inside_the_rag_run(rag):
    async def events():
        return [e async for e in ContextFlowRAG(model=rag, max_new_tokens=NEW).astream_events(Q, version="v2")]

    seen = asyncio.run(events())
    chain_id = next(e["run_id"] for e in seen if e["event"] == "on_chain_start")
    names = [e["event"] for e in seen]
    assert names[0] == "on_chain_start" and names[-1] == "on_chain_end"
    retriever_end = [e for e in seen if e["event"] == "on_retriever_end"]
    llm_ends = [e for e in seen if e["event"] == "on_llm_end"]
    assert len(retriever_end) == 1 and len(llm_ends) == K
    assert all(e["parent_ids"] == [chain_id] for e in retriever_end + llm_ends)
    docs = retriever_end[0]["data"]["output"]  # the documents themselves
    assert len(docs) == K and all("prior" in d.metadata for d in docs)


def test_chat_model_shows_its_own_chat_model_run():
    chat = ChatContextFlow(generator=tiny.tiny_generator(), tokenizer=tiny.tiny_tokenizer(), max_tokens=3)
    message, (run,) = _collect(chat, "hi")
    assert run.run_type == "llm" and run.name == "ChatContextFlow" and run.inputs == {"prompts": ["Human: hi"]}
    assert run.outputs["generations"][0][0]["message"]["kwargs"]["content"] == message.content

    async def events():
        return [e async for e in chat.astream_events("hi", version="v2")]

    seen = asyncio.run(events())
    assert [e["event"] for e in seen if "stream" not in e["event"]] == ["on_chat_model_start", "on_chat_model_end"]
    assert seen[-1]["data"]["output"].content == message.content


def test_opentelemetry_spans_nest_retriever_and_llm_under_the_chain_with_documents(rag):
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        ContextFlowRAG(model=rag, max_new_tokens=NEW).invoke(Q)  # no callbacks passed: the instrumentor's tracer
    finally:
        instrumentor.uninstrument()
    spans = exporter.get_finished_spans()
    kind = "openinference.span.kind"
    (chain,) = [s for s in spans if s.attributes[kind] == "CHAIN"]
    (retriever,) = [s for s in spans if s.attributes[kind] == "RETRIEVER"]
    llms = [s for s in spans if s.attributes[kind] == "LLM"]
    assert chain.name == "ContextFlowRAG" and chain.parent is None and len(llms) == K
    assert all(s.parent.span_id == chain.context.span_id for s in [retriever, *llms])
    priors, passages = _priors(rag, Q)
    for i, (passage, prior) in enumerate(zip(passages, priors)):
        assert retriever.attributes[f"retrieval.documents.{i}.document.content"] == passage.text
        metadata = json.loads(retriever.attributes[f"retrieval.documents.{i}.document.metadata"])
        assert metadata["prior"] == pytest.approx(prior, abs=1e-5)
    assert [s.attributes["llm.prompts"][0] for s in llms] == [_prompt(rag, Q, [p]) for p in passages]
    exporter.clear()
    ContextFlowRAG(model=rag, max_new_tokens=NEW).invoke(Q)
    assert exporter.get_finished_spans() == ()  # uninstrumented: nothing more recorded


# ----------------------------------------------------------------------------- LlamaIndex
class Events(BaseEventHandler):
    """Records the instrumentation events it sees."""

    seen: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Events"

    def handle(self, event, **kwargs) -> None:
        self.seen.append(event)


@pytest.fixture
def instrumentation():
    events, spans = Events(seen=[]), SimpleSpanHandler()
    root = get_dispatcher()
    root.add_event_handler(events)
    root.add_span_handler(spans)
    yield events.seen, spans
    root.event_handlers.remove(events)
    root.span_handlers.remove(spans)


def _span_name(span_id):
    return span_id.rsplit("-", 5)[0] if span_id else None


def test_query_engine_events_carry_nodes_by_prior_and_the_real_prompts_and_texts(rag, instrumentation):
    seen, spans = instrumentation
    response = ContextFlowQueryEngine(rag=rag, max_new_tokens=NEW).query(Q)
    names = [type(e).__name__ for e in seen]
    assert names == ["QueryStartEvent", "RetrievalStartEvent", "RetrievalEndEvent"] + \
        ["LLMCompletionStartEvent"] * K + ["LLMCompletionEndEvent"] * K + ["QueryEndEvent"]
    priors, passages = _priors(rag, Q)
    retrieval_end = seen[2]
    assert [n.node_id for n in retrieval_end.nodes] == [p.id for p in passages]
    assert [n.score for n in retrieval_end.nodes] == pytest.approx(priors, abs=1e-5)
    starts, ends = seen[3:3 + K], seen[3 + K:3 + 2 * K]
    assert [e.prompt for e in starts] == [e.prompt for e in ends] == [_prompt(rag, Q, [p]) for p in passages]
    assert [e.response.text for e in ends] == [_hf_text(rag, Q, [p]) for p in passages]
    assert all(e.response.additional_kwargs["answer"] == response.response for e in ends)
    assert [e.response.additional_kwargs["passage_id"] for e in ends] == [p.id for p in passages]
    # spans: retrieve and synthesize inside query; the events inside their step's span
    assert [_span_name(e.span_id) for e in seen[1:3]] == ["ContextFlowQueryEngine.retrieve"] * 2
    assert {_span_name(e.span_id) for e in starts + ends} == {"ContextFlowQueryEngine.synthesize"}
    by_id = {s.id_: s for s in spans.completed_spans}

    def ancestors(span_id):
        while span_id is not None:
            span_id = by_id[span_id].parent_id
            yield span_id

    assert seen[0].span_id in set(ancestors(seen[1].span_id)) & set(ancestors(starts[0].span_id))


def test_llama_debug_handler_sees_query_retrieve_and_llm_events(rag):
    debug = LlamaDebugHandler()
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=NEW, callback_manager=CallbackManager([debug]))
    response = engine.query(Q)
    (retrieve,) = debug.get_event_pairs(CBEventType.RETRIEVE)
    llm = debug.get_event_pairs(CBEventType.LLM)
    assert len(debug.get_event_pairs(CBEventType.QUERY)) == 1 and len(llm) == K
    priors, passages = _priors(rag, Q)
    nodes = retrieve[1].payload[EventPayload.NODES]
    assert [n.node_id for n in nodes] == [p.id for p in passages]
    assert [n.score for n in nodes] == pytest.approx(priors, abs=1e-5)
    assert [pair[0].payload[EventPayload.PROMPT] for pair in llm] == [_prompt(rag, Q, [p]) for p in passages]
    completions = [pair[1].payload[EventPayload.COMPLETION] for pair in llm]
    assert {c.additional_kwargs["answer"] for c in completions} == {response.response}


def test_streaming_concat_reports_its_one_pass_inside_synthesize(rag, instrumentation):
    seen, _ = instrumentation
    response = ContextFlowQueryEngine(rag=rag, max_new_tokens=NEW, decoding="concat", streaming=True).query(Q)
    text = "".join(response.response_gen)
    _, passages = _priors(rag, Q)
    (start,) = [e for e in seen if type(e).__name__ == "LLMCompletionStartEvent"]
    (end,) = [e for e in seen if type(e).__name__ == "LLMCompletionEndEvent"]
    assert start.prompt == _prompt(rag, Q, passages) and end.response.text == text.strip()
    assert _span_name(end.span_id) == "ContextFlowQueryEngine.synthesize"


def test_synthesize_refuses_nodes_that_are_not_its_retrieval(rag):
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=NEW)
    nodes = engine.retrieve(QueryBundle(Q))
    assert engine.synthesize(QueryBundle(Q), nodes).response == engine.query(Q).response
    other = engine.retrieve(QueryBundle("Quenia exports blue salt, heron emblem"))
    if {n.node_id for n in other} == {n.node_id for n in nodes}:
        other = other[:-1]
    with pytest.raises(ValueError, match=r"nodes: expected the nodes retrieve\(query_bundle\) returns"):
        engine.synthesize(QueryBundle(Q), other)
    with pytest.raises(ValueError, match="additional_source_nodes: expected none, got 1"):
        engine.synthesize(QueryBundle(Q), nodes, additional_source_nodes=nodes[:1])
