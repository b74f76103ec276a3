"""Refresh in place: re-embed a store's passages with the (trained) context encoder and write them back.

Boundary: reads rows from a backend, encodes their texts with a frozen snapshot of an
encoder, writes the vectors back; knows nothing of losses. `StoreRefresher` gives the
training loop the same ``start`` / ``swap_if_ready`` calls as `refresh.IndexRefresher`.

Two modes (a registry, `REFRESH_MODES`; ``mode="auto"`` picks "swap" when the backend
offers ``staging()``/``promote()`` and is not known to be unable to switch, e.g. a Milvus
collection opened without an alias, else "upsert"):

- "swap": write every row into ``backend.staging()`` (a new collection), then
  ``backend.promote(staging)`` switches readers atomically. Interrupted, the live store
  is untouched (all old); a rerun starts over with a new staging collection (the
  abandoned one is left for you to drop: ContextFlow deletes nothing it did not create
  in this run).
- "upsert": re-embed and upsert by id, batch by batch, with a progress bar. Resumable:
  ``progress_dir`` holds ``progress.json`` (written atomically after each batch: the
  store, the batch size, the batches done, the last id done, the encoder fingerprint)
  and ``encoder.safetensors`` (the snapshot the refresh started from). A rerun with the
  same ``progress_dir`` resumes with that snapshot (so the store ends in one encoder's
  space) and skips the finished batches; it relies on ``iter_rows`` yielding rows in a
  stable order and checks the last finished id to prove it. ``restart=True`` discards
  the progress and starts over with the given encoder.

Never half old, half new silently: while an upsert refresh is incomplete, the model's
store view (`StoreIndex.refresh_pending`) names the progress file and every search
warns; `train_rag` resumes an interrupted refresh of its own run before training.

Example:
    >>> record = refresh_store(backend, model.context_encoder, "runs/a/store_refresh")  # doctest: +SKIP
    >>> record["rows"], record["mode"]  # doctest: +SKIP
    (1000, 'upsert')
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from contextflow_core.io_utils import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file
from contextflow_core.retrieval.checks import _as_matrix
from contextflow_core.retrieval.store import StoreRows, require

PROGRESS_FILE, SNAPSHOT_FILE = "progress.json", "encoder.safetensors"
KIND = "contextflow-store-refresh"


def encoder_fingerprint(encoder: Any) -> str:
    """sha256 over an encoder's parameter and buffer names and values (same weights, same fingerprint)."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def read_progress(progress_dir: str | Path) -> dict | None:
    """The refresh progress recorded in `progress_dir` (None when there is none)."""
    path = Path(progress_dir) / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON (truncated or corrupted?): {e}") from e
    if not isinstance(progress, dict) or progress.get("kind") != KIND:
        raise ValueError(
            f"progress_dir: {path} is not a ContextFlow store-refresh progress file; "
            "choose another progress_dir (ContextFlow never overwrites files it did not write)"
        )
    return progress


def _write_progress(progress_dir: Path, progress: dict) -> None:
    atomic_write_text(progress_dir / PROGRESS_FILE, json.dumps(progress, indent=2))


def _bar(total: int, initial: int, show: bool, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not show, desc=f"refresh {name}", unit="batch")


def _encoded(snapshot: Any, rows: StoreRows, batch_size: int) -> StoreRows:
    vectors = _as_matrix("encoder output", snapshot.encode(list(rows.texts), batch_size=batch_size), rows=len(rows.ids))
    return StoreRows(list(rows.ids), vectors, list(rows.texts), [dict(m) for m in rows.metadata])


