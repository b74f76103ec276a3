"""The bad-input matrix: every row raises (or handles) as docs/errors.md says.

Each case names the argument, what was expected and what came; the table in
docs/errors.md is checked against the source by `test_errors_doc_matches_source`.
"""
import pathlib
import re
import warnings

import numpy as np
import pytest
import torch
from tiny import tiny_encoder, tiny_generator, tiny_tokenizer

from contextflow_core.config import PromptConfig
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.types import Passage

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXTS = ["Zorblat is the capital of Quenia.", "The river Mivo flows through Tarsk.", "Quenia exports salt."]


@pytest.fixture(scope="module")
def index():
    return DocumentIndex.from_texts(TEXTS, tiny_encoder(), ids=["a", "b", "c"], show_progress=False)


@pytest.fixture(scope="module")
def rag(index):
    return RAGSequence(tiny_encoder(), index, tiny_tokenizer(), tiny_generator(), num_docs=2)


def _saved_index(index, tmp_path):
    return index.save(tmp_path / "idx")


CASES = {
    "empty question": (lambda r, i, t: r(questions=[""], answers=["a"]), ValueError, r"questions\[0\]: expected non-empty text"),
    "whitespace question": (lambda r, i, t: r(questions=["  \n"], answers=["a"]), ValueError, r"questions\[0\]: expected non-empty text"),
    "non-string question": (lambda r, i, t: r(questions=[42], answers=["a"]), ValueError, r"questions\[0\]: expected non-empty text, got 42"),
    "no questions": (lambda r, i, t: r(questions=[], answers=[]), ValueError, r"questions: expected at least one question"),
    "100k-character question": (lambda r, i, t: r(questions=["why " * 25_000], answers=["a"]), ValueError,
                                r"max_length: the prompt frame with the question \(\d+ tokens\)"),
    "empty answer": (lambda r, i, t: r(questions=["q"], answers=[""]), ValueError, r"answers\[0\]: expected non-empty text"),
    "questions and answers of different lengths": (lambda r, i, t: r(questions=["q", "r"], answers=["a"]), ValueError,
                                                   r"answers: expected one answer per question \(2\), got 1"),
    "num_docs 0": (lambda r, i, t: r(questions=["q"], answers=["a"], num_docs=0), ValueError, r"num_docs: expected a positive integer, got 0"),
    "num_docs negative": (lambda r, i, t: r.generate(questions=["q"], num_docs=-2), ValueError, r"num_docs: expected a positive integer, got -2"),
    "empty corpus": (lambda r, i, t: DocumentIndex.from_texts([], tiny_encoder()), ValueError, r"texts: expected at least one text, got an empty list"),
    "duplicate ids": (lambda r, i, t: DocumentIndex.from_texts(["x", "y"], tiny_encoder(), ids=["p", "p"]), ValueError,
                      r"ids: expected unique ids, got 'p' at positions 0 and 1"),
    "texts and ids of different lengths": (lambda r, i, t: DocumentIndex.from_texts(["x", "y"], tiny_encoder(), ids=["p"]),
                                           ValueError, r"ids: expected 2 ids, one per text, got 1"),
    "k <= 0 on search": (lambda r, i, t: i.search(torch.zeros(1, 16), 0), ValueError, r"k: expected a positive integer, got 0"),
    "query dimension differs from the index": (lambda r, i, t: i.search(torch.zeros(1, 5), 2), ValueError,
                                               r"expected dimension 16 \(the index's\), got 5"),
    "encoder/index dimension mismatch": (lambda r, i, t: RAGSequence(tiny_encoder(hidden=8), i, tiny_tokenizer(), tiny_generator()),
                                         ValueError, r"question_encoder: embedding size 8 differs from the index's 16"),
    "NaN in passage embeddings": (lambda r, i, t: DocumentIndex.from_embeddings([Passage("a", "x"), Passage("b", "y")],
                                                                              np.array([[1.0, np.nan], [0.0, 1.0]])),
                                  ValueError, r"embeddings: expected finite values, got NaN or inf in row 0"),
    "missing index directory": (lambda r, i, t: DocumentIndex.load(t / "nope"), FileNotFoundError, r"no such index directory"),
    "truncated index file": (lambda r, i, t: _truncate(_saved_index(i, t) / "index.faiss") or DocumentIndex.load(t / "idx"),
                             ValueError, r"truncated or corrupted file"),
    "tampered index file": (lambda r, i, t: _flip(_saved_index(i, t) / "passages.jsonl") or DocumentIndex.load(t / "idx"),
                            ValueError, r"sha256 checksum mismatch"),
    "index from another encoder": (lambda r, i, t: DocumentIndex.load(_saved_index(i, t), expected_encoder_name="other"),
                                   ValueError, r"index was built with encoder 'tiny-bert', expected_encoder_name is 'other'"),
    "tampered model file": (lambda r, i, t: _save_and_flip(r, t) or RAGSequence.from_pretrained(t / "m"), ValueError,
                            r"sha256 checksum mismatch \(file truncated or modified since it was saved\)"),
    "pickle file in a model directory": (lambda r, i, t: _save_with_pickle(r, t) or RAGSequence.from_pretrained(t / "m"),
                                         ValueError, r"refusing to load pickle files \['generator/pytorch_model.bin'\]"),
    "unknown decoding mode": (lambda r, i, t: r.generate(questions=["q"], decoding="beam"), ValueError,
                              r"decoding: expected one of \['concat', 'fast', 'thorough'\], got 'beam'"),
    "prompt template without {question}": (lambda r, i, t: PromptConfig(question_format="Q"), ValueError,
                                           r"question_format must contain \{question\}, got 'Q'"),
}


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[5] ^= 0x20
    path.write_bytes(bytes(data))


