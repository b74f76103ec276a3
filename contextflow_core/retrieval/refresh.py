"""Index refresh: re-encode the corpus with the current context encoder and swap the index.

Boundary: builds a new DocumentIndex from a frozen snapshot of an encoder and
hands it to a Retriever; knows nothing of losses or the training loop beyond
"start" and "swap if ready" calls at step boundaries.

With `background=True` the rebuild runs in a thread on a deep copy of the
encoder taken when it starts, so training continues on the old index and the
encoder keeps changing without racing the rebuild; the new index is swapped in
at the first boundary after it is ready. A rebuild is discarded if passages
were added or removed meanwhile (the index's `version` changed).
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Optional

from contextflow_core.retrieval.index import DocumentIndex


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
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[dict[str, Any]] = None

    @property
    def busy(self) -> bool:
        """A rebuild is running or finished but not yet swapped in."""
        return self._thread is not None or self._result is not None

    def start(self, step: int) -> None:
        """Begin a rebuild from the encoder as it is now (no-op if one is running)."""
        if self.busy:
            return
        snapshot = copy.deepcopy(self.encoder).eval()
        job = {"step_started": step, "version": self.retriever.index.version, "_source": self.retriever.index}
        if not self.background:
            self._result = self._build(snapshot, job)  # swapped by the next swap_if_ready
            return
        self._thread = threading.Thread(target=self._run, args=(snapshot, job), daemon=True)
        self._thread.start()

    def _run(self, snapshot, job: dict) -> None:
        self._result = self._build(snapshot, job)

    def _build(self, snapshot, job: dict) -> dict:
        old: DocumentIndex = self.retriever.index
        passages = old.passages
        start = time.perf_counter()
        embeddings = snapshot.encode([p.text for p in passages], batch_size=self.batch_size)
        index = DocumentIndex.from_embeddings(passages, embeddings, index_factory=old.index_factory,
                                              encoder_name=old.encoder_name)
        seconds = time.perf_counter() - start
        return {**job, "index": index, "seconds": seconds, "passages": len(passages),
                "passages_per_s": len(passages) / max(seconds, 1e-9)}

    def swap_if_ready(self, step: int, wait: bool = False) -> Optional[dict]:
        """Swap in a finished rebuild; returns its record (None when nothing was swapped)."""
        if self._thread is not None:
            if not wait and self._thread.is_alive():
                return None
            self._thread.join()
            self._thread = None
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
