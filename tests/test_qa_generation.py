"""generate_qa: the writer protocol, every filter (counted), sampling, determinism, the cache, the files, the CLI.

The writers here are deterministic fakes (plain callables: the protocol is "any callable
prompt -> text"), a rule-based `ClozeWriter`, and, in one `embedded` test, the real
SmolLM2 writer. Retrieval for the round-trip filter runs on tiny random encoders.
"""
from __future__ import annotations

import json
import re

import pytest
import tiny
import torch
from train_tiny import tiny_encoder

from contextflow_core import cli
from contextflow_core.data import (
    QAExample,
    QAFilters,
    QAGenerationResult,
    QAWriterError,
    generate_qa,
    load_passages,
    load_qa,
)
from contextflow_core.data.qa_cache import ReplyCache
from contextflow_core.data.qa_filters import near_duplicates
from contextflow_core.data.qa_generation import resolve_writer
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.retrieval.retriever import Retriever
from contextflow_core.types import Passage

TEMPLATE = "Name: {title}\nPassage: {passage}\nAnswer: {answer}\nQuestion:"
ABSTRACT = "Name: {title}\nPassage: {passage}\nQuestion:"
YEARS = iter(range(1201, 1300))


def town(name: str, year: int, **metadata) -> Passage:
    """A passage whose only answer span is its year (the title, its name, is never an answer)."""
    return Passage(id=f"id-{name}", text=f"{name} was founded in {year}.", title=name, metadata=metadata)


def _field(prompt: str, name: str) -> str:
    return re.findall(rf"^{name}: (.*)$", prompt, flags=re.MULTILINE)[-1]


class FakeWriter:
    """Deterministic writer: the passage's name says how it behaves; records every prompt."""

    def __init__(self, behaviours: dict[str, str] | None = None, fail_after: int | None = None):
        self.behaviours, self.fail_after, self.prompts = behaviours or {}, fail_after, []

    def __call__(self, prompt: str):
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise KeyboardInterrupt  # the user pressed Ctrl-C half way
        self.prompts.append(prompt)
        name, answer = _field(prompt, "Name"), _field(prompt, "Answer")
        kind = self.behaviours.get(name, "good")
        replies = {"good": f"When was {name} founded?", "empty": "   ", "chatty": "I cannot help with that.",
                   "ramble": "x" * 3000, "number": 42, "leak": f"Was {name} founded in {answer}?",
                   "dup": "When was Brakton founded?"}
        if kind == "raise":
            raise RuntimeError("quota exceeded")
        return replies[kind]


def _pairs(result: QAGenerationResult) -> list[tuple[str, str, list[str]]]:
    return [(e.question, e.answer, e.gold_ids) for e in result.examples]


# ---------------------------------------------------------------------------- the writer protocol and filters


def test_bad_writer_output_is_skipped_and_counted_never_fatal():
    kinds = {"Brakton": "good", "Corvel": "raise", "Dunmar": "empty", "Elsk": "chatty", "Fenwy": "ramble",
             "Gorran": "number", "Hollin": "leak", "Ivra": "dup"}
    passages = [town(name, 1201 + i) for i, name in enumerate(kinds)]
    writer = FakeWriter(kinds)
    result = generate_qa(passages, writer, template=TEMPLATE, progress=False)
    assert _pairs(result) == [("When was Brakton founded?", "1201", ["id-Brakton"])]
    report = result.report
    assert (report.passages, report.sampled, report.prompts, report.writer_calls, report.cached) == (8, 8, 8, 8, 0)
    assert report.replies == 6 and report.kept == 1
    assert report.skipped == {"no_answer_span": 0, "writer_error": 1, "not_text": 1, "empty": 1, "over_long": 1,
                              "unparseable": 1, "answer_not_in_passage": 0, "question_contains_answer": 1,
                              "duplicate": 1, "round_trip_miss": 0}
    assert report.first_error == "RuntimeError: quota exceeded"
    assert report.pairs_per_s > 0 and "skipped: duplicate" in report.format()
    assert result.examples[0].metadata == {"source": "contextflow.generate_qa", "mode": "extractive",
                                           "writer": writer_identity_of(writer), "passage_id": "id-Brakton",
                                           "qa_id": "id-Brakton#0"}


