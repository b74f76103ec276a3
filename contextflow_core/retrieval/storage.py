"""On-disk format of a DocumentIndex: file names, manifest, checksummed reads.

Boundary: bytes and JSON only; `DocumentIndex.save`/`load` call these. A saved
index is a directory written atomically, no pickle anywhere:
    index.faiss              faiss.serialize_index bytes
    passages.jsonl           one {"id", "text", "title", "metadata"} per line
    embeddings.safetensors   {"embeddings": float32 (N, D)}
    manifest.json            kind, format_version, dim, count, encoder_name,
                             index_factory, metric, search params, and the
                             sha256 and size of every other file

Loading reads only files the manifest lists and refuses a folder holding any
file it does not list (or a manifest entry pointing outside the folder).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import safetensors.numpy

from contextflow_core.artifacts import INDEX, check_manifest_paths, label, manifest_kind, unlisted_files
from contextflow_core.io_utils import sha256_bytes
from contextflow_core.types import Passage

FORMAT_VERSION = 1
METRIC = "inner_product"
FAISS_FILE, PASSAGES_FILE, EMBEDDINGS_FILE, MANIFEST_FILE = (
    "index.faiss",
    "passages.jsonl",
    "embeddings.safetensors",
    "manifest.json",
)


def _faiss_reason(e: Exception) -> str:
    return str(e).strip().splitlines()[-1].rsplit(": ", 1)[-1]


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write `data` to `path` (inside an atomic_dir) and return its manifest entry."""
    path.write_bytes(data)
    return {"sha256": sha256_bytes(data), "size": len(data)}


def _passages_jsonl(passages: Sequence[Passage]) -> bytes:
    lines = []
    for p in passages:
        record = {"id": p.id, "text": p.text, "title": p.title, "metadata": p.metadata}
        try:
            lines.append(json.dumps(record, ensure_ascii=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadatas: passage {p.id!r} has metadata that is not JSON-serialisable: {e}") from e
    return ("\n".join(lines) + "\n").encode("utf-8")


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such index directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest missing; is {directory} a saved DocumentIndex?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: manifest is not valid JSON (truncated or corrupted?): {e}") from e
    found = (manifest.get("kind") or manifest_kind(manifest)) if isinstance(manifest, dict) else None
    if found not in (INDEX, None):
        raise ValueError(
            f"{path}: {directory} holds a {label(found)}, not a saved DocumentIndex "
            "(RAGSequence.from_pretrained loads a saved RAG model)"
        )
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version!r} is not supported (this contextflow reads {FORMAT_VERSION})"
        )
    missing = [key for key in ("dim", "count", "index_factory", "metric", "files") if key not in manifest]
    if missing:
        raise ValueError(f"{path}: manifest lacks {missing}")
    if manifest["metric"] != METRIC:
        raise ValueError(f"{path}: metric {manifest['metric']!r} is not supported (expected {METRIC!r})")
    _check_listing(directory, manifest)
    return manifest


def _check_listing(directory: Path, manifest: dict) -> None:
    """Every file in the folder is listed, every listed name stays inside it."""
    if not isinstance(manifest["files"], dict):
        raise ValueError(f"{directory / MANIFEST_FILE}: 'files' must map file names to their size and sha256")
    check_manifest_paths(directory, manifest["files"])
    extra = unlisted_files(directory, manifest["files"])
    if extra:
        raise ValueError(
            f"{directory}: holds {extra}, not listed in its {MANIFEST_FILE}; a saved index is loaded "
            "only from the files it lists. Remove them or save the index again"
        )


def _check_expected(directory: Path, manifest: dict, encoder_name: str | None, dim: int | None) -> None:
    if encoder_name is not None and manifest.get("encoder_name") != encoder_name:
        raise ValueError(
            f"{directory}: index was built with encoder {manifest.get('encoder_name')!r}, "
            f"expected_encoder_name is {encoder_name!r}; rebuild the index with this encoder"
        )
    if dim is not None and manifest["dim"] != dim:
        raise ValueError(f"{directory}: index has dimension {manifest['dim']}, expected_dim is {dim}")


def _read_checked(directory: Path, manifest: dict, name: str) -> bytes:
    path = directory / name
    entry = manifest["files"].get(name) if isinstance(manifest["files"], dict) else None
    if not isinstance(entry, dict) or not {"size", "sha256"} <= entry.keys():
        raise ValueError(f"{directory / MANIFEST_FILE}: manifest lists no size and sha256 for {name}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file missing from the saved index")
    data = path.read_bytes()
    if len(data) != entry["size"]:
        raise ValueError(f"{path}: expected {entry['size']} bytes, got {len(data)} (truncated or corrupted file)")
    if sha256_bytes(data) != entry["sha256"]:
        raise ValueError(f"{path}: sha256 checksum mismatch (corrupted file); expected {entry['sha256']}")
    return data


def _parse_passages(data: bytes, count: int, directory: Path) -> list[Passage]:
    try:
        records = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
        passages = [Passage(r["id"], r["text"], r.get("title"), r.get("metadata") or {}) for r in records]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{directory / PASSAGES_FILE}: unreadable passage record: {e}") from e
    if len(passages) != count:
        raise ValueError(f"{directory / PASSAGES_FILE}: manifest count is {count}, file has {len(passages)} passages")
    return passages


def _parse_embeddings(data: bytes, count: int, dim: int, directory: Path) -> np.ndarray:
    try:
        embeddings = safetensors.numpy.load(data)["embeddings"]
    except Exception as e:  # safetensors raises its own error type for malformed headers
        raise ValueError(f"{directory / EMBEDDINGS_FILE}: unreadable safetensors file: {e}") from e
    if embeddings.shape != (count, dim):
        raise ValueError(
            f"{directory / EMBEDDINGS_FILE}: expected shape ({count}, {dim}) from the manifest, "
            f"got {tuple(embeddings.shape)}"
        )
    return embeddings


def _parse_faiss(data: bytes, count: int, dim: int, directory: Path) -> faiss.Index:
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as e:
        raise ValueError(f"{directory / FAISS_FILE}: unreadable faiss index: {_faiss_reason(e)}") from e
    if index.ntotal != count or index.d != dim:
        raise ValueError(
            f"{directory / FAISS_FILE}: expected {count} vectors of dimension {dim} from the manifest, "
            f"got {index.ntotal} of dimension {index.d}"
        )
    return index
