"""Store-backed retrieval in the core (issue 15 items 1, 3, 5): the protocol, the in-memory
reference backend, parity with the FAISS path, the embedding-space check, save/load and
refresh in place. Engine backends (Milvus Lite, Qdrant, Chroma) are tested in
tests/integrations/test_store_backends.py against the same contract."""
import json
import warnings

import numpy as np
import pytest
import tiny
import torch
from train_tiny import IDS, PASSAGES, QA, tiny_config, tiny_encoder

from contextflow_core import InMemoryBackend, RAGSequence, StoreHits, VectorStoreBackend, check_embedding_space
from contextflow_core.building import build_rag
from contextflow_core.config import RagConfig
from contextflow_core.retrieval import DocumentIndex, Retriever, StrategyConfig, refresh_store
from contextflow_core.retrieval.refresh import IndexRefreshError
from contextflow_core.retrieval.store_refresh import PROGRESS_FILE, SNAPSHOT_FILE, read_progress
from contextflow_core.training import apply_train_mode, make_dataloader, train_rag
from contextflow_core.types import Passage

TITLES = [f"Title {i}" for i in range(len(PASSAGES))]
QUESTIONS = ["What is the capital of Quenia?", "Which river flows through Tarsk?"]
ANSWERS = ["Zorblat", "Mivo"]


def _index(encoder):
    return DocumentIndex.from_texts(PASSAGES, encoder, ids=IDS, titles=TITLES, show_progress=False)


def _backend(encoder, name="docs"):
    return InMemoryBackend.from_index(_index(encoder), name=name)


def _pair(num_docs=3, seed=0, **kwargs):
    """(over a DocumentIndex, over an InMemoryBackend): same weights, same vectors."""
    models = []
    for store in (False, True):
        enc = tiny_encoder(seed)
        source = _backend(enc) if store else _index(enc)
        models.append(RAGSequence(enc, source, tiny.tiny_tokenizer(), tiny.tiny_generator(seed=seed, hidden=32),
                                  num_docs=num_docs, **kwargs))
    return models


def _store_rag(backend=None, num_docs=2, **kwargs):
    enc = tiny_encoder(0)
    backend = backend if backend is not None else _backend(enc)
    return RAGSequence(enc, backend, tiny.tiny_tokenizer(), tiny.tiny_generator(seed=0, hidden=32),
                       num_docs=num_docs, **kwargs)


