"""Fine-tuning from documents alone: finetune_from_vectorstore(store) / finetune_from_index(index) without QA pairs.

Real LangChain and LlamaIndex objects (InMemoryVectorStore, VectorStoreIndex, LangChain's
fake chat model and fake LLM, LlamaIndex's MockLLM and a CustomLLM subclass) write the
questions; the RAG models are tiny and random (the plumbing is under test, not quality).
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

import tiny  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.language_models.fake import FakeListLLM  # noqa: E402
from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata, MockLLM  # noqa: E402
from llama_index.core.llms.callbacks import llm_completion_callback  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from train_tiny import build_rag, tiny_config, tiny_encoder  # noqa: E402

from contextflow_core.config import PromptConfig  # noqa: E402
from contextflow_core.data import QAWriterError, generate_qa, load_qa  # noqa: E402
from contextflow_core.types import Passage  # noqa: E402
from contextflow_integrations.langchain import finetune_from_vectorstore  # noqa: E402
from contextflow_integrations.langchain.qa_writer import LangChainQuestionWriter  # noqa: E402
from contextflow_integrations.llamaindex import finetune_from_index  # noqa: E402
from contextflow_integrations.llamaindex.qa_writer import LlamaIndexQuestionWriter  # noqa: E402

TOWNS = ["Brakton", "Corvel", "Dunmar", "Elsk", "Fenwy", "Gorran", "Hollin", "Ivra", "Jessa", "Kolm"]
TEXTS = [f"{name} was founded in {1201 + i}." for i, name in enumerate(TOWNS)]
IDS = [f"doc-{i}" for i in range(len(TEXTS))]
SHORT_PROMPT = PromptConfig(system_prompt=None, instruction="", user_format="{instruction}{passages}\n{question}",
                            passage_format="{text}", question_format="Q: {question}")
QUIET = {"progress": False}


def _last_passage(prompt: str) -> str:
    return re.findall(r"^Passage: (.*)$", prompt, flags=re.MULTILINE)[-1]


def _question_about(passage: str) -> str:
    return f"Which detail does note {hashlib.sha256(passage.encode()).hexdigest()[:8]} give?"


@pytest.fixture
def store():
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    store.add_texts(TEXTS, metadatas=[{"title": name} for name in TOWNS], ids=IDS)
    return store


def _config(**kwargs):
    return tiny_config(max_steps=2, **kwargs)


# ---------------------------------------------------------------------------- LangChain


def test_finetune_from_vectorstore_without_qa_pairs_writes_questions_with_a_chat_model_and_holds_out_some(store):
    responses = [f"Question: Which year is entry {i} about?" for i in range(len(TEXTS) - 1)] + ["no idea"]
    chat = FakeListChatModel(responses=responses)
    before = {d.id: d.page_content for d in store.get_by_ids(IDS)}
    result = finetune_from_vectorstore(store, question_llm=chat, qa_options={"batch_size": 1, **QUIET},
                                       model=build_rag(num_docs=2), train_config=_config(), batch_size=2)
    generated = result.qa.all.examples
    assert [e.question for e in generated] == [r.split(": ", 1)[1] for r in responses[:-1]]
    assert result.qa_report.kept == 9 and result.qa_report.skipped["unparseable"] == 1
    assert result.qa_report.writer_calls == 10
    for e in generated:  # the gold passage is the document the question was written from
        assert e.answer in result.model.index.get(e.gold_ids[0]).text and e.gold_ids[0] in IDS
    train_src = {e.gold_ids[0] for e in result.qa.train.examples}
    val_src = {e.gold_ids[0] for e in result.qa.val.examples}
    assert len(val_src) == 1 and not train_src & val_src and len(train_src) == 8  # 0.1 of 9 documents, rounded up
    assert result.history.global_step == 2 and result.history.eval, "the held-out pairs are evaluated"
    assert {d.id: d.page_content for d in store.get_by_ids(IDS)} == before  # the store is never modified
    assert result.qa.all.examples[0].metadata["writer"].startswith("langchain:FakeListChatModel:")


def test_cloze_writer_by_name_a_langchain_llm_and_no_hold_out(store, tmp_path):
    result = finetune_from_vectorstore(store, question_llm="cloze", qa_options={"seed": 3, **QUIET},
                                       val_fraction=0, model=build_rag(num_docs=2), train_config=_config())
    assert result.qa.val is None and result.qa.train is result.qa.all and len(result.qa.all) == 10
    assert result.history.eval == []
    assert result.qa.all.examples == generate_qa(result.model.index, "cloze", seed=3, progress=False).examples
    path = result.qa.all.save_jsonl(tmp_path / "qa.jsonl")
    assert load_qa(path) == result.qa.all.examples
    llm = FakeListLLM(responses=[f"How old is place {i}?" for i in range(10)])
    docs = [Document(page_content=t, metadata={"title": n}, id=i) for t, n, i in zip(TEXTS, TOWNS, IDS)]
    out = finetune_from_vectorstore(None, documents=docs, question_llm=llm, qa_options={"batch_size": 1, **QUIET},
                                    val_pairs=[("When was Brakton founded?", "1201")], model=build_rag(num_docs=2),
                                    train_config=_config())
    assert out.qa.val is None and len(out.qa.train) == 10 and out.history.eval
    assert LangChainQuestionWriter(llm)("x").startswith("How old is place")


@pytest.mark.parametrize("kwargs, message", [
    ({"qa_pairs": [("Q?", "A")], "question_llm": "cloze"}, "question_llm: applies when the QA pairs are generated"),
    ({"qa_pairs": [("Q?", "A")], "val_fraction": 0.2}, "val_fraction: applies when the QA pairs are generated"),
    ({"qa_pairs": [("Q?", "A")], "qa_options": {}}, "qa_options: applies when the QA pairs are generated"),
    ({"val_pairs": [("Q?", "A")], "val_fraction": 0.2}, "val_fraction: holds out generated pairs for validation, "
                                                        "got 0.2 together with val_pairs"),
    ({"val_fraction": 1.0}, r"val_fraction: expected a number in \[0, 1\) \(0: no hold-out\), got 1.0"),
    ({"qa_options": {"temperature": 0}}, r"qa_options: unknown key\(s\) \['temperature'\]; expected some of"),
    ({"qa_options": {"writer": "cloze"}}, r"unknown key\(s\) \['writer'\] \(the writer is chosen by question_llm=\)"),
    ({"qa_options": ["sample", 3]}, "qa_options: expected a dict of generate_qa keyword arguments, got list"),
    ({"mode": "in_place", "qa_options": {"sample": 0}},
     r"sample: expected None \(every passage\) or a positive integer, got 0"),
    ({"mode": "in_place", "qa_options": {"stratify_by": "kind", "sample": None}}, "stratify_by: draws `sample`"),
])
def test_generation_options_are_checked_before_any_work(store, kwargs, message):
    with pytest.raises(ValueError, match=message):
        finetune_from_vectorstore(store, model=build_rag(num_docs=2), train_config=_config(), **kwargs)


def test_bad_question_llm_and_a_writer_that_always_fails_are_named(store):
    with pytest.raises(TypeError, match="question_llm: expected None, a writer name .* got int"):
        finetune_from_vectorstore(store, question_llm=3, model=build_rag(num_docs=2))

    def offline(prompt):
        raise ConnectionError("api.example.com unreachable")

    with pytest.raises(QAWriterError, match="offline failed on all 10 prompts; first error: ConnectionError"):
        finetune_from_vectorstore(store, question_llm=offline, qa_options=QUIET, model=build_rag(num_docs=2),
                                  train_config=_config())


# ---------------------------------------------------------------------------- LlamaIndex


class NoteLLM(CustomLLM):
    """A deterministic LlamaIndex LLM: asks which detail the prompt's passage gives."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="note-llm", num_output=16)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
        return CompletionResponse(text=" " + _question_about(_last_passage(prompt)))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs):
        raise NotImplementedError("not used")


