"""Training runs (issue 13, items 2, 3 and 12): runs in one output_dir do not mix, resume refuses
another model or set-up unless told which wins, training errors surface, the index does not go stale."""
import dataclasses
import json
import math
import warnings
from pathlib import Path

import faiss
import pytest
import torch
from tiny import tiny_generator, tiny_tokenizer
from train_tiny import IDS, PASSAGES, build_rag, loaders, tiny_config, tiny_encoder, trainable_state

from contextflow_core.config import TrainConfig
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.retrieval.refresh import IndexRefresher
from contextflow_core.training import checkpoint as ckpt
from contextflow_core.training import train_rag


def _names(out) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(out)]


def _manifest(path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def _stop_at_call(model, n: int) -> None:
    """Make the n-th generator scoring call raise, as a crash in the middle of a run would."""
    original, count = model.score, {"n": 0}

    def score(*args, **kwargs):
        count["n"] += 1
        if count["n"] == n:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    model.score = score


def _old_run(out):
    """A finished 12-step run that keeps checkpoints 10 and 12 (save every 5 steps, keep 2)."""
    history = train_rag(build_rag(), loaders()[0], config=tiny_config(out, save_steps=5))
    assert _names(out) == [ckpt.checkpoint_name(10), ckpt.checkpoint_name(12)]
    return history


# ---------------------------------------------------------------------------- item 2: runs do not mix


def test_new_run_keeps_its_own_checkpoints_beside_an_older_run(tmp_path):
    old = _old_run(tmp_path)
    new = train_rag(build_rag(), loaders()[0], config=tiny_config(tmp_path, max_steps=4, save_steps=2))
    assert _names(tmp_path) == [ckpt.checkpoint_name(s) for s in (2, 4, 10, 12)]  # rotation kept both runs' last 2
    assert Path(new.last_checkpoint).is_dir() and new.last_checkpoint.endswith(ckpt.checkpoint_name(4))
    assert new.run_id and old.run_id and new.run_id != old.run_id
    assert _manifest(new.last_checkpoint)["run_id"] == new.run_id
    assert _manifest(old.last_checkpoint)["run_id"] == old.run_id
    # resume="auto" picks the newest run's latest checkpoint, and continues that run
    again = train_rag(build_rag(), loaders()[0], config=tiny_config(tmp_path, max_steps=6, save_steps=2,
                                                                     resume="auto"))
    assert again.resumed_from.endswith(ckpt.checkpoint_name(4)) and again.run_id == new.run_id
    assert _names(tmp_path) == [ckpt.checkpoint_name(s) for s in (4, 6, 10, 12)]
    assert Path(again.last_checkpoint).is_dir()


def test_run_that_would_overwrite_another_runs_checkpoint_is_refused_before_training(tmp_path):
    _old_run(tmp_path)
    before = {p.name: _manifest(p) for p in ckpt.list_checkpoints(tmp_path)}
    model = build_rag()
    weights = trainable_state(model)
    with pytest.raises(ValueError, match=r"output_dir: .* holds checkpoints of another run .*checkpoint-00000010"
                                         r".*fresh output_dir, resume='auto'"):
        train_rag(model, loaders()[0], config=tiny_config(tmp_path, save_steps=5))
    assert {p.name: _manifest(p) for p in ckpt.list_checkpoints(tmp_path)} == before
    _assert_same(trainable_state(model), weights)  # refused before the first step


def test_rotation_only_removes_checkpoints_of_the_same_run(tmp_path):
    _old_run(tmp_path)
    train_rag(build_rag(), loaders()[0], config=tiny_config(tmp_path, max_steps=3, save_steps=1, save_total_limit=1))
    assert _names(tmp_path) == [ckpt.checkpoint_name(s) for s in (3, 10, 12)]


# ---------------------------------------------------------------------------- item 2: resume refuses mismatches


def _first_half(out, **overrides):
    """Steps 1..4 of a 12-step run, checkpointed every 2 steps, then interrupted in step 5."""
    model = build_rag()
    _stop_at_call(model, 5)
    with pytest.raises(KeyboardInterrupt):
        train_rag(model, loaders()[0], config=tiny_config(out, save_steps=2, **overrides))
    assert ckpt.latest_checkpoint(out).name == ckpt.checkpoint_name(4)


def _rag_with_encoder_seed(seed: int) -> RAGSequence:
    encoder = tiny_encoder(seed)
    index = DocumentIndex.from_texts(PASSAGES, encoder, ids=IDS, show_progress=False)
    return RAGSequence(encoder, index, tiny_tokenizer(), tiny_generator(seed=0, hidden=32), num_docs=2)


@pytest.mark.parametrize("change, message", [
    (lambda m: {"learning_rate": 1e-1}, r"another set-up: TrainConfig\.learning_rate: checkpoint 0\.005, now 0\.1"),
    (lambda m: {"warmup_ratio": 0.5}, r"TrainConfig\.warmup_ratio"),
    (lambda m: setattr(m, "config", dataclasses.replace(m.config, length_normalize=True)) or {},
     r"RagConfig\.length_normalize: checkpoint False, now True"),
])
def test_resume_refuses_another_rag_or_training_setup(tmp_path, change, message):
    _first_half(tmp_path)
    model = build_rag()
    overrides = change(model)
    with pytest.raises(ValueError, match=r"resume: checkpoint .*checkpoint-00000004 was written with " + ".*" + message
                                         + r".*resume_mismatch='checkpoint'.*resume_mismatch='current'"):
        train_rag(model, loaders()[0], config=tiny_config(tmp_path, save_steps=2, resume="auto", **overrides))


def test_resume_refuses_another_frozen_model(tmp_path):
    train_rag(build_rag(), loaders()[0], config=tiny_config(tmp_path, max_steps=2, train_mode="generator"))
    other = _rag_with_encoder_seed(1)  # same shapes, other (frozen) question-encoder weights
    with pytest.raises(ValueError, match=r"written for another model: its frozen weights or buffers differ"
                                         r".*resume_mismatch='current'"):
        train_rag(other, loaders()[0], config=tiny_config(tmp_path, train_mode="generator", resume="auto"))
    renamed = build_rag()
    renamed.generator.config.rms_norm_eps = 1e-3  # same weights, another architecture setting
    with pytest.raises(ValueError, match=r"written for another model: its model configs or encoder settings differ"):
        train_rag(renamed, loaders()[0], config=tiny_config(tmp_path, train_mode="generator", resume="auto"))
    with pytest.warns(UserWarning, match="resume_mismatch='current': loading it anyway"):
        history = train_rag(_rag_with_encoder_seed(1), loaders()[0],
                            config=tiny_config(tmp_path, train_mode="generator", resume="auto",
                                               resume_mismatch="current", max_steps=3))
    assert history.global_step == 3


def test_resume_mismatch_checkpoint_continues_with_the_recorded_setup(tmp_path):
    uninterrupted = build_rag()
    train_rag(uninterrupted, loaders()[0], config=tiny_config(None))
    _first_half(tmp_path)
    model = build_rag()
    history = train_rag(model, loaders()[0], config=tiny_config(tmp_path, save_steps=2, resume="auto",
                                                                learning_rate=1e-1, resume_mismatch="checkpoint"))
    _assert_same(trainable_state(model), trainable_state(uninterrupted))  # trained with lr 5e-3 throughout
    assert history.config["learning_rate"] == 5e-3 and history.config["resume_mismatch"] == "checkpoint"
    assert json.loads((tmp_path / "train_config.json").read_text())["learning_rate"] == 5e-3
    assert max(r["lr"] for r in history.train) <= 5e-3


def test_resume_mismatch_current_continues_with_yours_and_records_it(tmp_path):
    _first_half(tmp_path)
    with pytest.warns(UserWarning, match=r"TrainConfig\.learning_rate.*continuing with yours"):
        history = train_rag(build_rag(), loaders()[0], config=tiny_config(tmp_path, save_steps=2, resume="auto",
                                                                          learning_rate=1e-3,
                                                                          resume_mismatch="current"))
    assert history.config["learning_rate"] == 1e-3 and history.global_step == 12
    assert json.loads((tmp_path / "train_config.json").read_text())["learning_rate"] == 1e-3
    state = json.loads((Path(history.last_checkpoint) / "trainer_state.json").read_text())
    assert state["config"]["learning_rate"] == 1e-3 and state["run_id"] == history.run_id


def test_resume_may_change_what_only_lengthens_or_logs(tmp_path):
    _first_half(tmp_path)
    history = train_rag(build_rag(), loaders()[0], config=tiny_config(tmp_path, save_steps=3, resume="auto",
                                                                      num_epochs=4, log_every=2, seed=7))
    assert history.global_step == 16 and history.resumed_from.endswith(ckpt.checkpoint_name(4))


# ---------------------------------------------------------------------------- item 3: errors surface


def _context_rag(**config):
    model = build_rag()
    model.config = dataclasses.replace(model.config, train_context_encoder=True, **config)
    return model


@pytest.mark.parametrize("background", [True, False])
def test_failed_index_refresh_stops_the_run_with_its_error(tmp_path, background):
    model = _context_rag()

    def broken_encode(*args, **kwargs):
        raise OSError("disk with the corpus went away")

    model.context_encoder.encode = broken_encode  # the refresh encodes the corpus with a snapshot of it
    config = tiny_config(tmp_path, save_steps=1, refresh_index_steps=1, refresh_in_background=background)
    with pytest.raises(RuntimeError, match=r"index refresh started at step 1 failed .*OSError: disk with the corpus"
                                           r".*training stopped") as info:
        train_rag(model, loaders()[0], config=config)
    assert isinstance(info.value.__cause__, OSError)
    assert model.config.train_context_encoder and model.index.ids == IDS  # model settings restored, index intact


def _nan_embed(encoder, when):
    original, count = encoder.embed, {"n": 0}

    def embed(texts):
        count["n"] += 1
        out = original(texts)
        return out * math.nan if when(count["n"]) else out

    encoder.embed = embed


def test_nonfinite_question_embeddings_skip_the_step_like_a_nonfinite_loss():
    model = build_rag()
    _nan_embed(model.question_encoder, lambda n: n == 2)
    with pytest.warns(UserWarning, match="non-finite question or passage embeddings .* skipped"):
        history = train_rag(model, loaders()[0], config=tiny_config(None, max_steps=3))
    assert history.skipped_steps == 1 and history.global_step == 3
    assert all(math.isfinite(r["loss"]) for r in history.train)


def test_nonfinite_passage_embeddings_are_skipped_and_counted_up_to_the_limit():
    model = _context_rag()
    _nan_embed(model.context_encoder, lambda n: n >= 4)  # question (odd calls) and passages (even) share it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"2 optimizer steps in a row had a non-finite .*max_nonfinite_steps=2"):
            train_rag(model, loaders()[0], config=tiny_config(None, max_nonfinite_steps=2))


def test_retrieve_names_nonfinite_question_embeddings():
    from contextflow_core.retrieval.checks import NonFiniteEmbeddings

    model = build_rag()
    _nan_embed(model.question_encoder, lambda n: True)
    with pytest.raises(NonFiniteEmbeddings, match="question embeddings: expected finite embeddings, got NaN"):
        model.retrieve(["What is the capital of Quenia?"])


@pytest.mark.parametrize("field, value", [
    ("learning_rate", math.inf), ("learning_rate", math.nan), ("learning_rate", True),
    ("question_encoder_lr", math.inf), ("generator_lr", True), ("max_grad_norm", math.nan),
    ("max_grad_norm", math.inf), ("lora_alpha", math.inf), ("lora_alpha", True), ("lora_dropout", False),
    ("lora_dropout", math.nan), ("lora_r", True), ("weight_decay", math.inf),
])
def test_train_config_refuses_nonfinite_and_bool_rates_and_lora_scales(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be .*got {value!r}"):
        TrainConfig(**{field: value})


# ---------------------------------------------------------------------------- item 12: index staleness


def test_resumed_refresh_run_equals_the_uninterrupted_one(tmp_path):
    config = dict(save_steps=2, refresh_index_steps=2, refresh_in_background=False)
    uninterrupted = _context_rag()
    full = train_rag(uninterrupted, loaders()[0], config=tiny_config(tmp_path / "a", **config))
    model = _context_rag()
    _stop_at_call(model, 5)
    with pytest.raises(KeyboardInterrupt):
        train_rag(model, loaders()[0], config=tiny_config(tmp_path / "b", **config))
    last = ckpt.latest_checkpoint(tmp_path / "b")
    assert last.name == ckpt.checkpoint_name(4)
    files = _manifest(last)["files"]
    resumed = _context_rag()
    history = train_rag(resumed, loaders()[0], config=tiny_config(tmp_path / "b", resume="auto", **config))
    assert history.resumed_from == str(last)
    assert [r["loss"] for r in history.train] == pytest.approx([r["loss"] for r in full.train], abs=1e-5)
    _assert_same(trainable_state(resumed), trainable_state(uninterrupted))
    assert torch.allclose(resumed.index.embeddings, uninterrupted.index.embeddings, atol=1e-5)
    assert "index.safetensors" in files  # the refreshed index travels in the checkpoint


def _hnsw_index(encoder, ef_search):
    embeddings = encoder.encode(PASSAGES)
    raw = faiss.index_factory(embeddings.shape[1], "HNSW8", faiss.METRIC_INNER_PRODUCT)
    raw.add(embeddings.numpy())
    from contextflow_core.types import Passage

    passages = [Passage(id=i, text=t) for i, t in zip(IDS, PASSAGES)]
    return DocumentIndex(passages, embeddings.numpy(), raw, index_factory="HNSW8", ef_search=ef_search)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_refresh_keeps_nprobe_and_ef_search(tmp_path, kind):
    encoder = tiny_encoder(0)
    if kind == "ivf":
        index = DocumentIndex.from_texts(PASSAGES, encoder, ids=IDS, index_factory="IVF2,Flat", nprobe=1,
                                         show_progress=False)
    else:
        index = _hnsw_index(encoder, ef_search=100)
    model = RAGSequence(encoder, index, tiny_tokenizer(), tiny_generator(seed=0, hidden=32), num_docs=2)
    refresher = IndexRefresher(model.retriever, model.context_encoder, background=False)
    refresher.start(step=1)
    assert refresher.swap_if_ready(step=1)["swapped"] and model.index is not index
    model.index.save(tmp_path / "index")
    saved = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert (saved["nprobe"], saved["ef_search"]) == ((1, None) if kind == "ivf" else (None, 100))
    assert (model.index.nprobe, model.index.ef_search) == ((1, None) if kind == "ivf" else (None, 100))


def test_training_the_context_encoder_without_refresh_warns_once():
    model = _context_rag()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_rag(model, loaders()[0], config=tiny_config(None, max_steps=3))
    stale = [w for w in caught if "refresh_index_steps is None" in str(w.message)]
    assert len(stale) == 1 and "goes stale" in str(stale[0].message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_rag(_context_rag(), loaders()[0], config=tiny_config(None, max_steps=2, refresh_index_steps=1,
                                                                   refresh_in_background=False))
    assert not [w for w in caught if "refresh_index_steps is None" in str(w.message)]
