"""The original README's import path: re-exports of `contextflow_core` only.

>>> from contextflow import RAGSequence            # doctest: +SKIP
>>> from contextflow.training import train_rag     # doctest: +SKIP
"""

from contextflow_core import *  # noqa: F401,F403
from contextflow_core import __all__ as _core_all
from contextflow_core import __version__  # noqa: F401
from contextflow_core.config import TrainConfig as TrainConfig
from contextflow_core.evaluation import evaluate as evaluate
from contextflow_core.training import make_dataloader as make_dataloader
from contextflow_core.training import train_rag as train_rag

__all__ = sorted(set(_core_all) | {"TrainConfig", "evaluate", "make_dataloader", "train_rag"})