# ----------------------------------------------------------------------------- protocol
def test_in_memory_backend_is_a_backend_and_ranks_like_flat_faiss():
    enc = tiny_encoder(0)
    index, backend = _index(enc), _backend(enc)
    assert isinstance(backend, VectorStoreBackend) and backend.name == "memory:docs" and backend.count() == 6
    q = enc.encode(QUESTIONS).numpy()
    hits, found = backend.search(q, 4), index.search(q, 4)
    assert isinstance(hits, StoreHits) and hits.ids == found.ids
    np.testing.assert_allclose(hits.scores, found.scores.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(hits.vectors, found.embeddings.numpy())
    assert hits.metadata[0][0]["title"] == found.passages[0][0].title
    rows = backend.get(["p3", "p1"])
    assert rows.ids == ["p3", "p1"] and rows.texts == [PASSAGES[3], PASSAGES[1]]
    assert [r.ids for r in backend.iter_rows(4)] == [IDS[:4], IDS[4:]]
    with pytest.raises(KeyError, match="not in the store 'memory:docs'"):
        backend.get(["nope"])
    with pytest.raises(ValueError, match="k: expected at most the 6 rows"):
        backend.search(q, 7)


def test_retriever_over_a_store_gives_passages_with_titles_and_stored_vectors():
    enc = tiny_encoder(0)
    backend = _backend(enc)
    retriever = Retriever(backend, enc, k=2)
    got, want = retriever.retrieve(QUESTIONS), Retriever(_index(enc), enc, k=2).retrieve(QUESTIONS)
    assert retriever.store is backend and len(retriever.index) == 6 and retriever.index.dim == enc.dim
    assert got.ids == want.ids and got.passages == want.passages  # id, text, title
    assert got.passages[0][0].metadata == {}  # the title key is not repeated in metadata
    assert torch.equal(got.embeddings, want.embeddings)
    assert "p3" in retriever.index and "nope" not in retriever.index
    with pytest.raises(ValueError, match="k: expected at most the 6 rows of the store 'memory:docs', got 7"):
        retriever.retrieve(QUESTIONS, k=7)
    custom = InMemoryBackend(IDS, backend.get(IDS).vectors, PASSAGES, [{"heading": t, "src": "x"} for t in TITLES])
    p = Retriever(custom, enc, k=1, title_key="heading").retrieve(QUESTIONS[:1]).passages[0][0]
    assert p.title.startswith("Title") and p.metadata == {"src": "x"}


def test_store_views_refuse_whole_corpus_and_hybrid_and_wrong_dimension():
    enc = tiny_encoder(0)
    backend = _backend(enc)
    with pytest.raises(ValueError, match="strategy: 'hybrid' needs every passage in memory"):
        Retriever(backend, enc, strategy="hybrid")
    with pytest.raises(ValueError, match=r"index.passages: the model retrieves from the store 'memory:docs'"):
        _ = Retriever(backend, enc).index.passages
    with pytest.raises(ValueError, match="encoder: expected embeddings of dimension 16 .the store's., got an "
                                         "encoder of dimension 8"):
        Retriever(backend, tiny_encoder(0, hidden=8))
    with pytest.raises(ValueError, match="question_encoder: embedding size 8 differs from the dimension 16 of the store 'memory:docs'"):
        RAGSequence(tiny_encoder(0, hidden=8), backend, tiny.tiny_tokenizer(), tiny.tiny_generator())
    with pytest.raises(ValueError, match="index: expected a DocumentIndex or a vector-store backend"):
        Retriever(object(), enc)
    with pytest.raises(ValueError, match="title_key: only a store-backed retriever"):
        Retriever(_index(enc), enc, title_key="heading")


@pytest.mark.parametrize("strategy", ["pool", "mmr"])
def test_pool_and_mmr_over_a_store_match_the_index(strategy):
    enc = tiny_encoder(0)
    cfg = StrategyConfig(name=strategy, pool_size=5, mmr_lambda=0.3)
    q = enc.encode(QUESTIONS)
    got = Retriever(_backend(enc), enc, strategy=cfg).candidates(QUESTIONS, q, 3)
    want = Retriever(_index(enc), enc, strategy=cfg).candidates(QUESTIONS, q, 3)
    assert got.ids == want.ids
    assert torch.allclose(got.scores, want.scores.float(), atol=1e-6)


# ----------------------------------------------------------------------------- parity
def test_store_and_index_give_identical_loss_and_gradients():
    by_index, by_store = _pair(num_docs=3)
    assert by_store.store is not None and by_index.store is None
    grads = []
    for model in (by_index, by_store):
        apply_train_mode(model, tiny_config())
        model.train()
        out = model(questions=QUESTIONS, answers=ANSWERS)
        out.loss.backward()
        grads.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (a, ga), (b, gb) = grads
    assert torch.equal(a.loss, b.loss) and torch.equal(a.doc_logprobs, b.doc_logprobs)
    assert [[p.id for p in row] for row in a.passages] == [[p.id for p in row] for row in b.passages]
    assert ga.keys() == gb.keys() and any(n.startswith("question_encoder") for n in ga)
    for name in ga:
        assert torch.equal(ga[name], gb[name]), name
    assert all(not p.requires_grad for p in by_store.context_encoder.parameters())  # the frozen copy


def test_store_and_index_generate_the_same_answers_and_sources():
    by_index, by_store = _pair(num_docs=3)
    for decoding in ("thorough", "fast"):
        a = by_index.generate(questions=QUESTIONS, max_new_tokens=4, decoding=decoding)
        b = by_store.generate(questions=QUESTIONS, max_new_tokens=4, decoding=decoding)
        assert [x.text for x in a] == [x.text for x in b] and [x.score for x in a] == [x.score for x in b]
        assert [[(p, w) for p, w in x.sources] for x in a] == [[(p, w) for p, w in x.sources] for x in b]


def test_train_rag_over_a_store_matches_the_index_and_leaves_documents_alone():
    by_index, by_store = _pair(num_docs=2)
    stored = by_store.store.get(IDS).vectors.copy()
    context_before = {n: p.clone() for n, p in by_store.context_encoder.named_parameters()}
    histories = [train_rag(m, make_dataloader([qa[:2] for qa in QA], batch_size=2, seed=0),
                           config=tiny_config(max_steps=3, num_docs=2)) for m in (by_index, by_store)]
    assert [r["loss"] for r in histories[0].train] == [r["loss"] for r in histories[1].train]
    for (na, pa), (_, pb) in zip(by_index.question_encoder.named_parameters(),
                                  by_store.question_encoder.named_parameters()):
        assert torch.equal(pa, pb), na
    assert not torch.equal(next(by_store.question_encoder.parameters()), context_before[
        next(iter(context_before))])  # the question encoder moved ...
    for n, p in by_store.context_encoder.named_parameters():  # ... the passage encoder did not
        assert torch.equal(p, context_before[n]), n
    np.testing.assert_array_equal(by_store.store.get(IDS).vectors, stored)


# ----------------------------------------------------------------------------- building
def test_build_rag_over_a_store_and_its_refusals():
    enc = tiny_encoder(0)
    backend = _backend(enc)
    rag = build_rag(store=backend, encoder=enc, generator=tiny.tiny_generator(hidden=32),
                    tokenizer=tiny.tiny_tokenizer(), num_docs=2)
    assert rag.store is backend and rag.config.num_docs == 2 and rag.context_encoder is not rag.question_encoder
    with pytest.raises(ValueError, match="passages, store: expected exactly one"):
        build_rag([Passage("a", "x")], store=backend)
    with pytest.raises(ValueError, match="store: expected a vector-store backend"):
        build_rag(store=_index(enc), encoder=enc)


# ----------------------------------------------------------------------------- space check
def test_embedding_space_check_passes_for_the_right_encoder_and_names_the_fix_otherwise():
    enc = tiny_encoder(0)
    report = check_embedding_space(_backend(enc), enc, probe=4)
    assert report.probed == 4 and report.min_cosine > 0.9999 and report.ids == IDS[:4]
    other = InMemoryBackend.from_texts(PASSAGES, tiny_encoder(seed=1), ids=IDS, name="foreign")
    assert other.embedding_model_hint == "tiny-bert-nodrop"
    with pytest.raises(ValueError) as err:
        check_embedding_space(other, enc)
    msg = str(err.value)
    for part in ("'memory:foreign'", "cosine 0.", "expected >= 0.99", "'tiny-bert-nodrop' as the model",
                 'mode="copy"', "store_check=False"):
        assert part in msg, part
    with pytest.raises(ValueError, match="dimension 16 stored, 8 from the encoder"):
        check_embedding_space(other, tiny_encoder(0, hidden=8))


def test_model_over_a_foreign_store_is_refused_unless_the_check_is_skipped():
    foreign = InMemoryBackend.from_texts(PASSAGES, tiny_encoder(seed=1), ids=IDS)
    with pytest.raises(ValueError, match="do not come from the passage encoder"):
        _store_rag(foreign)
    assert _store_rag(foreign, store_check=False).store is foreign


# ----------------------------------------------------------------------------- files
def test_save_writes_a_store_description_and_load_reattaches(tmp_path):
    rag = _store_rag(num_docs=2)
    rag.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "store.json").read_text())
    assert saved == {"name": "memory:docs", "dim": 16, "title_key": "title",
                     "embedding_model_hint": "tiny-bert-nodrop", "backend": "InMemoryBackend"}
    assert not (tmp_path / "m" / "index").exists()
    with pytest.raises(ValueError, match="store: .* was saved over the store 'memory:docs' .dim 16."):
        RAGSequence.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="of dimension 16, got 'memory:small' of dimension 8"):
        RAGSequence.from_pretrained(tmp_path / "m", store=_backend(tiny_encoder(0, hidden=8), name="small"))
    loaded = RAGSequence.from_pretrained(tmp_path / "m", store=rag.store)
    assert loaded.store is rag.store and loaded.context_encoder is not loaded.question_encoder
    a = rag.generate(questions=QUESTIONS, max_new_tokens=3)
    b = loaded.generate(questions=QUESTIONS, max_new_tokens=3)
    assert [x.text for x in a] == [x.text for x in b]


