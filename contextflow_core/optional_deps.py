"""Importing optional dependencies without their side effects.

Boundary: import plumbing only; knows nothing of models, retrieval or training.

peft imports bitsandbytes unconditionally (``peft.helpers``), and transformers'
scheduler and trainer utilities import peft. bitsandbytes in turn probes for GPU
kernels on import and prints "Failed to load CPU gemm_4bit_forward ..." on a CPU
machine. A fine-tune without 4/8-bit quantization never needs bitsandbytes, so
ContextFlow imports peft and those transformers utilities with bitsandbytes hidden
(`bitsandbytes_hidden`): they see it as absent while they load, and the
availability checks they cache are cleared afterwards, so a 4/8-bit model loaded
later in the same process (which imports bitsandbytes itself) still gets peft's
quantized LoRA layers.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

__all__ = ["bitsandbytes_hidden", "import_peft"]

_BNB = "bitsandbytes"
_LOCK = threading.RLock()
#: (module, function) pairs whose cached answer to "is bitsandbytes installed?" is cleared after hiding it.
_CACHED_CHECKS = (
    ("peft.import_utils", "is_bnb_available"),
    ("peft.import_utils", "is_bnb_4bit_available"),
    ("transformers.utils.import_utils", "is_bitsandbytes_available"),
)


def _clear_cached_checks() -> None:
    for module_name, name in _CACHED_CHECKS:
        clear = getattr(getattr(sys.modules.get(module_name), name, None), "cache_clear", None)
        if clear is not None:
            clear()


@contextlib.contextmanager
def bitsandbytes_hidden() -> Iterator[None]:
    """Within the block, ``import bitsandbytes`` fails as if it were not installed.

    Does nothing when bitsandbytes is already imported (a 4/8-bit model was loaded:
    then peft must see it). On exit the hiding entry is removed and the cached
    availability checks of peft and transformers are cleared.

    Example:
        >>> with bitsandbytes_hidden():
        ...     from transformers import get_scheduler  # imports peft, not bitsandbytes
    """
    with _LOCK:
        if sys.modules.get(_BNB) is not None:
            yield
            return
        hid = _BNB not in sys.modules
        if hid:
            sys.modules[_BNB] = None  # type: ignore[assignment]  # the import system's "not importable" mark
        try:
            yield
        finally:
            if hid and _BNB in sys.modules and sys.modules[_BNB] is None:
                del sys.modules[_BNB]
            _clear_cached_checks()


def import_peft(purpose: str = "LoRA") -> ModuleType:
    """The `peft` module, imported without bitsandbytes unless a quantized model already loaded it.

    Args:
        purpose: What needs peft, for the error message (e.g. "generator_lora=True").

    Raises:
        ImportError: peft is not installed; the message gives the pip command.
    """
    with bitsandbytes_hidden():
        try:
            return importlib.import_module("peft")
        except ImportError as e:
            raise ImportError(f"{purpose} needs peft, which is not installed: pip install 'contextflow[peft]'") from e
