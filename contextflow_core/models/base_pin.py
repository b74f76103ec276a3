"""Pin the base model of a LoRA-adapted module: where it is and what its weights are.

Boundary: turns a peft-wrapped model into a JSON-ready reference to its base
(`base_reference`), finds and checks that base again on load (`find_base`,
`check_base`), and writes a clean copy of a base when asked (`base_state_dict`).
It knows nothing of RAG, indexes or manifests.

The pin is `weights_sha256`: SHA-256 over the base's own parameters (LoRA
weights left out, peft's `base_layer`/`original_module` wrappers removed from the
names), in name order, each as `name:dtype:shape` then its bytes, floating
tensors as float32 (exact for bf16/fp16 weights), quantized ones as stored. It
takes about 0.3 s for SmolLM2-135M on one CPU core.

A base is referenced as "embedded" (the embedded SmolLM2; with `"reader"` set, the
embedded SmolLM2 with that reader adapter merged, `default_generator(reader=True)`;
saves without the field load the raw model), as "saved" (stored in
the model folder with `save_base=True`), or by the absolute path of a local
folder (a hub id is replaced by its local snapshot folder) plus that folder's
path relative to the saved model, so the two can be moved together. A relative
path is never resolved against the current directory or looked up on the hub.

Example:
    >>> ref = base_reference(peft_model, "runs/m", save_base=False)  # doctest: +SKIP
    >>> ref["base_sha256"][:12]  # doctest: +SKIP
    '3f9a0c...'
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from contextflow_core.models.reader import reader_of, require_reader

EMBEDDED, SAVED = "embedded", "saved"
_WRAPPERS = re.compile(r"\.(?:base_layer|original_module)(?=\.)")
_PEFT_ONLY = re.compile(r"(?:^|\.)(?:lora_[A-Za-z_]+|modules_to_save)(?:\.|$)")

__all__ = [
    "EMBEDDED",
    "SAVED",
    "base_reference",
    "base_state_dict",
    "check_base",
    "embedded_reader",
    "find_base",
    "weights_sha256",
]


def _canonical(named) -> dict[str, torch.Tensor]:
    """Base-model names -> tensors: LoRA/peft-only entries dropped, wrapper segments removed."""
    return {_WRAPPERS.sub("", name): t for name, t in named if not _PEFT_ONLY.search(name)}


def weights_sha256(model: torch.nn.Module) -> str:
    """Content hash of a (possibly LoRA-wrapped) model's base parameters; see the module docstring."""
    get_base_model = getattr(model, "get_base_model", None)
    if get_base_model is not None:  # a PeftModel: hash what it wraps, under the plain model's names
        model = get_base_model()
    digest = hashlib.sha256()
    params = _canonical(model.named_parameters())
    for name in sorted(params):
        t = params[name].detach()
        t = (t.float() if t.is_floating_point() else t).cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_state_dict(base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the peft-injected `base` as the plain model would have it (no LoRA)."""
    return _canonical(base.state_dict().items())


def _float_dtype(model: torch.nn.Module) -> str | None:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return str(dtype).replace("torch.", "") if dtype is not None else None


def _quantization(base) -> str | None:
    return (
        "4bit"
        if getattr(base, "is_loaded_in_4bit", False)
        else "8bit"
        if getattr(base, "is_loaded_in_8bit", False)
        else None
    )


def _is_embedded(path: str) -> bool:
    from contextflow_core.models.defaults import generator_cache_dir

    return bool(path) and os.path.realpath(path) == os.path.realpath(generator_cache_dir())


def _local_folder(path: str) -> Path | None:
    """The local folder `path` names now: a folder, or a hub id's cached snapshot; else None."""
    if path and os.path.isdir(path):
        return Path(os.path.realpath(path))
    if not path or os.path.isabs(path):
        return None
    try:
        from transformers.utils import cached_file

        config = cached_file(path, "config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return Path(os.path.realpath(config)).parent if config else None


def base_reference(model, directory: str | Path, *, save_base: bool, what: str = "generator") -> dict[str, Any]:
    """JSON-ready reference to the base of peft model `model`, to be saved in `directory`.

    Raises:
        ValueError: The base has no folder on disk (built or changed in memory)
            and `save_base` is False: the message names the way out.
    """
    base = model.get_base_model()
    path = str(getattr(base.config, "_name_or_path", "") or getattr(base, "name_or_path", "") or "")
    ref = {
        "kind": "lora",
        "base_sha256": weights_sha256(base),
        "base_dtype": _float_dtype(base),
        "quantization": _quantization(base),
        "reader": reader_of(base),
    }
    if save_base:
        if ref["quantization"]:
            raise ValueError(
                f"save_base: the {what} base is {ref['quantization']}-quantized and cannot be stored "
                "as plain weights; save without save_base (its base folder is referenced) or merge"
            )
        return {**ref, "base": SAVED, "quantization": None}
    if _is_embedded(path):
        return {**ref, "base": EMBEDDED}
    folder = _local_folder(path)
    if folder is None:
        raise ValueError(
            f"save_pretrained: the LoRA {what}'s base model has no folder on disk to refer to "
            f"(its name_or_path is {path!r}): it was built or loaded in memory. Pass save_base=True to store "
            f"the base weights in the saved folder, or merge the adapters first "
            f"(model.{what} = model.{what}.merge_and_unload()) and save a plain model"
        )
    rel = os.path.relpath(folder, os.path.realpath(directory))
    return {**ref, "base": str(folder), "base_relative": Path(rel).as_posix()}


def find_base(root: Path, source: dict[str, Any], override: str | None = None) -> str | Path:
    """Where to load a referenced base from: EMBEDDED, or a local folder (never the hub or the cwd).

    Args:
        root: The saved model folder (relative references resolve against it).
        source: The reference `base_reference` wrote (or an older one: name only).
        override: A base the caller names explicitly (`generator_base=`), used as given.

    Raises:
        FileNotFoundError: No referenced folder exists; the message says where it looked.
    """
    if override is not None:
        return override
    base = source["base"]
    if base == EMBEDDED:
        return EMBEDDED
    if base == SAVED:
        return root / "generator_base"
    looked = [Path(base) if os.path.isabs(base) else root / base]
    if source.get("base_relative"):
        looked.append(root / source["base_relative"])
    for folder in looked:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"{root}: the LoRA generator's base {base!r} is not at {[str(p) for p in looked]} (a relative base is "
        "looked for beside the saved model only, never in the current folder or on the hub). Put the base "
        "back there, or name it explicitly: RAGSequence.from_pretrained(path, generator_base=<folder or hub id>)"
    )


def embedded_reader(root: Path, source: dict[str, Any]) -> bool:
    """Whether an "embedded" base is rebuilt with the reader merged (as the save records).

    Saves made before the reader existed have no "reader" field: the raw embedded model.

    Raises:
        FileNotFoundError, ValueError: The recorded reader is not the installed one
            (`models.reader.require_reader`).
    """
    recorded = source.get("reader")
    if not recorded:
        return False
    require_reader(recorded, str(root))
    return True


def check_base(root: Path, source: dict[str, Any], base: torch.nn.Module, where: str | Path) -> None:
    """Refuse a base whose weights differ from the ones the model was saved on.

    Raises:
        ValueError: Naming both hashes and the way out.
    """
    want = source.get("base_sha256")
    if want is None:  # saved before bases were pinned: nothing to compare
        return
    got = weights_sha256(base)
    if got != want:
        raise ValueError(
            f"{root}: the LoRA generator's base at {where} has weights sha256 {got}, but the adapters were "
            f"trained and saved on a base with sha256 {want}: the base changed since saving. Restore the "
            "original base (or name it: from_pretrained(path, generator_base=...)); to make a model that "
            "does not depend on a base folder, save it with save_pretrained(path, save_base=True) or merge "
            "the adapters (merge_and_unload) before saving"
        )
