"""Conventions users reach for (issue 16 item 2), through the public objects.

LangChain: token counting with the generator's own tokenizer (so `trim_messages` works),
`ContextFlowRAG.as_tool()` with a plain string, `bind_tools` / `with_structured_output`
refused with a way out. LlamaIndex: `ContextFlowQueryEngine` as a PromptMixin mapped to
the model's `PromptConfig`, and `retrieve()` scored by the prior p(z|x).
"""
from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle  # noqa: E402

from contextflow_core.config import PromptConfig  # noqa: E402
from contextflow_core.validation import UnknownArgumentError  # noqa: E402
from contextflow_integrations.langchain import ChatContextFlow, ContextFlowLLM, ContextFlowRAG  # noqa: E402
from contextflow_integrations.llamaindex import ContextFlowQueryEngine  # noqa: E402

# isort: split
# after the package imports: train_tiny puts the repository first on sys.path, and a run against
# another checkout (PYTHONPATH=/tmp/cf-old) must test that checkout's code
import tiny  # noqa: E402
from train_tiny import IDS, PASSAGES, build_rag  # noqa: E402

Q = "What is the capital of Quenia?"


@functools.lru_cache(maxsize=None)
def _rag():
    return build_rag(num_docs=3)


@pytest.fixture
def chat():
    return ChatContextFlow(generator=tiny.tiny_generator(), tokenizer=tiny.tiny_tokenizer(), max_tokens=3)


# ----------------------------------------------------------------------------- LangChain token counting
def test_chat_counts_text_tokens_with_the_generators_tokenizer(chat):
    text = "Zorblat, héron <eos>"  # byte-level tokenizer: one token per UTF-8 byte; "<eos>" in text is text
    assert chat.get_token_ids(text) == tiny.byte_ids(text)
    assert chat.get_num_tokens(text) == len(text.encode("utf-8")) == 21


def test_chat_counts_messages_as_the_prompt_the_generator_reads(chat):
    messages = [SystemMessage("be brief"), HumanMessage("hi")]
    expected = [tiny.SYSTEM, *tiny.byte_ids("be brief\n"), tiny.USER, *tiny.byte_ids("hi\n"), tiny.ASSISTANT]
    assert chat.get_num_tokens_from_messages(messages) == len(expected) == 15
    assert chat.get_num_tokens_from_messages([]) == 0
    usage = chat.invoke(messages).usage_metadata
    assert usage["input_tokens"] == 15  # the same count the model reports having read
    with pytest.raises(NotImplementedError, match="tools: ChatContextFlow"):
        chat.get_num_tokens_from_messages(messages, tools=[{"name": "f"}])


def test_trim_messages_with_the_chat_model_as_token_counter(chat):
    history = [SystemMessage("sys"), HumanMessage("first question"), AIMessage("first answer"),
               HumanMessage("second question"), AIMessage("second answer"), HumanMessage("third")]
    budget = 50
    kept = trim_messages(history, max_tokens=budget, token_counter=chat, strategy="last", include_system=True,
                         start_on="human")
    assert kept[0] == history[0] and kept[-1] == history[-1] and len(kept) < len(history)
    assert chat.get_num_tokens_from_messages(kept) <= budget
    dropped = history[: len(history) - len(kept) + 1]
    longer = [history[0], dropped[-1], *kept[1:]]
    assert chat.get_num_tokens_from_messages(longer) > budget  # the next older message would not fit


def test_llm_counts_the_prompt_it_feeds_the_generator():
    tok = tiny.tiny_tokenizer()
    llm = ContextFlowLLM(generator=tiny.tiny_generator(), tokenizer=tok, max_tokens=2)
    prompt = "Question: where?\nAnswer:"
    assert llm.get_token_ids(prompt) == tok(prompt)["input_ids"] == tiny.byte_ids(prompt)
    assert llm.get_num_tokens_from_messages([HumanMessage("hi")]) == len("Human: hi")
    assert llm.invoke(prompt, config={"callbacks": []}) is not None


def test_bind_tools_and_structured_output_say_what_to_use_instead(chat):
    with pytest.raises(NotImplementedError, match=r"bind_tools: .*as_tool\(\)"):
        chat.bind_tools([{"name": "f", "description": "d", "parameters": {}}])
    with pytest.raises(NotImplementedError, match="with_structured_output: .*PydanticOutputParser"):
        chat.with_structured_output({"title": "Answer", "type": "object", "properties": {}})