def _save_and_flip(rag, tmp_path):
    rag.save_pretrained(tmp_path / "m")
    _flip(tmp_path / "m" / "rag_config.json")


def _save_with_pickle(rag, tmp_path):
    rag.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "generator" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_clear_error(case, rag, index, tmp_path):
    call, exc, message = CASES[case]
    with pytest.raises(exc, match=message):
        call(rag, index, tmp_path)


def test_num_docs_larger_than_corpus_warns_and_returns_all(rag):
    with pytest.warns(UserWarning, match=r"k=10 is larger than the index \(3 passages\); returning all 3"):
        out = rag(questions=["q"], answers=["a"], num_docs=10)
    assert out.doc_logprobs.shape == (1, 3)


def test_unicode_and_emoji_everywhere_are_fine():
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(["Zürich 🏔 est très haut.", "東京は大きい。", "naïve café ☕"], enc,
                                     ids=["ü", "東", "☕"], show_progress=False)
    rag = RAGSequence(enc, index, tiny_tokenizer(), tiny_generator(), num_docs=2)
    out = rag(questions=["Où est 🏔 ?", "東京?"], answers=["Zürich 🏔", "大きい"])
    assert torch.isfinite(out.loss)
    assert {p.id for row in out.passages for p in row} <= {"ü", "東", "☕"}


def test_generator_without_pad_token_gets_eos_and_no_chat_template_uses_plain_format(index):
    tok = tiny_tokenizer(chat_template=False, pad=False)
    rag = RAGSequence(tiny_encoder(), index, tok, tiny_generator(), num_docs=2)
    assert tok.pad_token == tok.eos_token and not rag.prompts.uses_chat_template
    assert torch.isfinite(rag(questions=["q"], answers=["a"]).loss)


def _doc_rows():
    text = (ROOT / "docs" / "errors.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| input")
            and not line.startswith("| ---")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows]


def test_errors_doc_matches_source():
    rows = _doc_rows()
    assert len(rows) >= len(CASES)
    sources = "\n".join(p.read_text() for package in ("contextflow_core", "contextflow_integrations")
                        for p in (ROOT / package).rglob("*.py"))
    for inp, exc, message in rows:
        fragment = re.search(r"`([^`]+)`", message).group(1)
        assert fragment in sources, f"docs/errors.md row {inp!r}: message fragment {fragment!r} not found in source"
        assert exc.strip("`") in {"ValueError", "TypeError", "FileNotFoundError", "KeyError", "RuntimeError",
                                  "FileExistsError", "UserWarning", "handled", "ImportError",
                                  "NotImplementedError", "QAWriterError", "IndexRefreshError",
                                  "UnknownArgumentError"}, exc


# -- training-side rows ---------------------------------------------------------------
def _train(model, data, tmp_path, **overrides):
    from train_tiny import tiny_config

    from contextflow_core.training import train_rag

    return train_rag(model, data, config=tiny_config(tmp_path, num_epochs=1, **overrides))


def test_empty_dataloader_rejected(tmp_path):
    from train_tiny import build_rag

    with pytest.raises(ValueError, match="train_dataloader: expected at least one batch, got an empty dataloader"):
        _train(build_rag(), [], tmp_path)


def test_answer_that_cannot_fit_rejected_before_training(tmp_path):
    from train_tiny import build_rag

    from contextflow_core.training import make_dataloader

    rag = build_rag()
    rag.prompts.config.max_length = 120
    data = make_dataloader([("short question?", "a very long answer " * 20)], batch_size=1)
    with pytest.raises(ValueError, match=r"train_dataloader: example 0 .* cannot be trained on: max_length"):
        _train(rag, data, tmp_path)


def test_checkpoint_from_another_model_and_tampered_checkpoint_refused(tmp_path):
    from train_tiny import build_rag

    from contextflow_core.training import latest_checkpoint, make_dataloader

    data = make_dataloader([("What is the capital of Quenia?", "Zorblat")] * 2, batch_size=1)
    _train(build_rag(), data, tmp_path, max_steps=1)
    ckpt = latest_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="was written for another model"):
        _train(build_rag(hidden=16), data, tmp_path, resume=str(ckpt))
    _flip(next(ckpt.glob("*.safetensors")))
    with pytest.raises(ValueError, match="resume: checksum mismatch"):
        _train(build_rag(), data, tmp_path, resume=str(ckpt))


def test_full_disk_during_model_save_keeps_the_previous_model(rag, tmp_path, monkeypatch):
    rag.save_pretrained(tmp_path / "m")
    before = RAGSequence.from_pretrained(tmp_path / "m")(questions=["q"], answers=["a"]).loss
    import contextflow_core.serialization as ser

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ser, "_write_manifest", disk_full)
    with pytest.raises(OSError, match="No space left"):
        rag.save_pretrained(tmp_path / "m")
    monkeypatch.undo()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]  # no temp dir left behind
    again = RAGSequence.from_pretrained(tmp_path / "m")(questions=["q"], answers=["a"]).loss
    assert torch.allclose(before, again)
