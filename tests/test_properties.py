"""Property tests (hypothesis): loss invariants and prompt labels for arbitrary text."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import EOS, byte_ids, tiny_tokenizer

from contextflow_core.config import PromptConfig
from contextflow_core.loss import doc_log_probs, rag_sequence_nll
from contextflow_core.prompts import IGNORE_INDEX, PromptBuilder

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
logprob = st.floats(min_value=-1e4, max_value=0.0, allow_nan=False, allow_infinity=False)


@st.composite
def rag_inputs(draw):
    b, k = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    scores = torch.tensor(draw(st.lists(st.lists(finite, min_size=k, max_size=k), min_size=b, max_size=b)))
    seq = torch.tensor(draw(st.lists(st.lists(logprob, min_size=k, max_size=k), min_size=b, max_size=b)))
    return scores, seq


@settings(max_examples=200, deadline=None)
@given(rag_inputs(), st.randoms(use_true_random=False))
def test_loss_is_finite_and_invariant_to_passage_order(inputs, rnd):
    scores, seq = inputs
    loss = rag_sequence_nll(doc_log_probs(scores), seq)
    assert torch.isfinite(loss)
    perm = list(range(scores.shape[1]))
    rnd.shuffle(perm)
    permuted = rag_sequence_nll(doc_log_probs(scores[:, perm]), seq[:, perm])
    assert torch.allclose(loss, permuted, rtol=1e-5, atol=1e-3)


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=4), st.lists(logprob, min_size=1, max_size=4))
def test_k1_equals_plain_nll(scores, seqs):
    n = min(len(scores), len(seqs))
    s, q = torch.tensor(scores[:n]).view(n, 1), torch.tensor(seqs[:n]).view(n, 1)
    assert torch.allclose(rag_sequence_nll(doc_log_probs(s), q), -q.mean(), rtol=1e-5, atol=1e-4)


text = st.text(min_size=1, max_size=40).filter(lambda t: t.strip())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(question=text, passage=st.text(max_size=200), answer=text, spare=st.integers(0, 300),
       chat=st.booleans())
def test_labels_are_exactly_answer_plus_eos_under_any_budget(question, passage, answer, spare, chat):
    tok = tiny_tokenizer(chat_template=chat)
    base = PromptBuilder(tok, PromptConfig())
    prefix, suffix = base.frame_ids(question)
    answer_ids = byte_ids(answer) + [EOS]
    budget = len(prefix) + len(suffix) + len(answer_ids) + spare  # room for question and answer
    enc = PromptBuilder(tok, PromptConfig(max_length=budget)).encode(question, passage, answer)
    assert enc.labels[enc.prompt_length:] == answer_ids
    assert enc.labels[: enc.prompt_length] == [IGNORE_INDEX] * enc.prompt_length
    assert len(enc.input_ids) <= budget
    assert enc.input_ids[: len(prefix)] == prefix and enc.input_ids[enc.prompt_length - len(suffix):enc.prompt_length] == suffix
    kept = enc.prompt_length - len(prefix) - len(suffix)
    assert kept == min(len(byte_ids(base.render_passage(passage))), spare)
