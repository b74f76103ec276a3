"""Training objectives: pure-loss checks and which parameters each one moves."""
import pytest
import torch
from tiny import tiny_encoder, tiny_generator, tiny_tokenizer

from contextflow_core.config import RagConfig, TrainConfig
from contextflow_core.loss import doc_log_probs, emdr2_nll, lsr_kl, ralt_nll
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.training import apply_train_mode

QS, ANS = ["What is the capital of Quenia?", "Which river flows through Tarsk?"], ["Zorblat", "Mivo"]


def test_lsr_is_kl_to_lm_posterior_and_zero_when_they_agree():
    seq = torch.tensor([[-1.0, -3.0, -2.0]])
    assert lsr_kl(torch.log_softmax(seq, -1), seq).item() == pytest.approx(0.0, abs=1e-6)
    doc = doc_log_probs(torch.tensor([[0.0, 0.0, 0.0]]))
    q = torch.softmax(seq, -1)
    expected = (torch.full((3,), 1 / 3) * (torch.log(torch.tensor(1 / 3)) - q.log())).sum()
    assert lsr_kl(doc, seq).item() == pytest.approx(expected.item(), rel=1e-5)


def test_ralt_is_mean_per_passage_nll_and_emdr2_splits_reader_and_retriever():
    seq = torch.tensor([[-1.0, -3.0], [-2.0, -4.0]])
    assert ralt_nll(seq).item() == pytest.approx(2.5)
    doc = doc_log_probs(torch.zeros(2, 2))
    concat = torch.tensor([-0.5, -1.5])
    retr = -torch.logsumexp(doc + seq, -1)
    assert emdr2_nll(doc, seq, concat).item() == pytest.approx((retr - concat).mean().item(), rel=1e-6)


def _rag(passages, objective):
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    return RAGSequence(enc, index, tiny_tokenizer(), tiny_generator(), config=RagConfig(num_docs=3, objective=objective))


@pytest.mark.parametrize("objective, mode, encoder_moves, generator_moves", [
    ("marginal", "joint", True, True),
    ("lsr", "retriever", True, False),
    ("ralt", "generator", False, True),
    ("emdr2", "joint", True, True),
])
def test_each_objective_moves_the_right_parameters_only(passages, objective, mode, encoder_moves, generator_moves):
    rag = _rag(passages, "marginal")
    apply_train_mode(rag, TrainConfig(train_mode=mode, objective=objective))
    assert rag.config.objective == objective
    before = {n: p.detach().clone() for n, p in rag.named_parameters()}
    opt = torch.optim.SGD([p for p in rag.parameters() if p.requires_grad], lr=0.5)
    loss = rag(questions=QS, answers=ANS).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    moved = lambda prefix: any(not torch.equal(before[n], p) for n, p in rag.named_parameters() if n.startswith(prefix))
    assert moved("question_encoder.") == encoder_moves
    assert moved("generator.") == generator_moves


def test_objective_gradient_directions_differ_from_marginal(passages):
    grads = {}
    for objective in ("marginal", "lsr", "emdr2"):
        rag = _rag(passages, objective)
        rag(questions=QS, answers=ANS).loss.backward()
        grads[objective] = torch.cat([p.grad.flatten() for p in rag.question_encoder.parameters() if p.grad is not None])
    assert not torch.allclose(grads["marginal"], grads["lsr"])
    assert torch.isfinite(grads["emdr2"]).all()


@pytest.mark.parametrize("objective, mode", [("lsr", "joint"), ("lsr", "generator"), ("ralt", "retriever")])
def test_contradicting_objective_and_train_mode_rejected(objective, mode):
    with pytest.raises(ValueError, match=f"objective={objective!r}.*train_mode={mode!r}"):
        TrainConfig(objective=objective, train_mode=mode)


def test_unknown_objective_rejected():
    with pytest.raises(ValueError, match="objective must be one of"):
        RagConfig(objective="dpo")
