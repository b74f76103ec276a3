"""Retrieval strategies: which K passages a question gets (a registry).

Boundary: picks passage rows from the index given questions and detached
query embeddings; the model then scores the chosen passages from the *live*
question embedding, so gradient flows through the dense scores whatever the
strategy.

- "dense": FAISS top-K by inner product.
- "pool": FAISS top-P candidates (P = pool_size >= K), exact re-scoring, top-K
  (recovers the exact order behind an approximate IVF/PQ/HNSW index).
- "hybrid": dense top-P and BM25 top-P fused by reciprocal rank fusion.
- "mmr": dense top-P, then maximal marginal relevance for diversity.

Shapes: B questions, P candidates, K kept, D embedding size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contextflow_core.types import Retrieved


@dataclass
class StrategyConfig:
    """Settings of a retrieval strategy.

    Attributes:
        name: "dense", "pool", "hybrid" or "mmr".
        pool_size: Candidates P considered before keeping K (>= K is enforced per call).
        rrf_k: Reciprocal rank fusion constant (score = sum 1 / (rrf_k + rank)).
        mmr_lambda: Relevance weight in MMR (1.0 = plain dense ranking).
    """

    name: str = "dense"
    pool_size: int = 50
    rrf_k: int = 60
    mmr_lambda: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"name: expected one of {sorted(STRATEGIES)}, got {self.name!r}")
        if self.pool_size <= 0 or self.rrf_k <= 0:
            raise ValueError(f"pool_size and rrf_k must be positive, got {self.pool_size!r} and {self.rrf_k!r}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda: expected a value in [0, 1], got {self.mmr_lambda!r}")


def _from_rows(index, queries: np.ndarray, rows: list[list[int]]) -> Retrieved:
    passages = [[index.passage_at(r) for r in row] for row in rows]
    emb = np.stack([index.embedding_rows(row) for row in rows])  # (B, K, D)
    scores = np.einsum("bd,bkd->bk", queries, emb)
    return Retrieved(
        ids=[[p.id for p in row] for row in passages],
        scores=torch.from_numpy(scores.astype(np.float32)),
        embeddings=torch.from_numpy(emb),
        passages=passages,
    )


def _dense(index, questions, queries, k, cfg, bm25) -> Retrieved:
    return index.search(queries, k)


def _pool(index, questions, queries, k, cfg, bm25) -> Retrieved:
    found = index.search(queries, max(k, min(cfg.pool_size, len(index))))
    rows = [[index.row_of(i) for i in ids[:k]] for ids in found.ids]
    return _from_rows(index, queries, rows)


def _hybrid(index, questions, queries, k, cfg, bm25) -> Retrieved:
    pool = max(k, min(cfg.pool_size, len(index)))
    dense = index.search(queries, pool)
    rows = []
    for b, question in enumerate(questions):
        fused: dict[int, float] = {}
        ranked = ([index.row_of(i) for i in dense.ids[b]], bm25.top_rows(question, pool).tolist())
        for ranking in ranked:
            for rank, row in enumerate(ranking):
                fused[row] = fused.get(row, 0.0) + 1.0 / (cfg.rrf_k + rank + 1)
        rows.append(sorted(fused, key=lambda r: (-fused[r], r))[:k])
    return _from_rows(index, queries, rows)


def _mmr(index, questions, queries, k, cfg, bm25) -> Retrieved:
    pool = max(k, min(cfg.pool_size, len(index)))
    dense = index.search(queries, pool)
    rows = []
    for b in range(len(queries)):
        cand = dense.embeddings[b].numpy()  # (P, D)
        relevance = dense.scores[b].numpy()
        chosen: list[int] = []
        for _ in range(min(k, len(cand))):
            redundancy = (cand @ cand[chosen].T).max(1) if chosen else np.zeros(len(cand))
            value = cfg.mmr_lambda * relevance - (1 - cfg.mmr_lambda) * redundancy
            value[chosen] = -np.inf
            chosen.append(int(value.argmax()))
        rows.append([index.row_of(dense.ids[b][c]) for c in chosen])
    return _from_rows(index, queries, rows)


Strategy = Callable[..., Retrieved]
STRATEGIES: dict[str, Strategy] = {"dense": _dense, "pool": _pool, "hybrid": _hybrid, "mmr": _mmr}


def select(
    index, questions: Sequence[str], queries: np.ndarray, k: int, cfg: StrategyConfig, bm25: object | None = None
) -> Retrieved:
    """Run strategy `cfg.name` for a batch."""
    return STRATEGIES[cfg.name](index, list(questions), queries, k, cfg, bm25)