def writer_identity_of(writer) -> str:
    return f"{type(writer).__module__}.{type(writer).__qualname__}"


def test_filters_can_be_turned_off_and_over_long_questions_are_dropped():
    passages = [town("Brakton", 1201), town("Hollin", 1202), town("Ivra", 1203)]
    kinds = {"Hollin": "leak", "Ivra": "dup"}
    loose = generate_qa(passages, FakeWriter(kinds), template=TEMPLATE, progress=False,
                        filters=QAFilters(question_without_answer=False, dedupe=False))
    assert [q for q, _, _ in _pairs(loose)] == ["When was Brakton founded?", "Was Hollin founded in 1202?",
                                                "When was Brakton founded?"]
    short = generate_qa(passages, FakeWriter(kinds), template=TEMPLATE, progress=False,
                        filters=QAFilters(max_question_chars=26))  # 25, 27 and 25 characters
    assert short.report.skipped["over_long"] == 1 and short.report.skipped["duplicate"] == 1
    assert [q for q, _, _ in _pairs(short)] == ["When was Brakton founded?"]


def test_abstractive_mode_parses_question_and_answer_and_checks_the_answer_is_in_the_passage():
    passages = [town("Brakton", 1201), town("Corvel", 1202)]

    def writer(prompt):  # answers Corvel with a year that is not in its passage
        name = _field(prompt, "Name")
        return f"When was {name} founded?\nAnswer: {1201 if name == 'Brakton' else 1999}"

    result = generate_qa(passages, writer, mode="abstractive", template=ABSTRACT, progress=False)
    assert _pairs(result) == [("When was Brakton founded?", "1201", ["id-Brakton"])]
    assert result.report.skipped["answer_not_in_passage"] == 1 and result.examples[0].metadata["mode"] == "abstractive"
    free = generate_qa(passages, writer, mode="abstractive", template=ABSTRACT, progress=False,
                       filters=QAFilters(answer_in_passage=False))
    assert [a for _, a, _ in _pairs(free)] == ["1201", "1999"]


def test_abstractive_repeats_of_one_prompt_are_separate_calls_and_separate_cache_entries(tmp_path):
    calls = []

    def sampling_writer(prompt):  # a writer that samples: the same prompt gives a new question each time
        calls.append(prompt)
        return f"Which fact number {len(calls)} is stated?\nAnswer: 1201"

    kwargs = dict(mode="abstractive", template=ABSTRACT, num_questions_per_passage=3, cache=tmp_path / "c.jsonl",
                  progress=False)
    result = generate_qa([town("Brakton", 1201)], sampling_writer, **kwargs)
    assert len(calls) == 3 and len(set(calls)) == 1 and result.report.kept == 3
    assert [e.metadata["qa_id"] for e in result.examples] == ["id-Brakton#0", "id-Brakton#1", "id-Brakton#2"]
    rerun = generate_qa([town("Brakton", 1201)], sampling_writer, **kwargs)
    assert len(calls) == 3 and rerun.report.cached == 3 and _pairs(rerun) == _pairs(result)


def test_passages_without_an_answer_span_are_counted_and_several_questions_per_passage():
    passages = [Passage("a", "Ilo Varn founded Tarsk in 1204.", title="Tarsk"), Passage("b", "and so on.")]
    result = generate_qa(passages, "cloze", num_questions_per_passage=3, progress=False)
    assert result.report.skipped["no_answer_span"] == 1
    assert result.report.prompts == 2 and sorted(a for _, a, _ in _pairs(result)) == ["1204", "Ilo Varn"]
    assert [e.metadata["qa_id"] for e in result.examples] == ["a#0", "a#1"]


