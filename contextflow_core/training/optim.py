"""What trains and how: train modes, LoRA on the generator, parameter groups, schedule.

Boundary: sets `requires_grad` and train/eval modes, wraps the generator with
peft when asked, and builds the AdamW optimiser and learning-rate schedule. No
data, no I/O.

Example:
    >>> apply_train_mode(rag, TrainConfig(train_mode="generator"))   # doctest: +SKIP
    >>> optimizer = build_optimizer(rag, TrainConfig())                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from contextflow_core.config import MODE_SIDES, OBJECTIVE_TRAIN_MODES, TrainConfig
from contextflow_core.modes import restore_modes, restore_requires_grad, snapshot_modes, snapshot_requires_grad
from contextflow_core.optional_deps import import_peft

if TYPE_CHECKING:
    from contextflow_core.rag import RAGSequence

SIDES = ("question_encoder", "generator")

__all__ = [
    "apply_train_mode",
    "build_optimizer",
    "build_scheduler",
    "capture_flags",
    "maybe_add_lora",
    "param_groups",
    "restore_flags",
    "set_train_modes",
    "set_trainable",
    "side_of",
    "trainable_parameters",
]


def side_of(name: str) -> str:
    """ "question_encoder", "generator" or "other" for a RAGSequence parameter name."""
    head = name.split(".", 1)[0]
    if head == "_context_encoder":  # a separate passage encoder belongs to the retriever side
        return "question_encoder"
    return head if head in SIDES else "other"


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter for every parameter with `requires_grad`, in module order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "base_model")


def _tuner_layers(module: nn.Module) -> list[Any]:
    """The peft adapter layers (LoRA, ...) and modules-to-save wrappers inside `module`."""
    if "peft" not in sys.modules:  # no peft layer can exist before peft is imported: do not import it here
        return []
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import ModulesToSaveWrapper
    except ImportError:  # pragma: no cover - peft is an extra
        return []
    return [m for m in module.modules() if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))]


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Set `requires_grad` on every parameter of `module`, explicitly.

    False freezes everything. True on a module with peft adapters (LoRA on the
    generator or on a question encoder's body) makes the active adapters
    trainable and keeps every base weight frozen; on a plain module, all weights.
    """
    module.requires_grad_(False)
    if not trainable:
        return
    layers = _tuner_layers(module)
    if not layers:
        module.requires_grad_(True)
        return
    for layer in layers:  # peft's own switch: active adapters trainable, the rest frozen
        names = list(layer.active_adapters)
        layer.set_adapter(names[0] if len(names) == 1 else names)


def maybe_add_lora(model: RAGSequence, config: TrainConfig) -> None:
    """Wrap `model.generator` in a peft LoRA model when `config.generator_lora` asks and it has none.

    On the embedded generator the reader adapter is already merged into the weights
    (`default_generator(reader=True)`), so the new LoRA trains on top of base+reader and the
    merged weights stay frozen with the rest of the base; a save pins that base by its hash.
    """
    if not config.generator_lora or _is_peft(model.generator):
        return
    from contextflow_core.models.peft_utils import add_lora

    import_peft("generator_lora=True")
    add_lora(
        model,
        generator=True,
        question_encoder=False,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        generator_targets=config.lora_target_modules,
    )


def _sides(model: RAGSequence, config: TrainConfig, objective: str) -> tuple[bool, bool]:
    """(train question encoder, train generator): the train mode, narrowed to the sides the objective trains."""
    if hasattr(model, "check_objective"):
        model.check_objective(objective)  # e.g. an objective this model class does not implement
    assert config.train_mode is not None  # filled in by TrainConfig.__post_init__
    mode_enc, mode_gen = MODE_SIDES[config.train_mode]
    obj_enc, obj_gen = MODE_SIDES[OBJECTIVE_TRAIN_MODES[objective]]
    train_encoder, train_generator = mode_enc and obj_enc, mode_gen and obj_gen
    if config.generator_lora and not train_generator:
        raise ValueError(
            f"generator_lora: True, but objective={objective!r} with train_mode={config.train_mode!r} "
            "trains no generator; set generator_lora=False or choose an objective that trains it"
        )
    return train_encoder, train_generator


