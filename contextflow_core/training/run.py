"""The state one `train_rag` call carries, and what it records at step boundaries.

Boundary: holds the loop's state (`TrainingRun`) and turns it into records:
train-loss lines, evaluations (with early stopping), checkpoints, the summary.
Every function that communicates across processes is called by all of them at
the same step, so collectives line up. No printing here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contextflow_core.config import TrainConfig, to_dict
from contextflow_core.evaluation.evaluate import evaluate
from contextflow_core.training import checkpoint as ckpt
from contextflow_core.training import fsdp
from contextflow_core.training.optim import set_train_modes
from contextflow_core.training.report import MetricsLog, TrainHistory
from contextflow_core.training.trackers import log_record

__all__ = ["TrainingRun", "log_train", "run_evaluation", "save_now", "summary"]


@dataclass
class TrainingRun:
    """Everything the loop carries between its steps.

    Attributes:
        config: The resolved TrainConfig.
        accelerator: The accelerate.Accelerator.
        model: The prepared (possibly DDP-wrapped) model: used for the training forward.
        raw: The user's RAGSequence: evaluation, checkpoints.
        optimizer, scheduler: Prepared by accelerate.
        loader: The prepared training dataloader.
        sampler: The user's sampler when it has `set_epoch` (reproducible order), else None.
        val_data: Validation batches or examples, or None.
        batches_per_epoch: Training batches per epoch on this process.
        total_steps: Optimiser steps planned for the whole run.
        restore: Model settings to put back at the end (`optim.capture_flags`).
        history: What `train_rag` returns.
        pos: Position in the data: epoch, batches_in_epoch, and bad_evals (early stopping).
        window: Sums over the micro-batches of the current optimiser step.
        since_log: Sums since the last train-loss record.
        run_id: The run's id (`training.resume`), recorded in its checkpoints.
        identity: `resume.model_identity` of the model, recorded in its checkpoints.
        rag_config: The RagConfig in effect, before the train mode's flags (recorded).
    """

    config: TrainConfig
    accelerator: Any
    model: Any
    raw: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: Any
    val_data: Any
    batches_per_epoch: int
    total_steps: int
    restore: dict[str, Any]
    history: TrainHistory = field(default_factory=TrainHistory)
    pos: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "batches_in_epoch": 0, "bad_evals": 0})
    log: MetricsLog | None = None
    bar: Any = None
    window: dict[str, float] = field(default_factory=dict)
    since_log: dict[str, float] = field(default_factory=dict)
    nonfinite_in_a_row: int = 0
    grad_norm: float | None = None
    started: float = field(default_factory=time.perf_counter)
    refresher: Any = None
    run_id: str | None = None
    identity: dict[str, Any] | None = None
    rag_config: Any = None

    def __post_init__(self) -> None:
        self.reset_window()
        self.reset_since_log()

    @property
    def output_dir(self) -> Path | None:
        return Path(self.config.output_dir) if self.config.output_dir else None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def epoch_float(self) -> float:
        """Epochs done, with the fraction of the current one."""
        return round(self.pos["epoch"] + self.pos["batches_in_epoch"] / self.batches_per_epoch, 4)

    def steps_exhausted(self) -> bool:
        return self.config.max_steps is not None and self.history.global_step >= self.config.max_steps

    def reset_window(self) -> None:
        self.window = {"loss": 0.0, "batches": 0, "items": 0, "bad": 0, "embeddings": 0}

    def reset_since_log(self) -> None:
        self.since_log = {"loss": 0.0, "steps": 0, "items": 0, "time": time.perf_counter()}

    def record(self, records: list, record: dict) -> None:
        """Append `record` to the history list `records`, to metrics.jsonl and to the `report_to` trackers."""
        records.append(record)
        if self.log is not None:
            self.log.append(record)
        log_record(self.accelerator, self.config, record)


def _lrs(run: TrainingRun) -> dict[str, float]:
    lrs: dict[str, float] = {}
    for group in run.optimizer.param_groups:
        lrs.setdefault(f"lr/{str(group.get('name', 'all')).split('/')[0]}", group["lr"])
    return {"lr": next(iter(lrs.values())), **lrs}


def log_train(run: TrainingRun) -> None:
    """Record the mean training loss (over steps and processes) since the last record."""
    acc, s = run.accelerator, run.since_log
    totals = torch.tensor([s["loss"], s["steps"], s["items"]], dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        totals = acc.reduce(totals, reduction="sum")
    loss_sum, steps, items = totals.tolist()
    elapsed = max(time.perf_counter() - s["time"], 1e-9)
    record = {
        "type": "train",
        "step": run.history.global_step,
        "epoch": run.epoch_float,
        "loss": loss_sum / steps,
        **_lrs(run),
        "grad_norm": run.grad_norm,
        "items_per_s": items / elapsed,
        "elapsed_s": time.perf_counter() - run.started,
    }
    run.record(run.history.train, record)
    run.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", items_s=f"{record['items_per_s']:.1f}")
    run.reset_since_log()


def run_evaluation(run: TrainingRun) -> None:
    """Evaluate on the validation data, record it, and update early stopping."""
    cfg, h = run.config, run.history
    if h.eval and h.eval[-1]["step"] == h.global_step:
        return  # already evaluated at this step
    metrics = evaluate(
        run.raw,
        run.val_data,
        num_docs=cfg.num_docs,
        generate=cfg.eval_generate,
        max_new_tokens=cfg.eval_max_new_tokens,
        decoding=cfg.eval_decoding,
        accelerator=None if fsdp.is_sharded(run.raw) else run.accelerator,
    )  # FSDP: all, in step
    set_train_modes(run.raw)  # evaluate restores modes itself; re-assert the training ones
    run.record(h.eval, {"type": "eval", "step": h.global_step, "epoch": run.epoch_float, **metrics})
    if h.best_val_loss is None or metrics["loss"] < h.best_val_loss - cfg.early_stopping_min_delta:
        h.best_val_loss, h.best_step, run.pos["bad_evals"] = metrics["loss"], h.global_step, 0
    else:
        run.pos["bad_evals"] += 1
    if cfg.early_stopping_patience is not None and run.pos["bad_evals"] >= cfg.early_stopping_patience:
        h.stop_reason = "early_stopping"


def trainer_state(run: TrainingRun) -> dict[str, Any]:
    """The JSON-ready loop state a checkpoint stores (see `checkpoint.save_checkpoint`)."""
    return {
        "global_step": run.history.global_step,
        "position": dict(run.pos),
        "sampler": run.sampler.state_dict() if hasattr(run.sampler, "state_dict") else None,
        "batches_per_epoch": run.batches_per_epoch,
        "num_processes": run.accelerator.num_processes,
        "history": run.history.to_dict(),
        "config": to_dict(run.config),
        "run_id": run.run_id,
        "rag_config": to_dict(run.rag_config) if run.rag_config is not None else None,
    }


def _refreshed_index(run: TrainingRun):
    """The model's index when a refresh has replaced it during this run (a checkpoint keeps it), else None."""
    if not any(r.get("swapped") for r in run.history.refreshes):
        return None
    return getattr(getattr(run.raw, "retriever", None), "index", None)