def test_batch_method_is_used_and_a_failed_prompt_in_a_batch_counts_alone():
    class BatchWriter:
        cache_id = "batch-writer-v1"

        def __init__(self):
            self.batches = []

        def __call__(self, prompt):
            raise AssertionError("batch() should be used")

        def batch(self, prompts):
            self.batches.append(len(prompts))
            return [ValueError("bad prompt") if "Corvel" in p else f"When was {_field(p, 'Name')} founded?"
                    for p in prompts]

    names = ["Brakton", "Corvel", "Dunmar", "Elsk", "Fenwy"]
    writer = BatchWriter()
    result = generate_qa([town(n, 1201 + i) for i, n in enumerate(names)], writer, template=TEMPLATE, batch_size=2,
                         progress=False)
    assert writer.batches == [2, 2, 1]
    assert result.report.skipped["writer_error"] == 1 and result.report.kept == 4
    assert result.examples[0].metadata["writer"] == "batch-writer-v1"

    class ShortBatch(BatchWriter):
        def batch(self, prompts):
            return ["When was it founded?"]  # one reply for two prompts

    with pytest.raises(QAWriterError, match=r"writer: batch-writer-v1 failed on all 2 prompts; first error: "
                                            r"ValueError: writer.batch returned 1 replies for 2 prompts"):
        generate_qa([town("Brakton", 1201), town("Corvel", 1202)], ShortBatch(), template=TEMPLATE, progress=False)


def test_a_writer_failing_on_every_prompt_is_an_error_naming_it_and_its_first_error():
    def broken(prompt):
        raise ConnectionError("no route to host")

    with pytest.raises(QAWriterError, match=r"broken failed on all 2 prompts; first error: ConnectionError: "
                                            r"no route to host"):
        generate_qa([town("Brakton", 1201), town("Corvel", 1202)], broken, progress=False)
    with pytest.raises(QAWriterError, match="returned NoneType, not str"):
        generate_qa([town("Brakton", 1201)], lambda p: None, progress=False)


def test_near_duplicates_uses_token_jaccard_with_the_documented_threshold():
    questions = ["What is the capital of Quenia?", "what is the capital of quenia", "What is the capital of Tarsk?",
                 "Capital of Quenia: what is the?", "Who founded Tarsk?"]
    assert near_duplicates(questions, 0.8) == [False, True, False, True, False]
    assert near_duplicates(questions, 0.7) == [False, True, True, True, False]  # 5/7 = 0.71 >= 0.7


def test_round_trip_keeps_only_pairs_whose_source_is_in_the_frozen_retrievers_top_k():
    passages = [town(n, 1201 + i) for i, n in enumerate(["Brakton", "Corvel", "Dunmar", "Elsk", "Fenwy", "Gorran"])]
    encoder = tiny_encoder()
    index = DocumentIndex.from_passages(passages, encoder, show_progress=False)
    retriever = Retriever(index, encoder, k=3)
    everything = generate_qa(passages, FakeWriter(), template=TEMPLATE, progress=False)
    top1 = retriever.retrieve([e.question for e in everything.examples], 1).ids
    expected = [e.question for e, ids in zip(everything.examples, top1) if e.gold_ids[0] == ids[0]]
    assert 0 < len(expected) < len(passages), "the tiny random encoder should rank some sources first, not all"
    before = [p.requires_grad for p in encoder.parameters()], encoder.training
    kept = generate_qa(passages, FakeWriter(), template=TEMPLATE, progress=False,
                       filters=QAFilters(round_trip=retriever, round_trip_k=1))
    assert [e.question for e in kept.examples] == expected
    assert kept.report.skipped["round_trip_miss"] == len(passages) - len(expected)
    assert ([p.requires_grad for p in encoder.parameters()], encoder.training) == before
    rag = RAGSequence(encoder, index, tiny.tiny_tokenizer(), tiny.tiny_generator(), num_docs=2)
    via_rag = generate_qa(rag, FakeWriter(), template=TEMPLATE, progress=False,
                          filters=QAFilters(round_trip=rag, round_trip_k=1))
    assert [e.question for e in via_rag.examples] == expected
    all_in = generate_qa(passages, FakeWriter(), template=TEMPLATE, progress=False,
                         filters=QAFilters(round_trip=rag, round_trip_k=100))
    assert all_in.report.kept == len(passages)


# ---------------------------------------------------------------------------- sampling and determinism


