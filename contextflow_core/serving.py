"""Coalesced serving: many concurrent single-question requests answered in shared `generate` calls.

Boundary: concurrency and grouping only. A `RequestBatcher` takes one question at a
time (with its own `generate` options) from any number of threads or asyncio tasks,
queues it, and a single daemon worker thread answers the queue in batched
`model.generate(questions=[...], **options)` calls; decoding, retrieval and scoring
are the model's own.

- Grouping: only requests with the same options share a call (decoding mode, K,
  `max_new_tokens`, every HF argument: `grouping_key`). A request holding an option
  that cannot be compared (an object such as a `streamer` or `logits_processor`) is
  answered alone.
- When a batch starts: with ``max_wait_ms=0`` (the default, "natural batching") the
  worker takes everything compatible that is queued as soon as it is free, so a lone
  caller pays no wait and requests arriving while a batch runs form the next one;
  with ``max_wait_ms > 0`` it waits up to that long after the oldest request for
  `max_batch_size` compatible ones.
- Exactness: a batched answer has the same text and sources as a one-question call;
  scores and weights agree to float rounding (~1e-5: left padding changes the
  summation order, not the maths). Sampling (``do_sample=True``) draws from one
  random stream per batch, so sampled texts differ from sequential calls as they
  differ between any two runs.
- Isolation: options and the question are checked in the caller's thread
  (`submit` raises there); if a batched call still fails, its requests are answered
  one by one so only the failing one gets the error.
- Shutdown and cancellation: `close()` (or leaving the `with` block) answers what is
  queued (or cancels it, ``cancel_pending=True``) and joins the worker. A cancelled
  future, an asyncio task cancelled while waiting, or a `generate(timeout=...)` that
  timed out is removed from the queue. An idle worker exits after `IDLE_EXIT_S`
  seconds and is restarted by the next request, so no thread outlives its use.

Do not call a batcher while holding the model's lock (inside `model.inference()`):
the worker needs that lock to answer.

Example:
    >>> with RequestBatcher(rag, max_batch_size=16) as batcher:          # doctest: +SKIP
    ...     futures = [batcher.submit(q, max_new_tokens=16) for q in questions]
    ...     answers = [f.result() for f in futures]
    >>> answer = await rag.batcher().agenerate("Who founded Tarsk?")     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .types import RagAnswer
from .validation import RAG_RESERVED, as_int, as_number, check_generate_kwargs

__all__ = ["IDLE_EXIT_S", "RequestBatcher", "grouping_key", "shared_batcher"]

#: Seconds an idle worker thread waits for a request before it exits (a new one starts on demand).
IDLE_EXIT_S = 5.0

_RESERVED = {
    **RAG_RESERVED,
    "questions": "submit one question per request",
    "timeout": "pass timeout= to RequestBatcher.generate (submit returns a Future)",
}


def _hashable(value: Any) -> Hashable | None:
    """`value` as a comparable key part, or None when it has no value identity (an object)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return (type(value).__name__, value)
    if isinstance(value, (list, tuple)):
        parts = [_hashable(v) for v in value]
        return None if any(p is None for p in parts) else tuple(parts)
    if isinstance(value, dict):
        items = [(str(k), _hashable(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))]
        return None if any(p is None for _, p in items) else tuple(items)
    return None


def grouping_key(options: dict[str, Any]) -> Hashable | None:
    """The key under which requests may share a `generate` call: every option's value.

    Returns None when an option is an object that cannot be compared (a streamer, a
    logits processor): such a request is answered alone.
    """
    parts = []
    for name in sorted(options):
        part = _hashable(options[name])
        if part is None:
            return None
        parts.append((name, part))
    return tuple(parts)


