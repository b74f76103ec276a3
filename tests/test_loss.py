"""The loss as pure tensors, and lean scoring against the generator's own HF loss."""
import itertools
import math

import pytest
import torch
from tiny import tiny_generator, tiny_tokenizer

from contextflow_core.loss import (
    doc_log_probs, rag_sequence_nll, rag_token_nll, sequence_log_probs, token_log_probs,
)
from contextflow_core.prompts import PromptBuilder
from contextflow_core.scoring import SCORERS, score_sequences


def brute_force_nll(doc_scores, seq_lp):
    total = 0.0
    for b in range(len(doc_scores)):
        z = sum(math.exp(s) for s in doc_scores[b])
        total += -math.log(sum(math.exp(s) / z * math.exp(l) for s, l in zip(doc_scores[b], seq_lp[b])))
    return total / len(doc_scores)


def test_rag_sequence_nll_equals_brute_force_loop():
    torch.manual_seed(0)
    scores, seq = torch.randn(3, 4), -5 * torch.rand(3, 4)
    got = rag_sequence_nll(doc_log_probs(scores), seq)
    assert got.item() == pytest.approx(brute_force_nll(scores.tolist(), seq.tolist()), rel=1e-5)


def test_k1_is_plain_nll_and_permutation_invariant():
    seq = torch.tensor([[-3.0], [-7.5]])
    assert rag_sequence_nll(doc_log_probs(torch.randn(2, 1)), seq).item() == pytest.approx(5.25)
    scores, seq = torch.randn(2, 5), -torch.rand(2, 5) * 4
    perm = torch.randperm(5)
    a = rag_sequence_nll(doc_log_probs(scores), seq)
    b = rag_sequence_nll(doc_log_probs(scores[:, perm]), seq[:, perm])
    assert torch.allclose(a, b)


def test_logsumexp_stays_finite_where_probabilities_underflow():
    loss = rag_sequence_nll(doc_log_probs(torch.zeros(1, 3)), torch.full((1, 3), -2000.0))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(2000.0)


def test_temperature_sharpens_retriever_distribution():
    s = torch.tensor([[1.0, 0.0]])
    assert doc_log_probs(s, 0.1)[0, 0] > doc_log_probs(s, 1.0)[0, 0]


def test_length_normalize_divides_by_answer_tokens():
    lp = torch.tensor([[-1.0, -2.0, 0.0]])
    tgt = torch.tensor([[5, 6, -100]])
    assert sequence_log_probs(lp, tgt).item() == -3.0
    assert sequence_log_probs(lp, tgt, length_normalize=True).item() == -1.5


def test_rag_token_with_one_passage_equals_sequence_nll():
    tok_lp = -torch.rand(2, 1, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    tok_lp = tok_lp.masked_fill(~mask.unsqueeze(1), 0)
    doc = doc_log_probs(torch.randn(2, 1))
    expected = rag_sequence_nll(doc, tok_lp.sum(-1))
    assert torch.allclose(rag_token_nll(doc, tok_lp, mask), expected)


def test_token_log_probs_matches_log_softmax_gather():
    logits, tgt = torch.randn(2, 3, 11), torch.tensor([[1, 2, -100], [4, -100, 0]])
    ref = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ref = ref.masked_fill(tgt == -100, 0)
    assert torch.allclose(token_log_probs(logits, tgt), ref, atol=1e-6)


QUESTIONS = ["Who?", "Where is the big river?"]
PASSAGES = [["Ann lives in Tarsk.", "Bo", "A much longer passage about nothing in particular."],
            ["Mivo flows west.", "x", "The river is big."]]
ANSWERS = ["Ann", "Mivo flows"]


@pytest.mark.parametrize("mode", sorted(SCORERS))
def test_scoring_equals_hf_labels_loss_times_tokens_per_sequence(mode):
    tok, gen = tiny_tokenizer(), tiny_generator()
    builder = PromptBuilder(tok)
    encoded = builder.encode_batch(QUESTIONS, PASSAGES, ANSWERS)
    got = score_sequences(gen, encoded, builder.collate, mode=mode, micro_batch_size=4)
    for e, value in zip(encoded, got):
        ids, labels = torch.tensor([e.input_ids]), torch.tensor([e.labels])
        hf = gen(input_ids=ids, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        assert value.item() == pytest.approx(-hf.item() * n, rel=1e-4, abs=1e-4)


def test_rag_loss_over_scored_sequences_equals_per_pair_loop():
    tok, gen = tiny_tokenizer(), tiny_generator()
    builder = PromptBuilder(tok)
    scores = torch.randn(2, 3)
    encoded = builder.encode_batch(QUESTIONS, PASSAGES, ANSWERS)
    seq = score_sequences(gen, encoded, builder.collate).view(2, 3)
    loop = [[-gen(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss.item()
             * (len(a) + 1) for e in encoded[3 * b : 3 * b + 3]] for b, a in enumerate(ANSWERS)]
    assert rag_sequence_nll(doc_log_probs(scores), seq).item() == pytest.approx(
        brute_force_nll(scores.tolist(), loop), rel=1e-4)


def test_lean_scoring_gradients_match_full_scoring():
    tok, gen = tiny_tokenizer(), tiny_generator()
    builder = PromptBuilder(tok)
    encoded = builder.encode_batch(QUESTIONS, PASSAGES, ANSWERS)
    grads = {}
    for mode in ("full", "logits_to_keep", "hidden"):
        gen.zero_grad()
        score_sequences(gen, encoded, builder.collate, mode=mode).sum().backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in gen.parameters()])
    assert torch.allclose(grads["full"], grads["logits_to_keep"], atol=1e-5)
    assert torch.allclose(grads["full"], grads["hidden"], atol=1e-5)
