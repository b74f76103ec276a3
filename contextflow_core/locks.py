"""One re-entrant lock per model, so concurrent callers take turns on it.

Boundary: concurrency only. Generation toggles train/eval mode and runs the
generator; serializing calls per generator keeps concurrent `generate`,
LangChain `batch`/`abatch` and LlamaIndex `aquery` calls from interleaving
those mode switches. Locks live in a weak map, so models stay deep-copyable
and are freed normally.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def model_lock(module: Any) -> threading.RLock:
    """The lock of `module` (created on first use)."""
    with _GUARD:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
        return lock
