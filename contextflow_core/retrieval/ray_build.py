"""Distributed index builds on Ray Data: encode passages on an actor pool, then index or upsert them.

Boundary: reads a Ray dataset (or JSONL / Parquet files Ray reads), encodes its
``text`` column with `map_batches` on a pool of actors (one encoder per actor, one
GPU each when CUDA is there) and hands the embeddings, in the dataset's order, to
`DocumentIndex.from_embeddings` (the same FAISS build as `DocumentIndex.from_texts`)
or, batch by batch, to a store backend's ``upsert`` (`retrieval.store`). Ray is
imported lazily (the ``ray`` extra).

Columns: ``id`` (required, unique strings), ``text`` (required), ``title`` and
``metadata`` (optional; metadata a dict per row or a JSON object string; Arrow fills a
key absent from a row with null, so a dict column's null values are dropped, a JSON
string column is read exactly). Order: the build preserves the dataset's row order
(`DataContext.execution_options.preserve_order`), so row i of the index is row i of
the dataset, as in a single-process build over the same rows.

The encoder is given as something every actor can build by itself: a model path or
hub id (`models.load_encoder`), or a zero-argument callable importable in the
workers (e.g. `models.default_question_encoder`). The models are never pickled to disk.

Example:
    >>> ray.init(num_cpus=4)  # doctest: +SKIP
    >>> index = DocumentIndex.from_ray("passages.parquet", "sentence-transformers/all-MiniLM-L6-v2",
    ...                                num_workers=4, batch_size=256)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build_index_ray", "encoded_batches", "upsert_ray"]

REQUIRED_COLUMNS = ("id", "text")
_READERS = {".jsonl": "read_json", ".json": "read_json", ".parquet": "read_parquet"}
EncoderSpec = str | Callable[[], Any]


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("build_index_ray needs Ray Data: pip install 'contextflow[ray]'") from e
    return ray


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _dataset(source: Any):
    """`source` as a ray.data.Dataset (a Dataset, or JSONL / Parquet path(s) read by Ray)."""
    ray = _import_ray()
    if isinstance(source, ray.data.Dataset):
        return source
    paths = [source] if isinstance(source, (str, Path)) else source
    if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, (str, Path)) for p in paths):
        raise ValueError(f"source: expected a ray.data.Dataset or JSONL/Parquet path(s), got {type(source).__name__}")
    kinds = {_READERS.get(Path(p).suffix.lower()) for p in paths}
    if None in kinds or len(kinds) != 1:
        raise ValueError(
            f"source: expected paths ending in .jsonl, .json or .parquet (one kind), got {[str(p) for p in paths]}"
        )
    reader = kinds.pop()
    assert reader is not None  # refused above
    return getattr(ray.data, reader)([str(p) for p in paths])


def _check_columns(ds) -> list[str]:
    names = list(ds.schema().names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"source: expected columns {list(REQUIRED_COLUMNS)} (plus optional title, metadata), "
            f"got {names}; missing {missing}"
        )
    return names


def build_encoder(spec: EncoderSpec):
    """The encoder an actor builds from `spec` (a path / hub id, or a zero-argument factory)."""
    if isinstance(spec, str):
        from contextflow_core.models import load_encoder

        return load_encoder(spec)
    if callable(spec):
        encoder = spec()
        if not callable(getattr(encoder, "encode", None)):
            raise ValueError(
                f"encoder: the factory returned {type(encoder).__name__}, expected an object with "
                ".encode(texts) (e.g. TextEncoder)"
            )
        return encoder
    raise ValueError(
        f"encoder: expected a model path / hub id or a zero-argument factory that builds the encoder "
        f"in each worker, got {type(spec).__name__}"
    )


class _EncodeActor:
    """One encoder per actor (on its GPU when it has one): adds an ``embedding`` column to each batch."""

    def __init__(self, spec: EncoderSpec, batch_size: int) -> None:
        import torch

        self.encoder = build_encoder(spec)
        if torch.cuda.is_available() and hasattr(self.encoder, "to"):
            self.encoder.to("cuda")
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        vectors = self.encoder.encode(texts, batch_size=self.batch_size, show_progress=False)
        vectors = vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors)
        batch["embedding"] = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, D)
        return batch


@contextlib.contextmanager
def _preserve_order() -> Iterator[None]:
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = before


def encoded_batches(
    source: Any,
    encoder: EncoderSpec,
    *,
    num_workers: int = 2,
    batch_size: int = 64,
    num_gpus_per_worker: float | None = None,
    num_cpus_per_worker: float = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Encode `source` on a Ray actor pool; yields numpy batches (its columns + ``embedding``) in row order.

    Args:
        source: A ray.data.Dataset, or JSONL / Parquet path(s), with ``id`` and ``text`` columns.
        encoder: A model path / hub id, or a zero-argument factory importable in the workers.
        num_workers: Actors (one encoder each).
        batch_size: Rows per `map_batches` batch (and per encoder call).
        num_gpus_per_worker: GPUs per actor; None: 1 when CUDA is available here, else 0.
        num_cpus_per_worker: CPUs each actor reserves. The actors hold their CPUs for the
            whole build: leave some for Ray's read tasks (e.g. 0.5 on a 2-CPU cluster with
            2 workers), or the read waits for CPUs that never free up.

    Raises:
        ValueError: A bad argument, or a missing column (named).
        ImportError: Ray is not installed.
    """
    import torch

    num_workers, batch_size = _positive_int("num_workers", num_workers), _positive_int("batch_size", batch_size)
    if not (isinstance(encoder, str) or callable(encoder)):
        build_encoder(encoder)  # raises, naming what came
    gpus = (1 if torch.cuda.is_available() else 0) if num_gpus_per_worker is None else num_gpus_per_worker
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0:
        raise ValueError(f"num_gpus_per_worker: expected a number >= 0 or None, got {num_gpus_per_worker!r}")
    cpus = num_cpus_per_worker
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0:
        raise ValueError(f"num_cpus_per_worker: expected a number > 0, got {cpus!r}")
    ds = _dataset(source)
    _check_columns(ds)
    with _preserve_order():
        encoded = ds.map_batches(
            _EncodeActor,
            fn_constructor_args=(encoder, batch_size),
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=num_workers,
            num_gpus=gpus,
            num_cpus=cpus,
        )
        yield from encoded.iter_batches(batch_size=batch_size, batch_format="numpy")