# ----------------------------------------------------------------------------- upsert
def _start_or_resume(
    backend: Any, encoder: Any, progress_dir: Path, batch_size: int, restart: bool
) -> tuple[Any, dict]:
    """(the snapshot encoder, the progress record) of a new or resumed upsert refresh."""
    progress = read_progress(progress_dir)
    snapshot = copy.deepcopy(encoder).eval()
    if progress is not None and not progress["complete"] and not restart:
        if progress["store"] != backend.name:
            raise ValueError(
                f"progress_dir: {progress_dir / PROGRESS_FILE} records an unfinished refresh of the "
                f"store {progress['store']!r}, not {backend.name!r}; use that store, another "
                "progress_dir, or restart=True"
            )
        snap = progress_dir / SNAPSHOT_FILE
        if not snap.is_file() or sha256_file(snap) != progress["snapshot_sha256"]:
            raise ValueError(
                f"progress_dir: {snap} (the encoder the unfinished refresh started from) is missing or "
                "changed; rerun with restart=True to re-embed every row with the given encoder"
            )
        snapshot.load_state_dict(safetensors.torch.load_file(str(snap)), strict=True)
        if encoder_fingerprint(encoder) != progress["encoder_fingerprint"]:
            warnings.warn(
                f"refresh_store: resuming the unfinished refresh of {backend.name!r} with the encoder it "
                f"started from ({snap}), not the one given, so every row ends in one encoder's space; "
                "pass restart=True to re-embed every row with the given encoder",
                stacklevel=4,
            )
        return snapshot, {**progress, "resumed": True}
    progress_dir.mkdir(parents=True, exist_ok=True)
    blob = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in snapshot.state_dict().items()})
    atomic_write_bytes(progress_dir / SNAPSHOT_FILE, blob)
    progress = {
        "kind": KIND,
        "store": backend.name,
        "dim": int(backend.dim),
        "mode": "upsert",
        "batch_size": batch_size,
        "total_rows": int(backend.count()),
        "batches_done": 0,
        "rows_done": 0,
        "last_id": None,
        "complete": False,
        "encoder_fingerprint": encoder_fingerprint(snapshot),
        "snapshot_sha256": sha256_bytes(blob),
        "started": time.time(),
        "resumed": False,
    }
    _write_progress(progress_dir, progress)
    return snapshot, progress


def _skip(batch: StoreRows, i: int, progress: dict, progress_dir: Path) -> None:
    """Check, on the last finished batch, that the store iterates in the recorded order."""
    if i == progress["batches_done"] - 1 and (not batch.ids or batch.ids[-1] != progress["last_id"]):
        raise ValueError(
            f"progress_dir: the store {progress['store']!r} no longer lists its rows in the order of the "
            f"unfinished refresh ({progress_dir / PROGRESS_FILE}: batch {i} ended with "
            f"{progress['last_id']!r}); rerun with restart=True"
        )


def _refresh_upsert(
    backend: Any,
    encoder: Any,
    progress_dir: Path | None,
    batch_size: int,
    show: bool,
    restart: bool,
    on_batch: Callable[[int], None] | None,
) -> dict:
    require(backend, ("iter_rows", "upsert"), "refresh by upsert")
    if progress_dir is None:
        raise ValueError("progress_dir: expected a folder for the resumable progress of an upsert refresh, got None")
    snapshot, progress = _start_or_resume(backend, encoder, progress_dir, batch_size, restart)
    bs, done = progress["batch_size"], progress["batches_done"]
    bar = _bar(math.ceil(progress["total_rows"] / bs), done, show, backend.name)
    try:
        for i, rows in enumerate(backend.iter_rows(bs)):
            if i < done:
                _skip(rows, i, progress, progress_dir)
                continue
            backend.upsert(_encoded(snapshot, rows, bs))
            progress.update(
                batches_done=i + 1,
                rows_done=progress["rows_done"] + len(rows.ids),
                last_id=str(rows.ids[-1]) if rows.ids else progress["last_id"],
            )
            _write_progress(progress_dir, progress)
            bar.update(1)
            if on_batch is not None:
                on_batch(i)
    finally:
        bar.close()
    progress.update(complete=True, finished=time.time())
    _write_progress(progress_dir, progress)
    snap = progress_dir / SNAPSHOT_FILE
    if snap.is_file() and sha256_file(snap) == progress["snapshot_sha256"]:  # ours, unchanged: no longer needed
        snap.unlink()
    return {
        "mode": "upsert",
        "rows": progress["rows_done"],
        "batches": progress["batches_done"],
        "resumed": progress["resumed"],
        "encoder_fingerprint": progress["encoder_fingerprint"],
    }


