"""DocumentIndex: a FAISS inner-product index plus the passages and their embeddings.

Boundary: the index maps query vectors to the top-K passages. It knows nothing
of prompts or generators, and of encoders only their `encode(texts)` method and
`name` (recorded so a saved index can refuse a mismatched encoder).

Shapes: N passages, B queries, K results per query, D embedding size.

On disk (`save`/`load`): an atomic directory of FAISS, JSONL and safetensors files
with a checksummed manifest; see `storage.py`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import safetensors.numpy
import torch

from contextflow_core.artifacts import INDEX
from contextflow_core.io_utils import atomic_dir
from contextflow_core.retrieval.checks import (
    _as_matrix,
    _check_k,
    _check_passages,
    _check_texts,
    _encode,
    _encoder_name,
    _make_passages,
)
from contextflow_core.retrieval.storage import (
    EMBEDDINGS_FILE,
    FAISS_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    METRIC,
    PASSAGES_FILE,
    _check_expected,
    _faiss_reason,
    _parse_embeddings,
    _parse_faiss,
    _parse_passages,
    _passages_jsonl,
    _read_checked,
    _read_manifest,
    _write_file,
)
from contextflow_core.types import Passage, Retrieved

DEFAULT_EF_SEARCH = 64

ArrayLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]


# ----------------------------------------------------------------------------- faiss
def _new_faiss(index_factory: str, embeddings: np.ndarray) -> faiss.Index:
    """An inner-product faiss index built from `index_factory`, trained if needed, holding `embeddings`."""
    n, dim = embeddings.shape
    try:
        index = faiss.index_factory(dim, index_factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(embeddings)
        index.add(embeddings)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"index_factory: faiss could not build {index_factory!r} for {n} vectors of dimension {dim}: "
            f"{_faiss_reason(e)}"
        ) from e
    return index


def _set_param(index: faiss.Index, name: str, value: int) -> bool:
    """Set a faiss search parameter through any wrapper; False if the index has no such parameter."""
    try:
        faiss.ParameterSpace().set_index_parameter(index, name, value)
    except RuntimeError:
        return False
    return True


def _nlist(index: faiss.Index) -> int | None:
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return None


def _exact_top_rows(queries: np.ndarray, embeddings: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ embeddings.T  # (B, N)
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


# ----------------------------------------------------------------------------- index
class DocumentIndex:
    """Passages, their (N, D) float32 embeddings, and a FAISS inner-product index over them.

    Build one with `from_texts`, `from_passages` or `from_embeddings`; the
    constructor takes an already-filled faiss index (used by `load`).

    Args:
        passages: The N passages, row i of `embeddings` belongs to passage i.
        embeddings: (N, D) float32 passage embeddings.
        faiss_index: A faiss index holding exactly `embeddings`, in order.
        index_factory: The faiss factory string it was built from.
        encoder_name: Name of the encoder that produced `embeddings`.
        nprobe: IVF cells visited per query (IVF only); default max(8, sqrt(nlist)).
        ef_search: HNSW search breadth (HNSW only), raised to k when k is larger.

    Example:
        >>> index = DocumentIndex.from_texts(["a", "b"], encoder)  # doctest: +SKIP
        >>> index.search(encoder.encode(["a?"]), k=1).ids  # doctest: +SKIP
        [['0']]
    """

    def __init__(
        self,
        passages: Sequence[Passage],
        embeddings: np.ndarray,
        faiss_index: faiss.Index,
        *,
        index_factory: str = "Flat",
        encoder_name: str | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        self._passages = _check_passages(passages)
        self._embeddings = _as_matrix("embeddings", embeddings, rows=len(self._passages), copy=False)  # (N, D)
        if faiss_index.ntotal != len(self._passages) or faiss_index.d != self.dim:
            raise ValueError(
                f"faiss_index: expected {len(self._passages)} vectors of dimension {self.dim}, "
                f"got {faiss_index.ntotal} of dimension {faiss_index.d}"
            )
        self._faiss = faiss_index
        self._rows = {p.id: i for i, p in enumerate(self._passages)}
        self.version = 0  # bumped by add/remove, so derived structures (BM25) know when to rebuild
        self.index_factory = index_factory
        self.encoder_name = encoder_name
        nlist = _nlist(faiss_index)
        if nprobe is not None and nlist is None:
            raise ValueError(f"nprobe: only IVF indexes use nprobe; index_factory {index_factory!r} is not IVF")
        self._nprobe = None if nlist is None else min(nlist, max(8, round(math.sqrt(nlist))))
        if nprobe is not None:
            self.nprobe = nprobe
        self._ef_search = (ef_search or DEFAULT_EF_SEARCH) if _set_param(faiss_index, "efSearch", 16) else None
        self._apply_search_params(k=1)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_embeddings(
        cls,
        passages: Sequence[Passage],
        embeddings: ArrayLike,
        *,
        index_factory: str = "Flat",
        encoder_name: str | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> DocumentIndex:
        """Index precomputed (N, D) `embeddings` of `passages` (row i belongs to passage i)."""
        passages = _check_passages(passages)
        embeddings = _as_matrix("embeddings", embeddings, rows=len(passages))
        return cls(
            passages,
            embeddings,
            _new_faiss(index_factory, embeddings),
            index_factory=index_factory,
            encoder_name=encoder_name,
            nprobe=nprobe,
            ef_search=ef_search,
        )

    @classmethod
    def from_passages(
        cls,
        passages: Sequence[Passage],
        encoder: Any,
        *,
        index_factory: str = "Flat",
        batch_size: int = 64,
        show_progress: bool = True,
        nprobe: int | None = None,
    ) -> DocumentIndex:
        """Encode each passage's text with `encoder.encode` and index the result."""
        passages = _check_passages(passages)
        embeddings = _encode(encoder, [p.text for p in passages], batch_size, show_progress)
        return cls.from_embeddings(
            passages, embeddings, index_factory=index_factory, encoder_name=_encoder_name(encoder), nprobe=nprobe
        )

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        encoder: Any,
        *,
        ids: Sequence[str] | None = None,
        titles: Sequence[str | None] | None = None,
        metadatas: Sequence[dict | None] | None = None,
        index_factory: str = "Flat",
        batch_size: int = 64,
        show_progress: bool = True,
        nprobe: int | None = None,
    ) -> DocumentIndex:
        """Build an index from raw texts; ids default to "0", "1", ...

        Args:
            texts: Passage bodies.
            encoder: Anything with `encode(texts, batch_size=, show_progress=) -> (N, D)`.
            ids, titles, metadatas: Optional per-text lists, same length as `texts`.
            index_factory: faiss factory string: "Flat" (exact), "HNSW32", "IVF256,Flat", "IVF256,PQ16", ...
            batch_size: Encoding batch size.
            show_progress: Show an encoding progress bar.
            nprobe: IVF cells visited per query (IVF factories only).
        """
        texts = _check_texts(texts)
        passages = _make_passages(texts, ids, titles, metadatas, [str(i) for i in range(len(texts))])
        return cls.from_passages(
            passages,
            encoder,
            index_factory=index_factory,
            batch_size=batch_size,
            show_progress=show_progress,
            nprobe=nprobe,
        )

    @classmethod
    def from_ray(cls, source: Any, encoder: Any, **kwargs: Any) -> DocumentIndex:
        """Build an index on a Ray cluster: `retrieval.ray_build.build_index_ray` (the ``ray`` extra).

        Args:
            source: A ray.data.Dataset, or JSONL / Parquet path(s), with ``id`` and ``text`` columns
                (optional ``title``, ``metadata``).
            encoder: A model path / hub id, or a zero-argument factory every Ray actor can import.
            **kwargs: num_workers, batch_size, num_gpus_per_worker, index_factory, nprobe, encoder_name.
        """
        from contextflow_core.retrieval.ray_build import build_index_ray

        return build_index_ray(source, encoder, **kwargs)

    # -- accessors ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._passages)

    def __contains__(self, passage_id: object) -> bool:
        return passage_id in self._rows

    def __repr__(self) -> str:
        return (
            f"DocumentIndex(count={len(self)}, dim={self.dim}, index_factory={self.index_factory!r}, "
            f"encoder_name={self.encoder_name!r})"
        )

    @property
    def dim(self) -> int:
        """Embedding size D."""
        return int(self._embeddings.shape[1])

    @property
    def passages(self) -> list[Passage]:
        """All passages, in index order (a copy of the list)."""
        return list(self._passages)

    @property
    def ids(self) -> list[str]:
        """All passage ids, in index order."""
        return [p.id for p in self._passages]

    @property
    def embeddings(self) -> torch.Tensor:
        """(N, D) float32 copy of the stored passage embeddings."""
        return torch.from_numpy(self._embeddings.copy())

    @property
    def nprobe(self) -> int | None:
        """IVF cells visited per query (None for non-IVF indexes)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._nprobe is None:
            raise ValueError(f"nprobe: only IVF indexes use nprobe; index_factory {self.index_factory!r} is not IVF")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"nprobe: expected a positive integer, got {value!r}")
        self._nprobe = value

    @property
    def ef_search(self) -> int | None:
        """HNSW search breadth (None for non-HNSW indexes)."""
        return self._ef_search

    def get(self, passage_id: str) -> Passage:
        """The passage with id `passage_id`; KeyError if absent."""
        if passage_id not in self._rows:
            raise KeyError(f"passage id {passage_id!r} is not in the index")
        return self._passages[self._rows[passage_id]]

    def row_of(self, passage_id: str) -> int:
        """Row of a passage id (KeyError if absent)."""
        return self._rows[passage_id]

    def passage_at(self, row: int) -> Passage:
        """The passage stored at `row`."""
        return self._passages[row]

    def embedding_rows(self, rows: Sequence[int]) -> np.ndarray:
        """(len(rows), D) stored embeddings of these rows (a copy)."""
        return self._embeddings[np.asarray(rows, dtype=np.int64)]

    # -- search -------------------------------------------------------------------------
    def search(self, query_embeddings: ArrayLike, k: int) -> Retrieved:
        """Top-k passages for each query by inner product, best first.

        Scores are exact inner products with the stored embeddings (approximate
        indexes only choose the candidates). Slots an approximate index leaves
        empty (-1) are filled by an exact search for that query.

        Args:
            query_embeddings: (B, D) torch tensor or numpy array (detached if needed).
            k: Results per query; larger than the index returns every passage, with a warning.

        Returns:
            Retrieved with ids (B, K), scores (B, K), embeddings (B, K, D), passages (B, K).
        """
        queries = _as_matrix("query_embeddings", query_embeddings, dim=self.dim)  # (B, D)
        k = _check_k(k, len(self))
        rows = self._top_rows(queries, k)  # (B, K)
        embeddings = self._embeddings[rows]  # (B, K, D)
        scores = np.einsum("bd,bkd->bk", queries, embeddings)  # (B, K)
        order = np.argsort(-scores, axis=1, kind="stable")
        rows = np.take_along_axis(rows, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        embeddings = np.take_along_axis(embeddings, order[..., None], axis=1)
        passages = [[self._passages[r] for r in row] for row in rows.tolist()]
        return Retrieved(
            ids=[[p.id for p in row] for row in passages],
            scores=torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)),
            embeddings=torch.from_numpy(np.ascontiguousarray(embeddings)),
            passages=passages,
        )

    def _apply_search_params(self, k: int) -> None:
        if self._nprobe is not None:
            _set_param(self._faiss, "nprobe", self._nprobe)
        if self._ef_search is not None:
            _set_param(self._faiss, "efSearch", max(self._ef_search, k))

    def _top_rows(self, queries: np.ndarray, k: int) -> np.ndarray:
        if len(queries) == 0:
            return np.zeros((0, k), dtype=np.int64)
        self._apply_search_params(k)
        _, rows = self._faiss.search(queries, k)  # (B, K), -1 where missing
        missing = (rows < 0).any(axis=1)
        if missing.any():
            rows[missing] = _exact_top_rows(queries[missing], self._embeddings, k)
        return rows

    # -- updates ------------------------------------------------------------------------
    def add(
        self,
        texts_or_passages: Sequence[str | Passage],
        encoder: Any = None,
        *,
        ids: Sequence[str] | None = None,
        titles: Sequence[str | None] | None = None,
        metadatas: Sequence[dict | None] | None = None,
        embeddings: ArrayLike | None = None,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> list[str]:
        """Add passages (or texts with optional ids/titles/metadatas) and return their ids.

        New ids default to the first free "N", "N+1", ... with N = len(self). Give either `encoder`
        or precomputed (M, D) `embeddings`.
        """
        passages = self._new_passages(texts_or_passages, ids, titles, metadatas)
        if embeddings is not None:
            new = _as_matrix("embeddings", embeddings, rows=len(passages), dim=self.dim)
        elif encoder is not None:
            if self.encoder_name and _encoder_name(encoder) != self.encoder_name:
                warnings.warn(
                    f"encoder {_encoder_name(encoder)!r} differs from the index's {self.encoder_name!r}", stacklevel=2
                )
            new = _as_matrix(
                "embeddings", _encode(encoder, [p.text for p in passages], batch_size, show_progress), dim=self.dim
            )
        else:
            raise ValueError(
                "encoder: expected an encoder to embed the new passages, got None; pass encoder= or embeddings="
            )
        self._faiss.add(new)
        self._embeddings = np.concatenate([self._embeddings, new])
        self._rows.update({p.id: len(self._passages) + i for i, p in enumerate(passages)})
        self._passages.extend(passages)
        self.version += 1
        return [p.id for p in passages]

    def _new_passages(self, items, ids, titles, metadatas) -> list[Passage]:
        items = [items] if isinstance(items, Passage) else items if isinstance(items, str) else list(items)
        if items and all(isinstance(p, Passage) for p in items):
            if ids is not None or titles is not None or metadatas is not None:
                raise ValueError(
                    "ids: expected None when adding Passage objects (they carry their own id, title, metadata)"
                )
            return _check_passages(items, self._rows)
        free = (str(i) for i in range(len(self), 2 * len(self) + len(items) + 1) if str(i) not in self._rows)
        return _make_passages(items, ids, titles, metadatas, [next(free) for _ in items], self._rows)

    def remove(self, ids: str | Sequence[str]) -> None:
        """Remove the passages with these ids; KeyError if any is absent, ValueError if none would remain."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        unknown = [i for i in ids if i not in self._rows]
        if unknown:
            raise KeyError(f"ids: not in the index: {unknown[:5]}")
        drop = {self._rows[i] for i in ids}
        if len(drop) == len(self):
            raise ValueError(f"ids: removing all {len(self)} passages would leave the index empty; build a new one")
        keep = np.array([r for r in range(len(self)) if r not in drop], dtype=np.int64)
        self._passages = [self._passages[r] for r in keep]
        self._embeddings = np.ascontiguousarray(self._embeddings[keep])
        self._rows = {p.id: i for i, p in enumerate(self._passages)}
        self._faiss.reset()  # keeps IVF/PQ training; rows renumber densely
        self._faiss.add(self._embeddings)
        self.version += 1

    # -- persistence --------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the index to `directory` atomically.

        `directory` must be new, empty, or hold a saved DocumentIndex (nothing
        else), which is then replaced only once the new one is complete; a
        symlink is written through. See `contextflow_core.artifacts`.

        Raises:
            FileExistsError: `directory` is a file or holds anything else; nothing is changed.
        """
        blobs = {
            FAISS_FILE: faiss.serialize_index(self._faiss).tobytes(),
            PASSAGES_FILE: _passages_jsonl(self._passages),
            EMBEDDINGS_FILE: safetensors.numpy.save({"embeddings": self._embeddings}),
        }
        with atomic_dir(directory, kind=INDEX) as tmp:
            files = {name: _write_file(tmp / name, data) for name, data in blobs.items()}
            manifest = {
                "kind": INDEX,
                "format_version": FORMAT_VERSION,
                "dim": self.dim,
                "count": len(self),
                "encoder_name": self.encoder_name,
                "index_factory": self.index_factory,
                "metric": METRIC,
                "nprobe": self._nprobe,
                "ef_search": self._ef_search,
                "files": files,
            }
            _write_file(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
        return Path(directory)

    @classmethod
    def load(
        cls, directory: str | Path, *, expected_encoder_name: str | None = None, expected_dim: int | None = None
    ) -> DocumentIndex:
        """Load an index written by `save`, verifying the manifest and every checksum.

        Raises:
            FileNotFoundError: The directory or one of its files is missing.
            ValueError: Corrupted/truncated file, a file the manifest does not list,
                another artifact kind, unknown format version, inconsistent
                counts or dimensions, or a mismatch with `expected_encoder_name`/`expected_dim`.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory)
        _check_expected(directory, manifest, expected_encoder_name, expected_dim)
        count, dim = manifest["count"], manifest["dim"]
        passages = _parse_passages(_read_checked(directory, manifest, PASSAGES_FILE), count, directory)
        embeddings = _parse_embeddings(_read_checked(directory, manifest, EMBEDDINGS_FILE), count, dim, directory)
        faiss_index = _parse_faiss(_read_checked(directory, manifest, FAISS_FILE), count, dim, directory)
        return cls(
            passages,
            embeddings,
            faiss_index,
            index_factory=manifest["index_factory"],
            encoder_name=manifest.get("encoder_name"),
            nprobe=manifest.get("nprobe"),
            ef_search=manifest.get("ef_search"),
        )