def save_now(run: TrainingRun) -> None:
    """Write a checkpoint (main process; every process contributes its RNG state), keep this run's last N.

    `history.last_checkpoint` names it only once it is written (it records itself), and rotation
    only removes older checkpoints of the same run, so it always exists on disk.
    """
    from accelerate.utils import gather_object

    acc = run.accelerator
    rng = [ckpt.capture_rng_state()]
    if acc.num_processes > 1:
        rng = gather_object(rng)
    output_dir = run.output_dir
    assert output_dir is not None  # TrainConfig refuses save_steps without output_dir
    path = output_dir / ckpt.checkpoint_name(run.history.global_step)
    shards = fsdp.stage_shards(run, path.name) if fsdp.is_sharded(run.raw) else None  # every process
    previous, run.history.last_checkpoint = run.history.last_checkpoint, str(path)
    if run.main:
        try:
            ckpt.save_checkpoint(
                path,
                model=run.raw,
                optimizer=run.optimizer,
                scheduler=run.scheduler,
                trainer_state=trainer_state(run),
                rng_states=rng,
                scaler=acc.scaler,
                run_id=run.run_id,
                identity=run.identity,
                index=_refreshed_index(run),
                shards=shards,
            )
            if shards is not None:
                shards[0].rmdir()
        except BaseException:
            run.history.last_checkpoint = previous
            raise
        ckpt.rotate_checkpoints(output_dir, run.config.save_total_limit, run.run_id)
    acc.wait_for_everyone()


def summary(run: TrainingRun) -> dict[str, Any]:
    """Name -> value rows of the final summary table."""
    h = run.history
    rows = {
        "stop_reason": h.stop_reason,
        "global_step": h.global_step,
        "epochs_completed": h.epochs_completed,
        "skipped_steps": h.skipped_steps,
        "train_loss": h.train[-1]["loss"] if h.train else None,
        "best_val_loss": h.best_val_loss,
        "best_step": h.best_step,
    }
    if h.eval:
        rows.update({f"val_{k}": v for k, v in h.eval[-1].items() if k not in ("type", "step", "epoch")})
    rows.update(time_s=round(time.perf_counter() - run.started, 1), last_checkpoint=h.last_checkpoint)
    return rows