# ----------------------------------------------------------------------------- swap
def _refresh_swap(
    backend: Any,
    encoder: Any,
    progress_dir: Path | None,
    batch_size: int,
    show: bool,
    restart: bool,
    on_batch: Callable[[int], None] | None,
) -> dict:
    require(backend, ("iter_rows", "staging", "promote"), "refresh by swap")
    snapshot = copy.deepcopy(encoder).eval()
    staging, rows_done, batches = backend.staging(), 0, 0
    bar = _bar(math.ceil(int(backend.count()) / batch_size), 0, show, backend.name)
    try:
        for i, rows in enumerate(backend.iter_rows(batch_size)):
            staging.upsert(_encoded(snapshot, rows, batch_size))
            rows_done, batches = rows_done + len(rows.ids), i + 1
            bar.update(1)
            if on_batch is not None:
                on_batch(i)
    finally:
        bar.close()
    backend.promote(staging)
    return {
        "mode": "swap",
        "rows": rows_done,
        "batches": batches,
        "resumed": False,
        "encoder_fingerprint": encoder_fingerprint(snapshot),
        "staging": getattr(staging, "name", None),
    }


RefreshMode = Callable[..., dict]
REFRESH_MODES: dict[str, RefreshMode] = {"upsert": _refresh_upsert, "swap": _refresh_swap}


def choose_mode(backend: Any, mode: str) -> str:
    """`mode`, or for "auto": "swap" when the backend can switch atomically, else "upsert"."""
    if mode == "auto":
        can_swap = all(callable(getattr(backend, c, None)) for c in ("staging", "promote"))
        return "swap" if can_swap and getattr(backend, "is_alias", True) is not False else "upsert"
    if mode not in REFRESH_MODES:
        raise ValueError(f"mode: expected 'auto' or one of {sorted(REFRESH_MODES)}, got {mode!r}")
    return mode


def refresh_store(
    backend: Any,
    encoder: Any,
    progress_dir: str | Path | None = None,
    *,
    mode: str = "auto",
    batch_size: int = 256,
    show_progress: bool = True,
    restart: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Re-embed every row of `backend` with a snapshot of `encoder` and write the vectors back.

    Args:
        backend: A `VectorStoreBackend` with ``iter_rows`` and ``upsert`` (or ``staging``/``promote``).
        encoder: The passage encoder (`encode(texts) -> (N, D)`; snapshotted, never modified).
        progress_dir: Folder for the resumable progress (needed by "upsert"); a rerun resumes.
        mode: "auto", "upsert" or "swap" (see the module docstring).
        batch_size: Rows per batch (read, encode, write). A resumed refresh keeps its recorded size.
        show_progress: Show a tqdm bar.
        restart: Ignore an unfinished refresh in `progress_dir` and start over with `encoder`.
        on_batch: Called with the batch number after each written batch (progress hooks, tests).

    Returns:
        A record: mode, rows, batches, resumed, encoder_fingerprint, seconds.

    Raises:
        ValueError: A backend without the capabilities the mode needs, a bad argument, or an
            unfinished refresh that cannot be resumed (the message says why and offers restart=True).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    chosen = choose_mode(backend, mode)
    start = time.perf_counter()
    path = None if progress_dir is None else Path(progress_dir)
    record = REFRESH_MODES[chosen](backend, encoder, path, batch_size, show_progress, restart, on_batch)
    return {**record, "store": backend.name, "seconds": time.perf_counter() - start}


def pending_refresh(progress_dir: str | Path) -> str | None:
    """The progress file of an unfinished refresh in `progress_dir`, else None."""
    progress = read_progress(progress_dir)
    return None if progress is None or progress["complete"] else str(Path(progress_dir) / PROGRESS_FILE)
