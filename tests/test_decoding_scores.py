"""Decoding scores mean the same in every mode (issue 13, item 11).

An answer's score is log p(y|x) of its text followed by EOS, as `model(questions,
answers)` computes it: whatever the decoding mode, whether generation stopped at
`max_new_tokens`, and whatever sampling settings chose the text. Empty candidates
follow one documented rule (generation.py): never chosen; all empty -> "" with
score -inf and sources weighted by p(z|x).
"""
import math

import pytest
import torch
from tiny import ASSISTANT, EOS, PAD, USER, VOCAB_SIZE, byte_ids, tiny_encoder, tiny_generator, tiny_tokenizer

from contextflow_core.config import RagConfig
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex

QS = ["What is the capital of Quenia?", "Which river flows through Tarsk?"]
MODES = ["thorough", "fast", "concat"]


def build(passages, num_docs: int) -> RAGSequence:
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, ids=[f"p{i}" for i in range(len(passages))], show_progress=False)
    rag = RAGSequence(enc, index, tiny_tokenizer(), tiny_generator(), config=RagConfig(num_docs=num_docs))
    return rag.eval()  # the references below are computed without dropout, as generate runs


def reference(rag, questions, answers):
    """{passage id: (log p(z|x), log p(y|f(x,z)))} per question, from the model's own forward."""
    with torch.no_grad():
        out = rag(questions=questions, answers=answers)
    return [{p.id: (float(d), float(s)) for p, d, s in zip(row, doc, seq)}
            for row, doc, seq in zip(out.passages, out.doc_logprobs, out.seq_logprobs)]


def logsumexp(values):
    return float(torch.logsumexp(torch.tensor(values, dtype=torch.float64), 0))


def test_a_truncated_candidate_keeps_its_eos_term_in_fast_as_in_thorough(passages):
    rag = build(passages, num_docs=1)
    cut = 3
    thorough = rag.generate(questions=QS, max_new_tokens=cut, decoding="thorough")
    fast = rag.generate(questions=QS, max_new_tokens=cut, decoding="fast")
    _, retrieved = rag.retrieve(QS, 1)
    for q, row in zip(QS, retrieved.passages):  # the candidates really are cut: no EOS among the first 3 tokens
        prompt = torch.tensor([rag.prompts.encode(q, row).input_ids])
        new = rag.generator.generate(prompt, max_new_tokens=cut, do_sample=False, pad_token_id=PAD)[0, prompt.shape[1]:]
        assert len(new) == cut and EOS not in new.tolist()
    ref = reference(rag, QS, [a.text for a in thorough])
    for t, f, r in zip(thorough, fast, ref):
        assert t.text and f.text == t.text
        (doc, seq), = r.values()
        assert doc == pytest.approx(0.0, abs=1e-6)
        assert f.score == pytest.approx(t.score, abs=1e-4)
        assert t.score == pytest.approx(seq, abs=1e-4)  # seq includes log p(EOS | ..., y)


SETTINGS = {
    "repetition_penalty": dict(repetition_penalty=1.5),
    "sampling": dict(do_sample=True, temperature=0.5, top_k=20, top_p=0.9),
    "no_repeat_ngram": dict(no_repeat_ngram_size=1),
}


@pytest.mark.parametrize("decoding", MODES)
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_b_sampling_settings_change_the_text_not_its_score(passages, decoding, setting):
    rag = build(passages, num_docs=1)
    torch.manual_seed(0)
    answers = rag.generate(questions=QS, max_new_tokens=6, decoding=decoding, **SETTINGS[setting])
    assert all(a.text for a in answers)
    for a, r in zip(answers, reference(rag, QS, [a.text for a in answers])):
        (doc, seq), = r.values()
        assert a.score == pytest.approx(doc + seq, abs=1e-4)


@pytest.mark.parametrize("decoding", ["thorough", "fast"])
def test_b_scores_with_k3_and_beams_are_the_models_marginals(passages, decoding):
    """thorough: logsumexp over all K passages; fast: over the passages that produced the text (weight > 0)."""
    rag = build(passages, num_docs=3)
    answers = rag.generate(questions=QS, max_new_tokens=4, decoding=decoding, num_beams=3, num_return_sequences=2,
                           repetition_penalty=1.3)
    for a, r in zip(answers, reference(rag, QS, [a.text for a in answers])):
        producing = [p.id for p, w in a.sources if w > 0] if decoding == "fast" else list(r)
        assert producing
        assert a.score == pytest.approx(logsumexp([sum(r[i]) for i in producing]), abs=1e-4)


def test_a_fast_and_thorough_agree_exactly_at_k1_with_beams(passages):
    rag = build(passages, num_docs=1)
    kwargs = dict(max_new_tokens=4, num_beams=3, num_return_sequences=3)
    thorough = rag.generate(questions=QS, decoding="thorough", **kwargs)
    fast = rag.generate(questions=QS, decoding="fast", **kwargs)
    assert [a.text for a in fast] == [a.text for a in thorough]
    assert [a.score for a in fast] == pytest.approx([a.score for a in thorough], abs=1e-4)


# -- (c) empty candidates ---------------------------------------------------------
TWO = ["Zorblat is the capital of Quenia.", "The river Mivo flows through Tarsk."]
EMPTY = {  # continuations with no text: forced token by token, then nothing is constrained
    "eos_first": [EOS],
    "whitespace": byte_ids(" \n ") + [EOS],
    "special_tokens": [USER, EOS],
}
LETTERS = byte_ids("abcdefghijklmnopqrstuvwxyz")


