"""Training records: the history object, metrics.jsonl, the curve plot and plain-text tables.

Boundary: formats and writes records the loop hands it; never prints (the loop
and the CLI print what `format_table` returns).
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contextflow_core.io_utils import atomic_write_bytes

__all__ = ["MetricsLog", "TrainHistory", "format_table", "plot_history"]


@dataclass
class TrainHistory:
    """What `train_rag` returns.

    Attributes:
        train: One record per logged optimiser step: step, epoch, loss, lr, lr/<side>,
            grad_norm, items_per_s, elapsed_s.
        eval: One record per evaluation: step, epoch and the `evaluate` metrics.
        global_step: Optimiser steps done.
        epochs_completed: Full passes over the training data.
        best_val_loss: Lowest validation loss seen (None without validation).
        best_step: Step of `best_val_loss`.
        stop_reason: "completed", "max_steps" or "early_stopping".
        skipped_steps: Optimiser steps skipped because of a non-finite loss or gradient.
        last_checkpoint: Path of the newest checkpoint written or resumed from.
        resumed_from: Checkpoint this run resumed from, if any.
        refreshes: One record per index refresh: step started/swapped, seconds, passages/s.
        run_id: Id of the run (kept when resumed); recorded in every checkpoint it writes.
        config: The TrainConfig in effect (after any `resume_mismatch="checkpoint"`), as a dict.
        rag_config: The model's RagConfig in effect (before the train mode's freeze flags), as a dict.
    """

    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    global_step: int = 0
    epochs_completed: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    stop_reason: str = ""
    skipped_steps: int = 0
    last_checkpoint: str | None = None
    resumed_from: str | None = None
    refreshes: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    rag_config: dict[str, Any] = field(default_factory=dict)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Train and eval records in the order they were written."""
        return sorted(self.train + self.eval, key=lambda r: (r["step"], r["type"] == "eval"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainHistory:
        """The history `to_dict` wrote."""
        return cls(**dict(data))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class MetricsLog:
    """Append-only JSON-lines file of training and evaluation records (one flush per line).

    Args:
        path: The ``metrics.jsonl`` file; its folder must exist.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def reset(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Replace the file by `records` (a resumed run drops lines logged after its checkpoint)."""
        lines = "".join(json.dumps(_json_safe(dict(r))) + "\n" for r in records)
        atomic_write_bytes(self.path, lines.encode("utf-8"))

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as a JSON line and flush it."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_json_safe(dict(record))) + "\n")
            f.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def format_table(rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], title: str | None = None) -> str:
    """A plain-text table: a mapping gives two columns (name, value), a list of mappings one row each.

    Example:
        >>> print(format_table({"loss": 1.23456, "f1": 0.5}))
        name | value
        -----+------
        loss | 1.235
        f1   | 0.5
    """
    if isinstance(rows, Mapping):
        header, body = ["name", "value"], [[str(k), _cell(v)] for k, v in rows.items()]
    else:
        header = list(dict.fromkeys(k for r in rows for k in r))
        body = [[_cell(r.get(k)) for k in header] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)] + [line(r) for r in body]
    return "\n".join(([title] if title else []) + out)


def plot_history(history: TrainHistory, path: str | Path) -> Path | None:
    """Draw training and validation loss against the optimiser step into a PNG.

    Uses matplotlib's Agg canvas directly (the global backend is left alone).

    Returns:
        The PNG path, or None (with a warning) when matplotlib is not installed or
        there is nothing to plot.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn(
            "plot: matplotlib is not installed, skipping the training curves (pip install 'contextflow[plot]')",
            stacklevel=2,
        )
        return None
    if not history.train and not history.eval:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for records, label, style in ((history.train, "train loss", "-"), (history.eval, "validation loss", "o-")):
        points = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("RAG-Sequence NLL")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path
