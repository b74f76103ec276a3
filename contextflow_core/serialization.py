"""Save and load a whole RAGSequence: safetensors and JSON only, written atomically.

Boundary: files. Layout of a saved model directory::

    manifest.json        kind, format, version, sha256 of every other file (verified on load)
    rag_config.json      RagConfig, PromptConfig, encoder settings, generator source
    question_encoder/    HF model (safetensors) + tokenizer; a LoRA encoder adds adapter/
    generator/           full HF model, or only the LoRA adapter (+ tokenizer)
    generator_base/      the LoRA generator's base, only with save_pretrained(..., save_base=True)
    index/               DocumentIndex (FAISS file, passages JSONL, embeddings)
    store.json           instead of index/ for a store-backed model: name, dim, title key (see `store_rag`)

Saving goes through `io_utils.atomic_dir` with kind `artifacts.RAG`: a folder is
created, filled when empty, or replaced only when it holds a saved RAG model and
nothing else. A LoRA generator is saved as its adapter plus a pinned reference
to its base (`models.base_pin`): "embedded", "saved", or a local folder, with a
hash of its weights; a base with no folder fails at save time. The generator
entry of `rag_config.json` records the reader adapter the generator started from
(`"reader"`: its identity, or null); a LoRA on the embedded base+reader is rebuilt
with the same reader merged, and older saves (no field) with the raw model. Loading refuses
pickle files (.bin/.pkl/.pt/.pth/.ckpt), any file the manifest does not list, a
manifest entry outside the folder, any checksum mismatch and a changed base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .artifacts import RAG, check_manifest_paths, check_replaceable, label, manifest_kind, unlisted_files
from .config import PromptConfig, RagConfig, from_dict, to_dict
from .io_utils import atomic_dir, atomic_write_text, sha256_file
from .store_rag import reattach, saved_store, write_store_description

FORMAT = RAG
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")
CONFIG_FILE, ADAPTER = "rag_config.json", "adapter"


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def _generator_source(generator, directory: Path, save_base: bool) -> dict[str, Any]:
    """How to rebuild the generator's base when only an adapter is saved (see `models.base_pin`)."""
    from .models.base_pin import base_reference
    from .models.reader import reader_of

    if not _is_peft(generator):
        if save_base:
            raise ValueError(
                "save_base: the generator has no LoRA adapters, so it is saved whole anyway; drop save_base=True"
            )
        return {"kind": "full", "reader": reader_of(generator)}  # the record is in its config.json too
    return base_reference(generator, directory, save_base=save_base)


def _write_manifest(root: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    manifest = {
        "kind": RAG,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "files": {p.relative_to(root).as_posix(): sha256_file(p) for p in files},
    }
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))


def _save_encoder(encoder, folder: Path) -> None:
    """HF body + tokenizer; a LoRA body as its plain base plus the adapter in `adapter/`."""
    from .models.base_pin import base_state_dict

    if _is_peft(encoder.model):
        base = encoder.model.get_base_model()
        base.save_pretrained(folder, state_dict=base_state_dict(base), safe_serialization=True)
        encoder.model.save_pretrained(folder / ADAPTER, safe_serialization=True)
    else:
        encoder.model.save_pretrained(folder, safe_serialization=True)
    if encoder.tokenizer is not None:
        encoder.tokenizer.save_pretrained(folder)


def _save_generator(generator, tokenizer, root: Path, source: dict[str, Any]) -> None:
    from .models.base_pin import SAVED, base_state_dict

    generator.save_pretrained(root / "generator", safe_serialization=True)
    tokenizer.save_pretrained(root / "generator")
    if source.get("base") == SAVED:
        base = generator.get_base_model()
        base.save_pretrained(root / "generator_base", state_dict=base_state_dict(base), safe_serialization=True)
        tokenizer.save_pretrained(root / "generator_base")  # load_generator reads a tokenizer with the model


