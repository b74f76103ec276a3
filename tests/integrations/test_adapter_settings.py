"""Settings are honoured or refused (issue 13, item 15) and one bad input fails only its slot (item 14).

Every adapter and config is built on tiny random models and called through its
framework's own entry points (`invoke`, `batch`, `query`, `aquery`, `complete`),
as a user would.
"""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.messages import HumanMessage  # noqa: E402

from train_tiny import build_rag  # noqa: E402

from contextflow_core.config import PromptConfig, RagConfig, to_dict  # noqa: E402
from contextflow_core.types import Passage  # noqa: E402
from contextflow_integrations import langchain as lc  # noqa: E402
from contextflow_integrations import llamaindex as li  # noqa: E402

QS = ["What is the capital of Quenia?", "Which river flows through Tarsk?", "When was Tarsk founded?"]
TOO_LONG = "Where? " + "z" * 100_000  # its prompt frame alone is far over max_length (512)


@pytest.fixture(scope="module")
def rag():
    return build_rag(num_docs=3)


@pytest.fixture
def hf_calls(rag, monkeypatch):
    """Counts the generator's HF `generate` calls (to show a refusal comes before any generation)."""
    calls = []
    original = rag.generator.generate
    monkeypatch.setattr(rag.generator, "generate", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    return calls


def _chat(rag, **kwargs):
    return lc.ChatContextFlow(generator=rag.generator, tokenizer=rag.generator_tokenizer, **kwargs)


def _lc_llm(rag, **kwargs):
    return lc.ContextFlowLLM(generator=rag.generator, tokenizer=rag.generator_tokenizer, **kwargs)


# ----------------------------------------------------------------------------- unknown names
CONSTRUCTORS = {
    "lc retriever": lambda rag, **kw: lc.ContextFlowRetriever(model=rag, **kw),
    "lc rag": lambda rag, **kw: lc.ContextFlowRAG(model=rag, **kw),
    "lc chat": lambda rag, **kw: _chat(rag, **kw),
    "lc llm": lambda rag, **kw: _lc_llm(rag, **kw),
    "li retriever": lambda rag, **kw: li.ContextFlowRetriever(rag, **kw),
    "li llm": lambda rag, **kw: li.ContextFlowLLM(rag, **kw),
    "li query engine": lambda rag, **kw: li.ContextFlowQueryEngine(rag=rag, **kw),
    "PromptConfig": lambda rag, **kw: PromptConfig(**kw),
    "RagConfig": lambda rag, **kw: RagConfig(**kw),
}
ONE_ACCEPTED = {"lc retriever": "'search_kwargs'", "lc rag": "'max_new_tokens'", "lc chat": "'max_tokens'",
                "lc llm": "'max_tokens'", "li retriever": "'similarity_top_k'", "li llm": "'max_new_tokens'",
                "li query engine": "'num_docs'", "PromptConfig": "'passage_format'", "RagConfig": "'num_docs'"}


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_an_unknown_field_is_refused_naming_it_and_the_accepted_ones(rag, name):
    with pytest.raises((TypeError, ValueError)) as info:
        CONSTRUCTORS[name](rag, fooo=1)
    message = str(info.value)
    assert "unknown argument(s) ['fooo']; accepted:" in message and ONE_ACCEPTED[name] in message


CALLS = {
    "lc rag invoke": lambda rag: lc.ContextFlowRAG(model=rag, max_new_tokens=2).invoke(QS[0], fooo=1),
    "lc rag batch": lambda rag: lc.ContextFlowRAG(model=rag, max_new_tokens=2).batch(QS[:2], fooo=1),
    "lc chat invoke": lambda rag: _chat(rag, max_tokens=2).invoke([HumanMessage("hi")], fooo=1),
    "lc chat stream": lambda rag: list(_chat(rag, max_tokens=2).stream("hi", fooo=1)),
    "lc llm invoke": lambda rag: _lc_llm(rag, max_tokens=2).invoke("hi", fooo=1),
    "li llm complete": lambda rag: li.ContextFlowLLM(rag, max_new_tokens=2).complete("hi", fooo=1),
    "core generate": lambda rag: rag.generate(questions=QS[:1], max_new_tokens=2, fooo=1),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_an_unknown_call_keyword_is_refused_before_any_generation(rag, hf_calls, name):
    with pytest.raises((TypeError, ValueError), match=r"unknown argument\(s\) \['fooo'\]; accepted:"):
        CALLS[name](rag)
    assert hf_calls == []


def test_the_langchain_retriever_call_keywords_are_k_only(rag):
    retriever = lc.ContextFlowRetriever(model=rag)
    with pytest.raises(TypeError, match=r"ContextFlowRetriever.invoke: unknown argument\(s\) \['fooo'\]; "
                                        r"accepted: \['k'\]"):
        retriever.invoke(QS[0], fooo=1)


# ----------------------------------------------------------------------------- conventional names
def test_search_kwargs_k_is_honoured_and_other_search_settings_refused(rag):
    docs = lc.ContextFlowRetriever(model=rag, search_kwargs={"k": 2}).invoke(QS[0])
    assert [d.id for d in docs] == [d.id for d in lc.ContextFlowRetriever(model=rag, k=2).invoke(QS[0])]
    assert lc.ContextFlowRetriever(model=rag, search_type="similarity", search_kwargs={"k": 2}).k == 2
    with pytest.raises(ValueError, match=r"search_kwargs: unknown argument\(s\) \['filter'\]; accepted: \['k'\]"):
        lc.ContextFlowRetriever(model=rag, search_kwargs={"k": 2, "filter": {"source": "a"}})
    with pytest.raises(ValueError, match="search_type: ContextFlowRetriever ranks by similarity only"):
        lc.ContextFlowRetriever(model=rag, search_type="mmr")
    with pytest.raises(ValueError, match="disagree"):
        lc.ContextFlowRetriever(model=rag, k=3, search_kwargs={"k": 2})


def test_max_tokens_and_max_new_tokens_both_set_the_llm_budgets(rag):
    llm = li.ContextFlowLLM(rag, max_tokens=3)  # OpenAI's name on the LlamaIndex LLM
    assert llm.max_new_tokens == 3 and llm.metadata.num_output == 3
    expected = li.ContextFlowLLM(rag, max_new_tokens=2).complete("Hi")
    assert llm.complete("Hi", max_tokens=2).text == expected.text
    assert llm.complete("Hi", max_tokens=2).raw == expected.raw
    with pytest.raises(ValueError, match="max_tokens=2 and max_new_tokens=3 name the same setting"):
        li.ContextFlowLLM(rag, max_tokens=2, max_new_tokens=3)
    chat = _chat(rag, max_new_tokens=3)  # HF's name on the LangChain chat model
    assert chat.max_tokens == 3
    assert chat.invoke("Hi", max_new_tokens=2).content == _chat(rag, max_tokens=2).invoke("Hi").content


def test_similarity_top_k_sets_the_query_engine_s_k(rag):
    engine = li.ContextFlowQueryEngine(rag=rag, similarity_top_k=2, max_new_tokens=3)
    assert engine.num_docs == 2
    response = engine.query(QS[0])
    assert len(response.source_nodes) == 2 and response.metadata["num_docs"] == 2
    assert response.response == rag.generate(questions=QS[:1], num_docs=2, max_new_tokens=3)[0].text


@pytest.mark.parametrize("build, use", [
    (lambda rag: lc.ContextFlowRAG(model=rag, max_tokens=5), "use max_new_tokens instead"),
    (lambda rag: lc.ContextFlowRAG(model=rag, k=2), "use num_docs instead"),
    (lambda rag: lc.ContextFlowRAG(model=rag).invoke(QS[0], max_tokens=5), "use max_new_tokens instead"),
    (lambda rag: li.ContextFlowQueryEngine(rag=rag, max_tokens=5), "use max_new_tokens instead"),
    (lambda rag: li.ContextFlowRetriever(rag, k=2), "use similarity_top_k instead"),
])
def test_conventional_names_without_a_meaning_here_are_refused_naming_the_contextflow_field(rag, build, use):
    with pytest.raises((TypeError, ValueError), match=use):
        build(rag)


def test_standard_langchain_parameters_are_honoured_or_warned_about(rag):
    chat = _chat(rag, max_tokens=3, timeout=30)
    assert chat._settings(1, None, {})[1]["max_time"] == 30.0  # timeout -> HF max_time
    with pytest.warns(UserWarning, match="max_retries: ignored by ChatContextFlow"):
        _chat(rag, max_retries=2)


# ----------------------------------------------------------------------------- types up front
STRINGS = {
    "lc rag num_docs": (lambda rag: lc.ContextFlowRAG(model=rag, num_docs="3"), "num_docs"),
    "lc rag max_new_tokens": (lambda rag: lc.ContextFlowRAG(model=rag, max_new_tokens="16"), "max_new_tokens"),
    "lc rag invoke num_docs": (lambda rag: lc.ContextFlowRAG(model=rag).invoke(QS[0], num_docs="2"), "num_docs"),
    "lc retriever k": (lambda rag: lc.ContextFlowRetriever(model=rag, k="2"), "k"),
    "lc retriever invoke k": (lambda rag: lc.ContextFlowRetriever(model=rag).invoke(QS[0], k="2"), "k"),
    "lc chat max_tokens": (lambda rag: _chat(rag, max_tokens="16"), "max_tokens"),
    "lc chat invoke max_tokens": (lambda rag: _chat(rag).invoke("hi", max_tokens="16"), "max_tokens"),
    "li llm max_new_tokens": (lambda rag: li.ContextFlowLLM(rag, max_new_tokens="16"), "max_new_tokens"),
    "li engine num_docs": (lambda rag: li.ContextFlowQueryEngine(rag=rag, num_docs="3"), "num_docs"),
    "core generate": (lambda rag: rag.generate(questions=QS[:1], max_new_tokens="16"), "max_new_tokens"),
    "RagConfig micro_batch_size": (lambda rag: RagConfig(micro_batch_size="2"), "micro_batch_size"),
    "PromptConfig max_length": (lambda rag: PromptConfig(max_length="64"), "max_length"),
}


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_a_number_given_as_a_string_is_refused_naming_the_argument(rag, hf_calls, name):
    build, arg = STRINGS[name]
    with pytest.raises(ValueError, match=rf"{arg}(:| must be) .*got '\d+'"):
        build(rag)
    assert hf_calls == []


BAD_GENERATE = [
    ({"num_beams": 0}, "num_beams: expected a positive integer, got 0"),
    ({"num_return_sequences": -1}, "num_return_sequences: expected a positive integer, got -1"),
    ({"do_sample": True, "top_k": -1}, "top_k: expected an integer >= 0, got -1"),
    ({"do_sample": True, "temperature": 0.0}, r"temperature: expected a finite number > 0, got 0.0"),
    ({"do_sample": True, "top_p": 1.5}, r"top_p: expected a finite number > 0 and <= 1, got 1.5"),
    ({"temperature": 0.7}, r"\['temperature'\] only apply when sampling"),  # greedy would ignore it
    ({"do_sample": "yes"}, "do_sample: expected True or False"),
    ({"max_length": 20}, "'max_length' is set by ContextFlow; pass max_new_tokens="),
]


@pytest.mark.parametrize("kwargs, message", BAD_GENERATE)
def test_bad_generate_arguments_fail_up_front_with_their_name(rag, hf_calls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rag.generate(questions=QS[:1], max_new_tokens=2, **kwargs)
    with pytest.raises(ValueError, match=message):  # at construction, not at the first query
        lc.ContextFlowRAG(model=rag, generate_kwargs=kwargs)
    with pytest.raises(ValueError, match=message):
        li.ContextFlowQueryEngine(rag=rag, generate_kwargs=kwargs)
    assert hf_calls == []


def test_sampling_settings_on_greedy_llms_are_refused(rag):
    with pytest.raises(ValueError, match=r"\['top_p'\]: apply only when sampling"):
        _chat(rag, top_p=0.9)
    with pytest.raises(ValueError, match=r"\['top_k'\] only apply when sampling"):
        li.ContextFlowLLM(rag, max_new_tokens=2).complete("hi", top_k=5)
    torch.manual_seed(0)
    assert isinstance(li.ContextFlowLLM(rag, max_new_tokens=2).complete("hi", temperature=0.7, top_k=5).text, str)


@pytest.mark.parametrize("field, template, placeholder", [
    ("passage_format", "{txt}\n{text}", "{txt}"),
    ("passage_format_untitled", "{title}: {text}", "{title}"),
    ("question_format", "Q: {question} ({lang})", "{lang}"),
    ("user_format", "{instructions}\n{passages}\n{question}", "{instructions}"),
    ("user_format", "{0}{passages}{question}", "{0}"),
])
def test_unknown_prompt_placeholders_are_refused_at_construction(field, template, placeholder):
    with pytest.raises(ValueError, match=rf"{field}: unknown placeholder \{placeholder}"):
        PromptConfig(**{field: template})


def test_literal_braces_in_prompt_formats_still_render(rag):
    config = PromptConfig(passage_format="{{doc}} {title}: {text}", use_chat_template=False)
    builder = type(rag.prompts)(rag.generator_tokenizer, config)
    assert builder.render_passage(Passage(id="a", text="t", title="T")) == "{doc} T: t"
    with pytest.raises(ValueError, match="passage_format: not a valid format string"):
        PromptConfig(passage_format="{text")


def test_numpy_integers_work_wherever_python_ints_do(rag):
    n = np.int64(2)
    config = RagConfig(num_docs=n, micro_batch_size=np.int32(4))
    assert type(config.num_docs) is int and json.loads(json.dumps(to_dict(config)))["num_docs"] == 2
    assert type(PromptConfig(max_length=np.int64(256)).max_length) is int
    ints = rag.generate(questions=QS[:1], num_docs=2, max_new_tokens=3)[0]
    numpys = rag.generate(questions=QS[:1], num_docs=n, max_new_tokens=np.int64(3))[0]
    assert (numpys.text, [p.id for p, _ in numpys.sources]) == (ints.text, [p.id for p, _ in ints.sources])
    assert len(lc.ContextFlowRetriever(model=rag).invoke(QS[0], k=n)) == 2
    assert len(lc.ContextFlowRetriever(model=rag, k=n).invoke(QS[0])) == 2
    assert len(li.ContextFlowRetriever(rag, similarity_top_k=n).retrieve(QS[0])) == 2
    assert len(rag.index.search(rag.question_encoder.encode(QS[:1]), n).ids[0]) == 2
    assert lc.ContextFlowRAG(model=rag, num_docs=n, max_new_tokens=3).invoke(QS[0])["answer"] == ints.text
    assert li.ContextFlowLLM(rag, max_new_tokens=np.int64(3)).max_new_tokens == 3


def test_config_flags_must_be_bools():
    with pytest.raises(ValueError, match="freeze_retriever: expected True or False, got 'False'"):
        RagConfig(freeze_retriever="False")


# ----------------------------------------------------------------------------- one bad input, one slot
def test_an_over_long_question_fails_only_its_own_batch_slot(rag, monkeypatch):
    chain = lc.ContextFlowRAG(model=rag, max_new_tokens=3)
    expected = rag.generate(questions=[QS[0], QS[2]], max_new_tokens=3)
    calls = []
    original = type(rag).generate
    monkeypatch.setattr(type(rag), "generate", lambda self, **kw: calls.append(kw) or original(self, **kw))
    out = chain.batch([QS[0], TOO_LONG, QS[2]], return_exceptions=True)
    assert [o["answer"] for o in (out[0], out[2])] == [a.text for a in expected]
    assert isinstance(out[1], ValueError) and str(out[1]).startswith("inputs[1]: max_length:")
    assert len(calls) == 1 and calls[0]["questions"] == [QS[0], QS[2]]  # checked before the one batched call
    assert asyncio.run(chain.abatch([QS[0], TOO_LONG, QS[2]], return_exceptions=True))[0] == out[0]
    with pytest.raises(ValueError, match=r"^inputs\[1\]: max_length"):
        chain.batch([QS[0], TOO_LONG, QS[2]])
    with pytest.raises(ValueError, match=r"^inputs\[2\]: max_length"):
        asyncio.run(chain.abatch([QS[0], QS[1], TOO_LONG]))


def test_a_slot_that_fails_inside_the_batched_call_is_isolated_by_answering_one_by_one(rag):
    # The frame fits (the cheap check passes) but frame + answer does not, so the batched call's
    # rescoring step fails; the batch then answers each question alone.
    frame = sum(map(len, rag.prompts.frame_ids("x")))
    tight = "Which? " + "y" * (rag.prompts.max_length - frame - len("Which? "))
    assert sum(map(len, rag.prompts.frame_ids(tight))) == rag.prompts.max_length - 1
    chain = lc.ContextFlowRAG(model=rag, max_new_tokens=3)
    out = chain.batch([QS[0], tight, QS[1]], return_exceptions=True)
    assert out[0] == chain.invoke(QS[0]) and out[2] == chain.invoke(QS[1])
    assert isinstance(out[1], ValueError) and str(out[1]).startswith("inputs[1]: max_length:")


def test_gathered_llamaindex_queries_fail_independently(rag):
    engine = li.ContextFlowQueryEngine(rag=rag, max_new_tokens=3)

    async def run():
        return await asyncio.gather(*(engine.aquery(q) for q in (QS[0], TOO_LONG, QS[2])), return_exceptions=True)

    out = asyncio.run(run())
    assert [out[0].response, out[2].response] == [engine.query(QS[0]).response, engine.query(QS[2]).response]
    assert isinstance(out[1], ValueError) and "max_length" in str(out[1])