@dataclass
class _Request:
    question: str
    options: dict[str, Any]
    key: Hashable
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class RequestBatcher:
    """Answer single questions from many threads / asyncio tasks in shared batched `generate` calls.

    Args:
        model: A `RAGSequence` (anything with `generate(questions=[...], **options)`
            returning one answer per question).
        max_batch_size: Most questions in one `generate` call.
        max_wait_ms: How long a batch may wait for more compatible requests after its
            oldest one arrived; 0 (default): natural batching, no wait (see the module docstring).

    Raises:
        ValueError: `max_batch_size` is not a positive int, or `max_wait_ms` is not a number >= 0.

    Example:
        >>> batcher = RequestBatcher(rag, max_batch_size=8, max_wait_ms=5)   # doctest: +SKIP
        >>> batcher.generate("Who founded Tarsk?", max_new_tokens=16).text  # doctest: +SKIP
        >>> batcher.close()                                                 # doctest: +SKIP
    """

    def __init__(self, model: Any, *, max_batch_size: int = 16, max_wait_ms: float = 0.0) -> None:
        if not callable(getattr(model, "generate", None)):
            raise ValueError(f"model: expected a RAGSequence (with .generate), got {type(model).__name__}")
        self.max_batch_size = as_int("max_batch_size", max_batch_size)
        self.max_wait_ms = as_number("max_wait_ms", max_wait_ms, low=0.0, low_open=False)
        self._model: Callable[[], Any] = lambda: model
        self._pending: list[_Request] = []
        self._cond = threading.Condition(threading.RLock())
        self._thread: threading.Thread | None = None  # the latest worker, joined by close()
        self._serving = False  # a worker is running and will look at the queue again
        self._closed = False
        self.stats = {"requests": 0, "calls": 0, "largest_batch": 0}
        """Counts so far: requests queued, `generate` calls made, largest batch answered."""

    @classmethod
    def _weak(cls, model: Any, **kwargs: Any) -> RequestBatcher:
        """A batcher holding `model` weakly (the shared one of `shared_batcher`, so the model can be freed)."""
        batcher = cls(model, **kwargs)
        ref = weakref.ref(model)
        batcher._model = ref
        return batcher

    @property
    def model(self) -> Any:
        """The model answered with (RuntimeError when a weakly held model was freed)."""
        model = self._model()
        if model is None:
            raise RuntimeError("model: the model of this shared batcher was freed; make a new batcher")
        return model

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (new requests are refused)."""
        return self._closed

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the batch being answered)."""
        with self._cond:
            return len(self._pending)

    # -- requests -----------------------------------------------------------------------
    def _check(self, question: Any, options: dict[str, Any]) -> dict[str, Any]:
        """The request's options, checked here so a bad one fails in its caller only."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question: expected non-empty text, got {question!r}")
        model = self.model
        prompts = getattr(model, "prompts", None)
        if prompts is not None:
            prompts.encode(question, [])  # a question whose prompt frame cannot fit fails here, by name
        options = dict(options)
        if "num_docs" in options and hasattr(model, "resolve_num_docs"):
            options["num_docs"] = model.resolve_num_docs(options["num_docs"])
        if "max_new_tokens" in options:
            options["max_new_tokens"] = as_int("max_new_tokens", options["max_new_tokens"])
        if getattr(type(model), "generate", None) is _sequence_generate():
            from .generation import DECODERS

            if "decoding" in options and options["decoding"] not in DECODERS:
                raise ValueError(f"decoding: expected one of {sorted(DECODERS)}, got {options['decoding']!r}")
            own: dict[str, Any] = {
                k: options.pop(k) for k in ("num_docs", "max_new_tokens", "decoding") if k in options
            }
            options = {
                **own,
                **check_generate_kwargs(
                    options,
                    owner="RequestBatcher.submit",
                    reserved=_RESERVED,
                    also=("num_docs", "max_new_tokens", "decoding"),
                ),
            }
        return options

    def submit(self, question: str, **options: Any) -> Future[RagAnswer]:
        """Queue one question; a `concurrent.futures.Future` of its `RagAnswer`.

        Args:
            question: The question text.
            **options: `RAGSequence.generate` keywords for this request (``num_docs``,
                ``max_new_tokens``, ``decoding``, HF generate arguments).

        Raises:
            ValueError: A bad question or option (raised here, in the caller only).
            RuntimeError: The batcher is closed.
        """
        options = self._check(question, options)
        key = grouping_key(options)
        request = _Request(question, options, key if key is not None else object())
        with self._cond:
            if self._closed:
                raise RuntimeError("RequestBatcher: closed; make a new batcher (or use model.batcher())")
            self._pending.append(request)
            self.stats["requests"] += 1
            self._ensure_worker()
            self._cond.notify_all()
        request.future.add_done_callback(lambda f: self._forget(request) if f.cancelled() else None)
        return request.future

    def generate(self, question: str, *, timeout: float | None = None, **options: Any) -> RagAnswer:
        """Answer one question (blocking); `timeout` seconds at most (None: no limit).

        Raises:
            TimeoutError: No answer within `timeout`; the request is removed from the queue.
        """
        timeout = as_number("timeout", timeout, low=0.0, none_ok=True)
        future = self.submit(question, **options)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"timeout: no answer within {timeout:g} s; the request was withdrawn "
                "(raise timeout=, or lower the load)"
            ) from None

    async def agenerate(self, question: str, **options: Any) -> RagAnswer:
        """Answer one question from an asyncio task; cancelling the task withdraws a queued request."""
        return await asyncio.wrap_future(self.submit(question, **options))

    def _forget(self, request: _Request) -> None:
        with self._cond:
            if request in self._pending:
                self._pending.remove(request)

    # -- the worker -----------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        """Start the worker thread if none is serving (called with the condition held)."""
        if not self._serving:
            self._serving = True
            self._thread = threading.Thread(target=self._loop, name="contextflow-batcher", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if batch:
                    self._answer(batch)
        except BaseException:  # the worker dies (KeyboardInterrupt...): the next submit starts another
            with self._cond:
                self._serving = False
            raise

    def _next_batch(self) -> list[_Request] | None:
        """The next batch to answer ([] if every candidate was cancelled); None: the worker exits.

        The worker exits when the queue is empty and the batcher is closed, or after
        `IDLE_EXIT_S` seconds without a request (the next `submit` starts a new one).
        """
        with self._cond:
            if not self._pending and not self._closed:
                self._cond.wait(IDLE_EXIT_S)
            if not self._pending:
                self._serving = False  # under the lock: a later submit starts a new worker
                return None
            self._wait_for_more()
            return self._take()

    def _wait_for_more(self) -> None:
        """With `max_wait_ms`, wait until the oldest request's group is full or its time is up."""
        if self.max_wait_ms <= 0 or not self._pending:
            return
        deadline = self._pending[0].queued_at + self.max_wait_ms / 1000.0
        while not self._closed and self._pending:
            key = self._pending[0].key
            if sum(r.key == key for r in self._pending) >= self.max_batch_size:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _take(self) -> list[_Request]:
        """Remove and return up to `max_batch_size` requests of the oldest request's group, in order."""
        if not self._pending:
            return []
        key = self._pending[0].key
        batch = [r for r in self._pending if r.key == key][: self.max_batch_size]
        taken = set(map(id, batch))
        self._pending = [r for r in self._pending if id(r) not in taken]
        return [r for r in batch if r.future.set_running_or_notify_cancel()]

    def _answer(self, batch: list[_Request]) -> None:
        """One `generate` call for the batch; on failure, one call per request (errors stay with their own)."""
        self.stats["calls"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        try:
            answers = self.model.generate(questions=[r.question for r in batch], **batch[0].options)
        except Exception as error:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            for request in batch:
                self._answer([request])
            return
        except BaseException as error:  # interpreter shutdown, KeyboardInterrupt: fail the batch and stop
            for request in batch:
                request.future.set_exception(error)
            raise
        for request, answer in zip(batch, answers, strict=True):
            request.future.set_result(answer)

    # -- shutdown -------------------------------------------------------------------------
    def close(self, *, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Refuse new requests, answer (or cancel) the queued ones, and join the worker.

        Args:
            cancel_pending: Cancel queued requests instead of answering them (a batch already
                running is finished).
            timeout: Seconds to wait for the worker (None: until it ends).
        """
        timeout = as_number("timeout", timeout, low=0.0, low_open=False, none_ok=True)
        with self._cond:
            self._closed = True
            pending = list(self._pending) if cancel_pending else []
            self._cond.notify_all()
        for request in pending:
            request.future.cancel()
        worker = self._thread
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def __enter__(self) -> RequestBatcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RequestBatcher(max_batch_size={self.max_batch_size}, max_wait_ms={self.max_wait_ms:g}, "
            f"queued={len(self._pending)}, closed={self._closed})"
        )


def _sequence_generate() -> Any:
    from .rag import RAGSequence

    return RAGSequence.generate


_SHARED: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()
_SHARED_GUARD = threading.Lock()


def shared_batcher(model: Any, *, max_batch_size: int = 16, max_wait_ms: float = 0.0) -> RequestBatcher:
    """The batcher shared by every caller of `model` with these settings (made on first use).

    Held per model, weakly: the model can be freed, and its idle worker thread exits.
    A closed shared batcher is replaced by a new one on the next call.
    """
    with _SHARED_GUARD:
        per_model = _SHARED.setdefault(model, {})
        key = (as_int("max_batch_size", max_batch_size), as_number("max_wait_ms", max_wait_ms, low=0.0, low_open=False))
        batcher = per_model.get(key)
        if batcher is None or batcher.closed:
            batcher = per_model[key] = RequestBatcher._weak(model, max_batch_size=key[0], max_wait_ms=key[1])
        return batcher