def save_rag(model, directory: str | Path, *, save_base: bool = False) -> Path:
    """Write `model` (a RAGSequence) to `directory`, atomically, replacing only a saved RAG model.

    Args:
        model: The RAGSequence.
        directory: A new or empty folder, or one holding a saved RAG model (and nothing else).
        save_base: Store a LoRA generator's base weights in the folder too (`generator_base/`),
            so the saved model does not depend on the base's folder.

    Raises:
        FileExistsError: `directory` is a file or holds anything else; nothing is changed.
        ValueError: A LoRA generator whose base has no folder on disk, without `save_base`.
    """
    final = check_replaceable(directory, RAG)  # before any work: refuse early, nothing written
    encoders = {"question_encoder": model.question_encoder}
    if model._context_encoder is not None:
        encoders["context_encoder"] = model._context_encoder
    source = _generator_source(model.generator, final, save_base)
    with atomic_dir(final, kind=RAG) as tmp:
        for folder, encoder in encoders.items():
            _save_encoder(encoder, tmp / folder)
        _save_generator(model.generator, model.generator_tokenizer, tmp, source)
        if model.store is None:
            model.index.save(tmp / "index")
        else:  # the live client is never serialized: from_pretrained(dir, store=...) reattaches
            write_store_description(model, tmp)
        config = {
            "rag": to_dict(model.config),
            "prompt": to_dict(model.prompt_config),
            **{
                folder: {
                    "pooling": e.pooling,
                    "normalize": e.normalize,
                    "max_length": e.max_length,
                    "name": e.name,
                    "lora": _is_peft(e.model),
                }
                for folder, e in encoders.items()
            },
            "generator": source,
            "retrieval_strategy": to_dict(model.retriever.strategy),
        }
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(config, indent=2))
        _write_manifest(tmp)
    return Path(directory)


def _manifest_of(root: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{root}/manifest.json: not valid JSON (truncated or corrupted?): {e}") from e
    found = manifest_kind(manifest) if isinstance(manifest, dict) else None
    if found != RAG or manifest.get("format_version") != FORMAT_VERSION or not isinstance(manifest.get("files"), dict):
        what = label(found) if found else "not a ContextFlow model"
        raise ValueError(
            f"{root}/manifest.json: expected a saved RAG model (format {FORMAT!r} version {FORMAT_VERSION}), "
            f"got {what} (format {manifest.get('format')!r} version {manifest.get('format_version')!r})"
            if isinstance(manifest, dict)
            else f"{root}/manifest.json: expected a JSON object"
        )
    return manifest


def verify_directory(directory: str | Path) -> dict[str, Any]:
    """Check a saved model directory before anything is read from it. Returns the manifest.

    Checks: a RAG manifest; no pickle file; every manifest entry a plain path
    inside the folder; no file the manifest does not list; `rag_config.json`
    listed; every listed file present with its recorded sha256.

    Raises:
        FileNotFoundError: No manifest, or a listed file is missing.
        ValueError: Any other check fails; the message names the file.
    """
    root = Path(directory)
    if not (root / "manifest.json").is_file():
        raise FileNotFoundError(f"directory: expected a saved ContextFlow model with manifest.json, got {root}")
    pickles = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{root}: refusing to load pickle files {pickles}: unpickling can run arbitrary code. "
            "ContextFlow saves safetensors/JSON only; convert these weights to safetensors first"
        )
    manifest = _manifest_of(root)
    check_manifest_paths(root, manifest["files"])
    extra = unlisted_files(root, manifest["files"])
    if extra:
        raise ValueError(
            f"{root}: refusing to load {extra}: not listed in manifest.json, so not written by "
            "save_pretrained (a loader could read them). Remove them, or save the model again"
        )
    if CONFIG_FILE not in manifest["files"]:
        raise ValueError(f"{root}/manifest.json: does not list {CONFIG_FILE}, which the loader needs")
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in manifest.json but missing")
        if sha256_file(path) != digest:
            raise ValueError(f"{path}: sha256 checksum mismatch (file truncated or modified since it was saved)")
    return manifest