def test_sampler_all_random_n_and_stratified_by_metadata():
    kinds = ["a"] * 6 + ["b"] * 2 + ["c"]
    passages = [town(f"Town{i}", 1201 + i, kind=k) for i, k in enumerate(kinds)]
    passages.append(town("Nokind", 1299))
    every = generate_qa(passages, FakeWriter(), template=TEMPLATE, progress=False)
    assert every.report.sampled == 10
    some = generate_qa(passages, FakeWriter(), template=TEMPLATE, sample=4, seed=1, progress=False)
    ids = [e.gold_ids[0] for e in some.examples]
    assert len(set(ids)) == 4 and ids == sorted(ids, key=[p.id for p in passages].index)  # original order
    assert some.report.sampled == 4 and some.report.passages == 10
    others = {tuple(e.gold_ids[0] for e in generate_qa(passages, FakeWriter(), template=TEMPLATE, sample=4,
                                                       seed=s, progress=False).examples) for s in range(5)}
    assert len(others) > 1, "different seeds should draw different passages"
    by_kind = {p.id: p.metadata.get("kind", "none") for p in passages}
    for n, expected in ((4, ["a", "b", "c", "none"]), (6, ["a", "a", "b", "b", "c", "none"])):
        strat = generate_qa(passages, FakeWriter(), template=TEMPLATE, sample=n, stratify_by="kind", progress=False)
        assert sorted(by_kind[e.gold_ids[0]] for e in strat.examples) == expected
    with pytest.raises(ValueError, match=r"stratify_by: draws `sample` passages evenly .* got sample=None"):
        generate_qa(passages, FakeWriter(), stratify_by="kind", progress=False)


def test_same_seed_same_pairs_same_order_and_same_prompts():
    passages = [Passage(f"p{i}", f"Talvo Brenn{i} founded Dorak Mills {i} in {1800 + i} with 3{i} men.")
                for i in range(8)]
    runs = []
    for _ in range(2):
        writer = FakeWriter()
        result = generate_qa(passages, writer, template=TEMPLATE, num_questions_per_passage=2, sample=5, seed=7,
                             filters=QAFilters(dedupe=False), progress=False)
        runs.append((_pairs(result), writer.prompts))
    assert runs[0] == runs[1] and len(runs[0][0]) == 10
    other = generate_qa(passages, "cloze", num_questions_per_passage=2, sample=5, seed=8, progress=False)
    assert _pairs(other) != _pairs(generate_qa(passages, "cloze", num_questions_per_passage=2, sample=5, seed=7,
                                               progress=False))


# ---------------------------------------------------------------------------- the cache


def test_cache_resumes_an_interrupted_run_and_a_rerun_makes_no_writer_calls(tmp_path):
    passages = [town(f"Town{i}", 1201 + i) for i in range(10)]
    cache = tmp_path / "sub" / "qa_cache.jsonl"
    interrupted = FakeWriter(fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        generate_qa(passages, interrupted, template=TEMPLATE, cache=cache, batch_size=2, progress=False)
    assert len(ReplyCache(cache)) == 4  # two full batches were written before Ctrl-C
    resumed = FakeWriter()
    result = generate_qa(passages, resumed, template=TEMPLATE, cache=cache, batch_size=2, progress=False)
    assert len(resumed.prompts) == 6 and result.report.cached == 4 and result.report.writer_calls == 6
    fresh = generate_qa(passages, FakeWriter(), template=TEMPLATE, progress=False)
    assert _pairs(result) == _pairs(fresh)
    again = FakeWriter()
    rerun = generate_qa(passages, again, template=TEMPLATE, cache=cache, progress=False)
    assert again.prompts == [] and rerun.report.writer_calls == 0 and rerun.report.cached == 10
    assert _pairs(rerun) == _pairs(fresh)
    other_writer = generate_qa(passages, "cloze", template=TEMPLATE, cache=cache, progress=False)
    assert other_writer.report.writer_calls == 10, "the writer's identity is part of the key"


def test_a_torn_last_line_is_dropped_and_only_its_prompt_is_asked_again(tmp_path):
    passages = [town(f"Town{i}", 1201 + i) for i in range(4)]
    cache = tmp_path / "cache.jsonl"
    generate_qa(passages, FakeWriter(), template=TEMPLATE, cache=cache, progress=False)
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) - 25])  # the run died while writing the last record
    writer = FakeWriter()
    result = generate_qa(passages, writer, template=TEMPLATE, cache=cache, progress=False)
    assert len(writer.prompts) == 1 and result.report.cached == 3 and result.report.kept == 4
    assert cache.read_bytes().endswith(b"\n") and len(cache.read_text().splitlines()) == 5  # header + 4
    writer = FakeWriter()
    generate_qa(passages, writer, template=TEMPLATE, cache=cache, progress=False)
    assert writer.prompts == []


