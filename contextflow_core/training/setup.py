"""Setup steps of `train_rag`: check inputs, build the accelerator, begin or resume the run, open the records.

Boundary: everything the loop needs before its first step. No printing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset

from contextflow_core.config import TrainConfig, from_dict, to_dict
from contextflow_core.io_utils import atomic_write_text
from contextflow_core.training import checkpoint as ckpt
from contextflow_core.training import fsdp
from contextflow_core.training.report import MetricsLog, TrainHistory
from contextflow_core.training.resume import ResumePlan, check_collisions, check_resume
from contextflow_core.training.run import TrainingRun
from contextflow_core.training.trackers import accelerator_kwargs
from contextflow_core.types import Passage

__all__ = [
    "as_dataloader",
    "begin_run",
    "check_answer_lengths",
    "check_inputs",
    "fits",
    "make_accelerator",
    "open_records",
    "resolve_config",
    "warn_stale_index",
]


def resolve_config(config, num_epochs: int | None, learning_rate: float | None) -> TrainConfig:
    """The TrainConfig to use: `config` (or defaults) with the seed-style keyword overrides.

    Raises:
        ValueError: A keyword and a non-default config value disagree.
    """
    passed = config is not None
    if isinstance(config, dict):
        config = from_dict(TrainConfig, config)
    config = config if passed else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig or a dict of its fields, got {type(config).__name__}")
    defaults = TrainConfig()
    overrides: dict[str, Any] = {}
    for name, value in (("num_epochs", num_epochs), ("learning_rate", learning_rate)):
        current = getattr(config, name)
        if value is None or value == current:
            continue
        if passed and current != getattr(defaults, name):
            raise ValueError(f"{name}: got {value!r} as an argument and {current!r} in config; give it in one place")
        overrides[name] = value
    return dataclasses.replace(config, **overrides) if overrides else config


def _identity(item):
    return item


def as_dataloader(data, name: str) -> DataLoader:
    """`data` as a non-empty sized DataLoader (a list of batches is wrapped, batches kept as they are)."""
    if isinstance(data, (list, tuple)):
        data = DataLoader(cast("Dataset", list(data)), batch_size=None, shuffle=False, collate_fn=_identity)
    if not isinstance(data, DataLoader):
        raise ValueError(f"{name}: expected a torch DataLoader or a list of batches, got {type(data).__name__}")
    try:
        size = len(data)
    except TypeError as e:
        raise ValueError(f"{name}: expected a dataloader with a length (map-style dataset), got one without") from e
    if size == 0:
        raise ValueError(f"{name}: expected at least one batch, got an empty dataloader")
    return data


def check_inputs(model, val_data, config: TrainConfig) -> None:
    """Reject a model that is not a RAGSequence and settings that need missing validation data."""
    for attr in ("question_encoder", "generator", "prompts", "retrieve"):
        if not hasattr(model, attr):
            raise TypeError(f"model: expected a RAGSequence, got {type(model).__name__} without .{attr}")
    if val_data is None:
        for name in ("eval_steps", "early_stopping_patience"):
            if getattr(config, name) is not None:
                raise ValueError(f"val_dataloader: {name}={getattr(config, name)!r} needs validation data, got None")


def fits(model, question: str, answer: str) -> bool:
    """Whether the prompt frame, `question` and `answer` fit the generator's token budget."""
    try:
        model.prompts.encode(question, Passage(id="-", text="-"), answer)
        return True
    except ValueError:
        return False


def check_answer_lengths(model, loader: DataLoader, slack: int = 16) -> None:
    """Fail before training when an example's question + answer exceed the prompt budget.

    Questions and answers are tokenized in one batch; only examples within `slack`
    tokens of the budget are checked exactly (that renders their full prompt frame).
    """
    examples = getattr(loader.dataset, "examples", None) or []
    if not examples:
        return
    prompts = model.prompts
    lengths = prompts.text_ids([e.question for e in examples] + [e.answer for e in examples])
    sizes = [len(q) + len(a) for q, a in zip(lengths[: len(examples)], lengths[len(examples) :], strict=True)]
    prefix, suffix = prompts.frame_ids(examples[0].question)
    overhead = len(prefix) + len(suffix) + 1 - len(lengths[0])  # frame without the question, plus EOS
    for i, ex in enumerate(examples):
        if sizes[i] + overhead + slack <= prompts.max_length:
            continue
        try:
            prompts.encode(ex.question, Passage(id="-", text="-"), ex.answer)
        except ValueError as e:
            raise ValueError(
                f"train_dataloader: example {i} (question {ex.question[:60]!r}) cannot be trained on: {e}"
            ) from e


