"""What RAGSequence, `save_pretrained` and `train_rag` do differently over a vector-store backend.

Boundary: glue between the model and `contextflow_core.retrieval.store*`; no maths.

- Building: the model keeps a **frozen copy** of the starting encoder as its
  ``context_encoder`` (the encoder that made the stored vectors), unless one is given, so
  training the question encoder never changes how documents are embedded; then the
  embedding-space check runs (``store_check=False`` skips it).
- Saving: the models plus ``store.json`` (name, dim, title key, embedding-model hint);
  the live client is never serialized. Loading needs ``store=`` (or ``index=``).
- Training: ``train_context_encoder=True`` over a store needs ``TrainConfig.refresh_index_steps``
  (the store is refreshed in place, `retrieval.store_refresh`); ``refresh_index_steps``
  with a frozen passage encoder is refused (it would rewrite the store with the same
  vectors). A store refresh runs inline at the step boundary (``refresh_in_background``
  applies to DocumentIndex rebuilds; each record says ``"background": False``). Its
  progress lives in ``<output_dir>/store_refresh`` (a temporary folder without
  output_dir); an unfinished refresh found there is finished before training starts.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .retrieval.refresh import IndexRefreshError
from .retrieval.space_check import check_embedding_space
from .retrieval.store import require
from .retrieval.store_refresh import choose_mode, pending_refresh, refresh_store

STORE_FILE = "store.json"


def frozen_copy(encoder: Any) -> Any:
    """A deep copy of `encoder` in eval mode with no trainable parameter."""
    clone = copy.deepcopy(encoder).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def attach_store(model: Any, store_check: bool) -> None:
    """Give a store-backed model its frozen passage encoder and check the store's embedding space."""
    store = model.retriever.store
    if store is None:
        return
    if model._context_encoder is None:
        model._context_encoder = frozen_copy(model.question_encoder)
    if store_check:
        check_embedding_space(store, model.context_encoder)


# ----------------------------------------------------------------------------- files
def describe_store(model: Any) -> dict:
    """The JSON description of a model's store saved beside the weights."""
    view = model.retriever.index
    return {
        "name": view.name,
        "dim": view.dim,
        "title_key": view.title_key,
        "embedding_model_hint": view.encoder_name,
        "backend": type(view.backend).__name__,
    }


def write_store_description(model: Any, folder: Path) -> None:
    """Write `store.json` into the (temporary) save folder."""
    (folder / STORE_FILE).write_text(json.dumps(describe_store(model), indent=2), encoding="utf-8")


def saved_store(root: Path) -> dict | None:
    """The store description of a saved model (None when it was saved with a DocumentIndex)."""
    path = root / STORE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def reattach(root: Path, description: dict, store: Any) -> Any:
    """`store` (a backend or a Retriever), checked against the saved `description` of the model's store."""
    from .retrieval import Retriever
    from .retrieval.store import is_backend

    if store is None:
        raise ValueError(
            f"store: {root} was saved over the store {description['name']!r} (dim {description['dim']}), "
            "which is not saved with the model; pass a backend over it, e.g. "
            "RAGSequence.from_pretrained(dir, store=MilvusBackend(client, 'docs'))"
        )
    if isinstance(store, Retriever):
        return store
    if not is_backend(store):
        raise ValueError(
            f"store: expected a vector-store backend (see contextflow_core.retrieval.store) for "
            f"{description['name']!r}, got {type(store).__name__}"
        )
    if int(store.dim) != int(description["dim"]):
        raise ValueError(
            f"store: the model was saved over {description['name']!r} of dimension {description['dim']}, "
            f"got {store.name!r} of dimension {store.dim}; pass the store the model was trained on"
        )
    if store.name != description["name"]:
        warnings.warn(
            f"store: the model was saved over {description['name']!r}, reattached to {store.name!r}", stacklevel=3
        )
    return store


# ----------------------------------------------------------------------------- training
def check_store_training(model: Any, config: Any) -> None:
    """Refuse a train_rag setup that would leave a store stale or rewrite it for nothing."""
    store = getattr(getattr(model, "retriever", None), "store", None)
    if store is None:
        return
    trains_context = bool(model.config.train_context_encoder) and not model.config.freeze_retriever
    if trains_context and not config.refresh_index_steps:
        raise ValueError(
            f"refresh_index_steps: RagConfig(train_context_encoder=True) over the store {store.name!r} "
            "needs TrainConfig.refresh_index_steps=N (the store is re-embedded in place every N steps), "
            "got None; set it, or keep the passage encoder frozen (train_context_encoder=False)"
        )
    if config.refresh_index_steps and not trains_context:
        raise ValueError(
            f"refresh_index_steps: the passage encoder of the store {store.name!r} is frozen, so a "
            f"refresh would rewrite every row with the same vectors; got refresh_index_steps="
            f"{config.refresh_index_steps}; set it to None, or RagConfig(train_context_encoder=True)"
        )
    if config.refresh_index_steps:
        mode = choose_mode(store, "auto")
        require(
            store,
            ("iter_rows", "upsert") if mode == "upsert" else ("iter_rows", "staging", "promote"),
            "train_context_encoder=True (refresh in place)",
        )


