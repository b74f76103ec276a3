"""Crash-safe file and directory writes, and checksums.

Boundary: plain filesystem helpers with no knowledge of indexes, models or
checkpoints. Every writer here either leaves the destination exactly as it was
or replaces it completely: a reader never sees a half-written file or directory.

The pattern is always the same: write into a temporary sibling (same directory,
so the same filesystem), flush and fsync it, then `os.replace` it into place and
fsync the parent directory so the rename itself survives a power cut.

Example:
    >>> import tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> with atomic_dir(os.path.join(root, "ckpt")) as tmp:
    ...     atomic_write_text(os.path.join(tmp, "a.txt"), "hello")
    >>> open(os.path.join(root, "ckpt", "a.txt")).read()
    'hello'
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_dir", "sha256_file", "sha256_bytes", "fsync_dir"]


def fsync_dir(path: PathLike) -> None:
    """Flush a directory entry (new/renamed names in it) to disk.

    A no-op where directories cannot be opened (Windows).
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data files are synced anyway
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either the old or the new bytes.

    The bytes go to a temporary file next to `path`, are fsynced, and the file
    is renamed over `path` with `os.replace`. The parent directory must exist.

    Args:
        path: Destination file.
        data: Bytes (or any bytes-like object) to write.

    Raises:
        OSError: If writing or renaming fails; `path` is then untouched and the
            temporary file is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at `path`, read in `chunk_size` chunks.

    Raises:
        FileNotFoundError: If `path` does not exist.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (root included)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


@contextlib.contextmanager
def atomic_dir(final_dir: PathLike) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it into place on success.

    Write everything into the yielded path. When the `with` block ends without
    an exception, the temporary directory is fsynced and renamed to
    `final_dir`. If `final_dir` already exists it is first renamed aside and
    only deleted after the new directory is in place; if that final rename
    fails, the old directory is put back. If the block raises, the temporary
    directory is deleted and `final_dir` is left exactly as it was.

    Args:
        final_dir: Directory to create or replace. Its parent is created if missing.

    Yields:
        Path of the (empty) temporary directory to fill.

    Raises:
        FileExistsError: If `final_dir` exists and is not a directory.

    Example:
        >>> with atomic_dir("out/index") as tmp:  # doctest: +SKIP
        ...     (tmp / "manifest.json").write_text("{}")
    """
    final = Path(final_dir).absolute()
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"atomic_dir: {final} exists and is not a directory; refusing to replace a file")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        _fsync_tree(tmp)
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`, moving an existing `final` aside until it succeeded."""
    backup = None
    if final.exists():
        backup = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, backup)
    try:
        os.replace(tmp, final)
    except BaseException:
        if backup is not None:
            os.replace(backup, final)
        raise
    fsync_dir(final.parent)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
