"""The original README's `from contextflow.training import train_rag`: re-exports only."""

from contextflow_core.training import *  # noqa: F401,F403
from contextflow_core.training import __all__  # noqa: F401
