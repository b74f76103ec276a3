"""LlamaIndex adapters on tiny random models: retriever, query engine, LLM, node conversion, isolation.

Each component is called through LlamaIndex's own entry points (`retrieve`,
`query`, `aquery`, `complete`, `stream_complete`, `chat`) and checked against the
core model it wraps.
"""
from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse  # noqa: E402
from llama_index.core.base.response.schema import (  # noqa: E402
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402

import tiny  # noqa: E402
from train_tiny import IDS, PASSAGES, build_rag  # noqa: E402

from contextflow_core.config import PromptConfig  # noqa: E402
from contextflow_core.rag import RAGSequence  # noqa: E402
from contextflow_core.retrieval import DocumentIndex  # noqa: E402
from contextflow_core.types import Passage  # noqa: E402
from contextflow_integrations.llamaindex import (  # noqa: E402
    ContextFlowLLM,
    ContextFlowQueryEngine,
    ContextFlowRetriever,
    node_to_passage,
    passage_to_node,
    to_vector_store_index,
)

ROOT = Path(__file__).resolve().parents[2]
Q = "What is the capital of Quenia?"


@functools.lru_cache(maxsize=None)
def _rag() -> RAGSequence:
    short = PromptConfig(system_prompt=None, instruction="", user_format="{instruction}{passages}\n{question}",
                         passage_format="{text}", question_format="Q: {question}")
    return build_rag(num_docs=3, prompt=short)


@pytest.fixture
def rag() -> RAGSequence:
    return _rag()


class Collect(BaseEventHandler):
    """Records the class names of the instrumentation events it sees."""

    names: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Collect"

    def handle(self, event, **kwargs) -> None:
        self.names.append(type(event).__name__)


@pytest.fixture
def events():
    handler = Collect(names=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler.names
    root.event_handlers.remove(handler)


# ----------------------------------------------------------------------------- isolation
def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_core_never_imports_llama_index_and_the_adapter_names_the_extra_when_missing():
    done = _run("import sys; sys.modules['llama_index'] = None; sys.modules['llama_index.core'] = None\n"
                "import contextflow_core, contextflow_core.rag\n"
                "print('core ok')\n"
                "import contextflow_integrations.llamaindex as li\n"
                "try:\n    li.ContextFlowQueryEngine\nexcept ImportError as e:\n    print(e)")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "core ok"
    assert "pip install 'contextflow[llamaindex]'" in lines[1]


# ----------------------------------------------------------------------------- conversion
def test_passage_node_round_trip_keeps_id_text_title_and_json_metadata():
    passage = Passage(id="p7", text="Tarsk was founded in 1204.", title="Tarsk", metadata={"year": 1204})
    node = passage_to_node(passage)
    assert (node.node_id, node.text, node.metadata) == ("p7", passage.text, {"year": 1204, "title": "Tarsk"})
    back = node_to_passage(NodeWithScore(node=node, score=0.3))
    assert (back.id, back.text, back.title, back.metadata) == ("p7", passage.text, "Tarsk", node.metadata)
    odd = node_to_passage(TextNode(id_="x", text="t", metadata={"ok": [1, 2], "pair": (3, 4)}))
    assert odd.metadata == {"ok": [1, 2], "pair": [3, 4]} and odd.title is None  # converted, not dropped
    with pytest.raises(ValueError, match=r"metadata: passage 'x', key metadata\['bad'\]"):  # refused, not dropped
        node_to_passage(TextNode(id_="x", text="t", metadata={"ok": [1, 2], "bad": object()}))


def test_node_to_passage_rejects_non_nodes():
    with pytest.raises(ValueError, match="nodes: expected LlamaIndex nodes .* got str"):
        node_to_passage("a text")


# ----------------------------------------------------------------------------- retriever
def test_retriever_returns_passages_as_nodes_with_index_scores(rag):
    nodes = ContextFlowRetriever(rag, similarity_top_k=2).retrieve(Q)
    expected = rag.index.search(rag.question_encoder.encode([Q]), 2)
    assert [n.node_id for n in nodes] == expected.ids[0]
    assert [n.score for n in nodes] == pytest.approx(expected.scores[0].tolist(), rel=1e-5)
    assert all(isinstance(n.node, TextNode) and n.node.text == PASSAGES[IDS.index(n.node_id)] for n in nodes)


def test_retriever_defaults_to_num_docs_caps_at_corpus_and_matches_async(rag):
    assert len(ContextFlowRetriever(rag).retrieve(QueryBundle(Q))) == 3
    big = ContextFlowRetriever(rag, similarity_top_k=50)
    nodes = big.retrieve(Q)
    assert sorted(n.node_id for n in nodes) == sorted(IDS)
    scores = [n.score for n in nodes]
    assert scores == sorted(scores, reverse=True)
    again = asyncio.run(big.aretrieve(Q))
    assert [(n.node_id, n.score) for n in again] == [(n.node_id, n.score) for n in nodes]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_retriever_rejects_bad_top_k(rag, bad):
    with pytest.raises(ValueError, match="similarity_top_k: expected a positive integer"):
        ContextFlowRetriever(rag, similarity_top_k=bad)


def test_retriever_rejects_non_models():
    with pytest.raises(ValueError, match="model: expected a RAGSequence or a contextflow Retriever, got str"):
        ContextFlowRetriever("rag")


# ----------------------------------------------------------------------------- query engine
def _check_sources(response, answer):
    assert [n.node_id for n in response.source_nodes] == [p.id for p, _ in answer.sources]
    weights = [n.score for n in response.source_nodes]
    assert weights == pytest.approx([w for _, w in answer.sources], abs=1e-6)
    assert weights == sorted(weights, reverse=True) and sum(weights) == pytest.approx(1.0, abs=1e-4)


def test_query_returns_the_rag_answer_with_posterior_weighted_source_nodes(rag):
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=4)
    response = engine.query(Q)
    answer = rag.generate(questions=[Q], max_new_tokens=4, decoding="thorough")[0]
    assert isinstance(response, Response) and response.response == answer.text
    _check_sources(response, answer)
    assert response.metadata["decoding"] == "thorough" and response.metadata["num_docs"] == 3
    assert response.metadata["score"] == pytest.approx(answer.score, rel=1e-5)


@pytest.mark.asyncio
async def test_aquery_gives_the_same_answer_as_query(rag):
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=4, decoding="fast", num_docs=2)
    sync, async_ = engine.query(Q), await engine.aquery(Q)
    assert async_.response == sync.response
    assert [(n.node_id, n.score) for n in async_.source_nodes] == [(n.node_id, n.score) for n in sync.source_nodes]
    assert len(sync.source_nodes) == 2
    direct = await engine.acustom_query(Q)
    assert isinstance(direct, Response) and direct.response == sync.response