def test_a_cache_path_that_is_not_a_contextflow_cache_is_refused_and_left_untouched(tmp_path):
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('{"my": "data"}\n')
    with pytest.raises(ValueError, match=r"cache: cache file .*notes.jsonl' is not a ContextFlow QA cache"):
        generate_qa([town("Brakton", 1201)], FakeWriter(), template=TEMPLATE, cache=foreign, progress=False)
    assert foreign.read_text() == '{"my": "data"}\n'
    broken = tmp_path / "broken.jsonl"
    generate_qa([town("Brakton", 1201), town("Corvel", 1202)], FakeWriter(), template=TEMPLATE, cache=broken,
                progress=False)
    lines = broken.read_text().splitlines()
    broken.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"cache: invalid JSON in cache file .*broken.jsonl', line 2"):
        generate_qa([town("Brakton", 1201)], FakeWriter(), template=TEMPLATE, cache=broken, progress=False)


# ---------------------------------------------------------------------------- files and split


def test_save_jsonl_round_trips_through_load_qa_and_refuses_foreign_files(tmp_path):
    passages = [town(f"Town{i}", 1201 + i) for i in range(4)]
    result = generate_qa(passages, FakeWriter(), template=TEMPLATE, progress=False)
    path = result.save_jsonl(tmp_path / "qa.jsonl")
    assert load_qa(path) == result.examples and all(isinstance(e, QAExample) for e in load_qa(path))
    result.save_jsonl(path)  # replacing its own file is fine
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"question": "q?", "answer": "a"}\n')
    with pytest.raises(FileExistsError, match=r"save_jsonl: .*mine.jsonl' exists and was not written by generate_qa"):
        result.save_jsonl(mine)
    assert mine.read_text() == '{"question": "q?", "answer": "a"}\n'


def _embedding_qa_dataset_class():
    """LlamaIndex's EmbeddingQAFinetuneDataset (llama-index-finetuning), else the same class written out."""
    try:
        from llama_index.finetuning import EmbeddingQAFinetuneDataset

        return EmbeddingQAFinetuneDataset
    except ImportError:
        pass
    from llama_index.core.bridge.pydantic import BaseModel

    class EmbeddingQAFinetuneDataset(BaseModel):  # llama_index/finetuning/embeddings/common.py, verbatim layout
        queries: dict[str, str]
        corpus: dict[str, str]
        relevant_docs: dict[str, list[str]]
        mode: str = "text"

        @classmethod
        def from_json(cls, path):
            with open(path) as f:
                data = json.load(f)
            return cls(**data)

    return EmbeddingQAFinetuneDataset


def test_save_llamaindex_is_read_by_embedding_qa_finetune_dataset(tmp_path):
    pytest.importorskip("llama_index.core")
    passages = [town(f"Town{i}", 1201 + i) for i in range(4)] + [Passage("empty", "and so on.")]
    result = generate_qa(passages, FakeWriter(), template=TEMPLATE, progress=False)
    path = result.save_llamaindex(tmp_path / "qa.json")
    dataset = _embedding_qa_dataset_class().from_json(str(path))
    assert list(dataset.queries.values()) == [e.question for e in result.examples]
    assert dataset.corpus == {p.id: p.text for p in passages}  # every passage: distractors included
    assert {q: docs for q, docs in dataset.relevant_docs.items()} == {
        e.metadata["qa_id"]: e.gold_ids for e in result.examples}
    assert dataset.mode == "text"
    assert json.loads(path.read_text())["answers"] == {e.metadata["qa_id"]: e.answer for e in result.examples}
    foreign = tmp_path / "other.json"
    foreign.write_text("{}")
    with pytest.raises(FileExistsError, match="save_llamaindex: .*other.json' exists"):
        result.save_llamaindex(foreign)


