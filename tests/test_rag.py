"""RAGSequence on tiny models: joint gradients, parity with a per-pair loop, decoding, bad input."""
import math

import pytest
import torch
from tiny import tiny_encoder, tiny_generator, tiny_tokenizer

from contextflow_core.config import RagConfig
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.rag import RAGSequence
from contextflow_core.types import RagAnswer

QS = ["What is the capital of Quenia?", "Which river flows through Tarsk?"]
ANS = ["Zorblat", "Mivo"]


@pytest.fixture
def rag(passages):
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, ids=[f"p{i}" for i in range(len(passages))], show_progress=False)
    return RAGSequence(question_encoder=enc, retriever=index, generator_tokenizer=tiny_tokenizer(),
                       generator=tiny_generator(), num_docs=3)


def test_forward_shapes_and_loss_equals_per_pair_loop(rag):
    out = rag(questions=QS, answers=ANS)
    assert out.doc_logprobs.shape == (2, 3) and out.seq_logprobs.shape == (2, 3)
    assert len(out.passages) == 2 and len(out.passages[0]) == 3
    q = rag.question_encoder.encode(QS)
    total = 0.0
    for b in range(2):
        d = torch.stack([rag.index.embeddings[rag.index.ids.index(p.id)] for p in out.passages[b]])
        prior = torch.softmax(d @ q[b], -1)
        lik = []
        for p in out.passages[b]:
            e = rag.prompts.encode(QS[b], p, ANS[b])
            hf = rag.generator(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss
            lik.append(math.exp(-hf.item() * (len(e.input_ids) - e.prompt_length)))
        total += -math.log(sum(w * l for w, l in zip(prior.tolist(), lik)))
    assert out.loss.item() == pytest.approx(total / 2, rel=1e-4)


def test_gradients_reach_question_encoder_and_generator(rag):
    rag(questions=QS, answers=ANS).loss.backward()
    enc_grads = [p.grad for p in rag.question_encoder.parameters() if p.requires_grad]
    gen_grads = [p.grad for p in rag.generator.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in enc_grads)
    assert any(g is not None and g.abs().sum() > 0 for g in gen_grads)


@pytest.mark.parametrize("freeze, frozen", [("freeze_retriever", "question_encoder"), ("freeze_generator", "generator")])
def test_freezing_blocks_gradient_to_one_side(passages, freeze, frozen):
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    rag = RAGSequence(enc, index, tiny_tokenizer(), tiny_generator(), config=RagConfig(num_docs=3, **{freeze: True}))
    rag(questions=QS, answers=ANS).loss.backward()
    assert all(p.grad is None for p in getattr(rag, frozen).parameters())


def test_k1_equals_plain_nll(rag):
    out = rag(questions=QS, answers=ANS, num_docs=1)
    assert out.loss.item() == pytest.approx(-out.seq_logprobs.mean().item(), rel=1e-5)


def test_num_docs_larger_than_corpus_warns_and_uses_all(rag, passages):
    with pytest.warns(UserWarning):
        out = rag(questions=QS, answers=ANS, num_docs=50)
    assert out.doc_logprobs.shape == (2, len(passages))


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_bad_num_docs_rejected(rag, bad):
    with pytest.raises(ValueError, match="num_docs"):
        rag(questions=QS, answers=ANS, num_docs=bad)


def test_mismatched_questions_and_answers_rejected(rag):
    with pytest.raises(ValueError, match=r"answers: expected one answer per question \(2\), got 1"):
        rag(questions=QS, answers=["x"])


@pytest.mark.parametrize("questions", [[], [""], ["  "], [None]])
def test_empty_questions_rejected(rag, questions):
    with pytest.raises(ValueError, match="questions"):
        rag(questions=questions, answers=["a"] * len(questions))


def test_encoder_index_dimension_mismatch_rejected(passages):
    index = DocumentIndex.from_texts(passages, tiny_encoder(hidden=16), show_progress=False)
    with pytest.raises(ValueError, match="question_encoder: embedding size 8 differs from the index's 16"):
        RAGSequence(tiny_encoder(hidden=8), index, tiny_tokenizer(), tiny_generator())


def test_tokenizer_without_pad_gets_eos(passages):
    enc = tiny_encoder()
    tok = tiny_tokenizer(pad=False)
    rag = RAGSequence(enc, DocumentIndex.from_texts(passages, enc, show_progress=False), tok, tiny_generator())
    assert tok.pad_token == tok.eos_token and rag.generator.get_input_embeddings().num_embeddings == 262


@pytest.mark.parametrize("decoding", ["thorough", "fast", "concat"])
def test_generate_modes_return_answers_with_weighted_sources(rag, decoding):
    answers = rag.generate(questions=QS, max_new_tokens=4, decoding=decoding)
    assert len(answers) == 2 and all(isinstance(a, RagAnswer) for a in answers)
    for a in answers:
        weights = [w for _, w in a.sources]
        assert len(a.sources) == 3 and weights == sorted(weights, reverse=True)
        assert sum(weights) == pytest.approx(1.0, abs=1e-4)
        assert "Question:" not in a.text


def test_thorough_score_is_the_marginal_of_the_chosen_answer(rag):
    ans = rag.generate(questions=QS[:1], max_new_tokens=4, decoding="thorough")[0]
    if not ans.text:
        pytest.skip("random tiny generator produced only EOS")
    out = rag(questions=QS[:1], answers=[ans.text])
    assert ans.score == pytest.approx(-out.loss.item(), rel=1e-4)


def test_generate_with_question_encoder_input_ids_like_the_seed(rag):
    tok = rag.question_encoder.tokenizer
    batch = tok(QS, return_tensors="pt", padding=True)
    by_ids = rag.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=3)
    by_text = rag.generate(questions=QS, max_new_tokens=3)
    assert [a.text for a in by_ids] == [a.text for a in by_text]