def forcing(kind: str, empty_when_contains: list[int]):
    """A `prefix_allowed_tokens_fn` making prompts that contain `empty_when_contains` produce an empty
    continuation of `kind`, and every other prompt start with a letter (a non-empty answer)."""
    def allowed(batch_id, input_ids):
        ids = input_ids.tolist()
        start = len(ids) - ids[::-1].index(ASSISTANT)  # the chat prompt ends with <|assistant|>
        prompt, step = ids[:start], len(ids) - start
        n = len(empty_when_contains)
        if any(prompt[i : i + n] == empty_when_contains for i in range(len(prompt) - n + 1)):
            return [EMPTY[kind][step]] if step < len(EMPTY[kind]) else list(range(VOCAB_SIZE))
        return LETTERS if step == 0 else list(range(VOCAB_SIZE))
    return allowed


@pytest.mark.parametrize("kind", sorted(EMPTY))
@pytest.mark.parametrize("decoding", MODES)
def test_c_empty_candidate_is_never_chosen_over_a_non_empty_one(decoding, kind):
    rag = build(TWO, num_docs=2)
    q = [QS[0]]
    a, = rag.generate(questions=q, max_new_tokens=5, decoding=decoding,
                      prefix_allowed_tokens_fn=forcing(kind, byte_ids("Zorblat")))
    if decoding == "concat":  # one prompt holding both passages: its only candidate is empty
        out = rag(questions=q)
        assert a.text == "" and a.score == -math.inf
        prior = {p.id: float(d.exp()) for p, d in zip(out.passages[0], out.doc_logprobs[0])}
        assert {p.id: w for p, w in a.sources} == pytest.approx(prior, abs=1e-6)
        return
    assert a.text and a.text[0].isalpha()
    r, = reference(rag, q, [a.text])
    producing = ["p1"] if decoding == "fast" else ["p0", "p1"]  # p1 (Mivo) is the only non-empty producer
    assert a.score == pytest.approx(logsumexp([sum(r[i]) for i in producing]), abs=1e-4)


@pytest.mark.parametrize("kind", sorted(EMPTY))
@pytest.mark.parametrize("decoding", MODES)
def test_c_all_candidates_empty_gives_empty_answer_minus_inf_and_prior_sources(decoding, kind):
    rag = build(TWO, num_docs=2)
    answers = rag.generate(questions=QS, max_new_tokens=5, decoding=decoding, num_beams=2,
                           prefix_allowed_tokens_fn=forcing(kind, [ASSISTANT]))
    out = rag(questions=QS)
    for a, row, doc in zip(answers, out.passages, out.doc_logprobs):
        assert a.text == "" and a.score == -math.inf
        prior = {p.id: float(d.exp()) for p, d in zip(row, doc)}
        assert {p.id: w for p, w in a.sources} == pytest.approx(prior, abs=1e-6)


# -- RAG-Token decoding: the same meaning ----------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, dict(do_sample=True, temperature=0.5, top_k=5)], ids=["greedy", "sampling"])
def test_rag_token_score_is_its_models_log_likelihood_with_eos(passages, kwargs):
    from contextflow_core.rag_token import RAGToken

    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    rag = RAGToken(enc, index, tiny_tokenizer(), tiny_generator(), config=RagConfig(num_docs=3)).eval()
    torch.manual_seed(0)
    answers = rag.generate(questions=QS, max_new_tokens=4, **kwargs)  # cut by max_new_tokens
    for q, a in zip(QS, answers):
        assert a.text
        with torch.no_grad():
            out = rag(questions=[q], answers=[a.text])
        assert a.score == pytest.approx(-float(out.loss), abs=1e-4)
        posterior = torch.softmax(out.doc_logprobs[0] + out.seq_logprobs[0], -1)
        assert {p.id: w for p, w in a.sources} == pytest.approx(
            {p.id: float(w) for p, w in zip(out.passages[0], posterior)}, abs=1e-5)


# -- RagConfig.source_weights: the retriever's p(z|x) instead of the posterior ------------
@pytest.mark.parametrize("decoding", MODES + ["token"])
def test_retriever_source_weights_are_p_z_given_x_and_leave_text_and_score_alone(passages, decoding):
    import dataclasses

    from contextflow_core.rag_token import RAGToken

    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    cls = RAGToken if decoding == "token" else RAGSequence
    rag = cls(enc, index, tiny_tokenizer(), tiny_generator(), config=RagConfig(num_docs=3)).eval()
    kwargs = {} if decoding == "token" else {"decoding": decoding}
    posterior = rag.generate(questions=QS, max_new_tokens=4, **kwargs)
    rag.config = dataclasses.replace(rag.config, source_weights="retriever")
    rows = []
    handle = rag.generator.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]),
                                                     with_kwargs=True)
    try:
        prior = rag.generate(questions=QS, max_new_tokens=4, **kwargs)
    finally:
        handle.remove()
    with torch.no_grad():
        doc_lp, retrieved = rag.retrieve(QS, 3)
    for a, b, lp, row in zip(prior, posterior, doc_lp, retrieved.passages):
        assert a.text == b.text and a.score == pytest.approx(b.score, abs=1e-5)
        assert {p.id: w for p, w in a.sources} == pytest.approx(
            {p.id: float(w) for p, w in zip(row, lp.exp())}, abs=1e-6)
        assert {p.id: w for p, w in a.sources} != pytest.approx({p.id: w for p, w in b.sources}, abs=1e-3)
    if decoding == "concat":  # no pass of the answer under each passage alone (len(QS) * 3 rows)
        assert len(QS) * 3 not in rows, rows


def test_source_weights_must_be_posterior_or_retriever():
    with pytest.raises(ValueError, match=r"source_weights must be 'posterior' or 'retriever', got 'prior'"):
        RagConfig(source_weights="prior")
