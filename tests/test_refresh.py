"""Live context-encoder training and index refresh (inline and in the background)."""
import numpy as np
import pytest
import torch
from tiny import tiny_tokenizer
from train_tiny import build_rag

from contextflow_core.config import RagConfig, TrainConfig
from contextflow_core.retrieval import Retriever
from contextflow_core.retrieval.refresh import IndexRefresher
from contextflow_core.training import make_dataloader, train_rag

PAIRS = [("What is the capital of Quenia?", "Zorblat"), ("Which river flows through Tarsk?", "Mivo")] * 3


def test_train_context_encoder_uses_live_passage_embeddings_with_gradient():
    rag = build_rag()
    rag.config = RagConfig(num_docs=2, train_context_encoder=True)
    out = rag(questions=[PAIRS[0][0]], answers=[PAIRS[0][1]])
    _, retrieved = rag.retrieve([PAIRS[0][0]], 2)
    live = rag.context_encoder.encode([p.text for p in retrieved.passages[0]])
    stored = retrieved.embeddings[0]
    assert torch.allclose(live, stored, atol=1e-5)  # untrained: same vectors either way
    out.loss.backward()
    assert any(p.grad is not None for p in rag.question_encoder.parameters())


@pytest.mark.parametrize("background", [False, True])
def test_refresher_rebuilds_index_from_snapshot_and_swaps(background):
    rag = build_rag()
    old = rag.index
    refresher = IndexRefresher(rag.retriever, rag.context_encoder, background=background)
    with torch.no_grad():
        for p in rag.question_encoder.parameters():
            p.add_(0.1)
    refresher.start(step=3)
    with torch.no_grad():  # changes after the snapshot must not reach the rebuilt index
        for p in rag.question_encoder.parameters():
            p.add_(5.0)
    record = refresher.swap_if_ready(step=4, wait=True)
    assert record["swapped"] and record["step_started"] == 3 and record["passages_per_s"] > 0
    assert rag.index is not old and rag.index.ids == old.ids
    assert not np.allclose(rag.index.embeddings.numpy(), old.embeddings.numpy())
    with torch.no_grad():
        for p in rag.question_encoder.parameters():
            p.sub_(5.0)
    expected = rag.context_encoder.encode([p.text for p in old.passages])
    assert torch.allclose(rag.index.embeddings, expected, atol=1e-4)


def test_rebuild_is_discarded_when_passages_changed_meanwhile():
    rag = build_rag()
    refresher = IndexRefresher(rag.retriever, rag.context_encoder, background=True)
    refresher.start(step=1)
    refresher._thread.join()
    rag.index.add(["A new passage."], encoder=rag.context_encoder)
    record = refresher.swap_if_ready(step=2)
    assert record is not None and not record["swapped"] and "A new passage." in [p.text for p in rag.index.passages]


def test_train_rag_refreshes_index_and_records_cost(tmp_path):
    rag = build_rag()
    before = rag.index
    config = TrainConfig(num_epochs=1, max_steps=4, learning_rate=1e-2, refresh_index_steps=2,
                         refresh_in_background=False, output_dir=str(tmp_path), progress=False, plot=False,
                         num_docs=2, log_every=1)
    history = train_rag(rag, make_dataloader(PAIRS, batch_size=2, seed=0), config=config)
    assert [r["step_started"] for r in history.refreshes] == [2]
    assert history.refreshes[0]["swapped"] and rag.index is not before
    assert '"index_refresh"' in (tmp_path / "metrics.jsonl").read_text()


def test_separate_context_encoder_is_trained_and_saved(tmp_path):
    from tiny import tiny_encoder

    from contextflow_core.rag import RAGSequence
    from contextflow_core.training import apply_train_mode

    base = build_rag()
    ctx = tiny_encoder(seed=1)
    rag = RAGSequence(base.question_encoder, base.retriever, base.generator_tokenizer, base.generator,
                      config=RagConfig(num_docs=2, train_context_encoder=True), context_encoder=ctx)
    apply_train_mode(rag, TrainConfig(train_mode="retriever"))
    rag(questions=[PAIRS[0][0]], answers=[PAIRS[0][1]]).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.parameters())
    rag.save_pretrained(tmp_path / "m")
    again = RAGSequence.from_pretrained(tmp_path / "m")
    assert again.context_encoder is not again.question_encoder
    x = ["Tarsk was founded in 1204."]
    assert torch.allclose(again.context_encoder.encode(x), ctx.encode(x), atol=1e-6)
