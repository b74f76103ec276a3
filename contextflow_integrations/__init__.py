"""Framework adapters for ContextFlow, each an optional extra.

- `contextflow_integrations.langchain` (``pip install 'contextflow[langchain]'``): retriever,
  chat model / LLM, RAG Runnable, and fine-tuning from a vector store.
- `contextflow_integrations.llamaindex` (``pip install 'contextflow[llamaindex]'``): retriever,
  LLM, query engine, and fine-tuning from an index.

Adapters are thin (conversion + delegation to `contextflow_core`) and import their
framework only when used; `contextflow_core` never imports either framework.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], framework: str, hint: str) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `package.<module>` on first use of one of `exports`.

    Args:
        package: The adapter package's `__name__`.
        exports: Public name -> submodule holding it.
        framework: Top-level module of the framework (its absence gives the `hint`).
        hint: What to install, e.g. ``pip install 'contextflow[langchain]'``.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            module = importlib.import_module(f"{package}.{exports[name]}")
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] == framework:
                raise ImportError(f"{name} needs {framework}: {hint} (missing module {e.name!r})") from e
            raise
        value = getattr(module, name)
        setattr(sys.modules[package], name, value)  # cached: later lookups skip __getattr__
        return value

    return __getattr__
