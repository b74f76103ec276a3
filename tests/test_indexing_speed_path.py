"""Indexing encodes in length-sorted batches under inference mode (issue 17, item 4).

`TextEncoder.encode` (used by `DocumentIndex.from_texts`, `add` and index refresh) tokenizes
all texts once, runs them longest-first in batches and restores the input order. The
embeddings must equal the plain path (each batch of the input order through `embed`, and
each text alone) within 1e-5, in input order, whatever the batch size.
"""
import pytest
import torch
from tiny import tiny_encoder

from contextflow_core.models.encoders import TextEncoder
from contextflow_core.retrieval import DocumentIndex

TEXTS = ["a", "a much longer passage about the river Mivo and the town of Tarsk", "mid length text here",
         "Zorblat is the capital of Quenia.", "x y", "another fairly long passage, with commas, and words " * 3,
         "short", "Quenia exports blue salt."]


def plain(encoder: TextEncoder, texts, batch_size):
    with torch.no_grad():
        return torch.cat([encoder.embed(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size)])


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_sorted_batches_give_the_plain_paths_embeddings_in_input_order(batch_size):
    enc = tiny_encoder(normalize=True)
    got = enc.encode(TEXTS, batch_size=batch_size)
    assert got.shape == (len(TEXTS), enc.dim) and got.dtype == torch.float32
    assert torch.allclose(got, plain(enc, TEXTS, batch_size), atol=1e-5)
    alone = torch.cat([plain(enc, [t], 1) for t in TEXTS])
    assert torch.allclose(got, alone, atol=1e-5)
    assert not got.is_inference() and not got.requires_grad  # usable in later autograd code


def test_batches_run_longest_first_under_inference_mode():
    enc = tiny_encoder()
    seen = []
    enc.model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((kwargs["input_ids"].shape[1], torch.is_inference_mode_enabled())),
        with_kwargs=True)
    enc.encode(TEXTS, batch_size=3)
    lengths = [n for n, _ in seen]
    assert len(seen) == 3 and lengths == sorted(lengths, reverse=True)
    assert all(flag for _, flag in seen)


def test_from_texts_indexes_the_sorted_embeddings_under_the_right_ids():
    enc = tiny_encoder(normalize=True)
    index = DocumentIndex.from_texts(TEXTS, enc, batch_size=3, show_progress=False)
    assert torch.allclose(torch.as_tensor(index.embeddings), plain(enc, TEXTS, 3), atol=1e-5)
    hits = index.search(plain(enc, TEXTS, 3).numpy(), k=1)
    assert [row[0] for row in hits.ids] == [str(i) for i in range(len(TEXTS))]


def test_encode_restores_the_training_mode_and_keeps_gradients_off():
    enc = tiny_encoder().train()
    out = enc.encode(TEXTS[:3])
    assert enc.training and enc.model.training and not out.requires_grad
    assert enc.encode([]).shape == (0, enc.dim)


def test_an_encoder_without_tokenizer_names_the_way_out():
    enc = TextEncoder(tiny_encoder().model, None)
    with pytest.raises(ValueError, match="no tokenizer"):
        enc.encode(["text"])


@pytest.mark.embedded
def test_embedded_minilm_matches_sentence_transformers_encode():
    st = pytest.importorskip("sentence_transformers")
    from contextflow_core.data import make_synthetic
    from contextflow_core.models.defaults import (
        ENCODER_PACKAGE,
        _package_dir,
        default_question_encoder,
    )

    texts = [p.text for p in make_synthetic(num_entities=10, seed=0).passages]
    ours = default_question_encoder().encode(texts, batch_size=8)
    model = st.SentenceTransformer(str(_package_dir(ENCODER_PACKAGE) / "model"), device="cpu", local_files_only=True)
    theirs = torch.from_numpy(model.encode(texts, batch_size=8, normalize_embeddings=True, convert_to_numpy=True))
    assert torch.allclose(ours, theirs, atol=1e-5)