def _index() -> VectorStoreIndex:
    nodes = [TextNode(id_=i, text=t, metadata={"title": n}) for i, t, n in zip(IDS, TEXTS, TOWNS)]
    return VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))


def _parts() -> dict:
    return {"encoder": tiny_encoder(), "generator": tiny.tiny_generator(), "tokenizer": tiny.tiny_tokenizer(),
            "prompt": SHORT_PROMPT, "num_docs": 2}


def test_finetune_from_index_without_qa_pairs_writes_questions_with_a_llamaindex_llm():
    result = finetune_from_index(_index(), question_llm=NoteLLM(), qa_options=QUIET, val_fraction=0.2,
                                 train_config=_config(), **_parts())
    generated = result.qa.all.examples
    assert [e.question for e in generated] == [_question_about(t) for t in TEXTS]
    assert [e.gold_ids for e in generated] == [[i] for i in IDS]
    assert result.examples == result.qa.train.examples and len(result.qa.val) == 2
    assert result.retrieval_before["num_questions"] == 8 and result.history.global_step == 2
    assert generated[0].metadata["writer"] == "llamaindex:NoteLLM:note-llm:16"
    assert result.qa_report.kept == 10 and result.qa_report.writer_calls == 10


def test_mock_llm_echoes_the_prompt_so_nothing_parses_and_the_error_shows_the_report():
    with pytest.raises(ValueError, match=r"(?s)question_llm: no generated question/answer pair passed the filters.*"
                                         r"skipped: unparseable\s+10"):
        finetune_from_index(_index(), question_llm=MockLLM(), qa_options=QUIET, train_config=_config(), **_parts())
    assert LlamaIndexQuestionWriter(MockLLM(max_tokens=2))("anything") == "text text"


