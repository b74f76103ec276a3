"""Sharded training with FSDP2 (torch `fully_shard`) and sharded, pickle-free checkpoints.

Boundary: turns `TrainConfig.fsdp` into sharded modules, and reads and writes the
sharded parts of a checkpoint. The loop calls `shard_model` before it builds the
optimiser and `prepare` instead of `accelerator.prepare(model, ...)`; `run.save_now`
and `setup._load` hand over to `save_checkpoint` / `load_checkpoint` when the model is
sharded. Nothing here trains.

Wrapping (the auto-wrap policy): every sub-module of the generator and of the
question encoder whose class name is in `TrainConfig.fsdp_wrap_classes` (default:
each Hugging Face model's own `_no_split_modules`, e.g. ``LlamaDecoderLayer`` and
``BertLayer``) becomes its own FSDP unit, then the generator and the question encoder
each become one more unit holding the rest (embeddings, final norm, LM head, pooler).
The RAGSequence itself, the retriever and a separate (frozen) context encoder stay
as they are. `mixed_precision="bf16"` becomes FSDP's `MixedPrecisionPolicy`
(bf16 compute, fp32 gradient reduction).

Why not accelerate's own FSDP plugin: accelerate 1.15 only turns FSDP on for GPU
launches (on CPU `Accelerator(cpu=True, fsdp_plugin=...)` stays MULTI_CPU and drops
the plugin), so ContextFlow calls `fully_shard` itself on every device, and accelerate
keeps doing data sharding, gradient accumulation and clipping. A launch with
accelerate's FSDP settings (``ACCELERATE_USE_FSDP=true``, from ``accelerate launch
--use_fsdp`` or a config file) and no `TrainConfig.fsdp` is read by `plan_from_env`.

A sharded checkpoint keeps every file of an ordinary one (see `training.checkpoint`)
except ``model.safetensors``/``optimizer.safetensors``: the trainable parameters and
the optimiser's tensors are written by `torch.distributed.checkpoint` with its
Hugging Face safetensors writer, one ``shard-0000R-model-00001-of-00001.safetensors``
per process, each holding that process's pieces and their offsets (no pickle). Any
number of processes can resume it (DCP re-shards on load), and
`consolidate_checkpoint` turns it into the usual single-folder model in one process.

Example:
    ``torchrun --nproc_per_node 2 train.py`` with
    ``train_rag(rag, loader, config=TrainConfig(fsdp="full_shard", output_dir="runs/x"))``,
    then ``consolidate_checkpoint("runs/x/checkpoint-00000100", build_rag(), "models/x")``.
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from contextflow_core.config import TrainConfig

if TYPE_CHECKING:
    from contextflow_core.rag import RAGSequence

__all__ = [
    "FsdpPlan",
    "consolidate_checkpoint",
    "full_state_dict",
    "identity",
    "is_sharded",
    "load_sharded_weights",
    "plan",
    "plan_from_env",
    "prepare",
    "read_shards",
    "shard_model",
    "shard_reader",
    "sharded_state",
    "stage_shards",
    "wrap_class_names",
    "write_shards",
]

#: TrainConfig.fsdp -> reshard_after_forward.
RESHARD_AFTER_FORWARD = {"full_shard": True, "shard_grad_op": False}
#: accelerate's FSDP_SHARDING_STRATEGY / FSDP_RESHARD_AFTER_FORWARD values -> TrainConfig.fsdp.
_ACCELERATE_STRATEGIES = {
    "1": "full_shard",
    "FULL_SHARD": "full_shard",
    "TRUE": "full_shard",
    "2": "shard_grad_op",
    "SHARD_GRAD_OP": "shard_grad_op",
    "FALSE": "shard_grad_op",
}
SHARD_PREFIX = "shard-"
PathLike = str | Path
_IDENTITIES: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FsdpPlan:
    """How the model is sharded.

    Attributes:
        mode: "full_shard" or "shard_grad_op" (see `TrainConfig.fsdp`).
        wrap_classes: Class names that become FSDP units; None: each model's `_no_split_modules`.
        source: Where the plan came from ("TrainConfig.fsdp" or "accelerate environment").
    """

    mode: str
    wrap_classes: tuple[str, ...] | None = None
    source: str = "TrainConfig.fsdp"


def plan_from_env(environ: dict | None = None) -> FsdpPlan | None:
    """The FSDP plan of an `accelerate launch` FSDP configuration (environment variables), or None.

    Reads ``ACCELERATE_USE_FSDP``, ``FSDP_RESHARD_AFTER_FORWARD`` (with ``FSDP_VERSION=2``) or
    ``FSDP_SHARDING_STRATEGY`` (FSDP1 names), and ``FSDP_TRANSFORMER_CLS_TO_WRAP`` (comma-separated
    class names). ContextFlow shards with FSDP2 either way.

    Raises:
        ValueError: A sharding strategy ContextFlow does not run (e.g. NO_SHARD, HYBRID_SHARD).
    """
    env = os.environ if environ is None else environ
    if str(env.get("ACCELERATE_USE_FSDP", "false")).lower() != "true":
        return None
    keys = ("FSDP_RESHARD_AFTER_FORWARD", "FSDP_SHARDING_STRATEGY")  # FSDP2 reads the first, FSDP1 the second
    keys = keys if str(env.get("FSDP_VERSION", "1")) == "2" else keys[::-1]
    raw = env.get(keys[0]) or env.get(keys[1]) or "FULL_SHARD"
    mode = _ACCELERATE_STRATEGIES.get(str(raw).upper())
    if mode is None:
        raise ValueError(
            f"FSDP_SHARDING_STRATEGY / FSDP_RESHARD_AFTER_FORWARD: expected FULL_SHARD or "
            f"SHARD_GRAD_OP (true/false), got {raw!r}; set TrainConfig(fsdp=...) instead"
        )
    names = [n.strip() for n in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if n.strip()]
    return FsdpPlan(mode, tuple(names) or None, "accelerate environment")


def plan(config: TrainConfig, environ: dict | None = None) -> FsdpPlan | None:
    """The FSDP plan of `config` (or, when `config.fsdp` is None, of the accelerate environment)."""
    if config.fsdp is not None:
        names = tuple(config.fsdp_wrap_classes) if config.fsdp_wrap_classes else None
        return FsdpPlan(config.fsdp, names)
    found = plan_from_env(environ)
    if found is not None and (config.mixed_precision == "fp16" or config.refresh_index_steps):
        raise ValueError(
            "accelerate launch asks for FSDP, which does not run with mixed_precision='fp16' or "
            "refresh_index_steps; change TrainConfig or launch without --use_fsdp"
        )
    return found


def wrap_class_names(module: nn.Module, wanted: tuple[str, ...] | None = None) -> set[str]:
    """Class names of `module`'s sub-modules that become FSDP units.

    Args:
        module: The generator or the question encoder (a TextEncoder wrapping an HF model is searched inside).
        wanted: Explicit class names; None: the `_no_split_modules` of every HF model inside `module`.
    """
    if wanted is not None:
        return set(wanted)
    names: set[str] = set()
    for sub in module.modules():
        names.update(getattr(sub, "_no_split_modules", None) or [])
    return names


def _units(module: nn.Module, names: set[str]) -> list[nn.Module]:
    return [sub for sub in module.modules() if type(sub).__name__ in names and sub is not module]


def _sides(model: RAGSequence) -> list[tuple[str, nn.Module]]:
    sides: list[tuple[str, nn.Module]] = [("generator", model.generator), ("question_encoder", model.question_encoder)]
    ctx = getattr(model, "_context_encoder", None)
    if ctx is not None and any(p.requires_grad for p in ctx.parameters()):
        sides.append(("context_encoder", ctx))
    return sides


def shard_model(model: RAGSequence, config: TrainConfig, accelerator: Any) -> bool:
    """Apply `fully_shard` to the model's generator and question encoder, in place (before the optimiser).

    Returns:
        Whether the model was sharded (False: no FSDP plan, nothing changed).

    Raises:
        ValueError: FSDP asked for outside a distributed launch, or `fsdp_wrap_classes`
            names no sub-module of the generator or question encoder.
    """
    found = plan(config)
    if found is None:
        return False
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise ValueError(
            f"{found.source}: FSDP shards over the processes of a distributed launch, but this "
            "process is not part of one; run under `torchrun --nproc_per_node N` or "
            "`accelerate launch`, or set fsdp=None"
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if config.mixed_precision == "bf16"
        else MixedPrecisionPolicy()
    )
    kwargs: dict[str, Any] = dict(mesh=mesh, reshard_after_forward=RESHARD_AFTER_FORWARD[found.mode], mp_policy=policy)
    from contextflow_core.training.resume import model_identity

    _IDENTITIES[model] = model_identity(model)  # of the full weights: the same on every process
    model.to(accelerator.device)
    wrapped = 0
    for _, side in _sides(model):
        for unit in _units(side, wrap_class_names(side, found.wrap_classes)):
            fully_shard(unit, **kwargs)
            wrapped += 1
        fully_shard(side, **kwargs)
    if found.wrap_classes and not wrapped:
        raise ValueError(
            f"fsdp_wrap_classes: expected class names of layers inside the generator or question "
            f"encoder, got {list(found.wrap_classes)}, which match none"
        )
    return True


def is_sharded(model: nn.Module) -> bool:
    """Whether any sub-module of `model` is an FSDP2 unit."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def prepare(accelerator: Any, model: nn.Module, optimizer: Any, scheduler: Any, sharded: bool) -> tuple:
    """`accelerator.prepare` for the model, optimiser and scheduler; a sharded model is not wrapped again."""
    if not sharded:
        return accelerator.prepare(model, optimizer, scheduler)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    return model, optimizer, scheduler


