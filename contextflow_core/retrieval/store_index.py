"""StoreIndex: a `DocumentIndex`-like read view of a `VectorStoreBackend`, and the strategies it supports.

Boundary: turns a backend's `StoreHits` into `Retrieved` (Passages plus the **stored**
vectors, so the model recomputes q . d with gradient exactly as over FAISS); knows
nothing of prompts, generators or encoders.

What works over a store, and what does not:

- ``len(view)``, ``view.dim``, ``view.search(q, k)``, ``view.name``, ``view.encoder_name``
  (the backend's ``embedding_model_hint``) behave as on a DocumentIndex, so callers that
  use ``model.index`` for those keep working.
- ``view.passages`` / ``ids`` / ``embeddings`` (the whole corpus) raise: a store may hold
  50M rows; read them with the backend's ``iter_rows`` if you mean it.
- Strategies: "dense" (the engine's top-K), "pool" (the engine's top-P re-scored exactly
  from the stored vectors, top-K kept) and "mmr" (MMR over the engine's top-P) need only
  the hits; "hybrid" needs BM25 over the whole corpus and is refused by name.

Shapes: B queries, P candidates, K kept, D embedding size.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from contextflow_core.retrieval.checks import _as_matrix
from contextflow_core.retrieval.store import StoreHits, require
from contextflow_core.types import Passage, Retrieved

#: Strategy names a store-backed retriever runs (the others need the whole corpus).
STORE_STRATEGIES = ("dense", "pool", "mmr")


def _title(value: Any) -> str | None:
    return None if value is None else str(value)


def hits_to_retrieved(hits: StoreHits, title_key: str = "title") -> Retrieved:
    """`Retrieved` from a backend's hits: Passage(id, text, title=metadata[title_key], other metadata)."""
    passages = [
        [
            Passage(
                id=str(i),
                text=str(t),
                title=_title(m.get(title_key)),
                metadata={k: v for k, v in m.items() if k != title_key},
            )
            for i, t, m in zip(ids, texts, metas, strict=True)
        ]
        for ids, texts, metas in zip(hits.ids, hits.texts, hits.metadata, strict=True)
    ]
    vectors = np.ascontiguousarray(hits.vectors, dtype=np.float32)  # (B, K, D)
    return Retrieved(
        ids=[[p.id for p in row] for row in passages],
        scores=torch.from_numpy(np.ascontiguousarray(hits.scores, dtype=np.float32)),
        embeddings=torch.from_numpy(vectors),
        passages=passages,
    )


