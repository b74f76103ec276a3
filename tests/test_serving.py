"""RequestBatcher: concurrent single-question requests answered in shared `generate` calls.

Checks, with tiny models (and the embedded ones for exactness): the same answers and sources as
one call per question, fewer `generate` calls than requests, grouping by options, natural
batching, one bad request failing alone, and clean close / cancellation / timeouts.
"""
import asyncio
import gc
import threading
import time
import weakref
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest
from train_tiny import build_rag

from contextflow_core import RAGSequence, RequestBatcher
from contextflow_core.validation import UnknownArgumentError

QUESTIONS = [f"Question number {i}: what is the capital of Quenia?" if i % 2 else f"Where does river {i} flow?"
             for i in range(16)]
OPTS = {"max_new_tokens": 5, "decoding": "fast"}
_GENERATE = RAGSequence.generate


@pytest.fixture(scope="module")
def rag():
    return build_rag(num_docs=2)


class _Sequential(dict):
    """mode -> the answers of one `generate` call per question (computed on first use)."""

    def __init__(self, rag):
        super().__init__()
        self.rag = rag

    def __missing__(self, mode):  # the unpatched generate: not seen by the `counted` fixture
        self[mode] = [_GENERATE(self.rag, questions=[q], max_new_tokens=5, decoding=mode)[0] for q in QUESTIONS]
        return self[mode]


@pytest.fixture(scope="module")
def sequential(rag):
    return _Sequential(rag)