@pytest.mark.embedded
def test_token_counts_use_the_embedded_smollm2_tokenizer():
    from contextflow_core.models import default_generator

    generator, tokenizer = default_generator(reader=False)
    chat = ChatContextFlow(generator=generator, tokenizer=tokenizer, max_tokens=4)
    text = "Zorblat is the capital of Quenia."
    assert chat.get_token_ids(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
    messages = [SystemMessage("Answer briefly."), HumanMessage(text)]
    turns = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert chat.get_num_tokens_from_messages(messages) == expected
    assert chat.invoke(messages).usage_metadata["input_tokens"] == expected
    # Each count is the whole prompt for those messages: SmolLM2's template adds its default system
    # turn to a list without one, so trimming with include_system=True is conservative, never over.
    history = [*messages, AIMessage("Quenia."), HumanMessage("And Tarsk?")]
    budget = chat.get_num_tokens_from_messages([history[0], *history[2:]]) + 30
    kept = trim_messages(history, max_tokens=budget, token_counter=chat, strategy="last", include_system=True)
    assert kept[0] == history[0] and kept[-1].content == "And Tarsk?" and len(kept) < len(history)
    assert chat.get_num_tokens_from_messages(kept) <= budget


# ----------------------------------------------------------------------------- LangChain as_tool
def test_rag_as_tool_takes_a_plain_string():
    chain = ContextFlowRAG(model=_rag(), max_new_tokens=3)
    tool = chain.as_tool(name="docs_qa")
    assert tool.name == "docs_qa" and "question as plain text" in tool.description
    assert tool.args == {"tool_input": {"type": "string"}}
    result = tool.invoke(Q)
    assert result == chain.invoke(Q)
    message = tool.invoke({"type": "tool_call", "name": "docs_qa", "args": {"tool_input": Q}, "id": "call-1"})
    assert message.tool_call_id == "call-1" and result["answer"] in message.content
    assert ContextFlowRAG(model=_rag()).as_tool().name == "ContextFlowRAG"


# ----------------------------------------------------------------------------- LlamaIndex PromptMixin
def test_get_prompts_returns_the_models_prompt_config_as_templates():
    engine = ContextFlowQueryEngine(rag=_rag(), max_new_tokens=3)
    prompts = engine.get_prompts()
    config = _rag().prompt_config
    assert set(prompts) == {"system_prompt", "instruction", "user_format", "question_format", "passage_format",
                            "passage_format_untitled", "passage_separator", "answer_prefix"}
    assert all(isinstance(p, PromptTemplate) for p in prompts.values())
    assert prompts["user_format"].template == config.user_format
    assert set(prompts["user_format"].template_vars) == {"instruction", "passages", "question"}
    assert prompts["system_prompt"].template == config.system_prompt


def test_update_prompts_changes_the_models_prompt_config_and_its_prompts():
    rag = build_rag(num_docs=2)  # its own model: the prompts change
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=2)
    engine.update_prompts({"question_format": PromptTemplate("Q: {question}"), "system_prompt": "",
                           "instruction": "Answer from the passage."})
    config = rag.prompt_config
    assert (config.question_format, config.system_prompt, config.instruction) == (
        "Q: {question}", None, "Answer from the passage.")
    assert config.user_format == PromptConfig().user_format  # others kept
    assert engine.get_prompts()["question_format"].template == "Q: {question}"
    text = rag.generator_tokenizer.decode(rag.prompts.encode(Q, ["p"]).input_ids)
    assert "Q: " + Q in text and "Question:" not in text and "<|system|>" not in text
    assert engine.query(Q).response == rag.generate(questions=[Q], max_new_tokens=2)[0].text


def test_update_prompts_refuses_unknown_keys_bad_templates_and_chat_templates():
    rag = build_rag(num_docs=2)
    engine = ContextFlowQueryEngine(rag=rag, max_new_tokens=2)
    before = rag.prompt_config
    with pytest.raises(UnknownArgumentError, match=r"update_prompts: unknown argument\(s\) \['text_qa_template'\]"):
        engine.update_prompts({"text_qa_template": PromptTemplate("{context_str} {query_str}")})
    with pytest.raises(ValueError, match="user_format must contain {question}"):
        engine.update_prompts({"user_format": "{passages}"})
    with pytest.raises(ValueError, match=r"update_prompts\['user_format'\]: expected a PromptTemplate or a string, "
                                         "got a chat template"):
        engine.update_prompts({"user_format": ChatPromptTemplate([ChatMessage(content="{question}")])})
    with pytest.raises(ValueError, match="partial variables"):
        engine.update_prompts({"question_format": PromptTemplate("{question} {x}").partial_format(x="1")})
    assert rag.prompt_config == before  # nothing half-applied


# ----------------------------------------------------------------------------- LlamaIndex retrieve
def test_query_engine_retrieve_scores_nodes_by_the_prior():
    rag = _rag()
    nodes = ContextFlowQueryEngine(rag=rag).retrieve(QueryBundle(Q))
    with torch.no_grad(), rag.inference():
        out = rag(questions=[Q])
    assert all(isinstance(n, NodeWithScore) for n in nodes)
    assert [n.node_id for n in nodes] == [p.id for p in out.passages[0]]
    assert [n.score for n in nodes] == pytest.approx(out.doc_logprobs[0].exp().tolist(), abs=1e-5)
    assert sum(n.score for n in nodes) == pytest.approx(1.0, abs=1e-5)
    assert [n.node.text for n in nodes] == [PASSAGES[IDS.index(n.node_id)] for n in nodes]
    searched = rag.index.search(rag.question_encoder.encode([Q]), 3)
    assert [n.node.metadata["retrieval_score"] for n in nodes] == pytest.approx(searched.scores[0].tolist(),
                                                                                 rel=1e-5)
    assert [n.node_id for n in ContextFlowQueryEngine(rag=rag, num_docs=2).retrieve(Q)] == [p.id for p in
                                                                                        out.passages[0][:2]]
