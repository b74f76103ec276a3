"""Crash-safe file and directory writes, and checksums.

Boundary: plain filesystem helpers with no knowledge of indexes, models or
checkpoints beyond the artifact `kind` a folder's manifest declares (which
folders `atomic_dir` may replace is decided in `artifacts.py`). Every writer
here either leaves the destination exactly as it was or replaces it
completely: a reader never sees a half-written file or directory.

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
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_dir",
    "sha256_file",
    "sha256_bytes",
    "fsync_dir",
    "remove_stale_siblings",
]


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


_TMP, _OLD = "cf-tmp", "cf-old"
_IN_FLIGHT: set[str] = set()  # this process's temporary folders still being written


def _sibling_pattern(name: str) -> re.Pattern[str]:
    """Temp/backup siblings of `name`: ours (`.NAME.cf-tmp-PID-X`), the old code's (`.NAME.tmp-X`/`.old-X`)."""
    n = re.escape(name)
    return re.compile(rf"^\.{n}\.(?:(?:{_TMP}|{_OLD})-(?P<pid>\d+)-\w+|tmp-\w{{8}}|old-[0-9a-f]{{8}})$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else, or the platform cannot tell
        return True
    return True


def remove_stale_siblings(final_dir: PathLike) -> list[Path]:
    """Delete temp/backup folders that a killed save of `final_dir` left beside it.

    Only folders named like `atomic_dir`'s own temporaries of this very target are
    touched, and only when the process that made them is gone (or, for this
    process, when they are no longer being written).

    Returns:
        The folders removed.
    """
    final = Path(final_dir)
    pattern, removed = _sibling_pattern(final.name), list[Path]()
    if not final.parent.is_dir():
        return removed
    for path in final.parent.iterdir():
        match = pattern.match(path.name)
        if not match or path.is_symlink() or not path.is_dir() or os.fspath(path) in _IN_FLIGHT:
            continue
        if (
            match.group("pid") is not None
            and int(match.group("pid")) != os.getpid()
            and _pid_alive(int(match.group("pid")))
        ):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_dir(final_dir: PathLike, kind: str | None = None) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it into place on success.

    Write everything into the yielded path. When the `with` block ends without
    an exception, the temporary directory is fsynced and renamed to `final_dir`.
    What may be at `final_dir` already (`artifacts.check_replaceable`): nothing,
    an empty folder, or, when `kind` is given, a ContextFlow artifact of that
    kind with no file its manifest does not list. Anything else is refused
    before the block runs. An empty folder is filled in place (manifest.json
    moved in last), so a mount point or a current directory stays. A replaced folder is renamed aside and deleted only
    once the new one is in place (put back if that rename fails). A symlink
    target is resolved: the folder is written behind the link. If the block
    raises, the temporary directory is deleted and `final_dir` is left exactly as
    it was. Temp/backup folders of an earlier, killed save of the same target
    are removed after a successful save.

    Args:
        final_dir: Directory to create or replace. Its parent is created if missing.
        kind: The artifact kind being written (`artifacts.RAG`, `INDEX`,
            `CHECKPOINT`); None writes only into a new or empty folder.

    Yields:
        Path of the (empty) temporary directory to fill.

    Raises:
        FileExistsError: If `final_dir` is a file or a folder that may not be
            replaced; the message names the path and the way out.

    Example:
        >>> with atomic_dir("out/index") as tmp:  # doctest: +SKIP
        ...     (tmp / "manifest.json").write_text("{}")
    """
    final = _checked_target(final_dir, kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{_TMP}-{os.getpid()}-"))
    _IN_FLIGHT.add(os.fspath(tmp))
    try:
        yield tmp
        _fsync_tree(tmp)
        _checked_target(final, kind)  # again: the folder may have changed while the block ran
        if final.is_dir() and not any(final.iterdir()):
            _fill_empty(tmp, final)
        else:
            _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _IN_FLIGHT.discard(os.fspath(tmp))
    remove_stale_siblings(final)


def _checked_target(final_dir: PathLike, kind: str | None) -> Path:
    from contextflow_core.artifacts import check_replaceable

    if kind is not None:
        return check_replaceable(final_dir, kind)
    final = Path(os.path.realpath(os.fspath(final_dir)))
    if os.path.lexists(final) and (not final.is_dir() or any(final.iterdir())):
        what = "a file" if not final.is_dir() else "a folder that is not empty"
        raise FileExistsError(
            f"{final}: refusing to replace {what}; nothing was changed. Write into a new or empty folder instead"
        )
    return final


def _fill_empty(tmp: Path, final: Path) -> None:
    """Move the entries of `tmp` into the existing empty folder `final` (manifest last), then drop `tmp`.

    The folder itself stays (a mount point, someone's current directory, its
    permissions); on an error the entries moved so far are removed again.
    """
    moved: list[Path] = []
    try:
        for entry in sorted(tmp.iterdir(), key=lambda p: (p.name == "manifest.json", p.name)):
            os.replace(entry, final / entry.name)
            moved.append(final / entry.name)
    except BaseException:
        for path in moved:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    fsync_dir(final)
    tmp.rmdir()


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`, moving an existing `final` aside until it succeeded."""
    backup = None
    if final.exists():
        backup = final.parent / f".{final.name}.{_OLD}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