def test_generated_llamaindex_file_trains_through_finetune_from_index(tmp_path):
    generated = generate_qa([Passage(i, t, title=n) for i, t, n in zip(IDS, TEXTS, TOWNS)], "cloze", progress=False)
    path = generated.save_llamaindex(tmp_path / "qa.json")
    result = finetune_from_index(None, str(path), train_config=_config(), **_parts())
    assert sorted(result.model.index.ids) == sorted(IDS)  # the layout's corpus is the collection
    assert [(e.question, e.answer, e.gold_ids) for e in result.examples] == [
        (e.question, e.answer, e.gold_ids) for e in generated.examples]
    data = json.loads(path.read_text())
    assert data["mode"] == "text" and data["contextflow"]["kind"] == "generated_qa"


def test_llamaindex_generation_arguments_are_checked():
    with pytest.raises(ValueError, match="answers: answers the queries of given qa_pairs/val_pairs, got it with"):
        finetune_from_index(_index(), answers={"q0": "a"}, train_config=_config(), **_parts())
    with pytest.raises(ValueError, match="question_llm: applies when the QA pairs are generated"):
        finetune_from_index(_index(), [("Q?", "A")], question_llm=NoteLLM(), **_parts())
    with pytest.raises(TypeError, match="question_llm: expected None, a writer name .* a LlamaIndex LLM"):
        finetune_from_index(_index(), question_llm=object(), **_parts())


# ---------------------------------------------------------------------------- in place: questions from the store's rows


def _store_parts() -> dict:
    return {"encoder": tiny_encoder(0), "generator": tiny.tiny_generator(seed=0, hidden=32),
            "tokenizer": tiny.tiny_tokenizer(), "prompt": SHORT_PROMPT, "num_docs": 2,
            "train_config": tiny_config(max_steps=2, learning_rate=2e-2)}


def _params(module) -> dict:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before: dict, module) -> bool:
    return any(not torch.equal(before[n], p) for n, p in module.named_parameters())


def _town_passages() -> list:
    return [Passage(i, t, title=n) for i, t, n in zip(IDS, TEXTS, TOWNS, strict=True)]