@pytest.fixture
def counted(rag, monkeypatch):
    """`rag.generate` counted: the number of questions of each call."""
    calls = []
    original = type(rag).generate

    def generate(self, *args, **kwargs):
        calls.append(len(kwargs.get("questions") or args[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(rag), "generate", generate)
    return calls


def _same(got, expected):
    assert [a.text for a in got] == [a.text for a in expected]
    for a, b in zip(got, expected):
        assert [p.id for p, _ in a.sources] == [p.id for p, _ in b.sources]
        assert [w for _, w in a.sources] == pytest.approx([w for _, w in b.sources], abs=1e-4)
        assert a.score == pytest.approx(b.score, abs=1e-4)


def _no_worker_left():
    deadline = time.monotonic() + 5
    while any(t.name == "contextflow-batcher" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not any(t.name == "contextflow-batcher" for t in threading.enumerate())


def _wait_running(future):
    deadline = time.monotonic() + 10
    while not future.running() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert future.running()


def test_16_threads_get_the_sequential_answers_in_fewer_calls(rag, sequential, counted):
    with RequestBatcher(rag, max_batch_size=16, max_wait_ms=200) as batcher:
        with ThreadPoolExecutor(max_workers=16) as pool:
            got = list(pool.map(lambda q: batcher.generate(q, **OPTS), QUESTIONS))
    _same(got, sequential["fast"])
    assert sum(counted) == 16 and len(counted) < 16
    assert batcher.stats["calls"] == len(counted) and batcher.stats["largest_batch"] == max(counted) > 1
    assert _no_worker_left()


def test_16_asyncio_tasks_get_the_sequential_answers_in_fewer_calls(rag, sequential, counted):
    async def many(batcher):
        return await asyncio.gather(*[batcher.agenerate(q, **OPTS) for q in QUESTIONS])

    with RequestBatcher(rag, max_batch_size=16) as batcher:  # natural batching: no wait
        got = asyncio.run(many(batcher))
    _same(got, sequential["fast"])
    assert sum(counted) == 16 and len(counted) < 16


@pytest.mark.parametrize("mode", ["thorough", "concat"])
def test_every_decoding_mode_batches_exactly(rag, sequential, counted, mode):
    with RequestBatcher(rag, max_batch_size=4, max_wait_ms=5000) as batcher:
        futures = [batcher.submit(q, max_new_tokens=5, decoding=mode) for q in QUESTIONS]
        got = [f.result() for f in futures]
    _same(got, sequential[mode])
    assert counted == [4, 4, 4, 4]  # max_batch_size reached: no waiting for the deadline


def test_requests_arriving_during_a_batch_form_the_next_one(rag, sequential, counted):
    """Natural batching: the first request starts at once, the 15 queued while it runs share one call."""
    with RequestBatcher(rag, max_batch_size=16, max_wait_ms=0) as batcher:
        with rag.inference():  # the worker blocks on the model's lock inside its first call
            first = batcher.submit(QUESTIONS[0], **OPTS)
            _wait_running(first)
            rest = [batcher.submit(q, **OPTS) for q in QUESTIONS[1:]]
            assert batcher.queued == 15
        got = [first.result()] + [f.result() for f in rest]
    assert counted == [1, 15]
    _same(got, sequential["fast"])


def test_only_requests_with_the_same_options_share_a_call(rag, sequential, counted):
    with RequestBatcher(rag, max_batch_size=16) as batcher:
        with rag.inference():
            blocker = batcher.submit(QUESTIONS[0], **OPTS)
            _wait_running(blocker)
            futures = [batcher.submit(q, max_new_tokens=5 if i % 2 else 4, decoding="fast")
                       for i, q in enumerate(QUESTIONS)]
        got = [f.result() for f in futures]
        blocker.result()
    assert counted == [1, 8, 8]
    _same(got[1::2], sequential["fast"][1::2])
    _same(got[::2], [_GENERATE(rag, questions=[q], max_new_tokens=4, decoding="fast")[0] for q in QUESTIONS[::2]])


def test_a_bad_request_fails_in_its_caller_only(rag, sequential):
    def call(i):
        options = {**OPTS, "num_docs": 0} if i == 3 else dict(OPTS)
        try:
            return batcher.generate(QUESTIONS[i], **options)
        except ValueError as e:
            return e

    with RequestBatcher(rag, max_wait_ms=100) as batcher:
        with ThreadPoolExecutor(max_workers=16) as pool:
            got = list(pool.map(call, range(16)))
        with pytest.raises(UnknownArgumentError, match="RequestBatcher.submit: unknown argument"):
            batcher.submit(QUESTIONS[0], max_tokens=5)
        with pytest.raises(ValueError, match="question: expected non-empty text"):
            batcher.submit("  ")
        with pytest.raises(ValueError, match="decoding: expected one of"):
            batcher.submit(QUESTIONS[0], decoding="greedy")
    assert isinstance(got[3], ValueError) and "num_docs" in str(got[3])
    _same([a for i, a in enumerate(got) if i != 3], [a for i, a in enumerate(sequential["fast"]) if i != 3])


def test_a_failing_batch_is_answered_one_by_one_so_errors_stay_with_their_request(rag, sequential, counted):
    """Options that pass the checks but make HF generate fail: each request gets its own error."""
    bad = {**OPTS, "num_beams": 2, "num_return_sequences": 3}
    with RequestBatcher(rag) as batcher:
        with rag.inference():
            blocker = batcher.submit(QUESTIONS[0], **OPTS)
            _wait_running(blocker)
            failing = [batcher.submit(q, **bad) for q in QUESTIONS[:2]]
            good = [batcher.submit(q, **OPTS) for q in QUESTIONS[2:4]]
        for f in failing:
            with pytest.raises(ValueError):
                f.result()
        _same([f.result() for f in good], sequential["fast"][2:4])
    assert counted == [1, 2, 1, 1, 2]  # the failing batch of 2, then each alone; the good ones together


def test_close_answers_the_queue_joins_the_worker_and_refuses_new_requests(rag, sequential):
    batcher = RequestBatcher(rag)
    with rag.inference():
        blocker = batcher.submit(QUESTIONS[0], **OPTS)
        _wait_running(blocker)
        queued = [batcher.submit(q, **OPTS) for q in QUESTIONS[1:4]]
        closer = threading.Thread(target=batcher.close)
        closer.start()
    closer.join(30)
    assert not closer.is_alive() and batcher.closed
    _same([f.result(0) for f in [blocker] + queued], sequential["fast"][:4])
    with pytest.raises(RuntimeError, match="RequestBatcher: closed"):
        batcher.submit(QUESTIONS[0])
    assert _no_worker_left()


def test_close_with_cancel_pending_cancels_the_queue(rag):
    batcher = RequestBatcher(rag)
    with rag.inference():
        blocker = batcher.submit(QUESTIONS[0], **OPTS)
        _wait_running(blocker)
        queued = [batcher.submit(q, **OPTS) for q in QUESTIONS[1:4]]
        batcher.close(cancel_pending=True, timeout=0.05)  # the running batch cannot finish while we hold the lock
        assert all(f.cancelled() for f in queued) and batcher.queued == 0
    assert blocker.result(30).text is not None
    batcher.close()
    assert _no_worker_left()


def test_a_cancelled_asyncio_task_is_removed_from_the_queue(rag, counted):
    async def scenario(batcher):
        task = asyncio.ensure_future(batcher.agenerate(QUESTIONS[1], **OPTS))
        while batcher.queued == 0:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return batcher.queued

    with RequestBatcher(rag) as batcher:
        with rag.inference():
            blocker = batcher.submit(QUESTIONS[0], **OPTS)
            _wait_running(blocker)
            assert asyncio.run(scenario(batcher)) == 0
        blocker.result(30)
    assert counted == [1]


def test_a_thread_that_times_out_withdraws_its_request(rag, counted):
    with RequestBatcher(rag) as batcher:
        with rag.inference():
            blocker = batcher.submit(QUESTIONS[0], **OPTS)
            _wait_running(blocker)
            with pytest.raises(TimeoutError, match="timeout: no answer within 0.1 s"):
                batcher.generate(QUESTIONS[1], timeout=0.1, **OPTS)
            assert batcher.queued == 0
            cancelled = batcher.submit(QUESTIONS[2], **OPTS)
            assert cancelled.cancel() and batcher.queued == 0
            with pytest.raises(CancelledError):
                cancelled.result(0)
        blocker.result(30)
    assert counted == [1]


@pytest.mark.parametrize("kwargs, match", [
    ({"max_batch_size": 0}, "max_batch_size: expected a positive integer"),
    ({"max_batch_size": "16"}, "max_batch_size: expected a positive integer"),
    ({"max_wait_ms": -1}, "max_wait_ms: expected a finite number >= 0"),
])
def test_constructor_arguments_are_checked_by_name(rag, kwargs, match):
    with pytest.raises(ValueError, match=match):
        RequestBatcher(rag, **kwargs)
    with pytest.raises(ValueError, match="model: expected a RAGSequence"):
        RequestBatcher(object())


def test_model_batcher_is_shared_replaced_when_closed_and_lets_the_model_go(sequential):
    model = build_rag(num_docs=2)
    shared = model.batcher()
    assert model.batcher() is shared and model.batcher(max_wait_ms=5) is not shared
    _same([shared.generate(QUESTIONS[0], **OPTS)], sequential["fast"][:1])
    shared.close()
    assert model.batcher() is not shared and not model.batcher().closed
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the shared batcher holds its model weakly


@pytest.mark.embedded
def test_embedded_models_answer_the_same_batched_and_one_by_one():
    """SmolLM2 + MiniLM: left-padded batches of different prompt lengths give the one-by-one answers."""
    from contextflow_core.data import make_synthetic

    data = make_synthetic(num_entities=20, seed=0)
    p = data.passages
    model = RAGSequence.from_defaults([x.text for x in p], ids=[x.id for x in p], num_docs=2)
    questions = [ex.question for ex in data.test[:3]] + ["Who?"]
    for mode in ("fast", "thorough", "concat"):
        one_by_one = [model.generate(questions=[q], max_new_tokens=8, decoding=mode)[0] for q in questions]
        with RequestBatcher(model, max_wait_ms=500) as batcher:
            futures = [batcher.submit(q, max_new_tokens=8, decoding=mode) for q in questions]
            batched = [f.result() for f in futures]
        assert batcher.stats["calls"] == 1
        _same(batched, one_by_one)
