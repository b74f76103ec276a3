"""RAGToken: per-token marginal loss against a brute-force loop, K=1 parity, decoding parity."""
import math

import pytest
import torch
from tiny import tiny_encoder, tiny_generator, tiny_tokenizer

from contextflow_core.rag_token import RAGToken
from contextflow_core.retrieval import DocumentIndex

QS = ["What is the capital of Quenia?", "Which river flows through Tarsk?"]
ANS = ["Zorblat", "Mivo river"]


@pytest.fixture
def rag(passages):
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    return RAGToken(question_encoder=enc, retriever=index, generator_tokenizer=tiny_tokenizer(),
                    generator=tiny_generator(), num_docs=3)


def _token_logprobs(gen, ids, labels):
    logits = gen(input_ids=torch.tensor([ids])).logits[0, :-1]
    lp = torch.log_softmax(logits, -1)
    tgt = torch.tensor(labels[1:])
    keep = tgt != -100
    return lp[keep].gather(-1, tgt[keep].unsqueeze(-1)).squeeze(-1).tolist()


def test_loss_equals_brute_force_per_token_marginal(rag):
    out = rag(questions=QS, answers=ANS)
    total = 0.0
    for b in range(2):
        prior = out.doc_logprobs[b].exp().tolist()
        per_doc = []
        for p in out.passages[b]:
            e = rag.prompts.encode(QS[b], p, ANS[b])
            per_doc.append(_token_logprobs(rag.generator, e.input_ids, e.labels))
        for t in range(len(per_doc[0])):
            total -= math.log(sum(w * math.exp(lps[t]) for w, lps in zip(prior, per_doc)))
    assert out.loss.item() == pytest.approx(total / 2, rel=1e-4)


def test_k1_equals_plain_nll(rag):
    out = rag(questions=QS, answers=ANS, num_docs=1)
    assert out.loss.item() == pytest.approx(-out.seq_logprobs.mean().item(), rel=1e-5)


def test_gradients_reach_both_sides(rag):
    rag(questions=QS, answers=ANS).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rag.question_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rag.generator.parameters())


def test_decoding_with_one_passage_equals_generator_greedy(rag):
    answers = rag.generate(questions=QS, num_docs=1, max_new_tokens=6)
    _, retrieved = rag.retrieve(QS, 1)
    for q, row, ans in zip(QS, retrieved.passages, answers):
        e = rag.prompts.encode(q, row)
        out = rag.generator.generate(torch.tensor([e.input_ids]), max_new_tokens=6, do_sample=False,
                                     pad_token_id=rag.generator_tokenizer.pad_token_id)
        ref = rag.generator_tokenizer.decode(out[0, len(e.input_ids):], skip_special_tokens=True).strip()
        assert ans.text == ref
        assert ans.sources[0][1] == pytest.approx(1.0)


def test_decoding_k3_returns_weighted_sources_and_sampling_works(rag):
    answers = rag.generate(questions=QS, max_new_tokens=5)
    assert all(len(a.sources) == 3 and sum(w for _, w in a.sources) == pytest.approx(1.0, abs=1e-4) for a in answers)
    torch.manual_seed(0)
    sampled = rag.generate(questions=QS, max_new_tokens=5, do_sample=True, temperature=0.7, top_k=5)
    assert len(sampled) == 2


def test_token_decoding_rejects_sequence_modes(rag):
    with pytest.raises(ValueError, match="decoding"):
        rag.generate(questions=QS, decoding="thorough")