def test_query_fires_the_built_in_engines_instrumentation_events(rag, events):
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=2)
    # the query brackets its steps (issue 16: retrieval and LLM events inside; see tests/integrations/test_traces.py)
    steps = ["RetrievalStartEvent", "RetrievalEndEvent"] + ["LLMCompletionStartEvent"] * 3 + \
        ["LLMCompletionEndEvent"] * 3
    engine.query(Q)
    assert events == ["QueryStartEvent", *steps, "QueryEndEvent"]
    events.clear()
    asyncio.run(engine.aquery(Q))
    assert events == ["QueryStartEvent", *steps, "QueryEndEvent"]
    events.clear()
    ContextFlowRetriever(rag).retrieve(Q)
    assert events == ["RetrievalStartEvent", "RetrievalEndEvent"]


def test_streaming_thorough_yields_the_final_answer_with_sources_up_front(rag):
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=4, streaming=True)
    response = engine.query(Q)
    assert isinstance(response, StreamingResponse) and len(response.source_nodes) == 3
    answer = rag.generate(questions=[Q], max_new_tokens=4)[0]
    assert "".join(response.response_gen) == answer.text
    _check_sources(response, answer)


def test_streaming_concat_streams_tokens_and_fills_sources_at_the_end(rag):
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=6, decoding="concat", streaming=True)
    response = engine.query(Q)
    assert isinstance(response, StreamingResponse) and response.source_nodes == []
    tokens = list(response.response_gen)
    answer = rag.generate(questions=[Q], max_new_tokens=6, decoding="concat")[0]
    assert "".join(tokens).strip() == answer.text
    _check_sources(response, answer)
    assert response.metadata["score"] == pytest.approx(answer.score, rel=1e-5)


