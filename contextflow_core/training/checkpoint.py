"""Training checkpoints: atomic, checksummed, pickle-free, tied to the model they came from.

Boundary: reads and writes checkpoint folders. It knows the trainable
parameters, optimiser, scheduler and RNG states it is handed, not how training runs.

A checkpoint ``output_dir/checkpoint-00000042/`` holds:

- ``model.safetensors``: the trainable parameters only (LoRA adapters or full weights).
- ``optimizer.safetensors`` + ``optimizer.json``: `optimizer.state_dict()` with every
  tensor in safetensors and the rest (param groups, scalars) in JSON.
- ``scheduler.json``: the learning-rate scheduler state (and the fp16 grad scaler's).
- ``rng.safetensors`` + ``rng.json``: python, numpy, torch (and CUDA) RNG states, per process.
- ``trainer_state.json``: position in the data (epoch, batches consumed, global step,
  sampler seed/epoch), early-stopping state and the history so far.
- ``index.safetensors`` + ``index.json`` (only after an index refresh): the refreshed
  passage embeddings and their ids, so a resumed run searches the index the interrupted one did.
- ``manifest.json`` (written last): sha256 of every file, the model fingerprint (names and
  shapes of the trainable parameters), the run id, the write time (``saved_at``) and the
  run's identity (model digest, RagConfig, TrainConfig; see `training.resume`).

Runs: every `train_rag` run has an id recorded in its checkpoints. Rotation only deletes
checkpoints of the same run, and `latest_checkpoint` is the most recently written one.

The folder is built in a temporary sibling and renamed into place
(`io_utils.atomic_dir`), so a crash leaves the previous checkpoint untouched.

Example:
    >>> save_checkpoint(out / "checkpoint-00000010", model=rag, optimizer=opt, scheduler=sched,
    ...                 trainer_state=state, rng_states=[capture_rng_state()])   # doctest: +SKIP
    >>> state = load_checkpoint(latest_checkpoint(out), model=rag, optimizer=opt)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import safetensors.torch
import torch
from torch import nn

from contextflow_core.io_utils import atomic_dir, sha256_bytes
from contextflow_core.training.optim import trainable_parameters

FORMAT_VERSION = 1
KIND = "contextflow-training-checkpoint"
PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
PathLike = str | Path

__all__ = [
    "capture_rng_state",
    "checkpoint_info",
    "checkpoint_name",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "model_fingerprint",
    "read_records",
    "remove_stale_temp_dirs",
    "restore_rng_state",
    "rotate_checkpoints",
    "save_checkpoint",
]


# ---------------------------------------------------------------------------- names


def checkpoint_name(global_step: int) -> str:
    """Folder name of the checkpoint written after optimiser step `global_step`."""
    return f"{PREFIX}{global_step:08d}"


def list_checkpoints(output_dir: PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir` (a manifest is present), oldest first.

    Temporary folders of interrupted writes (hidden ``.checkpoint-*``) are ignored.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / MANIFEST).is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_info(path: PathLike) -> dict[str, Any]:
    """What a checkpoint's manifest says about its run: step, run_id, saved_at (cheap, unverified).

    Checkpoints written before run ids existed report ``run_id=None`` and ``saved_at=0.0``.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        manifest = {}
    step = manifest.get("global_step")
    match = _NAME.match(path.name)
    return {
        "path": path,
        "step": step if isinstance(step, int) else int(match.group(1)) if match else -1,
        "run_id": manifest.get("run_id"),
        "saved_at": float(manifest.get("saved_at") or 0.0),
    }


def latest_checkpoint(output_dir: PathLike) -> Path | None:
    """The most recently written complete checkpoint in `output_dir` (None when there is none).

    With several runs' checkpoints in the folder this is the newest run's latest: checkpoints are
    ordered by the time recorded in their manifest (``saved_at``), then by step; checkpoints
    written before that field existed count as oldest.
    """
    infos = [checkpoint_info(p) for p in list_checkpoints(output_dir)]
    return max(infos, key=lambda i: (i["saved_at"], i["step"]))["path"] if infos else None


