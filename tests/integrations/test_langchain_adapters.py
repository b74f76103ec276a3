"""LangChain adapters on tiny models: chat model / LLM, retriever, RAG Runnable, core isolation."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from operator import itemgetter

import pytest

pytest.importorskip("langchain_core")

import torch  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.runnables import RunnableLambda, RunnablePassthrough  # noqa: E402

import tiny  # noqa: E402
from train_tiny import IDS, PASSAGES, build_rag, tiny_encoder  # noqa: E402

from contextflow_core.retrieval import DocumentIndex, Retriever  # noqa: E402
from contextflow_core.types import Passage  # noqa: E402
from contextflow_integrations.langchain import (  # noqa: E402
    ChatContextFlow,
    ContextFlowLLM,
    ContextFlowRAG,
    ContextFlowRetriever,
)
from contextflow_integrations.langchain.chat_model import render_chat  # noqa: E402

QS = ["What is the capital of Quenia?", "Which river flows through Tarsk?", "When was Tarsk founded?"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and far faster on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rag():
    return build_rag(num_docs=3)


@pytest.fixture(scope="module")
def chat():
    return ChatContextFlow(generator=tiny.tiny_generator(), tokenizer=tiny.tiny_tokenizer(), max_tokens=8)


class Tokens(BaseCallbackHandler):
    def __init__(self):
        self.tokens = []

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


def _hf_greedy(chat, text, add_special_tokens, max_new_tokens):
    ids = chat.tokenizer(text, add_special_tokens=add_special_tokens, return_tensors="pt")
    out = chat.generator.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=chat.tokenizer.pad_token_id)
    new = out[0, ids["input_ids"].shape[1]:]
    return chat.tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False), len(new), \
        ids["input_ids"].shape[1]


# ----------------------------------------------------------------------------- chat model
def test_chat_prompt_uses_chat_template_and_merges_repeated_roles():
    tok = tiny.tiny_tokenizer()
    messages = [SystemMessage("be brief"), HumanMessage("hi"), HumanMessage("there"), AIMessage("yo"),
                HumanMessage("?")]
    text, add_special = render_chat(tok, messages)
    assert text == "<|system|>be brief\n<|user|>hi\n\nthere\n<|assistant|>yo<eos><|user|>?\n<|assistant|>"
    assert add_special is False


def test_chat_prompt_without_template_is_a_plain_transcript():
    text, add_special = render_chat(tiny.tiny_tokenizer(chat_template=False), [SystemMessage("s"), HumanMessage("q")])
    assert text == "System: s\nUser: q\nAssistant:" and add_special is True


def test_invoke_matches_hf_greedy_generate_with_usage_and_metadata(chat):
    prompt, _ = render_chat(chat.tokenizer, [HumanMessage("Hello")])
    expected, n_new, n_in = _hf_greedy(chat, prompt, False, 8)
    msg = chat.invoke("Hello")
    assert msg.content == expected
    assert msg.usage_metadata == {"input_tokens": n_in, "output_tokens": n_new, "total_tokens": n_in + n_new}
    assert msg.response_metadata["model_name"] == "LlamaForCausalLM"
    assert msg.response_metadata["finish_reason"] == ("length" if n_new == 8 else "stop")


def test_stream_pieces_add_up_to_invoke_and_reach_callbacks(chat):
    handler = Tokens()
    chunks = list(chat.stream("Hello", config={"callbacks": [handler]}))
    assert "".join(c.content for c in chunks) == chat.invoke("Hello").content
    assert len(chunks) > 2 and chunks[-1].chunk_position == "last"
    assert "".join(handler.tokens) == chat.invoke("Hello").content
    assert sum(c.usage_metadata["output_tokens"] for c in chunks if c.usage_metadata) == 8


def test_streaming_flag_routes_invoke_through_stream(chat):
    handler = Tokens()
    streaming = chat.model_copy(update={"streaming": True})
    text = streaming.invoke("Hello", config={"callbacks": [handler]}).content
    assert text == chat.invoke("Hello").content and len(handler.tokens) > 1


def test_stop_cuts_text_in_invoke_and_stream(chat):
    full = chat.invoke("Hello", max_tokens=12).content
    stop = full[4:6]
    assert stop and stop not in full[:4]
    cut = chat.invoke("Hello", max_tokens=12, stop=[stop])
    assert cut.content == full[: full.index(stop)] and cut.response_metadata["finish_reason"] == "stop"
    streamed = "".join(c.content for c in chat.stream("Hello", max_tokens=12, stop=[stop]))
    assert streamed == cut.content
    field_stop = chat.model_copy(update={"stop": [stop], "max_tokens": 12})
    assert field_stop.invoke("Hello").content == cut.content


def test_per_call_max_tokens_and_sampling(chat):
    assert chat.invoke("Hello", max_tokens=2).usage_metadata["output_tokens"] <= 2
    torch.manual_seed(0)
    sampled = chat.invoke("Hello", temperature=1.5, top_p=0.9, max_tokens=3)
    assert sampled.usage_metadata["output_tokens"] <= 3


def test_ls_params_and_identifying_params(chat):
    custom = chat.model_copy(update={"model_name": "tiny", "stop": ["x"], "temperature": 0.5})
    assert custom._get_ls_params() == {"ls_provider": "contextflow", "ls_model_name": "tiny", "ls_model_type": "chat",
                                       "ls_temperature": 0.5, "ls_max_tokens": 8, "ls_stop": ["x"]}
    assert custom._identifying_params["model_name"] == "tiny" and custom._llm_type == "contextflow-chat"


def test_generation_error_in_stream_thread_is_raised(chat):
    with pytest.raises(ValueError):
        list(chat.stream("Hello", num_beams=2))  # HF refuses streamers with beam search
    assert chat.invoke("Hello").content  # the model lock was released


def test_leaving_a_stream_early_stops_generation(chat):
    stream = chat.stream("Hello", max_tokens=50)
    next(stream)
    stream.close()
    assert chat.invoke("Hello").content


def test_wrong_model_name_is_refused(chat):
    with pytest.raises(ValueError, match="model: this instance runs the local generator"):
        chat.invoke("Hello", model="gpt-4")


@pytest.mark.parametrize("kwargs, arg", [({"temperature": -1}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
                                         ({"generator": object()}, "generator")])
def test_bad_settings_name_the_argument(kwargs, arg):
    params = {"generator": tiny.tiny_generator(), "tokenizer": tiny.tiny_tokenizer(), **kwargs}
    with pytest.raises(ValueError, match=f"{arg}: expected"):
        ChatContextFlow(**params)


def test_llm_uses_raw_prompt_and_streams(chat):
    llm = ContextFlowLLM(generator=chat.generator, tokenizer=chat.tokenizer, max_tokens=5)
    expected, _, _ = _hf_greedy(chat, "Question: hi\nAnswer:", True, 5)
    assert llm.invoke("Question: hi\nAnswer:") == expected
    assert "".join(llm.stream("Question: hi\nAnswer:")) == expected
    assert llm._get_ls_params()["ls_model_type"] == "llm"


def test_generation_runs_in_eval_mode_and_restores_training_mode(chat):
    expected = chat.invoke("Hello").content
    chat.generator.train()
    try:
        assert chat.invoke("Hello").content == expected
        assert "".join(c.content for c in chat.stream("Hello")) == expected
        assert chat.generator.training
    finally:
        chat.generator.eval()


def test_chat_from_rag_uses_its_generator(rag):
    chat = ChatContextFlow.from_rag(rag, max_tokens=3)
    assert chat.generator is rag.generator and chat.tokenizer is rag.generator_tokenizer


# ----------------------------------------------------------------------------- retriever
def test_retriever_returns_passage_ids_scores_and_titles_best_first(rag):
    docs = ContextFlowRetriever(model=rag, k=3).invoke(QS[0])
    retrieved = rag.index.search(rag.question_encoder.encode([QS[0]]), 3)
    assert [d.id for d in docs] == retrieved.ids[0]
    assert [d.page_content for d in docs] == [PASSAGES[IDS.index(i)] for i in retrieved.ids[0]]
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True) and scores == pytest.approx(retrieved.scores[0].tolist())


def test_retriever_k_kwarg_async_and_core_retriever():
    encoder = tiny_encoder()
    passages = [Passage(id=f"d{i}", text=t, title=f"T{i}", metadata={"n": i}) for i, t in enumerate(PASSAGES)]
    index = DocumentIndex.from_passages(passages, encoder, show_progress=False)
    retriever = ContextFlowRetriever(model=Retriever(index, encoder), k=2)
    assert len(retriever.invoke(QS[1])) == 2 and len(retriever.invoke(QS[1], k=5)) == 5
    docs = asyncio.run(retriever.ainvoke(QS[1], k=4))
    assert len(docs) == 4
    assert all(d.metadata["title"] == f"T{d.metadata['n']}" and d.id == f"d{d.metadata['n']}" for d in docs)
    assert [d.id for d in docs] == [d.id for d in retriever.invoke(QS[1], k=4)]


def test_retriever_rejects_bad_arguments(rag):
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        ContextFlowRetriever(model=rag, k=0)
    with pytest.raises(ValueError, match="model: expected a RAGSequence or a contextflow Retriever"):
        ContextFlowRetriever(model="index")
    with pytest.raises(ValueError, match="k: expected a positive integer, got -2"):
        ContextFlowRetriever(model=rag).invoke("q", k=-2)


# ----------------------------------------------------------------------------- RAG runnable
def _check_result(result, rag, question, answer):
    assert set(result) == {"answer", "source_documents"}
    assert result["answer"] == answer.text
    weights = [d.metadata["weight"] for d in result["source_documents"]]
    assert weights == sorted(weights, reverse=True) and sum(weights) == pytest.approx(1.0, abs=1e-4)
    assert [d.id for d in result["source_documents"]] == [p.id for p, _ in answer.sources]
    assert all(d.id in IDS for d in result["source_documents"])


def test_rag_invoke_str_and_dict_match_model_generate(rag):
    chain = ContextFlowRAG(model=rag, max_new_tokens=4)
    expected = rag.generate(questions=[QS[0]], max_new_tokens=4)[0]
    _check_result(chain.invoke(QS[0]), rag, QS[0], expected)
    _check_result(chain.invoke({"question": QS[0]}), rag, QS[0], expected)


def test_rag_batch_is_one_generate_call(rag, monkeypatch):
    chain = ContextFlowRAG(model=rag, max_new_tokens=4, decoding="fast")
    expected = rag.generate(questions=QS, max_new_tokens=4, decoding="fast")
    calls = []
    original = type(rag).generate
    monkeypatch.setattr(type(rag), "generate", lambda self, **kw: calls.append(kw) or original(self, **kw))
    results = chain.batch([QS[0], {"question": QS[1]}, QS[2]])
    assert len(calls) == 1 and calls[0]["questions"] == QS
    for question, result, answer in zip(QS, results, expected):
        _check_result(result, rag, question, answer)
    assert asyncio.run(chain.abatch(QS)) == results and len(calls) == 2


def test_rag_batch_returns_exceptions_in_place(rag):
    chain = ContextFlowRAG(model=rag, max_new_tokens=2)
    out = chain.batch([QS[0], {"query": "x"}], return_exceptions=True)
    assert out[0]["answer"] == chain.invoke(QS[0])["answer"]
    assert isinstance(out[1], ValueError) and "inputs[1]: expected a dict with a 'question' key" in str(out[1])
    with pytest.raises(ValueError, match="inputs\\[1\\]"):
        chain.batch([QS[0], ""])


def test_rag_stream_ainvoke_and_call_overrides(rag):
    chain = ContextFlowRAG(model=rag, max_new_tokens=4)
    full = chain.invoke(QS[1])
    assert list(chain.stream(QS[1])) == [full]
    assert asyncio.run(chain.ainvoke({"question": QS[1]})) == full
    assert len(chain.invoke(QS[1], num_docs=2)["source_documents"]) == 2


def test_rag_schemas_are_typed(rag):
    chain = ContextFlowRAG(model=rag)
    inp = chain.get_input_schema().model_json_schema()
    assert {"type": "string"} in inp["anyOf"] and inp["$defs"]["RAGQuestion"]["required"] == ["question"]
    out = chain.get_output_schema().model_json_schema()
    assert out["$defs"]["RAGResult"]["required"] == ["answer", "source_documents"]
    assert out["$defs"]["RAGResult"]["properties"]["source_documents"]["items"] == {"$ref": "#/$defs/Document"}


def test_rag_composes_in_lcel(rag):
    rag_chain = ContextFlowRAG(model=rag, max_new_tokens=3)
    chain = {"question": RunnablePassthrough()} | rag_chain | itemgetter("answer") | StrOutputParser()
    assert chain.invoke(QS[2]) == rag_chain.invoke(QS[2])["answer"]
    sources = rag_chain | RunnableLambda(lambda out: [d.id for d in out["source_documents"]])
    assert len(sources.invoke(QS[2])) == 3


def test_rag_rejects_bad_input_and_settings(rag):
    chain = ContextFlowRAG(model=rag)
    with pytest.raises(ValueError, match="input: expected a non-empty question string"):
        chain.invoke(42)
    with pytest.raises(ValueError, match="decoding: expected one of"):
        ContextFlowRAG(model=rag, decoding="greedy")
    with pytest.raises(ValueError, match="model: expected a RAGSequence"):
        ContextFlowRAG(model=object())


# ----------------------------------------------------------------------------- isolation
CORE_WITHOUT_LANGCHAIN = """
import sys
sys.modules["langchain_core"] = None  # any import of it now fails
import contextflow_core, contextflow_core.rag, contextflow_core.training
import contextflow_integrations.langchain as lc  # lazy: imports no LangChain yet
try:
    lc.ChatContextFlow
except ImportError as e:
    assert "contextflow[langchain]" in str(e), e
else:
    raise SystemExit("expected an ImportError with an install hint")
"""


def test_core_never_imports_langchain():
    proc = subprocess.run([sys.executable, "-c", CORE_WITHOUT_LANGCHAIN], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
