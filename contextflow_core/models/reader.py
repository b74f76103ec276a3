"""The shipped reader adapter: a LoRA that teaches the embedded SmolLM2 to answer from a passage.

Boundary: finds the reader's files (package data in `contextflow_core/models/reader/`),
checks them against the sha256 sums `reader.json` records, and merges the LoRA into
a causal LM's weights in place. It knows nothing of retrieval, prompts or training;
`defaults.default_generator(reader=True)` is its one caller in the library.

Files (peft's own, plus ContextFlow's record):

    adapter_model.safetensors   LoRA A/B matrices (peft `save_pretrained`)
    adapter_config.json         peft LoraConfig (rank, alpha, targets)
    reader.json                 sha256 of each file under "files", the training command,
                                seeds, metrics, the base it was trained on

Merging, not stacking: W <- W + s * B @ A for every adapted Linear, with
s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA). The result is a plain causal
LM: scoring, quantization, saving and a new LoRA on top work as for any model (a
LoRA trained later adapts base+reader). The sum over the rank is taken in float64
in a fixed order (float32 products are exact in float64), then rounded once to
float32, so the merged weights, and the hash a saved LoRA pins them by
(`base_pin.weights_sha256`), are the same bits on every machine.

The merged model carries `config.contextflow_reader` (`reader_identity`): it is
written with the model's `config.json`, and `serialization` records it in
`rag_config.json`, so a saved model says that it started from the reader.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from contextflow_core.io_utils import sha256_file

READER_NAME = "contextflow-reader"
CONFIG_ATTR = "contextflow_reader"  # model.config attribute marking a merged reader
ADAPTER_FILE, ADAPTER_CONFIG, RECORD = "adapter_model.safetensors", "adapter_config.json", "reader.json"
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<side>[AB])\.weight$")
_BATCH_ELEMENTS = 1 << 23  # float64 elements merged per step (64 MiB)
_EXACT_IN_FLOAT64 = (torch.float32, torch.bfloat16, torch.float16)  # products of two are exact in float64
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "fan_in_fan_out": "fan_in_fan_out",
    "rank_pattern": "rank_pattern",
    "alpha_pattern": "alpha_pattern",
    "modules_to_save": "modules_to_save",
}

__all__ = [
    "CONFIG_ATTR",
    "READER_NAME",
    "merge_reader",
    "reader_dir",
    "reader_identity",
    "reader_of",
    "require_reader",
    "verify_reader",
]


def reader_dir() -> Path:
    """The folder the shipped reader lives in (package data beside this module)."""
    return Path(__file__).resolve().parent / "reader"


def _record(folder: Path) -> dict[str, Any]:
    path = folder / RECORD
    if not path.is_file():
        raise FileNotFoundError(
            f"reader=True: the reader adapter is not installed ({path} is missing; a source checkout gets it "
            "with the repository's contextflow_core/models/reader/ folder, or rebuild it with "
            "`python benchmarks/train_reader.py`). Pass reader=False (CLI: --no-reader) to use the raw "
            "embedded model"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); reinstall contextflow") from e
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise ValueError(
            f"{path}: expected a JSON object with a 'files' mapping of file name to sha256, "
            f"got {type(record).__name__}; reinstall contextflow"
        )
    return record


def verify_reader(folder: Path | None = None) -> dict[str, Any]:
    """Check the reader's files against the sha256 sums in `reader.json`; returns that record.

    Raises:
        FileNotFoundError: No reader installed, or a file it lists is missing.
        ValueError: A file's sha256 differs from the recorded one (tampered or corrupted),
            or `reader.json` does not list the adapter's two files.
    """
    folder = Path(folder) if folder is not None else reader_dir()
    record = _record(folder)
    files = record["files"]
    missing = [name for name in (ADAPTER_FILE, ADAPTER_CONFIG) if name not in files]
    if missing:
        raise ValueError(
            f"{folder / RECORD}: 'files' does not list {missing}, so they cannot be checked; reinstall contextflow"
        )
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {RECORD} but missing; reinstall contextflow")
        got = sha256_file(path)
        if got != want:
            raise ValueError(
                f"{path}: sha256 {got} differs from {want} recorded in {RECORD}: the reader adapter was "
                "modified or corrupted, so it is not loaded. Reinstall contextflow (or rebuild it with "
                "`python benchmarks/train_reader.py`), or pass reader=False to use the raw embedded model"
            )
    return record


def reader_identity(record: dict[str, Any]) -> dict[str, str]:
    """What a model merged with this reader records: name and the adapter files' sha256."""
    files = record["files"]
    return {"name": READER_NAME, "sha256": files[ADAPTER_FILE], "config_sha256": files[ADAPTER_CONFIG]}


def reader_of(model) -> dict[str, str] | None:
    """The reader a (possibly peft-wrapped) generator was merged with, or None for none."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    found = getattr(getattr(model, "config", None), CONFIG_ATTR, None)
    return dict(found) if isinstance(found, dict) else None


def _scale(config: dict[str, Any], where: Path) -> float:
    """s = alpha / r (alpha / sqrt(r) with rsLoRA); refuses LoRA variants a plain merge cannot express."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{where}: peft_type {config.get('peft_type')!r} is not a LoRA; expected 'LORA'")
    used = [label for key, label in _UNSUPPORTED.items() if config.get(key)]
    if used:
        raise ValueError(f"{where}: {used} cannot be merged as W + s*B@A; train the reader as a plain LoRA")
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _pairs(tensors: dict[str, torch.Tensor], where: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (A (r, in), B (out, r)) from peft's saved keys; refuses anything else."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise ValueError(
                f"{where}: unexpected tensor {key!r}; only lora_A/lora_B weights of Linear layers can be merged"
            )
        if tensor.dtype not in _EXACT_IN_FLOAT64:
            raise ValueError(f"{where}: {key} is {tensor.dtype}; expected float32, bfloat16 or float16")
        found.setdefault(match["module"], {})[match["side"]] = tensor
    broken = sorted(m for m, sides in found.items() if set(sides) != {"A", "B"})
    if broken:
        raise ValueError(f"{where}: modules {broken} lack their lora_A or lora_B weight")
    return {m: (sides["A"], sides["B"]) for m, sides in found.items()}