def test_beam_search_candidates(rag):
    answers = rag.generate(questions=QS, max_new_tokens=3, num_beams=2, decoding="thorough")
    assert len(answers) == 2


def test_unknown_decoding_rejected(rag):
    with pytest.raises(ValueError, match="decoding: expected one of"):
        rag.generate(questions=QS, decoding="greedy")


def test_save_load_round_trip_gives_identical_loss_and_answers(rag, tmp_path):
    rag.save_pretrained(tmp_path / "m")
    again = RAGSequence.from_pretrained(tmp_path / "m")
    a, b = rag(questions=QS, answers=ANS), again(questions=QS, answers=ANS)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    assert [x.text for x in rag.generate(questions=QS, max_new_tokens=4)] == \
        [x.text for x in again.generate(questions=QS, max_new_tokens=4)]
    assert again.prompt_config == rag.prompt_config and again.config == rag.config


def test_load_refuses_tampered_file_and_pickles(rag, tmp_path):
    rag.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "generator" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        RAGSequence.from_pretrained(tmp_path / "m")
    rag.save_pretrained(tmp_path / "n")
    (tmp_path / "n" / "generator" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="refusing to load pickle"):
        RAGSequence.from_pretrained(tmp_path / "n")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        RAGSequence.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("decoding", ["thorough", "fast", "concat"])
def test_micro_batching_changes_nothing(rag, decoding):
    whole = rag.generate(questions=QS, max_new_tokens=4, decoding=decoding)
    loss = rag(questions=QS, answers=ANS).loss
    rag.config = RagConfig(num_docs=3, micro_batch_size=2)
    chunked = rag.generate(questions=QS, max_new_tokens=4, decoding=decoding)
    assert [(a.text, round(a.score, 3)) for a in whole] == [(a.text, round(a.score, 3)) for a in chunked]
    assert torch.allclose(loss, rag(questions=QS, answers=ANS).loss, atol=1e-5)


@pytest.mark.parametrize("normalize, expected", [(True, 0.05), (False, 1.0)])
def test_default_temperature_follows_the_encoders_normalization(passages, normalize, expected):
    enc = tiny_encoder(normalize=normalize)
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    rag = RAGSequence(enc, index, tiny_tokenizer(), tiny_generator(), num_docs=3)
    assert rag.config.temperature == expected and rag.temperature == expected
    doc_lp, retrieved = rag.eval().retrieve(QS, 3)
    q = enc.encode(QS)
    scores = torch.einsum("bd,bkd->bk", q, retrieved.embeddings.float())
    torch.testing.assert_close(doc_lp, torch.log_softmax(scores / expected, -1), atol=1e-5, rtol=1e-5)


def test_explicit_temperature_is_kept_and_bad_ones_are_named(passages):
    enc = tiny_encoder(normalize=True)
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    rag = RAGSequence(enc, index, tiny_tokenizer(), tiny_generator(), config=RagConfig(num_docs=3, temperature=0.7))
    assert rag.temperature == 0.7
    for bad in (0, -1.0, "0.1", True):
        with pytest.raises(ValueError, match="temperature must be a number > 0 or None"):
            RagConfig(temperature=bad)
