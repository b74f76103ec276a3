"""Argument checks for DocumentIndex: each raises ValueError naming the argument, what was expected
and what came."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from contextflow_core.types import Passage


class NonFiniteEmbeddings(ValueError):
    """An encoder returned NaN or inf embeddings (`train_rag` skips the step, as for a non-finite loss)."""


def check_finite_embeddings(what: str, embeddings: torch.Tensor) -> None:
    """Raise NonFiniteEmbeddings naming `what` when `embeddings` hold NaN or inf."""
    if not bool(torch.isfinite(embeddings.detach()).all()):
        raise NonFiniteEmbeddings(
            f"{what}: expected finite embeddings, got NaN or inf from the encoder (diverged weights or "
            "overflow under mixed precision); lower the learning rate, set max_grad_norm, or use "
            "mixed_precision='bf16' or 'no'"
        )


def _as_matrix(arg: str, x: Any, *, rows: int | None = None, dim: int | None = None, copy: bool = True) -> np.ndarray:
    """`x` as a C-contiguous float32 (N, D) array (a fresh copy if `copy`), or ValueError naming `arg`."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    try:
        arr = np.array(x, dtype=np.float32, order="C", copy=True) if copy else np.ascontiguousarray(x, np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{arg}: expected a float array of shape (N, D), got {type(x).__name__} ({e})") from e
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{arg}: expected a 2-D array of shape (N, D) with D > 0, got shape {tuple(arr.shape)}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{arg}: expected {rows} rows, one per passage, got {arr.shape[0]}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{arg}: expected dimension {dim} (the index's), got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ValueError(f"{arg}: expected finite values, got NaN or inf in row {row}")
    return arr


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts: expected a list of strings, got a single string; wrap it in a list")
    try:
        texts = list(texts)
    except TypeError as e:
        raise ValueError(f"texts: expected a list of strings, got {type(texts).__name__}") from e
    if not texts:
        raise ValueError("texts: expected at least one text, got an empty list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts: expected strings, got {type(text).__name__} at position {i}")
    return texts


def _check_len(arg: str, values: Any, n: int) -> list:
    if isinstance(values, (str, Mapping)):
        raise ValueError(f"{arg}: expected a list of {n} {arg}, one per text, got a single {type(values).__name__}")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{arg}: expected {n} {arg}, one per text, got {len(values)}")
    return values


def _check_ids(ids: Sequence[Any], arg: str, existing: Mapping[str, int] | None = None) -> None:
    existing = existing or {}
    seen: dict[str, int] = {}
    for i, pid in enumerate(ids):
        if not isinstance(pid, str) or not pid:
            raise ValueError(f"{arg}: expected non-empty string ids, got {pid!r} at position {i}")
        if pid in seen:
            raise ValueError(f"{arg}: expected unique ids, got {pid!r} at positions {seen[pid]} and {i}")
        if pid in existing:
            raise ValueError(f"{arg}: expected new ids, got {pid!r} which is already in the index")
        seen[pid] = i


def _check_passages(passages: Any, existing: Mapping[str, int] | None = None) -> list[Passage]:
    passages = list(passages)
    if not passages:
        raise ValueError("passages: expected at least one passage, got an empty list")
    for i, p in enumerate(passages):
        if not isinstance(p, Passage):
            raise ValueError(f"passages: expected Passage objects, got {type(p).__name__} at position {i}")
        if not isinstance(p.text, str):
            raise ValueError(f"passages: expected string text, got {type(p.text).__name__} at position {i}")
    _check_ids([p.id for p in passages], "passages", existing)
    return passages


def _make_passages(
    texts, ids, titles, metadatas, default_ids: Sequence[str], existing: Mapping[str, int] | None = None
) -> list[Passage]:
    """Validated Passages from parallel lists (`default_ids` used when `ids` is None)."""
    texts = _check_texts(texts)
    n = len(texts)
    ids = list(default_ids[:n]) if ids is None else _check_len("ids", ids, n)
    titles = [None] * n if titles is None else _check_len("titles", titles, n)
    metadatas = [None] * n if metadatas is None else _check_len("metadatas", metadatas, n)
    _check_ids(ids, "ids", existing)
    for i, (title, meta) in enumerate(zip(titles, metadatas, strict=True)):
        if title is not None and not isinstance(title, str):
            raise ValueError(f"titles: expected a string or None, got {type(title).__name__} at position {i}")
        if meta is not None and not isinstance(meta, Mapping):
            raise ValueError(f"metadatas: expected a dict or None, got {type(meta).__name__} at position {i}")
    rows = zip(ids, texts, titles, metadatas, strict=True)
    return [Passage(id=i, text=t, title=ti, metadata=dict(m or {})) for i, t, ti, m in rows]


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if k > n:
        warnings.warn(f"k={k} is larger than the index ({n} passages); returning all {n} passages", stacklevel=3)
    return int(min(k, n))


def _encode(encoder: Any, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
    if not callable(getattr(encoder, "encode", None)):
        raise ValueError(
            f"encoder: expected an object with .encode(texts) (e.g. TextEncoder), got {type(encoder).__name__}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    out = encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)
    return _as_matrix("encoder output", out, rows=len(texts))


def _encoder_name(encoder: Any) -> str:
    return getattr(encoder, "name", None) or type(encoder).__name__
