"""What trains and how: train modes, LoRA on the generator, parameter groups, schedule.

Boundary: sets `requires_grad`, wraps the generator with peft when asked, and
builds the AdamW optimiser and learning-rate schedule. No data, no I/O.

Example:
    >>> apply_train_mode(rag, TrainConfig(train_mode="generator"))   # doctest: +SKIP
    >>> optimizer = build_optimizer(rag, TrainConfig())                # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from contextflow_core.config import TrainConfig

SIDES = ("question_encoder", "generator")

__all__ = ["apply_train_mode", "build_optimizer", "build_scheduler", "param_groups", "side_of", "trainable_parameters"]


def side_of(name: str) -> str:
    """"question_encoder", "generator" or "other" for a RAGSequence parameter name."""
    head = name.split(".", 1)[0]
    if head == "_context_encoder":  # a separate passage encoder belongs to the retriever side
        return "question_encoder"
    return head if head in SIDES else "other"


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter for every parameter with `requires_grad`, in module order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "base_model")


def _add_generator_lora(model: nn.Module, config: TrainConfig) -> None:
    """Wrap `model.generator` in a peft LoRA model (base weights frozen, adapters trainable)."""
    from contextflow_core.models.peft_utils import add_lora

    try:
        import peft  # noqa: F401
    except ImportError as e:  # pragma: no cover - peft is an extra
        raise ImportError("generator_lora=True needs peft: pip install 'contextflow[peft]'") from e
    add_lora(model, generator=True, question_encoder=False, r=config.lora_r, alpha=config.lora_alpha,
             dropout=config.lora_dropout, generator_targets=config.lora_target_modules)


def apply_train_mode(model: nn.Module, config: TrainConfig) -> None:
    """Freeze the side `config.train_mode` does not train and unfreeze the other.

    "joint" trains both sides, "generator" only the generator, "retriever" only the
    question encoder. With `generator_lora` the generator is replaced by a peft model
    whose adapters are the only trainable generator weights (an existing peft
    generator is reused, and keeps its own trainable set). `model.config`'s
    `freeze_*` flags are set to match so frozen sides get no backward pass.

    Raises:
        ValueError: Nothing would be trained.
    """
    train_encoder = config.train_mode in ("joint", "retriever")
    train_generator = config.train_mode in ("joint", "generator")
    if config.gradient_checkpointing and train_generator:
        model.generator.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train_generator and config.generator_lora and not _is_peft(model.generator):
        _add_generator_lora(model, config)
    if not (train_generator and _is_peft(model.generator)):
        model.generator.requires_grad_(train_generator)
    model.question_encoder.requires_grad_(train_encoder)
    if getattr(model, "_context_encoder", None) is not None:
        model._context_encoder.requires_grad_(train_encoder and model.config.train_context_encoder)
    objective = config.objective or model.config.objective
    model.config = dataclasses.replace(
        model.config, freeze_retriever=not train_encoder, freeze_generator=not train_generator, objective=objective
    )
    if not trainable_parameters(model):
        raise ValueError(f"train_mode: {config.train_mode!r} leaves no trainable parameter in the model")


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups per side (own learning rate), with and without weight decay.

    Biases and norm weights (tensors with fewer than 2 dimensions) get no decay.
    """
    rates = {"question_encoder": config.lr_question_encoder, "generator": config.lr_generator,
             "other": config.learning_rate}
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in trainable_parameters(model).items():
        buckets.setdefault((side_of(name), p.ndim >= 2), []).append(p)
    groups = []
    for (side, decay), params in buckets.items():
        groups.append({"params": params, "lr": rates[side], "name": side if decay else f"{side}/no_decay",
                       "weight_decay": config.weight_decay if decay else 0.0})
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups(model, config)`."""
    return torch.optim.AdamW(param_groups(model, config), lr=config.learning_rate)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, num_training_steps: int):
    """`transformers.get_scheduler(config.scheduler)` with ceil(warmup_ratio * steps) warm-up steps."""
    from transformers import get_scheduler

    warmup = math.ceil(config.warmup_ratio * num_training_steps)
    return get_scheduler(config.scheduler, optimizer, num_warmup_steps=warmup,
                         num_training_steps=num_training_steps)