@pytest.mark.asyncio
async def test_async_streaming_returns_an_async_streaming_response(rag):
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=5, decoding="concat", streaming=True)
    response = await engine.aquery(Q)
    assert isinstance(response, AsyncStreamingResponse)
    text = "".join([t async for t in response.async_response_gen()])
    assert text.strip() == rag.generate(questions=[Q], max_new_tokens=5, decoding="concat")[0].text
    assert len(response.source_nodes) == 3


def test_streaming_surfaces_generation_errors_in_the_consumer(rag):
    engine = ContextFlowQueryEngine(rag=rag, decoding="concat", streaming=True, generate_kwargs={"num_beams": 2})
    with pytest.raises(ValueError, match="beam"):  # HF refuses streamers with beam search, in the thread
        list(engine.query(Q).response_gen)


def test_query_engine_repr_leaves_the_model_out(rag):
    text = repr(ContextFlowQueryEngine(rag=rag, max_new_tokens=5))
    assert "max_new_tokens=5" in text and "LlamaForCausalLM" not in text


def test_query_engine_validates_its_fields(rag):
    with pytest.raises(ValueError, match=r"decoding: expected one of \['concat', 'fast', 'thorough'\], got 'greedy'"):
        ContextFlowQueryEngine(rag=rag, decoding="greedy")
    with pytest.raises(ValueError, match="rag: expected a RAGSequence, got str"):
        ContextFlowQueryEngine(rag="model")


# ----------------------------------------------------------------------------- LLM
@pytest.fixture
def llm(rag) -> ContextFlowLLM:
    return ContextFlowLLM(rag, max_new_tokens=6)


def _greedy(rag, prompt: str, add_special_tokens: bool, n: int = 6) -> str:
    ids = rag.generator_tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)
    out = rag.generator.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tiny.PAD)
    return rag.generator_tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_llm_metadata_repr_and_dict(llm):
    meta = llm.metadata
    assert (meta.context_window, meta.num_output, meta.is_chat_model) == (1024, 6, False)
    assert meta.model_name == "LlamaForCausalLM"
    assert "max_new_tokens=6" in repr(llm) and "<tokenizer chat template>" in repr(llm)
    assert llm.to_dict()["max_new_tokens"] == 6 and llm.to_dict()["class_name"] == "ContextFlowLLM"


def test_complete_renders_the_chat_template_and_decodes_greedily(llm, rag, events):
    response = llm.complete("Hi there")
    assert isinstance(response, CompletionResponse)
    assert llm.completion_to_prompt("Hi there") == "<|user|>Hi there\n<|assistant|>"
    assert response.text == _greedy(rag, "<|user|>Hi there\n<|assistant|>", add_special_tokens=False)
    assert response.raw["completion_tokens"] <= 6
    assert "LLMCompletionStartEvent" in events and "LLMCompletionEndEvent" in events
    assert llm.complete("Hi there").text == response.text


def test_stream_complete_deltas_add_up_to_complete(llm):
    chunks = list(llm.stream_complete("Hi there"))
    assert chunks and all(isinstance(c, CompletionResponse) for c in chunks)
    assert "".join(c.delta for c in chunks) == chunks[-1].text == llm.complete("Hi there").text


def test_chat_comes_from_the_base_class_over_the_template(llm, rag):
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    response = llm.chat(messages)
    assert isinstance(response, ChatResponse) and response.message.role.value == "assistant"
    prompt = "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"
    assert llm.messages_to_prompt(messages) == prompt
    assert response.message.content == _greedy(rag, prompt, add_special_tokens=False)
    assert "".join(r.delta for r in llm.stream_chat(messages)) == response.message.content


def test_predict_renders_the_system_prompt_once(rag):
    from llama_index.core.prompts import PromptTemplate

    llm = ContextFlowLLM(rag, max_new_tokens=6, system_prompt="Be brief.")
    expected = _greedy(rag, "<|system|>Be brief.\n<|user|>Say hi\n<|assistant|>", add_special_tokens=False)
    assert llm.predict(PromptTemplate("Say {x}"), x="hi") == expected
    assert llm.complete("Say hi").text == expected


def test_async_complete_and_stream(llm):
    async def run():
        done = await llm.acomplete("Hi there")
        streamed = [c.delta async for c in await llm.astream_complete("Hi there")]
        return done.text, "".join(streamed)

    done, streamed = asyncio.run(run())
    assert done == streamed == llm.complete("Hi there").text