def rotate_checkpoints(output_dir: PathLike, keep: int | None, run_id: str | None = None) -> list[Path]:
    """Delete the oldest checkpoints of run `run_id` so that at most `keep` of it remain; returns the deleted.

    Only checkpoints whose manifest records `run_id` are considered (None: those that record
    none), ordered by write time then step, so the one just written is always kept and other
    runs' checkpoints are never touched.
    """
    if keep is None:
        return []
    mine = [i for i in map(checkpoint_info, list_checkpoints(output_dir)) if i["run_id"] == run_id]
    mine.sort(key=lambda i: (i["saved_at"], i["step"]))
    doomed = [i["path"] for i in mine[: max(len(mine) - keep, 0)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def remove_stale_temp_dirs(output_dir: PathLike) -> list[Path]:
    """Delete leftovers of interrupted checkpoint writes (``.checkpoint-*`` temp/backup folders)."""
    root = Path(output_dir)
    stale = [p for p in root.glob(f".{PREFIX}*") if p.is_dir()] if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


# ---------------------------------------------------------------------------- fingerprint


def model_fingerprint(model: nn.Module) -> list[list]:
    """[name, shape] of every trainable parameter: what a checkpoint must match to load."""
    return [[name, list(p.shape)] for name, p in trainable_parameters(model).items()]


def check_fingerprint(directory: Path, saved: list, model: nn.Module) -> None:
    """Raise ValueError when `model`'s trainable parameters (names, shapes) differ from `saved`."""
    current = model_fingerprint(model)
    if saved == current:
        return
    saved_map, current_map = {n: s for n, s in saved}, {n: s for n, s in current}
    missing = [n for n in saved_map if n not in current_map]
    extra = [n for n in current_map if n not in saved_map]
    shapes = [
        f"{n}: {saved_map[n]} vs {current_map[n]}"
        for n in saved_map
        if n in current_map and saved_map[n] != current_map[n]
    ]
    detail = (
        "; ".join(
            part
            for part in (
                f"only in checkpoint: {missing[:3]}" if missing else "",
                f"only in model: {extra[:3]}" if extra else "",
                f"shape differs (checkpoint vs model): {shapes[:3]}" if shapes else "",
            )
            if part
        )
        or "parameter order differs"
    )
    raise ValueError(
        f"resume: checkpoint {directory} was written for another model: its {len(saved)} trainable "
        f"parameters do not match this model's {len(current)} ({detail}); use the same model and "
        "train_mode/LoRA settings, or a fresh output_dir"
    )


# ---------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA RNG states (tensors + JSON-ready parts)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    meta = {"python": [version, list(internal), gauss], "numpy": [name, int(pos), int(has_gauss), float(cached)]}
    return {"tensors": tensors, "meta": meta}


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = state["meta"]["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = state["meta"]["numpy"]
    np.random.set_state((name, state["tensors"]["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["tensors"]["torch"])
    cuda = [state["tensors"][k] for k in sorted(state["tensors"]) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------- optimizer


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    keys = {str(idx): list(entries) for idx, entries in state_dict["state"].items()}
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars, "keys": keys}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state = {}
    for idx, keys in meta["keys"].items():
        scalars = meta["scalars"].get(idx, {})
        state[int(idx)] = {k: scalars[k] if k in scalars else tensors[f"state.{idx}.{k}"] for k in keys}
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------- files


def _json_bytes(value: Any, what: str) -> bytes:
    try:
        return json.dumps(value, indent=1, allow_nan=True).encode("utf-8")
    except TypeError as e:
        raise TypeError(f"checkpoint: {what} holds a value JSON cannot store ({e})") from e


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write one checkpoint file; returns its manifest entry."""
    path.write_bytes(data)
    return {"sha256": sha256_bytes(data), "bytes": len(data)}


def _index_files(index: Any) -> dict[str, bytes]:
    embeddings = index.embeddings.float().contiguous()  # (N, D)
    return {
        "index.safetensors": safetensors.torch.save({"embeddings": embeddings}),
        "index.json": _json_bytes({"ids": index.ids}, "the index ids"),
    }


def _restore_index(directory: Path, parsed: dict[str, Any], retriever: Any) -> None:
    """Swap the checkpoint's refreshed index into `retriever` (same passages, same search settings)."""
    from contextflow_core.retrieval.refresh import rebuild_index

    ids, current = parsed["index_ids"], retriever.index
    if ids != current.ids:
        raise ValueError(
            f"resume: checkpoint {directory} holds a refreshed index of {len(ids)} passages, "
            f"but the model's index has {len(current)} passages with other ids or order; "
            "resume with the index the run was started with, or a fresh output_dir"
        )
    retriever.set_index(rebuild_index(current, parsed["index_embeddings"]))


def _rng_files(rng_states: list[dict]) -> dict[str, bytes]:
    tensors = {f"rank{r}.{k}": t.contiguous() for r, s in enumerate(rng_states) for k, t in s["tensors"].items()}
    meta = [s["meta"] for s in rng_states]
    return {"rng.safetensors": safetensors.torch.save(tensors), "rng.json": _json_bytes(meta, "the RNG state")}


def _weight_files(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, bytes]:
    params = {n: p.detach().cpu().contiguous() for n, p in trainable_parameters(model).items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    return {
        "model.safetensors": safetensors.torch.save(params),
        "optimizer.safetensors": safetensors.torch.save(opt_tensors),
        "optimizer.json": _json_bytes(opt_meta, "the optimizer state"),
    }


def _move_shards(source: Path, tmp: Path) -> dict[str, Any]:
    """Move the shard files the processes wrote into `tmp`; their manifest entries."""
    entries = {}
    for path in sorted(source.iterdir()):
        data = path.read_bytes()
        entries[path.name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        path.replace(tmp / path.name)
    return entries


def save_checkpoint(
    directory: PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    scaler: Any = None,
    run_id: str | None = None,
    identity: dict[str, Any] | None = None,
    index: Any = None,
    shards: tuple[Path, dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (see the module docstring for its files).

    Args:
        directory: Destination folder (replaced only once the new one is complete).
        model: The unwrapped RAGSequence; only its trainable parameters are saved.
        optimizer: Its optimiser.
        scheduler: Its learning-rate scheduler (anything with `state_dict`), or None.
        trainer_state: JSON-ready loop state (position in the data, history, ...).
        rng_states: `capture_rng_state()` of every process, by rank.
        scaler: The fp16 gradient scaler, or None.
        run_id: Id of the run writing it (rotation and `resume="auto"` go by it).
        identity: What the run's model and settings were (`training.resume.model_identity`).
        index: A refreshed DocumentIndex whose embeddings the checkpoint keeps (restored on
            resume into an index over the same passages), or None.
        shards: FSDP runs (`training.fsdp`): (folder of the processes' shard files, the optimiser's
            non-tensor state); the shards are moved in instead of model/optimizer.safetensors.
    """
    sched = {
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    blobs = {
        **(
            _weight_files(model, optimizer)
            if shards is None
            else {"optimizer.json": _json_bytes(shards[1], "the optimizer state")}
        ),
        "scheduler.json": _json_bytes(sched, "the scheduler state"),
        **_rng_files(rng_states),
        "trainer_state.json": _json_bytes(trainer_state, "trainer_state"),
        **(_index_files(index) if index is not None else {}),
    }
    with atomic_dir(directory, kind=KIND) as tmp:
        files = {name: _write_file(tmp / name, data) for name, data in blobs.items()}
        if shards is not None:
            files.update(_move_shards(shards[0], tmp))
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "global_step": trainer_state.get("global_step"),
            "run_id": run_id,
            "saved_at": time.time(),
            "identity": identity,
            "fingerprint": model_fingerprint(model),
            "files": files,
            "sharded": shards is not None,
        }
        _write_file(tmp / MANIFEST, _json_bytes(manifest, "the manifest"))
    return Path(directory)


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"resume: {directory} is not a complete checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"resume: {path} is not valid JSON ({e.msg})") from e
    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"resume: {directory} is not a contextflow training checkpoint of format "
            f"{FORMAT_VERSION}; got kind={manifest.get('kind')!r}, "
            f"format_version={manifest.get('format_version')!r}"
        )
    return manifest


def _read_verified(directory: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    blobs = {}
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"resume: checkpoint {directory} lacks {name}, listed in its manifest")
        data = path.read_bytes()
        if sha256_bytes(data) != entry["sha256"]:
            raise ValueError(f"resume: checksum mismatch for {path}: the file is corrupted or was modified")
        blobs[name] = data
    return blobs


def read_records(directory: PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's manifest and its (checksum-verified) trainer_state, without reading the tensors.

    Raises:
        FileNotFoundError, ValueError: See `read_checkpoint`.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    entry = {"trainer_state.json": manifest["files"]["trainer_state.json"]}
    state = _read_verified(directory, {"files": entry})["trainer_state.json"]
    return manifest, json.loads(state)


def read_checkpoint(directory: PathLike, model: nn.Module) -> dict[str, Any]:
    """Verify a checkpoint against its manifest and `model`, and parse its files (no side effects).

    Raises:
        FileNotFoundError: Not a complete checkpoint, or a listed file is missing.
        ValueError: Wrong format, checksum mismatch, or written for another model.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    check_fingerprint(directory, manifest["fingerprint"], model)
    blobs = _read_verified(directory, manifest)
    sched = json.loads(blobs["scheduler.json"])
    sharded = bool(manifest.get("sharded"))
    return {
        "params": None if sharded else safetensors.torch.load(blobs["model.safetensors"]),
        "optimizer": json.loads(blobs["optimizer.json"])
        if sharded
        else _unflatten_optimizer(
            safetensors.torch.load(blobs["optimizer.safetensors"]), json.loads(blobs["optimizer.json"])
        ),
        "scheduler": sched["scheduler"],
        "scaler": sched["scaler"],
        "rng_tensors": safetensors.torch.load(blobs["rng.safetensors"]),
        "rng_meta": json.loads(blobs["rng.json"]),
        "trainer_state": json.loads(blobs["trainer_state.json"]),
        "index_embeddings": (
            safetensors.torch.load(blobs["index.safetensors"])["embeddings"] if "index.safetensors" in blobs else None
        ),
        "index_ids": json.loads(blobs["index.json"])["ids"] if "index.json" in blobs else None,
        "manifest": manifest,
    }


def _rng_for_rank(parsed: dict[str, Any], rank: int) -> dict[str, Any] | None:
    if rank >= len(parsed["rng_meta"]):
        return None
    prefix = f"rank{rank}."
    tensors = {k[len(prefix) :]: t for k, t in parsed["rng_tensors"].items() if k.startswith(prefix)}
    return {"tensors": tensors, "meta": parsed["rng_meta"][rank]}


def _check_sharding(directory: Path, sharded: bool, model_sharded: bool) -> None:
    if sharded != model_sharded:
        raise ValueError(
            f"resume: checkpoint {directory} was written {'with' if sharded else 'without'} FSDP "
            f"sharding, but this run is {'' if model_sharded else 'not '}sharded; resume with the "
            "checkpoint's TrainConfig.fsdp, or turn a sharded checkpoint into a model with "
            "training.fsdp.consolidate_checkpoint"
        )


@torch.no_grad()
def load_checkpoint(
    directory: PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    rank: int = 0,
    restore_rng: bool = True,
    retriever: Any = None,
    read_shards: Any = None,
) -> dict[str, Any]:
    """Restore a checkpoint into `model` (and optimiser, scheduler, scaler, RNG); returns trainer_state.

    Everything is verified (manifest, checksums, fingerprint) before anything is changed.

    Args:
        directory: A checkpoint folder written by `save_checkpoint`.
        model: The unwrapped model, with the same trainable parameters as when saved.
        optimizer, scheduler, scaler: Restored when given.
        rank: This process's rank: selects its RNG state (rank 0's when absent).
        restore_rng: Also restore the RNG states.
        retriever: The model's Retriever: receives the checkpoint's refreshed index, if it holds one.
        read_shards: For a sharded model (`training.fsdp`): called as ``read_shards(directory,
            optimizer_json)`` by every process to load a sharded checkpoint's weights and optimiser.

    Raises:
        FileNotFoundError, ValueError: See `read_checkpoint`.
    """
    parsed = read_checkpoint(directory, model)
    _check_sharding(Path(directory), parsed["params"] is None, read_shards is not None)
    if retriever is not None and parsed["index_embeddings"] is not None:
        _restore_index(Path(directory), parsed, retriever)
    if read_shards is not None:
        read_shards(Path(directory), parsed["optimizer"])
    else:
        for name, p in trainable_parameters(model).items():
            p.copy_(parsed["params"][name].to(device=p.device, dtype=p.dtype))
    if optimizer is not None and read_shards is None:
        optimizer.load_state_dict(parsed["optimizer"])
    if scheduler is not None and parsed["scheduler"] is not None:
        scheduler.load_state_dict(parsed["scheduler"])
    if scaler is not None and parsed["scaler"] is not None:
        scaler.load_state_dict(parsed["scaler"])
    rng = _rng_for_rank(parsed, rank) or _rng_for_rank(parsed, 0)
    if restore_rng and rng is not None:
        restore_rng_state(rng)
    return parsed["trainer_state"]