def test_split_holds_out_whole_source_passages_deterministically():
    passages = [Passage(f"p{i}", f"Talvo Brenn{i} founded Dorak Mills {i} in {1800 + i}.") for i in range(10)]
    result = generate_qa(passages, "cloze", num_questions_per_passage=2, progress=False)
    train, val = result.split(0.3, seed=1)
    train_src, val_src = {e.gold_ids[0] for e in train.examples}, {e.gold_ids[0] for e in val.examples}
    assert len(val_src) == 3 and not train_src & val_src and train_src | val_src == {p.id for p in passages}
    assert len(train) + len(val) == len(result) and train.report is result.report
    assert [e.question for e in result.split(0.3, seed=1)[1].examples] == [e.question for e in val.examples]
    for bad in (0, 1, 1.5, "0.1", True):
        with pytest.raises(ValueError, match=r"val_fraction: expected a number in \(0, 1\)"):
            result.split(bad)
    one = generate_qa(passages[:1], "cloze", progress=False)
    with pytest.raises(ValueError, match="needs pairs from at least 2 passages, got 1"):
        one.split(0.5)


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("kwargs, error, message", [
    ({"mode": "free"}, ValueError, r"mode: expected one of \['abstractive', 'extractive'\], got 'free'"),
    ({"template": "Passage: {passage}"}, ValueError, r"template: extractive mode .* missing \['answer'\]"),
    ({"template": "{passage} {answer} {topic}"}, ValueError, r"got unknown \['topic'\]"),
    ({"template": "{passage} {answer}", "mode": "abstractive"}, ValueError, r"got unknown \['answer'\]"),
    ({"template": 3}, ValueError, "template: expected a str.format template, got int"),
    ({"num_questions_per_passage": 0}, ValueError, "num_questions_per_passage: expected a positive integer, got 0"),
    ({"sample": 0}, ValueError, r"sample: expected None \(every passage\) or a positive integer, got 0"),
    ({"batch_size": 1.5}, ValueError, "batch_size: expected a positive integer, got 1.5"),
    ({"seed": "1"}, ValueError, "seed: expected an integer, got '1'"),
    ({"progress": "no"}, ValueError, "progress: expected True or False, got 'no'"),
    ({"filters": {"dedupe": False}}, ValueError, "filters: expected a QAFilters"),
    ({"writer": "gpt"}, ValueError, r"writer: expected one of \['cloze', 'embedded'\] or a callable"),
    ({"writer": FakeWriter}, TypeError, r"writer: expected a writer object, got the class FakeWriter"),
    ({"writer": 5}, TypeError, "writer: expected None, a name"),
    ({"cache": "."}, ValueError, "cache: expected a file path, got the folder"),
    ({"temperature": 0.5}, TypeError, "unexpected keyword argument 'temperature'"),
])
def test_bad_arguments_are_errors_naming_the_argument(kwargs, error, message):
    kwargs = {"writer": FakeWriter(), "progress": False, **kwargs}
    with pytest.raises(error, match=message):
        generate_qa([town("Brakton", 1201)], **kwargs)


@pytest.mark.parametrize("passages, error, message", [
    ("Brakton was founded in 1201.", TypeError, "passages: expected a list of str, .* got a single str"),
    ([], ValueError, "passages: expected at least one passage, got none"),
    ([Passage("a", "x 1"), Passage("a", "y 2")], ValueError, "ids must be unique, got 'a' at positions 0 and 1"),
    ([1, 2], TypeError, r"passages\[0\]: expected a str or a Passage, got int"),
    ({"a": "text"}, TypeError, "passages: expected a list of str"),
])
def test_bad_passages_are_errors_naming_them(passages, error, message):
    with pytest.raises(error, match=message):
        generate_qa(passages, FakeWriter(), progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"dedupe_threshold": 0}, r"QAFilters.dedupe_threshold: expected a number in \(0, 1\], got 0"),
    ({"dedupe": "yes"}, "QAFilters.dedupe: expected True or False, got 'yes'"),
    ({"max_question_chars": 0}, "QAFilters.max_question_chars: expected a positive integer, got 0"),
    ({"round_trip": "bm25"}, "QAFilters.round_trip: expected None, a RAGSequence or a Retriever with a question"),
])
def test_bad_filters_are_errors_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QAFilters(**kwargs)


