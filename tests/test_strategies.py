"""Retrieval strategies: BM25 against a hand computation, fusion, MMR, and gradient in every strategy."""
import math

import numpy as np
import pytest
import torch
from tiny import tiny_encoder, tiny_generator, tiny_tokenizer

from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex, Retriever
from contextflow_core.retrieval.bm25 import BM25
from contextflow_core.retrieval.strategies import StrategyConfig
from contextflow_core.types import Passage


def test_bm25_matches_hand_computation():
    docs = ["salt salt river", "river town", "blue heron"]
    bm = BM25(docs, k1=1.5, b=0.75)
    avg = 7 / 3
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    tf_part = lambda tf, n: tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * n / avg))
    assert bm.scores("salt")[0] == pytest.approx(idf * tf_part(2, 3), rel=1e-5)
    assert bm.scores("salt")[1:].tolist() == [0.0, 0.0]
    assert bm.top_rows("river", 5).tolist() == [1, 0]  # shorter doc first; no-match doc left out
    assert bm.top_rows("Blue HERON!", 1).tolist() == [2]


def _index(n=40, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    passages = [Passage(f"p{i}", f"passage number {i} word{i % 7}") for i in range(n)]
    return DocumentIndex.from_embeddings(passages, emb), emb


def test_pool_recovers_exact_order_behind_ivf():
    index, emb = _index(400, 8)
    ivf = DocumentIndex.from_embeddings(index.passages, emb, index_factory="IVF16,Flat", nprobe=1)
    q = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    exact = index.search(q, 5).ids
    pooled = Retriever(ivf, strategy=StrategyConfig("pool", pool_size=400)).candidates(["x"] * 5, q, 5).ids
    assert pooled == exact


def test_hybrid_brings_in_lexical_match_and_mmr_diversifies():
    index, emb = _index()
    q = emb[5:6]  # dense favours p5; the words favour p13 (and p6, p20, p27, p34 share "word6")
    dense = Retriever(index).candidates(["word6 13"], q, 4).ids[0]
    hybrid = Retriever(index, strategy=StrategyConfig("hybrid", pool_size=40)).candidates(["word6 13"], q, 4).ids[0]
    assert dense[0] == "p5" and "p13" not in dense
    assert "p13" in hybrid and set(hybrid) <= {"p13", "p6", "p20", "p27", "p34", "p5"}
    dup = DocumentIndex.from_embeddings([Passage(f"d{i}", "x") for i in range(4)],
                                        np.array([[1, 0], [1, 0.01], [0.9, 0.1], [0, 1]], dtype=np.float32))
    mmr = Retriever(dup, strategy=StrategyConfig("mmr", mmr_lambda=0.3)).candidates(["x"], np.array([[1, 0.5]], np.float32), 2)
    assert set(mmr.ids[0]) == {"d0", "d3"} or "d3" in mmr.ids[0]
    dense = Retriever(dup).candidates(["x"], np.array([[1, 0.5]], np.float32), 2)
    assert "d3" not in dense.ids[0]


@pytest.mark.parametrize("name", ["dense", "pool", "hybrid", "mmr"])
def test_gradient_reaches_question_encoder_in_every_strategy(passages, name):
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    retriever = Retriever(index, strategy=StrategyConfig(name, pool_size=6))
    rag = RAGSequence(enc, retriever, tiny_tokenizer(), tiny_generator(), num_docs=3)
    out = rag(questions=["capital of Quenia?"], answers=["Zorblat"])
    out.loss.backward()
    assert out.doc_logprobs.shape == (1, 3)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_hybrid_bm25_rebuilds_after_index_changes():
    index, _ = _index(10)
    r = Retriever(index, strategy="hybrid")
    first = r._lexical()
    index.add([Passage("new", "zebra crossing")], embeddings=np.ones((1, 8), np.float32))
    assert r._lexical() is not first and r._lexical().num_docs == 11


def test_unknown_strategy_rejected():
    with pytest.raises(ValueError, match=r"name: expected one of \['dense', 'hybrid', 'mmr', 'pool'\]"):
        StrategyConfig("sparse")
