"""Generated QA straight from a vector store's rows: bounded reservoir sampling, no copy of the store.

Boundary: reads rows through a `VectorStoreBackend`'s ``iter_rows(batch_size)`` (the optional
capability of `contextflow_core.retrieval.store`), keeps at most ``sample`` of them as `Passage`s
(reservoir sampling over the iteration, seeded), and hands them to `generate_training_qa`, the
generate-then-split step the fine-tune helpers share. No models, no training; memory stays
O(sample) whatever the store's size (with ``stratify_by``: O(sample x distinct values)).

How many rows: ``qa_options={"sample": n}`` draws n rows; without ``"sample"`` at most
`DEFAULT_STORE_SAMPLE` rows are drawn (every row of a smaller store), with a warning that says
how to change it when the store is larger; ``{"sample": None}`` reads every row (O(rows) memory).

Example:
    >>> from contextflow_core.retrieval.store import InMemoryBackend
    >>> import numpy as np
    >>> backend = InMemoryBackend([f"r{i}" for i in range(50)], np.eye(50, dtype=np.float32),
    ...                           [f"Row {i} was filed in {1900 + i}." for i in range(50)])
    >>> pool, seen = store_passages(backend, 5, seed=0)
    >>> len(pool), seen
    (5, 50)
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from contextflow_core.data.qa_sampling import sample_passages
from contextflow_core.data.qa_training import GeneratedQA, generate_training_qa
from contextflow_core.types import Passage

__all__ = [
    "DEFAULT_STORE_SAMPLE",
    "MAX_STRATA",
    "check_store_qa_options",
    "generate_store_training_qa",
    "require_iter_rows",
    "reservoir_sample",
    "store_passages",
]

DEFAULT_STORE_SAMPLE = 1000
"""Rows questions are written for when ``qa_options`` has no ``"sample"`` (a smaller store: all its rows)."""

MAX_STRATA = 10_000
"""Most distinct ``stratify_by`` values a store sample keeps a reservoir for (memory bound)."""

_READ_BATCH = 1000  # rows per iter_rows batch


def _uniform(rng: random.Random) -> float:
    u = rng.random()
    while u == 0.0:  # log(0) is undefined; random() returns 0.0 with probability 2**-53
        u = rng.random()
    return u


def reservoir_sample(batches: Iterable[Any], n: int, seed: int) -> tuple[list[Any], int]:
    """A uniform random sample of `n` items from a stream of batches, in stream order (Algorithm L).

    Memory is O(n); items between the picked positions are skipped without being read.
    The same stream and seed give the same sample.

    Args:
        batches: Sequences (``len`` and indexing) of items, e.g. a backend's row batches.
        n: Sample size (>= 1); every item when the stream is shorter.
        seed: The sampler's seed.

    Returns:
        ``(items, seen)``: the sampled items in stream order, and how many items the stream held.
    """
    rng = random.Random(seed)
    chosen: list[tuple[int, Any]] = []  # (stream position, item)
    seen, w, nxt = 0, 1.0, -1
    for batch in batches:
        start, seen = seen, seen + len(batch)
        for pos in range(start, seen) if len(chosen) < n else ():
            chosen.append((pos, batch[pos - start]))
            if len(chosen) == n:
                w = math.exp(math.log(_uniform(rng)) / n)
                nxt = pos + 1 + int(math.log(_uniform(rng)) / math.log(1.0 - w))
                break
        while len(chosen) == n and nxt < seen:
            chosen[rng.randrange(n)] = (nxt, batch[nxt - start])
            w *= math.exp(math.log(_uniform(rng)) / n)
            nxt += 1 + int(math.log(_uniform(rng)) / math.log(1.0 - w))
    chosen.sort(key=lambda pair: pair[0])
    return [item for _, item in chosen], seen


class _Rows:
    """A backend's `StoreRows` batch as a lazy sequence of `Passage` (built only when picked)."""

    def __init__(self, rows: Any, title_key: str) -> None:
        self.rows, self.title_key = rows, title_key

    def __len__(self) -> int:
        return len(self.rows.ids)

    def __getitem__(self, i: int) -> Passage:
        meta = dict(self.rows.metadata[i] or {})
        title = meta.pop(self.title_key, None)
        return Passage(
            id=str(self.rows.ids[i]),
            text=self.rows.texts[i],
            title=title if isinstance(title, str) else None,
            metadata=meta,
        )


def _stratified(batches: Iterable[_Rows], n: int, key: str, seed: int) -> tuple[list[Passage], int]:
    """Up to `n` rows per value of metadata `key` (Algorithm R per value), in stream order."""
    rng = random.Random(seed)
    groups: dict[str, list[Any]] = {}  # value -> [rows of that value seen, reservoir of (position, Passage)]
    seen = 0
    for batch in batches:
        for i in range(len(batch)):
            passage = batch[i]
            group = groups.setdefault(repr(passage.metadata.get(key, _MISSING)), [0, []])
            if len(groups) > MAX_STRATA:
                raise ValueError(
                    f"stratify_by: {key!r} has more than {MAX_STRATA} distinct values in the store, "
                    "too many to sample evenly in bounded memory; stratify by a coarser key, or drop "
                    "stratify_by"
                )
            group[0] += 1
            if len(group[1]) < n:
                group[1].append((seen, passage))
            elif (slot := rng.randrange(group[0])) < n:
                group[1][slot] = (seen, passage)
            seen += 1
    pool = sorted((pair for _, reservoir in groups.values() for pair in reservoir), key=lambda pair: pair[0])
    return [p for _, p in pool], seen