def test_passages_from_strings_a_document_index_and_a_rag_sequence():
    texts = ["Brakton was founded in 1201.", "Corvel was founded in 1202."]
    assert [e.gold_ids for e in generate_qa(texts, "cloze", progress=False).examples] == [["0"], ["1"]]
    index = DocumentIndex.from_texts(texts, tiny_encoder(), ids=["x", "y"], show_progress=False)
    assert [e.gold_ids for e in generate_qa(index, "cloze", progress=False).examples] == [["x"], ["y"]]
    rag = RAGSequence(tiny_encoder(), index, tiny.tiny_tokenizer(), tiny.tiny_generator(), num_docs=2)
    assert [e.gold_ids for e in generate_qa(rag, "cloze", progress=False).examples] == [["x"], ["y"]]


# ---------------------------------------------------------------------------- CLI


def test_cli_qa_generate_writes_both_formats_uses_the_cache_and_refuses_foreign_outputs(tmp_path, capsys):
    rows = [{"id": f"t{i}", "text": f"Talvo Brenn{i} founded Dorak Mills {i} in {1800 + i}.", "title": f"Mills {i}"}
            for i in range(6)]
    passages = tmp_path / "passages.jsonl"
    passages.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, li, cache = tmp_path / "qa.jsonl", tmp_path / "qa_li.json", tmp_path / "cache.jsonl"
    argv = ["qa", "generate", "--passages", str(passages), "--out", str(out), "--writer", "cloze", "--sample", "4",
            "--seed", "3", "--num-questions-per-passage", "2", "--cache", str(cache), "--llamaindex-out", str(li),
            "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    expected = generate_qa(load_passages(passages), "cloze", sample=4, seed=3, num_questions_per_passage=2,
                           progress=False)
    assert load_qa(out) == expected.examples and len(expected) >= 4
    assert f"wrote {len(expected)} question/answer pairs to {out}" in printed
    assert re.search(r"writer calls\s+8", printed) and re.search(rf"kept\s+{len(expected)}", printed)
    assert json.loads(li.read_text())["corpus"] == {r["id"]: r["text"] for r in rows}
    assert cli.main(argv) == 0  # a rerun: every reply from the cache, its own outputs replaced
    assert re.search(r"cached replies\s+8", capsys.readouterr().out)
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("keep me\n")
    assert cli.main(argv[:4] + ["--out", str(foreign), "--writer", "cloze", "--no-progress"]) == 1
    assert "exists and was not written by generate_qa" in capsys.readouterr().err
    assert foreign.read_text() == "keep me\n"
    assert cli.main(["qa", "generate", "--passages", str(passages), "--out", str(tmp_path / "x.jsonl"),
                     "--writer", "nope", "--no-progress"]) == 1
    assert "writer: expected one of ['cloze', 'embedded']" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the real embedded writer


@pytest.mark.embedded
def test_the_default_embedded_writer_writes_parseable_pairs():
    passages = ["Talvo Brenn was born in 1901 in the town of Dorak Mills.",
                "The main export of Korvik is dried figs, shipped from the port of Selm.",
                "Mount Kelda rises 2900 metres above the plain of Harn."]
    before = torch.get_num_threads()
    result = generate_qa(passages, progress=False, filters=QAFilters(question_without_answer=False, dedupe=False))
    assert torch.get_num_threads() == before
    report = result.report
    assert report.prompts == 3 and report.writer_calls == 3 and report.skipped["writer_error"] == 0
    assert report.kept >= 2, report.format()
    for e in result.examples:
        assert e.question.endswith("?") and e.answer in passages[int(e.gold_ids[0])]
        assert e.metadata["writer"] == resolve_writer(None)[1]  # the embedded writer's cache identity