class StoreIndex:
    """The read side of a backend, shaped like a `DocumentIndex` (see the module docstring).

    Args:
        backend: A `VectorStoreBackend`.
        title_key: Metadata key holding the passage title.
    """

    def __init__(self, backend: Any, title_key: str = "title") -> None:
        if not isinstance(title_key, str) or not title_key:
            raise ValueError(f"title_key: expected a non-empty metadata key, got {title_key!r}")
        dim = getattr(backend, "dim", None)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(
                f"store: expected a backend with a positive integer dim, got {dim!r} from {type(backend).__name__}"
            )
        self.backend = backend
        self.title_key = title_key
        self.version = 0  # bumped by a store refresh, so derived structures know the vectors changed
        #: The progress file of an unfinished in-place refresh (searches warn while it is set).
        self.refresh_pending: str | None = None
        self._count: tuple[int, int] | None = None  # (version, rows) for pool sizes

    @property
    def dim(self) -> int:
        """Embedding size D (the backend's)."""
        return int(self.backend.dim)

    @property
    def name(self) -> str:
        """The backend's name."""
        return str(self.backend.name)

    @property
    def encoder_name(self) -> str | None:
        """The model the store says embedded its rows (`embedding_model_hint`), if it says."""
        return getattr(self.backend, "embedding_model_hint", None)

    def __len__(self) -> int:
        return int(self.backend.count())

    def __contains__(self, passage_id: object) -> bool:
        """Whether the store holds a row with this id (needs the backend's `get`)."""
        require(self.backend, ("get",), "`id in model.index`")
        try:
            self.backend.get([passage_id])
        except KeyError:
            return False
        return True

    def __repr__(self) -> str:
        return f"StoreIndex(store={self.name!r}, dim={self.dim}, title_key={self.title_key!r})"

    def _whole_corpus(self, what: str):
        raise ValueError(
            f"index.{what}: the model retrieves from the store {self.name!r}, which is not held in "
            "memory; read its rows with model.store.iter_rows(batch_size) (when the backend offers it)"
        )

    @property
    def passages(self) -> list[Passage]:
        """Refused: a store is not held in memory (see `iter_rows`)."""
        return self._whole_corpus("passages")

    @property
    def ids(self) -> list[str]:
        """Refused: a store is not held in memory."""
        return self._whole_corpus("ids")

    @property
    def embeddings(self) -> torch.Tensor:
        """Refused: a store is not held in memory."""
        return self._whole_corpus("embeddings")

    def search(self, query_embeddings: Any, k: int) -> Retrieved:
        """Top-k passages per (B, D) query from the backend, best first.

        One backend call, no row count (a count can cost a query on a remote engine): k larger
        than the store is the backend's ValueError naming `k`.
        """
        queries = _as_matrix("query_embeddings", query_embeddings, dim=self.dim)  # (B, D)
        if self.refresh_pending is not None:
            warnings.warn(
                f"store {self.name!r}: an in-place refresh is unfinished ({self.refresh_pending}), so some "
                "rows hold new vectors and some old ones; rerun refresh_store with that progress_dir "
                "(or train_rag with the same output_dir) to finish it",
                stacklevel=2,
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        hits = _check_hits(self.backend.search(queries, int(k)), len(queries), int(k), self.dim, self.name)
        return hits_to_retrieved(hits, self.title_key)


def _check_hits(found: Any, b: int, k: int, dim: int, name: str) -> StoreHits:
    if not isinstance(found, tuple) or len(found) != 5:
        raise ValueError(
            f"store {name!r}: search must return StoreHits(ids, scores, vectors, texts, metadata), "
            f"got {type(found).__name__}"
        )
    hits = StoreHits(*found)
    shape = np.shape(hits.vectors)
    if shape != (b, k, dim) or np.shape(hits.scores) != (b, k) or len(hits.ids) != b:
        raise ValueError(
            f"store {name!r}: search returned vectors of shape {shape} and scores of shape "
            f"{np.shape(hits.scores)}, expected ({b}, {k}, {dim}) and ({b}, {k}); a backend must "
            "return k hits per query with their stored vectors"
        )
    return hits


# ----------------------------------------------------------------------------- strategies
def _subset(found: Retrieved, keep: list[list[int]], queries: np.ndarray) -> Retrieved:
    """The hits at positions `keep` (B, K) of `found`, exact scores q . d."""
    emb = torch.stack([found.embeddings[b, row] for b, row in enumerate(keep)])  # (B, K, D)
    passages = [[found.passages[b][i] for i in row] for b, row in enumerate(keep)]
    scores = torch.einsum("bd,bkd->bk", torch.from_numpy(queries), emb)
    return Retrieved(ids=[[p.id for p in row] for row in passages], scores=scores, embeddings=emb, passages=passages)


def _pool_size(view: StoreIndex, k: int, cfg) -> int:
    if view._count is None or view._count[0] != view.version:  # counted once per store version
        view._count = (view.version, len(view))
    return max(k, min(cfg.pool_size, view._count[1]))


def _dense(view: StoreIndex, queries: np.ndarray, k: int, cfg) -> Retrieved:
    return view.search(queries, k)


def _pool(view: StoreIndex, queries: np.ndarray, k: int, cfg) -> Retrieved:
    found = view.search(queries, _pool_size(view, k, cfg))
    exact = torch.einsum("bd,bpd->bp", torch.from_numpy(queries), found.embeddings)  # (B, P)
    keep = [torch.argsort(-row, stable=True)[:k].tolist() for row in exact]
    return _subset(found, keep, queries)


def _mmr(view: StoreIndex, queries: np.ndarray, k: int, cfg) -> Retrieved:
    found = view.search(queries, _pool_size(view, k, cfg))
    keep = []
    for b in range(len(queries)):
        cand = found.embeddings[b].numpy()  # (P, D)
        relevance = cand @ queries[b]
        chosen: list[int] = []
        for _ in range(min(k, len(cand))):
            redundancy = (cand @ cand[chosen].T).max(1) if chosen else np.zeros(len(cand))
            value = cfg.mmr_lambda * relevance - (1 - cfg.mmr_lambda) * redundancy
            value[chosen] = -np.inf
            chosen.append(int(value.argmax()))
        keep.append(chosen)
    return _subset(found, keep, queries)


_STORE_SELECT: dict[str, Callable[..., Retrieved]] = {"dense": _dense, "pool": _pool, "mmr": _mmr}


def check_store_strategy(name: str, store_name: str) -> None:
    """Refuse, by name, a strategy that needs the whole corpus in memory."""
    if name not in _STORE_SELECT:
        raise ValueError(
            f"strategy: {name!r} needs every passage in memory (BM25 over the corpus), which a "
            f"store-backed retriever over {store_name!r} does not have; use one of "
            f"{list(STORE_STRATEGIES)}, or copy the passages into a DocumentIndex"
        )


def select_from_store(view: StoreIndex, questions: Sequence[str], queries: np.ndarray, k: int, cfg) -> Retrieved:
    """Run strategy `cfg.name` against a store (questions are unused: no store strategy is lexical)."""
    check_store_strategy(cfg.name, view.name)
    return _STORE_SELECT[cfg.name](view, queries, k, cfg)