def make_accelerator(config: TrainConfig):
    """An Accelerator for `config` (multi-process CPU under torchrun when there is no GPU)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    kwargs = dict(
        mixed_precision=config.mixed_precision,
        cpu=multi_cpu,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **accelerator_kwargs(config),
    )  # TrainConfig.report_to: log_with and the trackers' folder
    try:
        return Accelerator(**kwargs)
    except ValueError as e:  # another Accelerator fixed a different mixed precision in this process
        if "already been initialized" not in str(e):
            raise
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(**kwargs)


def warn_stale_index(model, config: TrainConfig) -> None:
    """Warn (once per `train_rag` call) when the context encoder trains but the index is never refreshed."""
    stored = getattr(model, "store", None) is not None  # over a store this is an error (store_rag)
    if getattr(model.config, "train_context_encoder", False) and not config.refresh_index_steps and not stored:
        warnings.warn(
            "train_rag: RagConfig(train_context_encoder=True) trains the context encoder, but "
            "TrainConfig.refresh_index_steps is None: the index keeps the embeddings of the encoder "
            "before training and goes stale (retrieval drifts from the trained encoder); set "
            "refresh_index_steps=N to rebuild it every N optimizer steps",
            stacklevel=4,
        )


def _shared_run_id(run: TrainingRun, run_id: str | None) -> str | None:
    """The main process's run id on every process."""
    if run.accelerator.num_processes == 1:
        return run_id
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([run_id], from_process=0)[0]


def begin_run(run: TrainingRun, plan: ResumePlan) -> None:
    """Fix the run id, refuse a mismatched checkpoint or a run that would overwrite another's, then resume.

    Raises:
        ValueError: See `resume.check_resume` and `resume.check_collisions`.
    """
    run.run_id = plan.run_id if plan.path is not None else _shared_run_id(run, plan.run_id)
    run.rag_config = run.restore["config"] if plan.rag_config is None else plan.rag_config  # before train-mode flags
    run.identity = fsdp.identity(run.raw)  # model_identity (sharded: taken before sharding)
    check_resume(plan, run.raw, run.identity)
    check_collisions(run.output_dir, run.run_id, int(plan.trainer_state.get("global_step") or 0), run.total_steps)
    if plan.path is not None:
        _load(run, plan.path)
    run.history.run_id, run.history.config = run.run_id, to_dict(run.config)
    run.history.rag_config = to_dict(run.rag_config)


def _load(run: TrainingRun, path: Path) -> None:
    """Load the checkpoint at `path` into the run (weights, optimiser, RNG, refreshed index, history)."""
    acc = run.accelerator
    state = ckpt.load_checkpoint(
        path,
        model=run.raw,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        scaler=acc.scaler,
        rank=acc.process_index,
        retriever=getattr(run.raw, "retriever", None),
        read_shards=fsdp.shard_reader(run),
    )
    run.pos = dict(state["position"])
    run.history = TrainHistory.from_dict(state["history"])
    if run.history.stop_reason != "early_stopping":
        run.history.stop_reason = ""  # more epochs or steps may have been asked for
    run.history.resumed_from = str(path)
    if state["batches_per_epoch"] != run.batches_per_epoch or state["num_processes"] != acc.num_processes:
        warnings.warn(
            f"resume: {path} was written with {state['batches_per_epoch']} batches per epoch on "
            f"{state['num_processes']} process(es), now {run.batches_per_epoch} on {acc.num_processes}; "
            "the data order will not match the interrupted run",
            stacklevel=3,
        )


def open_records(run: TrainingRun) -> None:
    """Prepare output_dir (config, metrics.jsonl replayed from the history) and the progress bar."""
    from tqdm.auto import tqdm

    if run.output_dir is not None and run.main:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temp_dirs(run.output_dir)
        atomic_write_text(run.output_dir / "train_config.json", json.dumps(to_dict(run.config), indent=2))
        run.log = MetricsLog(run.output_dir / "metrics.jsonl")
        run.log.reset(run.history.records)
    run.accelerator.wait_for_everyone()
    run.bar = tqdm(
        total=run.total_steps,
        initial=min(run.history.global_step, run.total_steps),
        unit="step",
        desc="training",
        disable=not (run.main and run.config.progress),
        dynamic_ncols=True,
    )