def _checked_weights(model, pairs: dict[str, tuple], where: Path) -> dict[str, torch.nn.Parameter]:
    """Module name -> the model's weight that module's (A, B) adapts; refuses a misfit."""
    params = dict(model.named_parameters())
    weights = {}
    for module, (a, b) in pairs.items():
        weight = params.get(f"{module}.weight")
        if weight is None or weight.shape != (b.shape[0], a.shape[1]) or not weight.is_floating_point():
            raise ValueError(
                f"{where}: no float weight {module}.weight of shape {(b.shape[0], a.shape[1])} "
                "in the model; the reader fits SmolLM2-135M-Instruct (default_generator) only"
            )
        weights[module] = weight
    return weights


def _merge_batch(weights: list[torch.Tensor], pairs: list[tuple], scale: float) -> None:
    """W <- W + s * B @ A for same-shaped weights at once, in float64, rounded once to float32.

    The sum over the rank runs in a fixed order, and A, B hold at most 24-bit mantissas
    (float32/bf16/fp16), so each product is exact in float64 and a fused multiply-add
    rounds as a multiply then an add would: the same bits on every machine.
    """
    w64 = torch.stack([w.detach().to(device="cpu", dtype=torch.float64) for w in weights])  # (n, out, in)
    a64 = torch.stack([a for a, _ in pairs]).to(torch.float64)  # (n, r, in)
    b64 = torch.stack([b for _, b in pairs]).to(torch.float64)  # (n, out, r)
    delta = torch.zeros_like(w64)
    for i in range(a64.shape[1]):
        delta.addcmul_(b64[:, :, i : i + 1], a64[:, i : i + 1, :])
    merged = w64.add_(delta.mul_(scale)).to(torch.float32)
    for weight, new in zip(weights, merged, strict=True):
        weight.copy_(new)  # then the weight's own dtype


def _merge_all(weights: Mapping[str, torch.Tensor], pairs: dict[str, tuple], scale: float) -> None:
    """Merge module by module, batching same-shaped ones (few large ops run fast even on a busy CPU)."""
    groups: dict[tuple, list[str]] = {}
    for module, (a, _) in pairs.items():
        groups.setdefault((tuple(weights[module].shape), a.shape[0]), []).append(module)
    for (shape, _), modules in groups.items():
        step = max(1, _BATCH_ELEMENTS // (shape[0] * shape[1]))
        for start in range(0, len(modules), step):
            chunk = modules[start : start + step]
            _merge_batch([weights[m] for m in chunk], [pairs[m] for m in chunk], scale)


@torch.no_grad()
def merge_reader(model, folder: Path | None = None) -> dict[str, str]:
    """Merge the reader LoRA into `model`'s float weights in place and mark `model.config`.

    Args:
        model: A plain causal LM with the architecture the reader was trained on
            (the embedded SmolLM2-135M-Instruct), not quantized, not peft-wrapped.
        folder: The reader folder (default: `reader_dir()`); checked by `verify_reader` first.

    Returns:
        The identity written to `model.config.contextflow_reader`.

    Raises:
        FileNotFoundError, ValueError: See `verify_reader`; also a model that already
            carries a reader, or adapter tensors that do not fit the model.
    """
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else reader_dir()
    identity = reader_identity(verify_reader(folder))
    merged = reader_of(model)
    if merged is not None:
        raise ValueError(
            f"model: already merged with reader {merged['sha256'][:12]}; merging twice "
            "would add the adapter twice. Start from default_generator(reader=False)"
        )
    scale = _scale(json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")), folder / ADAPTER_CONFIG)
    pairs = _pairs(load_file(str(folder / ADAPTER_FILE)), folder / ADAPTER_FILE)
    _merge_all(_checked_weights(model, pairs, folder / ADAPTER_FILE), pairs, scale)
    setattr(model.config, CONFIG_ATTR, identity)
    return identity


def require_reader(recorded: dict[str, Any], where: str) -> None:
    """Refuse to rebuild a base+reader when the installed reader is not the `recorded` one.

    Raises:
        FileNotFoundError: No reader is installed.
        ValueError: The installed reader's files differ from the recorded ones.
    """
    want = recorded.get("sha256")
    try:
        installed = reader_identity(verify_reader())
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{where}: the generator was trained on top of the reader adapter (sha256 "
            f"{want}), which cannot be loaded here: {e}"
        ) from e
    if (installed["sha256"], installed["config_sha256"]) != (want, recorded.get("config_sha256")):
        raise ValueError(
            f"{where}: the generator was trained on top of the reader adapter with sha256 {want}, but the "
            f"installed ContextFlow ships the reader {installed['sha256']}: the saved adapters would sit on a "
            "different base. Install the ContextFlow version that shipped that reader, or pass "
            "generator_base=<a folder holding that base+reader model> to from_pretrained"
        )
