"""Experiment trackers for `TrainConfig.report_to`, through accelerate's tracking API.

Boundary: turns the loop's records (the same dicts metrics.jsonl gets) into
`Accelerator.log` calls, and checks before training that every tracker asked for
is installed. The trackers themselves are accelerate's (`accelerate.tracking`);
only the main process writes (accelerate's own rule). No printing.

Where things go: TensorBoard (and Aim) under `output_dir/trackers/contextflow/`
(a resumed run adds event files beside the earlier ones); the others (Weights &
Biases, MLflow, ...) wherever their own settings say, with the run id as the
run's name.

Example:
    >>> config = TrainConfig(report_to=["tensorboard"], output_dir="runs/a")  # doctest: +SKIP
    >>> train_rag(rag, train, config=config)  # doctest: +SKIP
    >>> # tensorboard --logdir runs/a/trackers
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contextflow_core.config import TRACKERS, TrainConfig, to_dict

__all__ = [
    "PROJECT_NAME",
    "TRACKER_PACKAGES",
    "accelerator_kwargs",
    "check_trackers",
    "end_trackers",
    "log_record",
    "start_trackers",
    "tracker_values",
]

PROJECT_NAME = "contextflow"
#: tracker name -> (module it imports, what to pip install).
TRACKER_PACKAGES: dict[str, tuple[str, str]] = {
    "aim": ("aim", "aim"),
    "clearml": ("clearml", "clearml"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "dvclive": ("dvclive", "dvclive"),
    "mlflow": ("mlflow", "mlflow"),
    "swanlab": ("swanlab", "swanlab"),
    "tensorboard": ("tensorboard", "'contextflow[tensorboard]'"),
    "trackio": ("trackio", "trackio"),
    "wandb": ("wandb", "wandb"),
}
assert set(TRACKER_PACKAGES) == set(TRACKERS), "config.TRACKERS and TRACKER_PACKAGES name the same trackers"
_SKIP = ("type", "step", "epoch")  # record keys that are not measurements


def module_available(module: str) -> bool:
    """Whether `module` can be imported (found without importing it)."""
    return importlib.util.find_spec(module) is not None


def check_trackers(config: TrainConfig) -> None:
    """Refuse, before training, a `report_to` tracker whose package is not installed.

    Raises:
        ValueError: Names the tracker, the missing package and the pip command.
    """
    for name in config.report_to or ():
        module, pip = TRACKER_PACKAGES[name]
        if not module_available(module):
            raise ValueError(
                f"report_to: {name!r} needs the package {module!r}, which is not installed; "
                f"run `pip install {pip}` or drop {name!r} from report_to"
            )


def accelerator_kwargs(config: TrainConfig) -> dict[str, Any]:
    """`Accelerator(...)` keywords for the trackers: `log_with` and the project folders ({} when none)."""
    if not config.report_to:
        return {}
    from accelerate.utils import ProjectConfiguration

    kwargs: dict[str, Any] = {"log_with": list(config.report_to)}
    if config.output_dir is not None:
        root = Path(config.output_dir)
        kwargs["project_config"] = ProjectConfiguration(project_dir=str(root), logging_dir=str(root / "trackers"))
    return kwargs


def _hparam(value: Any) -> Any:
    """A value TensorBoard's hparams accept: bool/int/float/str kept, anything else as JSON text."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


def start_trackers(accelerator, config: TrainConfig, run_id: str | None) -> None:
    """`init_trackers` with the TrainConfig (and run id) as the run's hyperparameters."""
    if not config.report_to:
        return
    hparams = {k: _hparam(v) for k, v in to_dict(config).items()}
    hparams["run_id"] = str(run_id)
    init_kwargs = {name: {"name": str(run_id)} for name in ("wandb",) if name in config.report_to}
    accelerator.init_trackers(PROJECT_NAME, config=hparams, init_kwargs=init_kwargs)


def tracker_values(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a train/eval/refresh record, named `<type>/<key>` (e.g. "train/loss", "eval/f1")."""
    kind = str(record.get("type", "refresh"))
    out = {}
    for key, value in record.items():
        if key in _SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{kind}/{key}"] = float(value)
    return out


def log_record(accelerator, config: TrainConfig, record: Mapping[str, Any]) -> None:
    """Send one record to the trackers at its optimiser step (nothing when `report_to` is empty)."""
    if not config.report_to:
        return
    values = tracker_values(record)
    if values:
        accelerator.log(values, step=int(record.get("step") or 0))


def end_trackers(accelerator, config: TrainConfig) -> None:
    """Flush and close the trackers (`Accelerator.end_training`)."""
    if config.report_to:
        accelerator.end_training()