def test_in_place_without_qa_pairs_writes_from_the_in_memory_store_rows_and_trains_the_question_side():
    from contextflow_integrations.langchain import ContextFlowEmbeddings

    store = InMemoryVectorStore(ContextFlowEmbeddings(tiny_encoder(0)))
    store.add_texts(TEXTS, metadatas=[{"title": name} for name in TOWNS], ids=IDS)
    stored = {i: list(r["vector"]) for i, r in store.store.items()}
    parts = _store_parts()
    start = _params(parts["encoder"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a store under the default cap: every row, no warning
        result = finetune_from_vectorstore(store, mode="in_place", question_llm="cloze",
                                           qa_options={"seed": 3, **QUIET}, val_fraction=0.2, **parts)
    # the rows became passages as the copy path would make them (id, text, title): the same pairs
    assert result.qa.all.examples == generate_qa(_town_passages(), "cloze", seed=3, progress=False).examples
    report = result.qa_report
    assert (report.passages, report.sampled, report.kept) == (10, 10, 10)
    assert len({e.gold_ids[0] for e in result.qa.val.examples}) == 2 and result.history.eval
    assert not {e.gold_ids[0] for e in result.qa.train.examples} & {e.gold_ids[0] for e in result.qa.val.examples}
    assert result.history.global_step == 2 and result.documents == [] and result.model.store is not None
    assert _changed(start, result.model.question_encoder) and not _changed(start, result.model.context_encoder)
    assert {i: list(r["vector"]) for i, r in store.store.items()} == stored  # nothing re-embedded or written


def _milvus_backend(path, encoder, n_rows: int = 10):
    from pymilvus import MilvusClient

    from contextflow_core.retrieval.store import StoreRows
    from contextflow_integrations.stores import MilvusBackend

    texts = [f"{TOWNS[i % 10]} {i} was founded in {1201 + i}." for i in range(n_rows)]
    ids = [f"row-{i}" for i in range(n_rows)]
    backend = MilvusBackend.create(MilvusClient(str(path)), "docs", encoder.dim, metric="IP",
                                   embedding_model=encoder.name)
    backend.upsert(StoreRows(ids, encoder.encode(texts).numpy(), texts,
                             [{"title": TOWNS[i % 10], "kind": "a" if i % 4 else "b"} for i in range(n_rows)]))
    return backend, ids, texts


def test_in_place_without_qa_pairs_over_milvus_lite_samples_rows_deterministically(tmp_path):
    from contextflow_core.data.qa_store import store_passages

    parts = _store_parts()
    backend, ids, texts = _milvus_backend(tmp_path / "m.db", parts["encoder"], n_rows=24)
    stored = backend.get(ids).vectors.copy()
    start = _params(parts["encoder"])
    prompts = []

    def writer(prompt):  # a deterministic writer: one question per passage it is shown
        prompts.append(prompt)
        return "Question: " + _question_about(_last_passage(prompt))

    result = finetune_from_vectorstore(backend, mode="in_place", question_llm=writer,
                                       qa_options={"sample": 6, "seed": 5, **QUIET}, val_fraction=0, **parts)
    expected, seen = store_passages(backend, 6, seed=5)  # the same seeded reservoir over iter_rows
    assert seen == 24 and len(expected) == 6
    assert [e.gold_ids[0] for e in result.qa.all.examples] == [p.id for p in expected]
    assert [e.question for e in result.qa.all.examples] == [_question_about(p.text) for p in expected]
    assert len(prompts) == 6 and all(p.title == TOWNS[ids.index(p.id) % 10] for p in expected)
    assert (result.qa_report.passages, result.qa_report.sampled, result.qa_report.kept) == (24, 6, 6)
    assert result.qa.val is None and result.history.global_step == 2
    assert _changed(start, result.model.question_encoder) and not _changed(start, result.model.context_encoder)
    np.testing.assert_array_equal(backend.get(ids).vectors, stored)  # the store is untouched
    other, _ = store_passages(backend, 6, seed=6)
    assert [p.id for p in other] != [p.id for p in expected]  # the seed picks the rows
    strata, _ = store_passages(backend, 2, stratify_by="kind", seed=0)  # up to 2 rows per value, bounded
    assert sorted(p.metadata["kind"] for p in strata) == ["a", "a", "b", "b"]


class _Stream:
    """A batch that counts the items read from it (a sampler must skip what it does not keep)."""

    reads = 0

    def __init__(self, start: int, size: int) -> None:
        self.start, self.size = start, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> int:
        _Stream.reads += 1
        return self.start + i


def test_reservoir_sample_is_seeded_bounded_uniform_and_skips_unpicked_items():
    from contextflow_core.data.qa_store import reservoir_sample

    _Stream.reads = 0
    items, seen = reservoir_sample((_Stream(s, 1000) for s in range(0, 200_000, 1000)), 10, seed=1)
    assert seen == 200_000 and len(items) == 10 and items == sorted(set(items))
    assert _Stream.reads < 200, "items between the picked positions are not read"
    assert reservoir_sample((_Stream(s, 1000) for s in range(0, 200_000, 1000)), 10, seed=1)[0] == items
    assert reservoir_sample((_Stream(s, 1000) for s in range(0, 200_000, 1000)), 10, seed=2)[0] != items
    assert reservoir_sample([[1, 2], [3]], 5, seed=0) == ([1, 2, 3], 3)  # a short stream: everything
    counts = Counter()
    for seed in range(3000):  # every position equally likely: 3000 * 3 / 12 = 750 each
        counts.update(reservoir_sample([list(range(0, 5)), list(range(5, 9)), list(range(9, 12))], 3, seed)[0])
    chi2 = sum((counts[i] - 750) ** 2 / 750 for i in range(12))
    assert chi2 < 31.3, chi2  # chi-square, 11 degrees of freedom, p = 0.001


def test_store_generation_caps_a_large_store_and_says_how_to_change_it():
    from contextflow_core.data.qa_store import DEFAULT_STORE_SAMPLE, generate_store_training_qa
    from contextflow_core.retrieval.store import InMemoryBackend

    n = DEFAULT_STORE_SAMPLE + 200
    backend = InMemoryBackend([f"r{i}" for i in range(n)], np.ones((n, 2), dtype=np.float32),
                              [f"Row {i} was filed in {1000 + i}." for i in range(n)])
    with pytest.warns(UserWarning, match=r"questions are written for 1000 of the store's 1200 rows .* pass "
                                         r"qa_options=\{'sample': n\}"):
        qa = generate_store_training_qa(backend, "cloze", qa_options=QUIET, val_fraction=0, has_val_pairs=False,
                                        seed=0)
    assert (qa.all.report.passages, qa.all.report.sampled) == (n, DEFAULT_STORE_SAMPLE)
    assert len({e.gold_ids[0] for e in qa.all.examples}) == len(qa.all.examples) > 900


class _NoRows:
    """A search-only backend: the required protocol, no iter_rows."""

    def __init__(self, backend) -> None:
        self._backend, self.dim, self.name = backend, backend.dim, "search-only:docs"

    def search(self, query_vectors, k):
        return self._backend.search(query_vectors, k)

    def count(self):
        return self._backend.count()


def test_a_backend_without_iter_rows_is_refused_by_name_in_both_helpers():
    from contextflow_core.retrieval.store import InMemoryBackend

    backend = _NoRows(InMemoryBackend.from_texts(TEXTS, tiny_encoder(0), ids=IDS))
    message = r"needs a backend with iter_rows\(\), got 'search-only:docs' \(_NoRows\) without it; pass qa_pairs="
    with pytest.raises(ValueError, match="vectorstore: writing QA pairs from the store's rows " + message):
        finetune_from_vectorstore(backend, mode="in_place", question_llm="cloze", **_store_parts())
    with pytest.raises(ValueError, match="index_or_vector_store: writing QA pairs from the store's rows " + message):
        finetune_from_index(backend, mode="in_place", question_llm="cloze", **_store_parts())


def test_finetune_from_index_in_place_without_qa_pairs_writes_from_the_plain_node_text():
    from contextflow_integrations.llamaindex import ContextFlowEmbedding

    nodes = [TextNode(id_=i, text=t, metadata={"title": n}) for i, t, n in zip(IDS, TEXTS, TOWNS, strict=True)]
    index = VectorStoreIndex(nodes, embed_model=ContextFlowEmbedding(tiny_encoder(0)))
    stored = dict(index.vector_store.data.embedding_dict)
    result = finetune_from_index(index, mode="in_place", question_llm=NoteLLM(), qa_options=QUIET,
                                 val_fraction=0.2, **_store_parts())
    # NoteLLM asks about the prompt's passage line: the plain text, not LlamaIndex's "title: ...\n\n<text>"
    assert [e.question for e in result.qa.all.examples] == [_question_about(t) for t in TEXTS]
    assert [e.gold_ids for e in result.qa.all.examples] == [[i] for i in IDS]
    assert result.examples == result.qa.train.examples and len(result.qa.val) == 2
    assert result.retrieval_before["num_questions"] == 8 and result.retrieval_after is not None
    assert result.qa_report.passages == 10 and result.history.global_step == 2
    assert index.vector_store.data.embedding_dict == stored


def test_question_writing_follows_the_train_configs_progress_setting_unless_qa_options_say(store, capsys):
    finetune_from_vectorstore(store, question_llm="cloze", val_fraction=0, model=build_rag(num_docs=2),
                              train_config=_config(progress=False))
    assert "writing questions" not in capsys.readouterr().err
    finetune_from_index(_index(), question_llm="cloze", val_fraction=0, train_config=_config(progress=False),
                        **_parts())
    assert "writing questions" not in capsys.readouterr().err
    finetune_from_vectorstore(store, question_llm="cloze", val_fraction=0, qa_options={"progress": True},
                              model=build_rag(num_docs=2), train_config=_config(progress=False))
    assert "writing questions" in capsys.readouterr().err