# ----------------------------------------------------------------------------- refresh
class _FailingEncoder(type(tiny_encoder(0))):
    """A TextEncoder that raises on its `fail_at`-th encode call (a class attribute: survives deepcopy)."""

    calls = 0
    fail_at = None

    def encode(self, texts, **kwargs):
        type(self).calls += 1
        if type(self).fail_at is not None and type(self).calls == type(self).fail_at:
            raise RuntimeError("encoder died")
        return super().encode(texts, **kwargs)


class _UpsertOnly(InMemoryBackend):
    """A backend that can upsert but not swap (like Qdrant or Chroma)."""

    staging = None
    promote = None


def _trained(seed=0):
    enc = tiny_encoder(seed)
    torch.manual_seed(100 + seed)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc


def test_refresh_by_upsert_is_resumable_and_ends_like_a_full_refresh(tmp_path):
    new = _trained()
    full = _backend(tiny_encoder(0))
    refresh_store(full, new, tmp_path / "full", mode="upsert", batch_size=2, show_progress=False)
    np.testing.assert_allclose(full.get(IDS).vectors, new.encode(PASSAGES).numpy(), atol=1e-6)

    store = _backend(tiny_encoder(0))
    old = store.get(IDS).vectors.copy()
    failing = _trained()
    failing.__class__ = _FailingEncoder
    _FailingEncoder.calls, _FailingEncoder.fail_at = 0, 3  # dies on the third batch
    with pytest.raises(RuntimeError, match="encoder died"):
        refresh_store(store, failing, tmp_path / "p", mode="upsert", batch_size=2, show_progress=False)
    progress = read_progress(tmp_path / "p")
    assert progress["batches_done"] == 2 and progress["last_id"] == "p3" and not progress["complete"]
    half = store.get(IDS).vectors
    np.testing.assert_array_equal(half[4:], old[4:])  # half old, half new, and the progress file says so
    assert not np.allclose(half[:4], old[:4])
    _FailingEncoder.fail_at = None
    with torch.no_grad():  # a different encoder now: the resume keeps the snapshot it started from
        for p in failing.parameters():
            p.add_(1.0)
    with pytest.warns(UserWarning, match="resuming the unfinished refresh"):
        record = refresh_store(store, failing, tmp_path / "p", batch_size=2, mode="upsert", show_progress=False)
    assert record["resumed"] and record["rows"] == 6 and _FailingEncoder.calls == 4  # 2 done, 1 died, 1 resumed
    np.testing.assert_allclose(store.get(IDS).vectors, full.get(IDS).vectors, atol=1e-6)
    assert read_progress(tmp_path / "p")["complete"] and not (tmp_path / "p" / SNAPSHOT_FILE).exists()