def _metadata(value: Any, row: int) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"source: metadata of row {row}: expected a JSON object string, got {value[:60]!r} ({e.msg})"
            ) from e
    if not isinstance(value, dict):
        raise ValueError(f"source: metadata of row {row}: expected a dict or JSON object, got {type(value).__name__}")
    return {k: v for k, v in value.items() if v is not None}


def _rows(batch: dict[str, np.ndarray], start: int) -> tuple[list, list, list, list]:
    n = len(batch["id"])
    ids = [str(i) for i in batch["id"]]
    texts = [str(t) for t in batch["text"]]
    titles = [None if t is None else str(t) for t in batch["title"]] if "title" in batch else [None] * n
    metas = (
        [_metadata(m, start + i) for i, m in enumerate(batch["metadata"])]
        if "metadata" in batch
        else [{} for _ in range(n)]
    )
    return ids, texts, titles, metas


def build_index_ray(
    source: Any,
    encoder: EncoderSpec,
    *,
    num_workers: int = 2,
    batch_size: int = 64,
    num_gpus_per_worker: float | None = None,
    num_cpus_per_worker: float = 1,
    index_factory: str = "Flat",
    nprobe: int | None = None,
    encoder_name: str | None = None,
):
    """A `DocumentIndex` over `source`, encoded on a Ray actor pool (see the module docstring).

    Equals `DocumentIndex.from_texts(texts, encoder, ids=..., titles=..., metadatas=...)` over the
    same rows in the same order: same ids, same order, the same embeddings up to float rounding.

    Args:
        source, encoder, num_workers, batch_size, num_gpus_per_worker, num_cpus_per_worker: See
            `encoded_batches`.
        index_factory: faiss factory string ("Flat", "HNSW32", "IVF1024,PQ32", ...).
        nprobe: IVF cells visited per query (IVF factories only).
        encoder_name: Recorded in the index (a saved index refuses another encoder); None:
            the path / hub id, or the built encoder's ``name``.

    Returns:
        The DocumentIndex.
    """
    from contextflow_core.retrieval.checks import _make_passages
    from contextflow_core.retrieval.index import DocumentIndex

    columns: dict[str, list] = {"ids": [], "texts": [], "titles": [], "metas": []}
    vectors = []
    for batch in encoded_batches(
        source,
        encoder,
        num_workers=num_workers,
        batch_size=batch_size,
        num_gpus_per_worker=num_gpus_per_worker,
        num_cpus_per_worker=num_cpus_per_worker,
    ):
        for key, values in zip(columns, _rows(batch, len(columns["ids"])), strict=True):
            columns[key].extend(values)
        vectors.append(batch["embedding"])
    if not vectors:
        raise ValueError("source: expected at least one row, got an empty dataset")
    passages = _make_passages(columns["texts"], columns["ids"], columns["titles"], columns["metas"], [])
    name = encoder_name or (encoder if isinstance(encoder, str) else _factory_name(encoder))
    return DocumentIndex.from_embeddings(
        passages, np.concatenate(vectors), index_factory=index_factory, encoder_name=name, nprobe=nprobe
    )


def _factory_name(factory: Callable[[], Any]) -> str:
    return getattr(factory, "__qualname__", None) or type(factory).__name__


def upsert_ray(
    source: Any,
    encoder: EncoderSpec,
    store: Any,
    *,
    num_workers: int = 2,
    batch_size: int = 64,
    num_gpus_per_worker: float | None = None,
    num_cpus_per_worker: float = 1,
    title_key: str = "title",
) -> int:
    """Encode `source` on a Ray actor pool and upsert it into a store backend, batch by batch (streaming).

    Args:
        source, encoder, num_workers, batch_size, num_gpus_per_worker, num_cpus_per_worker: See
            `encoded_batches`.
        store: A `retrieval.store` backend with ``upsert(StoreRows)`` (Milvus, Qdrant, Chroma, in-memory).
        title_key: Metadata key that holds the title in the store.

    Returns:
        The number of rows upserted.
    """
    from contextflow_core.retrieval.store import StoreRows

    if not callable(getattr(store, "upsert", None)):
        raise ValueError(f"store: expected a store backend with upsert(StoreRows), got {type(store).__name__}")
    done = 0
    for batch in encoded_batches(
        source,
        encoder,
        num_workers=num_workers,
        batch_size=batch_size,
        num_gpus_per_worker=num_gpus_per_worker,
        num_cpus_per_worker=num_cpus_per_worker,
    ):
        ids, texts, titles, metas = _rows(batch, done)
        metas = [{**m, **({title_key: t} if t is not None else {})} for m, t in zip(metas, titles, strict=True)]
        store.upsert(StoreRows(ids, batch["embedding"], texts, metas))
        done += len(ids)
    return done
