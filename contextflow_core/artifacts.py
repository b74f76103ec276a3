"""What a folder holds: the ContextFlow artifact kinds and the rule for replacing a folder.

Boundary: reads `manifest.json` files and lists folders; writes nothing. Used by
`io_utils.atomic_dir` (the one writer of artifact folders) and by the savers that
check a target before spending time on training.

Every artifact folder ContextFlow writes has a `manifest.json` whose `kind` names
what it is and whose `files` lists every other file in it:

    contextflow-rag                   RAGSequence.save_pretrained
    contextflow-index                 DocumentIndex.save
    contextflow-training-checkpoint   train_rag checkpoints

Manifests written before `kind` existed are recognised by their shape, so old
saves can still be overwritten and loaded.

The replace rule (DESIGN rule 12): a missing folder is created, an empty one is
filled, and an existing one is replaced only when its manifest says it is the same
kind AND it holds no file its manifest does not list. Anything else (user files,
another kind, a manifest plus unknown files, a file where the folder should be) is
refused with `FileExistsError`, nothing changed.

Example:
    >>> check_replaceable("runs/new-model", RAG)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

RAG = "contextflow-rag"
INDEX = "contextflow-index"
CHECKPOINT = "contextflow-training-checkpoint"
MANIFEST = "manifest.json"
_LABELS = {RAG: "saved RAG model", INDEX: "saved DocumentIndex", CHECKPOINT: "training checkpoint"}
_INDEX_KEYS = {"format_version", "dim", "count", "index_factory", "metric", "files"}

# Manifests written before they carried a `kind`, recognised by their fields.
_LEGACY_SHAPES: dict[str, Callable[[dict], bool]] = {
    RAG: lambda m: m.get("format") == RAG and isinstance(m.get("files"), dict),
    INDEX: lambda m: m.keys() >= _INDEX_KEYS and isinstance(m.get("files"), dict),
}
_SHOWN = 5

__all__ = [
    "RAG",
    "INDEX",
    "CHECKPOINT",
    "KINDS",
    "artifact_kind",
    "check_replaceable",
    "check_manifest_paths",
    "unlisted_files",
]
KINDS = tuple(_LABELS)


def label(kind: str) -> str:
    """Human name of an artifact kind ("saved RAG model", ...)."""
    return _LABELS.get(kind, kind)


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The parsed `manifest.json` of `directory`, or None when absent or not a JSON object."""
    path = Path(directory) / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def manifest_kind(manifest: dict[str, Any]) -> str | None:
    """The artifact kind a parsed manifest declares (or, for old manifests, its shape shows)."""
    kind = manifest.get("kind")
    if kind is not None:
        return kind if kind in _LABELS else None
    return next((k for k, fits in _LEGACY_SHAPES.items() if fits(manifest)), None)


def artifact_kind(directory: str | Path) -> str | None:
    """The kind of ContextFlow artifact `directory` holds, or None."""
    manifest = read_manifest(directory)
    return manifest_kind(manifest) if manifest is not None else None


def _all_entries(root: Path) -> list[str]:
    """Every file, link or other non-directory under `root`, as "/"-separated relative paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):  # never followed: reported as an entry
                dirnames.remove(name)
                filenames.append(name)
        found += [Path(dirpath, n).relative_to(root).as_posix() for n in filenames]
    return sorted(found)


def unlisted_files(directory: str | Path, listed) -> list[str]:
    """Entries under `directory` (recursive) that are neither `manifest.json` nor in `listed`."""
    listed = set(listed) | {MANIFEST}
    return [rel for rel in _all_entries(Path(directory)) if rel not in listed]


def check_manifest_paths(directory: str | Path, names) -> None:
    """Refuse manifest entries that would read outside `directory` (absolute paths, `..`, links).

    Raises:
        ValueError: Naming the entry and the manifest.
    """
    root = Path(directory)
    for name in names:
        pure = PurePosixPath(name) if isinstance(name, str) else None
        bad = (
            pure is None
            or not name
            or pure.is_absolute()
            or ".." in pure.parts
            or "\\" in name
            or (len(name) > 1 and name[1] == ":")
        )
        if (
            not bad
            and pure is not None
            and any((root / Path(*pure.parts[:i])).is_symlink() for i in range(1, len(pure.parts) + 1))
        ):
            bad = True
        if bad:
            raise ValueError(
                f"{root / MANIFEST}: entry {name!r} is not a plain file inside {root} "
                "(absolute path, '..' or a symbolic link); refusing to load from outside the folder"
            )


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _refusal(target: Path, kind: str, why: str) -> FileExistsError:
    return FileExistsError(
        f"{target}: refusing to write a {label(kind)} there: {why}. Nothing was changed. "
        "ContextFlow only replaces a folder that holds a ContextFlow artifact of the same kind and nothing else; "
        "save into a new or empty folder instead (or move those files away)"
    )


def check_replaceable(target: str | os.PathLike[str], kind: str) -> Path:
    """Check that `target` may receive a `kind` artifact; returns the resolved path to write.

    A symlink (at `target` or above it) is resolved: the artifact is written behind
    the link and the link stays.

    Raises:
        FileExistsError: If `target` is a file, or a folder with anything but a
            `kind` artifact in it (see the module docstring).
    """
    if kind not in _LABELS:
        raise ValueError(f"kind: expected one of {list(_LABELS)}, got {kind!r}")
    final = Path(os.path.realpath(os.fspath(target)))
    if not os.path.lexists(final):
        return final
    if not final.is_dir():
        raise _refusal(final, kind, "it is a file, not a folder")
    entries = _all_entries(final)
    if not entries:
        return final
    manifest = read_manifest(final)
    found = manifest_kind(manifest) if manifest is not None else None
    if manifest is None or found is None:
        raise _refusal(final, kind, f"it holds files ContextFlow did not write ({_shown(entries)})")
    if found != kind:
        raise _refusal(final, kind, f"it holds a {label(found)}, a different kind of artifact")
    files = manifest.get("files")
    extra = unlisted_files(final, files if isinstance(files, dict) else {})
    if extra:
        raise _refusal(
            final, kind, f"besides the {label(kind)} it holds files its manifest does not list ({_shown(extra)})"
        )
    return final
