"""Save and load a whole RAGSequence: safetensors and JSON only, written atomically.

Boundary: files. Layout of a saved model directory::

    manifest.json        format, version, sha256 of every file (verified on load)
    rag_config.json      RagConfig, PromptConfig, encoder settings, generator source
    question_encoder/    HF model (safetensors) + tokenizer
    generator/           full HF model, or only the LoRA adapter (+ tokenizer)
    index/               DocumentIndex (FAISS file, passages JSONL, embeddings)

A LoRA generator is saved as its adapter plus a reference to its base model
("embedded" for the embedded SmolLM2, else the base's name or path). Loading
refuses pickle files (.bin/.pkl/.pt/.pth/.ckpt) and any checksum mismatch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from .config import PromptConfig, RagConfig, from_dict, to_dict
from .io_utils import atomic_dir, atomic_write_text, sha256_file

FORMAT = "contextflow-rag"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")


def _generator_source(generator) -> dict[str, Any]:
    """How to rebuild the generator's base when only an adapter is saved."""
    from .models.defaults import generator_cache_dir

    if not hasattr(generator, "peft_config"):
        return {"kind": "full"}
    base = generator.get_base_model()
    path = str(getattr(base.config, "_name_or_path", "") or getattr(base, "name_or_path", ""))
    embedded = Path(path).resolve() == generator_cache_dir().resolve() if path else False
    quant = "4bit" if getattr(base, "is_loaded_in_4bit", False) else "8bit" if getattr(base, "is_loaded_in_8bit", False) else None
    return {"kind": "lora", "base": "embedded" if embedded else path, "quantization": quant}


def _write_manifest(root: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "files": {str(p.relative_to(root)): sha256_file(p) for p in files},
    }
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))


def save_rag(model, directory: Union[str, Path]) -> Path:
    """Write `model` (a RAGSequence) to `directory`, replacing it atomically."""
    enc = model.question_encoder
    encoders = {"question_encoder": enc}
    if model._context_encoder is not None:
        encoders["context_encoder"] = model._context_encoder
    with atomic_dir(directory) as tmp:
        for folder, encoder in encoders.items():
            encoder.model.save_pretrained(tmp / folder, safe_serialization=True)
            if encoder.tokenizer is not None:
                encoder.tokenizer.save_pretrained(tmp / folder)
        model.generator.save_pretrained(tmp / "generator", safe_serialization=True)
        model.generator_tokenizer.save_pretrained(tmp / "generator")
        model.index.save(tmp / "index")
        config = {
            "rag": to_dict(model.config),
            "prompt": to_dict(model.prompt_config),
            **{folder: {"pooling": e.pooling, "normalize": e.normalize, "max_length": e.max_length, "name": e.name}
               for folder, e in encoders.items()},
            "generator": _generator_source(model.generator),
            "retrieval_strategy": to_dict(model.retriever.strategy),
        }
        atomic_write_text(tmp / "rag_config.json", json.dumps(config, indent=2))
        _write_manifest(tmp)
    return Path(directory)


def verify_directory(directory: Union[str, Path]) -> dict[str, Any]:
    """Check a saved model directory: manifest, checksums, no pickle. Returns the manifest."""
    root = Path(directory)
    if not (root / "manifest.json").is_file():
        raise FileNotFoundError(f"directory: expected a saved ContextFlow model with manifest.json, got {root}")
    pickles = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{root}: refusing to load pickle files {pickles}: unpickling can run arbitrary code. "
            "ContextFlow saves safetensors/JSON only; convert these weights to safetensors first"
        )
    manifest = json.loads((root / "manifest.json").read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{root}/manifest.json: expected format {FORMAT!r} version {FORMAT_VERSION}, "
            f"got {manifest.get('format')!r} version {manifest.get('format_version')!r}"
        )
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in manifest.json but missing")
        if sha256_file(path) != digest:
            raise ValueError(f"{path}: sha256 checksum mismatch (file truncated or modified since it was saved)")
    return manifest


def _load_generator(root: Path, source: dict[str, Any], **kwargs):
    from .models import default_generator, load_generator

    if source["kind"] == "full":
        return load_generator(str(root / "generator"), use_safetensors=True, **kwargs)
    from peft import PeftModel

    if source["base"] == "embedded":
        base, tokenizer = default_generator()
    else:
        base, tokenizer = load_generator(source["base"], quantization=source.get("quantization"), **kwargs)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "generator")
    return PeftModel.from_pretrained(base, root / "generator", is_trainable=True), tokenizer


def load_rag(cls, directory: Union[str, Path], *, index=None, **generator_kwargs):
    """Rebuild a RAGSequence saved by `save_rag`; `index=` overrides the saved index."""
    from .retrieval import DocumentIndex, Retriever, StrategyConfig

    root = Path(directory)
    verify_directory(root)
    config = json.loads((root / "rag_config.json").read_text())
    encoder = _load_encoder(root, config, "question_encoder")
    context = _load_encoder(root, config, "context_encoder") if "context_encoder" in config else None
    generator, tokenizer = _load_generator(root, config["generator"], **generator_kwargs)
    if index is None:
        index = DocumentIndex.load(root / "index")
    strategy = from_dict(StrategyConfig, config.get("retrieval_strategy", {}))
    retriever = index if isinstance(index, Retriever) else Retriever(index, strategy=strategy)
    return cls(
        question_encoder=encoder, retriever=retriever, generator_tokenizer=tokenizer, generator=generator,
        prompt=from_dict(PromptConfig, config["prompt"]), config=from_dict(RagConfig, config["rag"]),
        context_encoder=context,
    )


def _load_encoder(root: Path, config: dict, folder: str):
    from .models import load_encoder

    cfg = config[folder]
    encoder = load_encoder(str(root / folder), pooling=cfg["pooling"], normalize=cfg["normalize"],
                           max_length=cfg["max_length"])
    encoder.name = cfg["name"]
    return encoder