def test_refresh_by_swap_promotes_only_a_complete_new_version(tmp_path):
    new = _trained()
    store = _backend(tiny_encoder(0))
    old = store.get(IDS).vectors.copy()
    failing = _trained()
    failing.__class__ = _FailingEncoder
    _FailingEncoder.calls, _FailingEncoder.fail_at = 0, 2
    with pytest.raises(RuntimeError, match="encoder died"):
        refresh_store(store, failing, batch_size=2, show_progress=False)  # auto: the backend can swap
    np.testing.assert_array_equal(store.get(IDS).vectors, old)  # untouched: all old
    assert store.promoted == 0
    record = refresh_store(store, new, batch_size=2, show_progress=False)
    assert record["mode"] == "swap" and record["rows"] == 6 and store.promoted == 1
    np.testing.assert_allclose(store.get(IDS).vectors, new.encode(PASSAGES).numpy(), atol=1e-6)
    assert store.get(IDS).texts == PASSAGES and store.get(["p0"]).metadata == [{"title": "Title 0"}]


def test_a_failed_refresh_stops_training_and_the_model_says_its_store_is_half_refreshed(tmp_path):
    enc = tiny_encoder(0)
    store = _UpsertOnly(IDS, enc.encode(PASSAGES), PASSAGES, name="docs")
    ctx = tiny_encoder(0)
    ctx.__class__ = _FailingEncoder
    rag = _store_rag(store, context_encoder=ctx, config=RagConfig(num_docs=2, train_context_encoder=True))
    _FailingEncoder.calls, _FailingEncoder.fail_at = 0, 1
    data = make_dataloader([qa[:2] for qa in QA], batch_size=2, seed=0)
    with pytest.raises(IndexRefreshError, match="store refresh started at step 1 failed at step 1: RuntimeError"):
        train_rag(rag, data, config=tiny_config(tmp_path, max_steps=3, num_docs=2, refresh_index_steps=1))
    assert rag.index.refresh_pending == str(tmp_path / "store_refresh" / PROGRESS_FILE)
    with pytest.warns(UserWarning, match=r"an in-place refresh is unfinished .*progress.json"):
        rag.generate(questions=QUESTIONS[:1], max_new_tokens=2)
    _FailingEncoder.fail_at = None