def apply_train_mode(model: RAGSequence, config: TrainConfig) -> None:
    """Set exactly which parameters train, and the model's `freeze_*` flags to match.

    "joint" trains both sides, "generator" only the generator, "retriever" only the
    question encoder, narrowed to the sides the objective (`config.objective`, else the
    model's) gives a gradient to. Every side is set explicitly (`set_trainable`): a side
    with peft adapters trains its adapters only (base frozen), a plain side all its
    weights, a frozen side nothing. With `generator_lora` the generator is first wrapped
    in a peft LoRA model (an existing peft generator is reused). Modes: see `set_train_modes`.

    Raises:
        ValueError: An objective the model does not implement, or nothing would be trained.
    """
    objective = config.objective or model.config.objective
    train_encoder, train_generator = _sides(model, config, objective)
    if config.gradient_checkpointing and train_generator:
        generator: Any = model.generator  # a HF PreTrainedModel, possibly peft-wrapped
        generator.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train_generator:
        maybe_add_lora(model, config)
    set_trainable(model.generator, train_generator)
    set_trainable(model.question_encoder, train_encoder)
    context = getattr(model, "_context_encoder", None)
    if context is not None:
        set_trainable(context, train_encoder and model.config.train_context_encoder)
    model.config = dataclasses.replace(
        model.config, freeze_retriever=not train_encoder, freeze_generator=not train_generator, objective=objective
    )
    if not trainable_parameters(model):
        raise ValueError(f"train_mode: {config.train_mode!r} leaves no trainable parameter in the model")


def set_train_modes(model: RAGSequence) -> None:
    """Trained sides in `train()`, frozen sides in `eval()` (no dropout where nothing learns).

    Follows `model.config.freeze_*` as set by `apply_train_mode`: e.g. the generator
    that scores LSR targets, or the question encoder under train_mode="generator",
    runs without dropout.
    """
    model.train()
    if model.config.freeze_generator:
        model.generator.eval()
    if model.config.freeze_retriever:
        model.question_encoder.eval()
    context = getattr(model, "_context_encoder", None)
    if context is not None and (model.config.freeze_retriever or not model.config.train_context_encoder):
        context.eval()


def capture_flags(model: RAGSequence) -> dict[str, Any]:
    """What `train_rag` changes on the model: its config, every module's mode, every parameter's `requires_grad`."""
    return {
        "config": model.config,
        "modes": snapshot_modes(model),
        "requires_grad": snapshot_requires_grad(model),
        "generator": model.generator,
    }


def restore_flags(model: RAGSequence, state: dict[str, Any]) -> None:
    """Put back what `capture_flags` recorded.

    A generator wrapped in LoRA since (generator_lora) keeps peft's trainable set
    (adapters on, base frozen); its new layers take the old generator's mode.
    """
    model.config = state["config"]
    restore_requires_grad(state["requires_grad"])
    if model.generator is not state["generator"]:
        set_trainable(model.generator, True)
    restore_modes(
        state["modes"], default_roots=(model.generator,), default=state["modes"].get(state["generator"], model.training)
    )


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups per side (own learning rate), with and without weight decay.

    Biases and norm weights (tensors with fewer than 2 dimensions) get no decay.
    """
    rates = {
        "question_encoder": config.lr_question_encoder,
        "generator": config.lr_generator,
        "other": config.learning_rate,
    }
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in trainable_parameters(model).items():
        buckets.setdefault((side_of(name), p.ndim >= 2), []).append(p)
    groups = []
    for (side, decay), params in buckets.items():
        groups.append(
            {
                "params": params,
                "lr": rates[side],
                "name": side if decay else f"{side}/no_decay",
                "weight_decay": config.weight_decay if decay else 0.0,
            }
        )
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups(model, config)`."""
    return torch.optim.AdamW(param_groups(model, config), lr=config.learning_rate)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, num_training_steps: int):
    """`transformers.get_scheduler(config.scheduler)` with ceil(warmup_ratio * steps) warm-up steps."""
    from contextflow_core.optional_deps import bitsandbytes_hidden

    with bitsandbytes_hidden():  # transformers.optimization imports peft, and peft bitsandbytes
        from transformers import get_scheduler

    warmup = math.ceil(config.warmup_ratio * num_training_steps)
    return get_scheduler(config.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=num_training_steps)
