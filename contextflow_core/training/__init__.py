"""Training: QA data loading and collation, the accelerate loop, checkpoints.

Boundary: trains a RAGSequence on question/answer pairs; the maths stays in
`loss.py` and the model, text-to-ids in `prompts.py`.
"""

from contextflow_core.config import TrainConfig
from contextflow_core.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from contextflow_core.training.data import QADataset, SeededSampler, collate_qa, make_dataloader, normalize_batch
from contextflow_core.training.loop import train_rag
from contextflow_core.training.optim import apply_train_mode, build_optimizer, build_scheduler
from contextflow_core.training.report import TrainHistory, format_table, plot_history

__all__ = [
    "QADataset",
    "SeededSampler",
    "TrainConfig",
    "TrainHistory",
    "apply_train_mode",
    "build_optimizer",
    "build_scheduler",
    "collate_qa",
    "format_table",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "make_dataloader",
    "normalize_batch",
    "plot_history",
    "save_checkpoint",
    "train_rag",
]
