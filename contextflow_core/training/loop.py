r"""train_rag: joint training of a RAGSequence on question/answer pairs (accelerate underneath).

The loss is the RAG-Sequence marginal NLL of `RAGSequence.forward`,
L = -(1/B) sum_m logsumexp_k [log p_eta(z_k|x_m) + log p_theta(y_m|f(x_m, z_k))],
so the retriever learns which passages help the generator, without retrieval labels.

The function reads top to bottom: setup (config, seeds, train mode, accelerator,
optimiser, schedule, resume, records) -> train (epochs -> micro-batches ->
optimiser steps -> log / evaluate / checkpoint at step boundaries) -> cleanup
(restore the model's flags, plot, summary). Only this module and the CLI print.

One `accelerate.Accelerator` handles devices, mixed precision, gradient
accumulation and DDP; the forward goes through the (possibly DDP-wrapped) model,
evaluation and checkpoints use the unwrapped one.

Example:
    >>> from contextflow.training import train_rag
    >>> history = train_rag(rag, make_dataloader(train, batch_size=4), make_dataloader(val, shuffle=False),
    ...                     config=TrainConfig(num_epochs=2, output_dir="runs/demo"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings

import torch
from torch.utils.data import DataLoader

from contextflow_core.config import TrainConfig
from contextflow_core.retrieval.checks import NonFiniteEmbeddings
from contextflow_core.retrieval.refresh import IndexRefreshError
from contextflow_core.store_rag import check_store_training
from contextflow_core.training import fsdp
from contextflow_core.training.data import normalize_batch
from contextflow_core.training.optim import (
    apply_train_mode,
    build_optimizer,
    build_scheduler,
    capture_flags,
    restore_flags,
    set_train_modes,
)
from contextflow_core.training.report import TrainHistory, format_table, plot_history
from contextflow_core.training.resume import ResumePlan, plan_resume
from contextflow_core.training.run import TrainingRun, log_train, run_evaluation, save_now, summary
from contextflow_core.training.setup import (
    as_dataloader,
    begin_run,
    check_answer_lengths,
    check_inputs,
    fits,
    make_accelerator,
    open_records,
    resolve_config,
    warn_stale_index,
)
from contextflow_core.training.trackers import check_trackers, end_trackers, start_trackers

__all__ = ["train_rag"]


def train_rag(
    model,
    train_dataloader,
    val_dataloader=None,
    num_epochs: int | None = None,
    learning_rate: float | None = None,
    config: TrainConfig | None = None,
) -> TrainHistory:
    """Train `model` on the marginal likelihood of the answers; resumable from `config.output_dir`.

    Args:
        model: A RAGSequence. Trained in place; with `generator_lora` its generator
            becomes a peft model holding the adapters.
        train_dataloader: A DataLoader (e.g. `make_dataloader`) or list of batches; each
            batch a dict with "questions"/"question" and "answers"/"answer" lists.
        val_dataloader: Validation batches or QA examples (see `evaluate`); None: no evaluation.
        num_epochs: Overrides `config.num_epochs` (default 3).
        learning_rate: Overrides `config.learning_rate` (default 5e-5).
        config: A `TrainConfig` (or a dict of its fields).

    Returns:
        The `TrainHistory`: per-step and per-evaluation records, best validation loss, stop reason.

    Raises:
        ValueError: Empty train data, an answer too long for the generator's budget,
            settings that need a validation set without one, or a checkpoint of another model.
        RuntimeError: `config.max_nonfinite_steps` optimiser steps in a row had a
            non-finite loss, gradient or question/passage embeddings (each such step is
            skipped and counted in `history.skipped_steps`; the last good checkpoint is kept).
        IndexRefreshError: A background or inline index refresh failed (a RuntimeError
            raised at the next step boundary, from the refresh's own exception).
    """
    config = resolve_config(config, num_epochs, learning_rate)
    run = _setup(model, train_dataloader, val_dataloader, config)
    completed = False
    try:
        _train(run)
        completed = True
    finally:
        _cleanup(run, completed)
    return run.history


# ---------------------------------------------------------------------------- setup


def _setup(model, train_data, val_data, config: TrainConfig) -> TrainingRun:
    from accelerate.utils import set_seed

    check_inputs(model, val_data, config)
    loader = as_dataloader(train_data, "train_dataloader")
    plan = plan_resume(model, config)  # which checkpoint, which settings win (refusals come after the train mode)
    config = plan.config
    check_trackers(config)  # a report_to tracker that is not installed: refused before anything trains
    set_seed(config.seed)
    check_answer_lengths(model, loader)
    restore = capture_flags(model)  # config, module modes, requires_grad: all put back after the run
    if plan.rag_config is not None:  # resume_mismatch="checkpoint": the recorded RagConfig trains
        model.config = plan.rag_config
    warn_stale_index(model, config)
    apply_train_mode(model, config)
    try:
        check_store_training(model, config)  # over a vector store: refresh needs and refusals (store_rag)
        return _prepare(model, loader, val_data, config, restore, plan)
    except BaseException:
        restore_flags(model, restore)
        raise


def _prepare(model, loader: DataLoader, val_data, config: TrainConfig, restore: dict, plan: ResumePlan) -> TrainingRun:
    accelerator = make_accelerator(config)
    sampler = getattr(loader, "sampler", None)
    loader = accelerator.prepare(loader)
    per_epoch = math.ceil(len(loader) / config.gradient_accumulation_steps)
    total = per_epoch * config.num_epochs
    total = total if config.max_steps is None else min(total, config.max_steps)
    sharded = fsdp.shard_model(model, config, accelerator)  # TrainConfig.fsdp: in place, before the optimiser
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total * accelerator.num_processes)  # stepped once per process
    wrapped, optimizer, scheduler = fsdp.prepare(accelerator, model, optimizer, scheduler, sharded)
    run = TrainingRun(
        config,
        accelerator,
        wrapped,
        model,
        optimizer,
        scheduler,
        loader,
        sampler if hasattr(sampler, "set_epoch") else None,
        val_data,
        len(loader),
        total,
        restore,
    )
    if config.refresh_index_steps:  # a DocumentIndex rebuild, or an in-place store refresh (store_rag)
        from contextflow_core.store_rag import make_refresher

        run.refresher = make_refresher(model, config)
    begin_run(run, plan)
    open_records(run)
    start_trackers(accelerator, config, run.run_id)
    set_train_modes(model)  # trained sides train(), frozen sides eval()
    run.reset_since_log()
    return run


# ---------------------------------------------------------------------------- train


def _train(run: TrainingRun) -> None:
    for epoch in range(run.pos["epoch"], run.config.num_epochs):
        if run.history.stop_reason or run.steps_exhausted():
            break
        _run_epoch(run, epoch)
    if not run.history.stop_reason:
        run.history.stop_reason = "max_steps" if run.steps_exhausted() else "completed"
    if run.refresher is not None:  # swap in a rebuild still running, or raise its failure
        _refresh_index(run, start=False, wait=True)


def _epoch_loader(run: TrainingRun, epoch: int):
    from accelerate import skip_first_batches

    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    run.loader.set_epoch(epoch)
    done = run.pos["batches_in_epoch"]
    return skip_first_batches(run.loader, done) if done else run.loader


def _run_epoch(run: TrainingRun, epoch: int) -> None:
    for batch in _epoch_loader(run, epoch):
        run.pos["batches_in_epoch"] += 1
        with run.accelerator.accumulate(run.model):
            _micro_step(run, normalize_batch(batch), epoch)
        if not run.accelerator.sync_gradients:
            continue
        stepped = _optimizer_step(run, epoch)
        epoch_end = run.pos["batches_in_epoch"] >= run.batches_per_epoch
        if epoch_end:
            run.pos.update(epoch=epoch + 1, batches_in_epoch=0)
            run.history.epochs_completed = epoch + 1
        _at_boundary(run, stepped, epoch_end)
        if run.history.stop_reason:
            return


def _forward(run: TrainingRun, batch: dict, epoch: int):
    try:
        return run.model(questions=batch["questions"], answers=batch["answers"], num_docs=run.config.num_docs)
    except ValueError as e:
        if "max_length" not in str(e):
            raise
        bad = [
            i
            for i, (q, a) in enumerate(zip(batch["questions"], batch["answers"], strict=True))
            if not fits(run.raw, q, a)
        ]
        raise ValueError(
            f"train_dataloader: batch {run.pos['batches_in_epoch'] - 1} of epoch {epoch}, "
            f"example(s) {bad} of the batch: {e}"
        ) from e


def _all_finite(run: TrainingRun, loss: torch.Tensor | None) -> bool:
    """Whether every process's loss is finite (None: this process's embeddings were not)."""
    if loss is None:
        flag = torch.zeros(1, device=run.accelerator.device)
    else:
        flag = torch.isfinite(loss.detach()).float().reshape(1)
    if run.accelerator.num_processes > 1:  # every process must skip together, or DDP hangs
        flag = run.accelerator.reduce(flag, reduction="sum") / run.accelerator.num_processes
    return bool(flag.item() == 1.0)


def _micro_step(run: TrainingRun, batch: dict, epoch: int) -> None:
    try:
        loss = _forward(run, batch, epoch).loss
    except NonFiniteEmbeddings:  # NaN/inf question or passage embeddings: skipped like a non-finite loss
        loss, run.window["embeddings"] = None, 1
    if _all_finite(run, loss):
        run.accelerator.backward(loss)
        run.window["loss"] += float(loss.detach())
        run.window["batches"] += 1
    else:
        run.window["bad"] = 1
        run.raw.zero_grad(set_to_none=True)
    run.window["items"] += len(batch["questions"])


def _optimizer_step(run: TrainingRun, epoch: int) -> bool:
    """Clip, step, schedule; or skip the step when its loss or gradient was not finite."""
    acc, cfg = run.accelerator, run.config
    bad, run.grad_norm = bool(run.window["bad"]), None
    if not bad and cfg.max_grad_norm is not None:
        params = [p for p in run.raw.parameters() if p.requires_grad]
        run.grad_norm = float(acc.clip_grad_norm_(params, cfg.max_grad_norm))
        bad = not math.isfinite(run.grad_norm) and acc.scaler is None  # fp16: the scaler skips by itself
    if bad:
        embeddings = bool(run.window["embeddings"])
        run.optimizer.zero_grad(set_to_none=True)
        run.reset_window()
        _count_nonfinite(run, epoch, embeddings)
        return False
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.nonfinite_in_a_row = 0
    run.history.global_step += 1
    run.since_log["loss"] += run.window["loss"] / max(run.window["batches"], 1)
    run.since_log["steps"] += 1
    run.since_log["items"] += run.window["items"]
    run.reset_window()
    run.bar.update(1)
    return True


def _count_nonfinite(run: TrainingRun, epoch: int, embeddings: bool = False) -> None:
    run.nonfinite_in_a_row += 1
    run.history.skipped_steps += 1
    limit = run.config.max_nonfinite_steps
    what = "question or passage embeddings" if embeddings else "loss or gradient"
    warnings.warn(
        f"train_rag: non-finite {what} at step {run.history.global_step + 1} (epoch {epoch}); "
        f"optimizer step skipped ({run.nonfinite_in_a_row} in a row, limit {limit})",
        stacklevel=3,
    )
    if run.nonfinite_in_a_row >= limit:
        raise RuntimeError(
            f"train_rag: {run.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient "
            "(or embeddings) "
            f"(max_nonfinite_steps={limit}); stopped. Last good checkpoint: {run.history.last_checkpoint}. "
            "Lower learning_rate, set max_grad_norm, use mixed_precision='bf16' or 'no', or check the data"
        )


def _at_boundary(run: TrainingRun, stepped: bool, epoch_end: bool) -> None:
    """After an optimiser step (or a skipped one): log, evaluate, stop, checkpoint as due."""
    cfg, h = run.config, run.history
    final = (epoch_end and run.pos["epoch"] >= cfg.num_epochs) or run.steps_exhausted()

    def every(n: int | None) -> bool:
        return stepped and n is not None and h.global_step % n == 0

    if run.since_log["steps"] and (every(cfg.log_every) or final):
        log_train(run)
    if run.refresher is not None:
        _refresh_index(run, start=every(cfg.refresh_index_steps) and not final)
    paused = time.perf_counter()
    if run.val_data is not None and (every(cfg.eval_steps) or (epoch_end and cfg.eval_on_epoch_end) or final):
        run_evaluation(run)
    if not h.stop_reason and final:
        h.stop_reason = "max_steps" if run.steps_exhausted() and not epoch_end else "completed"
    if run.output_dir is not None and (every(cfg.save_steps) or (epoch_end and cfg.save_on_epoch_end) or h.stop_reason):
        save_now(run)
    run.since_log["time"] += time.perf_counter() - paused  # items/s counts training time only


def _refresh_index(run: TrainingRun, start: bool, wait: bool = False) -> None:
    """Start a rebuild when due, then swap in whichever rebuild is finished (recording its cost).

    Raises:
        IndexRefreshError: A rebuild failed (background or inline): the run stops with its error.
    """
    if start:
        run.refresher.start(run.history.global_step)
    record = run.refresher.swap_if_ready(run.history.global_step, wait=wait)
    if record is not None:
        run.record(run.history.refreshes, record)


# ---------------------------------------------------------------------------- cleanup


def _cleanup(run: TrainingRun, completed: bool) -> None:
    if run.bar is not None:
        run.bar.close()
    if run.refresher is not None:
        with contextlib.suppress(IndexRefreshError):  # training already failed: its own error propagates
            _refresh_index(run, start=False, wait=True)
    restore_flags(run.raw, run.restore)
    end_trackers(run.accelerator, run.config)  # flush event files, also after a failure
    run.accelerator.free_memory()
    if not (completed and run.main):
        return
    if run.config.plot and run.output_dir is not None:
        plot_history(run.history, run.output_dir / "training_curves.png")
    if run.config.progress:
        print(format_table(summary(run), title="training summary"))