def test_train_rag_refreshes_the_store_with_the_trained_context_encoder(tmp_path):
    rag = _store_rag(config=RagConfig(num_docs=2, train_context_encoder=True))
    stored = rag.store.get(IDS).vectors.copy()
    data = make_dataloader([qa[:2] for qa in QA], batch_size=2, seed=0)
    with pytest.raises(ValueError, match="refresh_index_steps: RagConfig.train_context_encoder=True. over the store"):
        train_rag(rag, data, config=tiny_config(max_steps=2, num_docs=2))
    history = train_rag(rag, data, config=tiny_config(tmp_path, max_steps=4, num_docs=2, refresh_index_steps=2))
    assert [(r["type"], r["step_started"], r["mode"], r["passages"]) for r in history.refreshes] == [
        ("store_refresh", 2, "swap", 6)]
    after = rag.store.get(IDS).vectors
    assert not np.allclose(after, stored)  # refreshed at step 2 with the context encoder of then
    assert rag.index.version == 1 and rag.index.refresh_pending is None
    frozen = _store_rag(num_docs=2)
    with pytest.raises(ValueError, match="refresh_index_steps: the passage encoder of the store 'memory:docs' is "
                                         "frozen"):
        train_rag(frozen, data, config=tiny_config(max_steps=2, num_docs=2, refresh_index_steps=1))


def test_train_rag_finishes_an_interrupted_store_refresh_before_training(tmp_path):
    enc = tiny_encoder(0)
    store = _UpsertOnly(IDS, enc.encode(PASSAGES), PASSAGES, name="docs")
    rag = _store_rag(store, config=RagConfig(num_docs=2, train_context_encoder=True))
    failing = _trained()
    failing.__class__ = _FailingEncoder
    _FailingEncoder.calls, _FailingEncoder.fail_at = 0, 2
    with pytest.raises(RuntimeError):
        refresh_store(store, failing, tmp_path / "store_refresh", batch_size=4, show_progress=False)
    assert not read_progress(tmp_path / "store_refresh")["complete"]
    _FailingEncoder.fail_at = None
    data = make_dataloader([qa[:2] for qa in QA], batch_size=2, seed=0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train_rag(rag, data, config=tiny_config(tmp_path, max_steps=1, num_docs=2, refresh_index_steps=5))
    assert any("finishing the unfinished refresh" in str(w.message) for w in seen)
    assert read_progress(tmp_path / "store_refresh")["complete"]
    np.testing.assert_allclose(store.get(IDS).vectors, _trained().encode(PASSAGES).numpy(), atol=1e-6)


# ----------------------------------------------------------------------------- embedded models
@pytest.mark.embedded
@pytest.mark.slow
def test_from_defaults_over_a_minilm_store_answers_like_over_the_index():
    from contextflow_core.models import default_question_encoder

    backend = InMemoryBackend.from_texts(PASSAGES, default_question_encoder(), ids=IDS, name="minilm")
    assert backend.embedding_model_hint and backend.dim == 384
    by_store = RAGSequence.from_defaults(backend, num_docs=2)
    index = DocumentIndex.from_texts(PASSAGES, by_store.question_encoder, ids=IDS, show_progress=False)
    by_index = RAGSequence(by_store.question_encoder, index, by_store.generator_tokenizer, by_store.generator,
                           num_docs=2)  # the same models over FAISS
    assert by_store.store is backend and not by_store.training
    a = by_store.generate(questions=QUESTIONS, max_new_tokens=8)
    b = by_index.generate(questions=QUESTIONS, max_new_tokens=8)
    assert [x.text for x in a] == [x.text for x in b] and a[0].text
    assert [[(p.id, round(w, 5)) for p, w in x.sources] for x in a] == \
        [[(p.id, round(w, 5)) for p, w in x.sources] for x in b]