class StoreRefresher:
    """The training loop's refresher over a store: `start` refreshes inline, `swap_if_ready` reports.

    Args:
        retriever: The model's store-backed Retriever.
        encoder: The context encoder (snapshotted at each refresh).
        progress_dir: Where the resumable progress lives.
        batch_size: Rows per refresh batch.
    """

    def __init__(self, retriever: Any, encoder: Any, progress_dir: Path, *, batch_size: int = 256) -> None:
        self.retriever, self.encoder, self.progress_dir = retriever, encoder, Path(progress_dir)
        self.batch_size = batch_size
        self.records: list[dict] = []
        self._result: dict | None = None
        self._error: tuple[int, BaseException] | None = None
        if pending_refresh(self.progress_dir) is not None:  # a refresh of an earlier, interrupted run
            warnings.warn(
                f"train_rag: finishing the unfinished refresh of {retriever.store.name!r} recorded in "
                f"{self.progress_dir} before training",
                stacklevel=4,
            )
            self.start(-1)
            self.swap_if_ready(-1)

    @property
    def busy(self) -> bool:
        """A finished refresh not yet reported (refreshes run inline, never in the background)."""
        return self._result is not None or self._error is not None

    def start(self, step: int) -> None:
        """Re-embed the store now with a snapshot of the encoder (upsert or swap, see `store_refresh`).

        Under several processes only the main one writes (the store is shared); the others wait
        for it and learn whether it succeeded.
        """
        if _rank() in (-1, 0):
            self._refresh(step)
        if _rank() == -1:
            return
        ok = [self._error is None]
        torch.distributed.broadcast_object_list(ok, src=0)
        view = self.retriever.index
        if _rank() != 0 and ok[0]:
            view.version += 1
            self._result = {
                "type": "store_refresh",
                "step_started": step,
                "background": False,
                "written_by_main_process": True,
                "store": view.name,
            }
        elif _rank() != 0:
            self._error = (step, RuntimeError("the main process's store refresh failed"))

    def _refresh(self, step: int) -> None:
        view = self.retriever.index
        started = time.perf_counter()
        view.refresh_pending = str(self.progress_dir / "progress.json")
        try:
            record = refresh_store(
                view.backend, self.encoder, self.progress_dir, batch_size=self.batch_size, show_progress=False
            )
        except Exception as e:  # noqa: BLE001 -- raised by swap_if_ready at this boundary
            if pending_refresh(self.progress_dir) is None:
                view.refresh_pending = None  # a swap that failed leaves the live store untouched
            self._error = (step, e)
            return
        view.refresh_pending = None
        view.version += 1
        seconds = time.perf_counter() - started
        self._result = {
            "type": "store_refresh",
            "step_started": step,
            "background": False,
            "seconds": seconds,
            "passages": record["rows"],
            "passages_per_s": record["rows"] / max(seconds, 1e-9),
            **{k: record[k] for k in ("store", "mode", "resumed", "batches")},
        }

    def swap_if_ready(self, step: int, wait: bool = False) -> dict | None:
        """The record of the refresh `start` ran (None if none); raises IndexRefreshError if it failed."""
        if self._error is not None:
            (started, error), self._error = self._error, None
            raise IndexRefreshError(
                f"store refresh started at step {started} failed at step {step}: {type(error).__name__}: {error}; "
                f"training stopped. The progress is in {self.progress_dir}: train_rag with the same output_dir "
                "(or refresh_store with that progress_dir) finishes it"
            ) from error
        result, self._result = self._result, None
        if result is None:
            return None
        self.records.append({**result, "step": step})
        return self.records[-1]


def _rank() -> int:
    """This process's rank; 0 for the main one, -1 when not distributed."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank()
    return -1


def make_refresher(model: Any, config: Any) -> Any:
    """The refresher train_rag uses: an `IndexRefresher` over a DocumentIndex, a `StoreRefresher` over a store."""
    from .retrieval.refresh import IndexRefresher

    if model.retriever.store is None:
        return IndexRefresher(model.retriever, model.context_encoder, background=config.refresh_in_background)
    out = getattr(config, "output_dir", None)
    folder = Path(out) / "store_refresh" if out else Path(tempfile.mkdtemp(prefix="contextflow-store-refresh-"))
    return StoreRefresher(model.retriever, model.context_encoder, folder)