def identity(model: nn.Module) -> dict[str, Any]:
    """`training.resume.model_identity` of `model`; for a sharded model, the one taken just before sharding."""
    from contextflow_core.training.resume import model_identity

    if model in _IDENTITIES and is_sharded(model):
        return _IDENTITIES[model]
    return model_identity(model)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `model` as a full tensor on every process (collective when sharded)."""
    if not is_sharded(model):
        return dict(model.state_dict())
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return cast("dict[str, torch.Tensor]", get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)))


# ---------------------------------------------------------------------------- checkpoints


def _state_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True, ignore_frozen_params=True, **extra)


def _raw_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def sharded_state(model: nn.Module, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, rest): the trainable parameters ("model.<name>") and optimiser tensors ("optim.<key>")
    as (D)Tensors for `torch.distributed.checkpoint`, and the optimiser's non-tensor entries (JSON)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    params, optim = get_state_dict(model, _raw_optimizer(optimizer), options=_state_options())
    tensors: dict[str, Any] = {f"model.{k}": v for k, v in params.items()}
    tensors.update({f"optim.{k}": v for k, v in optim.items() if torch.is_tensor(v)})
    rest = {k: list(v) if isinstance(v, tuple) else v for k, v in optim.items() if not torch.is_tensor(v)}
    return tensors, rest


def stage_shards(run: Any, name: str) -> tuple[Path, dict[str, Any]]:
    """Every process writes its shard of the run's checkpoint `name` into a hidden staging folder.

    Collective. Returns (staging folder, the optimiser's JSON part) for
    `checkpoint.save_checkpoint(shards=...)`, which moves the files into the checkpoint.
    A staging folder left by a crash is a ``.checkpoint-*`` folder: removed when a run starts.
    """
    import shutil

    from accelerate.utils import broadcast_object_list

    staging = run.output_dir / f".{name}.shards"
    if run.main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    staging = Path(broadcast_object_list([str(staging)], from_process=0)[0])
    rest = write_shards(staging, run.raw, run.optimizer)
    run.accelerator.wait_for_everyone()
    return staging, rest


def shard_reader(run: Any):
    """The `read_shards` callback of `checkpoint.load_checkpoint` for a sharded run, else None."""
    if not is_sharded(run.raw):
        return None
    return lambda directory, rest: read_shards(directory, run.raw, run.optimizer, rest)


def write_shards(directory: Path, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Every process writes its shard into `directory` (collective); returns the optimiser's JSON part."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    tensors, rest = sharded_state(model, optimizer)
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(directory), save_distributed=True))
    return rest


def read_shards(directory: Path, model: nn.Module, optimizer: Any, rest: dict[str, Any]) -> None:
    """Load a sharded checkpoint's parameters and optimiser state into the sharded `model` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_state_dict

    tensors, _ = sharded_state(model, optimizer)  # templates with this run's sharding (DCP re-shards)
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(directory)))
    params = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k[len("optim.") :]: v for k, v in tensors.items() if k.startswith("optim.")}
    optim.update({k: tuple(v) if k.endswith(".betas") else v for k, v in rest.items()})
    set_state_dict(
        model,
        _raw_optimizer(optimizer),
        model_state_dict=params,
        optim_state_dict=optim,
        options=_state_options(strict=False),
    )