def test_without_a_chat_template_the_prompt_goes_in_as_given(rag):
    tok = tiny.tiny_tokenizer(chat_template=False)
    llm = ContextFlowLLM(rag.generator, tok, max_new_tokens=6, system_prompt="Be brief.")
    assert llm.complete("Hi").text == _greedy(rag, "Be brief.\n\nHi", add_special_tokens=True)
    assert ContextFlowLLM(rag, use_chat_template=False, max_new_tokens=6).complete("Hi").text == \
        _greedy(rag, "Hi", add_special_tokens=True)


def test_temperature_above_zero_samples_reproducibly_under_a_seed(llm):
    torch.manual_seed(0)
    first = llm.complete("Hi", temperature=1.5).text
    torch.manual_seed(0)
    assert llm.complete("Hi", temperature=1.5).text == first


def test_overlong_prompts_keep_their_end_with_a_warning(rag):
    llm = ContextFlowLLM(rag, max_new_tokens=4, context_window=40, use_chat_template=False)
    with pytest.warns(UserWarning, match="keeping the last 36"):
        text = llm.complete("x" * 100 + "Hi").text
    assert text == _greedy(rag, "x" * 34 + "Hi", add_special_tokens=False, n=4)


def test_llm_rejects_bad_arguments(rag):
    with pytest.raises(ValueError, match="tokenizer: expected the generator's tokenizer"):
        ContextFlowLLM(rag.generator)
    with pytest.raises(ValueError, match=r"max_new_tokens: expected fewer than context_window \(1024\)"):
        ContextFlowLLM(rag, max_new_tokens=2000)
    with pytest.raises(ValueError, match="use_chat_template: True needs a tokenizer with a chat template"):
        ContextFlowLLM(rag.generator, tiny.tiny_tokenizer(chat_template=False), use_chat_template=True)
    with pytest.raises(ValueError, match="model: expected a RAGSequence or a HF causal LM, got int"):
        ContextFlowLLM(3)


def test_retriever_and_llm_plug_into_llama_index_s_own_query_engine(rag, events):
    from llama_index.core.query_engine import RetrieverQueryEngine

    retriever = ContextFlowRetriever(rag, similarity_top_k=2)
    engine = RetrieverQueryEngine.from_args(retriever, llm=ContextFlowLLM(rag, max_new_tokens=4))
    response = engine.query(Q)
    assert isinstance(response, Response) and isinstance(response.response, str)
    assert [n.node_id for n in response.source_nodes] == [n.node_id for n in retriever.retrieve(Q)]
    assert {"QueryStartEvent", "RetrievalStartEvent", "LLMCompletionStartEvent", "QueryEndEvent"} <= set(events)


# ----------------------------------------------------------------------------- export
def test_exported_vector_store_index_ranks_like_the_retriever_for_normalised_encoders():
    encoder = tiny.tiny_encoder(normalize=True)
    index = DocumentIndex.from_texts(PASSAGES, encoder, ids=IDS, titles=[f"T{i}" for i in range(6)],
                                     show_progress=False)
    rag = RAGSequence(encoder, index, tiny.tiny_tokenizer(), tiny.tiny_generator(), num_docs=3)
    exported = to_vector_store_index(rag)
    assert sorted(exported.index_struct.nodes_dict.values()) == sorted(IDS)
    theirs = exported.as_retriever(similarity_top_k=3).retrieve(Q)
    ours = ContextFlowRetriever(rag, similarity_top_k=3).retrieve(Q)
    assert [n.node_id for n in theirs] == [n.node_id for n in ours]
    assert [n.score for n in theirs] == pytest.approx([n.score for n in ours], abs=1e-5)
    assert theirs[0].node.metadata["title"] == f"T{IDS.index(theirs[0].node_id)}"


def test_llm_generates_in_eval_and_gives_the_generator_its_own_modes_back(rag):
    """A generator left in train mode (dropout on) must not generate with dropout, and keeps its modes."""
    generator = rag.generator
    generator.config.attention_dropout = 0.5
    for module in generator.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    generator.train()
    seen = []
    hook = generator.register_forward_hook(lambda module, args, output: seen.append(module.training))
    try:
        llm = ContextFlowLLM(rag, max_new_tokens=6)
        first = llm.complete("Hi").text
        streamed = "".join(r.delta or "" for r in llm.stream_complete("Hi"))
        assert llm.complete("Hi").text == first == streamed
    finally:
        hook.remove()
    assert seen and not any(seen)
    assert all(m.training for m in generator.modules())
