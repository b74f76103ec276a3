"""Index refresh: re-encode the corpus with the current context encoder and swap the index.

Boundary: builds a new DocumentIndex from a frozen snapshot of an encoder and
hands it to a Retriever; knows nothing of losses or the training loop beyond
"start" and "swap if ready" calls at step boundaries.

With `background=True` the rebuild runs in a thread on a deep copy of the
encoder taken when it starts, so training continues on the old index and the
encoder keeps changing without racing the rebuild; the new index is swapped in
at the first boundary after it is ready. A rebuild is discarded if passages
were added or removed meanwhile (the index's `version` changed).

A rebuild that fails (the encoder raises, the embeddings are not finite, ...) is
never ignored: `swap_if_ready` raises `IndexRefreshError` from the rebuild's own
exception at the first boundary after it failed, and `train_rag` stops there.
The rebuilt index keeps the old one's factory and search settings (`nprobe`,
`ef_search`).
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from contextflow_core.retrieval.index import DocumentIndex

__all__ = ["IndexRefreshError", "IndexRefresher", "rebuild_index"]


class IndexRefreshError(RuntimeError):
    """An index rebuild failed; the rebuild's exception is its ``__cause__``."""


def rebuild_index(old: DocumentIndex, embeddings) -> DocumentIndex:
    """A new index over `old`'s passages holding (N, D) `embeddings`, with `old`'s factory and search settings."""
    return DocumentIndex.from_embeddings(
        old.passages,
        embeddings,
        index_factory=old.index_factory,
        encoder_name=old.encoder_name,
        nprobe=old.nprobe,
        ef_search=old.ef_search,
    )


class IndexRefresher:
    """Rebuilds `retriever`'s index from `encoder` on request.

    Args:
        retriever: The `Retriever` whose index is replaced.
        encoder: The context encoder (anything with `encode(texts)` and `state`
            that survives `copy.deepcopy`).
        background: Rebuild in a thread (True) or inline (False).
        batch_size: Encoding batch size.
    """

    def __init__(self, retriever, encoder, *, background: bool = True, batch_size: int = 64) -> None:
        self.retriever = retriever
        self.encoder = encoder
        self.background = background
        self.batch_size = batch_size
        self.records: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None
        self._result: dict[str, Any] | None = None
        self._error: tuple[dict[str, Any], BaseException] | None = None

    @property
    def busy(self) -> bool:
        """A rebuild is running or finished but not yet swapped in."""
        return self._thread is not None or self._result is not None or self._error is not None

    def start(self, step: int) -> None:
        """Begin a rebuild from the encoder as it is now (no-op if one is running)."""
        if self.busy:
            return
        snapshot = copy.deepcopy(self.encoder).eval()
        job = {"step_started": step, "version": self.retriever.index.version, "_source": self.retriever.index}
        if not self.background:
            self._run(snapshot, job)  # swapped (or its error raised) by the next swap_if_ready
            return
        self._thread = threading.Thread(target=self._run, args=(snapshot, job), daemon=True)
        self._thread.start()

    def _run(self, snapshot, job: dict) -> None:
        try:
            self._result = self._build(snapshot, job)
        except Exception as e:  # noqa: BLE001 -- handed to the training thread by swap_if_ready
            self._error = (job, e)

    def _build(self, snapshot, job: dict) -> dict:
        old: DocumentIndex = self.retriever.index
        passages = old.passages
        start = time.perf_counter()
        embeddings = snapshot.encode([p.text for p in passages], batch_size=self.batch_size)
        index = rebuild_index(old, embeddings)
        seconds = time.perf_counter() - start
        return {
            **job,
            "index": index,
            "seconds": seconds,
            "passages": len(passages),
            "passages_per_s": len(passages) / max(seconds, 1e-9),
        }

    def swap_if_ready(self, step: int, wait: bool = False) -> dict | None:
        """Swap in a finished rebuild; returns its record (None when nothing was swapped).

        Raises:
            IndexRefreshError: The rebuild failed (its exception chained as the cause).
        """
        if self._thread is not None:
            if not wait and self._thread.is_alive():
                return None
            self._thread.join()
            self._thread = None
        if self._error is not None:
            (job, error), self._error = self._error, None
            raise IndexRefreshError(
                f"index refresh started at step {job['step_started']} failed at step {step}: "
                f"{type(error).__name__}: {error}; training stopped (the last checkpoint is kept). "
                "Fix the context encoder or the corpus, or set refresh_index_steps=None"
            ) from error
        result, self._result = self._result, None
        if result is None:
            return None
        index, source = result.pop("index"), result.pop("_source")
        record = {"type": "index_refresh", "step": step, **result}
        record["swapped"] = self.retriever.index is source and source.version == result["version"]
        if record["swapped"]:
            self.retriever.set_index(index)
        self.records.append(record)
        return record