@torch.no_grad()
def load_sharded_weights(model: nn.Module, checkpoint_dir: PathLike) -> list[str]:
    """Copy a sharded checkpoint's trainable parameters into an unsharded `model` (one process).

    Args:
        model: The same RAGSequence (same train mode and LoRA settings) the run trained, unsharded.
        checkpoint_dir: A checkpoint folder written by a run with `TrainConfig.fsdp`.

    Returns:
        The names of the parameters loaded.

    Raises:
        ValueError: Not a sharded checkpoint, or a parameter of the model is not in it.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    directory = Path(checkpoint_dir)
    names = _checkpoint_param_names(directory)
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(
            f"model: expected the model the run trained, with parameters {missing[:3]} "
            f"(from {directory}), got a model without them; build it the same way "
            "(same generator, encoder and LoRA settings)"
        )
    targets = {f"model.{n}": torch.empty(params[n].shape, dtype=params[n].dtype) for n in names}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(targets, storage_reader=HuggingFaceStorageReader(str(directory)), no_dist=True)
    for n in names:
        params[n].copy_(targets[f"model.{n}"])
    return names


def _checkpoint_param_names(directory: Path) -> list[str]:
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(
            f"checkpoint_dir: expected a ContextFlow checkpoint folder, got {directory} (no manifest.json)"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not manifest.get("sharded"):
        raise ValueError(
            f"checkpoint_dir: expected a sharded (TrainConfig.fsdp) checkpoint, got {directory}, "
            "an unsharded one; load it with training.checkpoint.load_checkpoint"
        )
    return [name for name, _ in manifest["fingerprint"]]


def consolidate_checkpoint(checkpoint_dir: PathLike, model: RAGSequence, output_dir: PathLike) -> Path:
    """Turn a sharded checkpoint into the usual single-folder model (`model.save_pretrained(output_dir)`).

    Runs in one process, no process group needed.

    Args:
        checkpoint_dir: A checkpoint folder written by a run with `TrainConfig.fsdp`.
        model: A fresh, unsharded RAGSequence built as the run's (same models, same train
            mode / LoRA settings); its trainable parameters are overwritten.
        output_dir: Where `save_pretrained` writes; `RAGSequence.from_pretrained` loads it.

    Returns:
        `output_dir` as a Path.
    """
    from contextflow_core.config import from_dict
    from contextflow_core.training.optim import (
        apply_train_mode,
        capture_flags,
        restore_flags,
    )

    _checkpoint_param_names(Path(checkpoint_dir))
    state = json.loads((Path(checkpoint_dir) / "trainer_state.json").read_text(encoding="utf-8"))
    flags = capture_flags(model)
    apply_train_mode(model, from_dict(TrainConfig, state["config"]))  # LoRA wrapping, which side trained
    try:
        load_sharded_weights(model, checkpoint_dir)
    finally:
        restore_flags(model, flags)
    model.save_pretrained(output_dir)
    return Path(output_dir)