def _load_lora_generator(root: Path, source: dict[str, Any], base_override: str | None, **kwargs):
    """The pinned base (checked against its hash) with the saved adapter on top."""
    import torch
    from transformers import AutoTokenizer

    from .models import default_generator, load_generator
    from .models.base_pin import EMBEDDED, check_base, embedded_reader, find_base
    from .optional_deps import bitsandbytes_hidden, import_peft

    import_peft("loading a LoRA generator")  # without bitsandbytes unless a 4/8-bit model loaded it
    from peft import PeftModel

    where = find_base(root, source, base_override)
    quant = source.get("quantization")
    wanted = kwargs.pop("dtype", None)
    saved = getattr(torch, source["base_dtype"]) if source.get("base_dtype") and not quant else None
    if where == EMBEDDED:
        base, _ = default_generator(dtype=saved or torch.float32, reader=embedded_reader(root, source))
    else:
        base, _ = load_generator(str(where), quantization=quant, dtype=saved or wanted, **kwargs)
    check_base(root, source, base, where)
    if wanted is not None and saved is not None and wanted != saved:
        base = base.to(wanted)  # checked in the dtype it was saved in, then cast as asked
    tokenizer = AutoTokenizer.from_pretrained(root / "generator")
    with bitsandbytes_hidden():  # does nothing when a 4/8-bit base has loaded bitsandbytes
        return PeftModel.from_pretrained(base, root / "generator", is_trainable=True), tokenizer


def _load_generator(root: Path, source: dict[str, Any], base_override: str | None = None, **kwargs):
    from .models import load_generator

    if source["kind"] == "full":
        return load_generator(str(root / "generator"), use_safetensors=True, **kwargs)
    return _load_lora_generator(root, source, base_override, **kwargs)


def load_rag(
    cls,
    directory: str | Path,
    *,
    index=None,
    store=None,
    generator_base: str | None = None,
    store_check: bool = True,
    **generator_kwargs,
):
    """Rebuild a RAGSequence saved by `save_rag`.

    Args:
        cls: RAGSequence (or a subclass).
        directory: The saved folder; verified by `verify_directory` first.
        index: Overrides the saved index (a DocumentIndex, Retriever or store backend).
        store: The store backend (or a Retriever over it) of a model saved over a store; needed then.
        store_check: Over a store, run the embedding-space check (`RAGSequence(store_check=)`).
        generator_base: For a LoRA generator, the base folder (or hub id) to use instead of the
            recorded one; its weights must still match the recorded hash.
        **generator_kwargs: Passed to `load_generator` (e.g. `dtype`, `device_map`).
    """
    from .retrieval import DocumentIndex, Retriever, StrategyConfig
    from .retrieval.store import is_backend

    root = Path(directory)
    verify_directory(root)
    config = json.loads((root / CONFIG_FILE).read_text())
    encoder = _load_encoder(root, config, "question_encoder")
    context = _load_encoder(root, config, "context_encoder") if "context_encoder" in config else None
    generator, tokenizer = _load_generator(root, config["generator"], generator_base, **generator_kwargs)
    described = saved_store(root)
    if index is not None and store is not None:
        raise ValueError("index, store: expected one of them (what the model retrieves from), got both")
    if described is not None and index is None:
        index = reattach(root, described, store)
    elif index is None:
        index = store if store is not None else DocumentIndex.load(root / "index")
    strategy = from_dict(StrategyConfig, config.get("retrieval_strategy", {}))
    title = {"title_key": described.get("title_key", "title")} if described and is_backend(index) else {}
    retriever = index if isinstance(index, Retriever) else Retriever(index, strategy=strategy, **title)
    return cls(
        question_encoder=encoder,
        retriever=retriever,
        generator_tokenizer=tokenizer,
        generator=generator,
        prompt=from_dict(PromptConfig, config["prompt"]),
        config=from_dict(RagConfig, config["rag"]),
        context_encoder=context,
        store_check=store_check,
    )


def _load_encoder(root: Path, config: dict, folder: str):
    from .models import load_encoder

    cfg = config[folder]
    encoder = load_encoder(
        str(root / folder), pooling=cfg["pooling"], normalize=cfg["normalize"], max_length=cfg["max_length"]
    )
    if cfg.get("lora"):
        from .optional_deps import bitsandbytes_hidden, import_peft

        peft = import_peft("loading a LoRA question encoder")
        with bitsandbytes_hidden():
            encoder.model = peft.PeftModel.from_pretrained(encoder.model, root / folder / ADAPTER, is_trainable=True)
    encoder.name = cfg["name"]
    return encoder