_MISSING = "\x00missing"


def require_iter_rows(backend: Any, arg: str = "store") -> None:
    """Raise ValueError naming `arg` and the backend when it cannot list its rows (no ``iter_rows``)."""
    if not callable(getattr(backend, "iter_rows", None)):
        name = getattr(backend, "name", type(backend).__name__)
        raise ValueError(
            f"{arg}: writing QA pairs from the store's rows needs a backend with iter_rows(), got "
            f"{name!r} ({type(backend).__name__}) without it; pass qa_pairs=, or use "
            "mode='copy' (the documents are exported and indexed)"
        )


def _row_batches(
    backend: Any, read_rows: Callable[[int], Iterator[Any]] | None, title_key: str, arg: str
) -> Iterator[_Rows]:
    if read_rows is None:
        require_iter_rows(backend, arg)
        read_rows = backend.iter_rows
    return (_Rows(rows, title_key) for rows in read_rows(_READ_BATCH))


def store_passages(
    backend: Any,
    sample: int | None,
    *,
    stratify_by: str | None = None,
    seed: int = 0,
    title_key: str = "title",
    read_rows: Callable[[int], Iterator[Any]] | None = None,
    arg: str = "store",
) -> tuple[list[Passage], int]:
    """The rows of `backend` to write questions from, as `Passage`s, and how many rows were read.

    Args:
        backend: A `VectorStoreBackend` with ``iter_rows``.
        sample: Rows to keep (reservoir sampling, seeded); None: every row.
        stratify_by: A metadata key: keep up to `sample` rows per value, so that `generate_qa`'s
            stratified draw sees every value (memory O(sample x values), at most `MAX_STRATA` values).
        seed: The sampler's seed.
        title_key: Metadata key of the passage title (removed from the passage's metadata).
        read_rows: ``batch_size -> iterator of StoreRows`` to read instead of ``backend.iter_rows``
            (e.g. a backend's plain-text rows).
        arg: The argument name errors use.

    Raises:
        ValueError: A backend without ``iter_rows`` (named), an empty store, or too many strata.
    """
    batches = _row_batches(backend, read_rows, title_key, arg)
    if sample is None:
        pool = [batch[i] for batch in batches for i in range(len(batch))]
        seen = len(pool)
    elif stratify_by is not None:
        pool, seen = _stratified(batches, sample, stratify_by, seed)
    else:
        pool, seen = reservoir_sample(batches, sample, seed)
    if not pool:
        raise ValueError(
            f"{arg}: the store {getattr(backend, 'name', type(backend).__name__)!r} has no rows to "
            "write questions from; add documents first, or pass qa_pairs="
        )
    return pool, seen


def check_store_qa_options(qa_options: dict | None) -> None:
    """Check ``qa_options``' ``"sample"`` / ``"stratify_by"`` for a store before any slow work.

    Raises:
        ValueError: ``"sample"`` not None or a positive integer, or a bad ``"stratify_by"``.
    """
    _sample_option(dict(qa_options or {}))


def _sample_option(options: dict) -> tuple[int | None, bool]:
    """(sample, capped): the rows to draw, and whether the default cap applies; checked before any read."""
    sample, capped = (DEFAULT_STORE_SAMPLE, True) if "sample" not in options else (options["sample"], False)
    sample_passages([], sample, options.get("stratify_by"), 0)  # raises on a bad sample / stratify_by
    return sample, capped


def generate_store_training_qa(
    backend: Any,
    writer: Any,
    *,
    qa_options: dict | None,
    val_fraction: float | None,
    has_val_pairs: bool,
    seed: int,
    title_key: str = "title",
    read_rows: Callable[[int], Iterator[Any]] | None = None,
    arg: str = "store",
    progress: bool = True,
) -> GeneratedQA:
    """`generate_training_qa` over a bounded sample of a store's rows (see the module docstring).

    Args:
        backend: A `VectorStoreBackend` with ``iter_rows``.
        writer, val_fraction, has_val_pairs, seed, progress: As in `generate_training_qa`.
        qa_options: `generate_qa` keyword arguments; ``"sample"`` is the number of rows drawn
            (absent: at most `DEFAULT_STORE_SAMPLE`, with a warning when the store has more;
            None: every row), ``"seed"`` also seeds the row sample.
        title_key, read_rows, arg: As in `store_passages`.

    Returns:
        A `GeneratedQA`; ``all.report.passages`` counts the rows read, ``sampled`` those drawn.

    Raises:
        ValueError: As `store_passages` and `generate_training_qa`; a bad ``"sample"``.
    """
    options = dict(qa_options or {})
    sample, capped = _sample_option(options)
    row_seed = options.get("seed", seed)
    pool, seen = store_passages(
        backend,
        sample,
        stratify_by=options.get("stratify_by"),
        seed=row_seed,
        title_key=title_key,
        read_rows=read_rows,
        arg=arg,
    )
    if capped and sample is not None and seen > sample:
        warnings.warn(
            f"qa_options: no 'sample' given, so questions are written for {sample} of the store's {seen} "
            f"rows (a seeded random sample); pass qa_options={{'sample': n}} to choose how many, or "
            "{'sample': None} for every row",
            UserWarning,
            stacklevel=3,
        )
    options["sample"] = sample
    qa = generate_training_qa(
        pool,
        writer,
        qa_options=options,
        val_fraction=val_fraction,
        has_val_pairs=has_val_pairs,
        seed=seed,
        progress=progress,
    )
    qa.all.report.passages = seen
    return qa
