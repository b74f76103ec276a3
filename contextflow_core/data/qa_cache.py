"""The append-only reply cache of `generate_qa`: an interrupted run resumes, a rerun is free.

Boundary: a JSONL file of writer replies keyed by (passage id, prompt hash, repeat,
writer identity). No knowledge of prompts, parsing or filters.

File layout: the first line is the header ``{"contextflow": "qa_cache", "version": 1}``
(so a file ContextFlow did not write is refused, never appended to); every further line
is one reply::

    {"key": "<sha256>", "passage_id": "p3", "prompt_sha": "<sha256>", "repeat": 0,
     "writer": "cloze", "reply": "Who founded Tarsk?"}

Each batch of replies is appended, flushed and fsynced as soon as the writer returns it,
so a run stopped at any point (Ctrl-C, a crash, a power cut) keeps every finished batch.
A torn last line (the run died mid-write) is dropped when the cache is opened; a bad line
anywhere else is an error, since the file was then edited or written by something else.
One process at a time may append to a cache file.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "qa_cache.jsonl")
    >>> cache = ReplyCache(path)
    >>> key = reply_key("p1", "Passage: ...", 0, "cloze")
    >>> cache.append([{"key": key, "passage_id": "p1", "reply": "Who?"}])
    >>> ReplyCache(path).get(key)
    'Who?'
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from contextflow_core.io_utils import atomic_write_text, fsync_dir

__all__ = ["CACHE_HEADER", "ReplyCache", "prompt_sha", "reply_key"]

CACHE_HEADER = {"contextflow": "qa_cache", "version": 1}


def prompt_sha(prompt: str) -> str:
    """SHA-256 hex digest of a prompt's UTF-8 bytes."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def reply_key(passage_id: str, prompt: str, repeat: int, writer: str) -> str:
    """The cache key of one writer call.

    Args:
        passage_id: Id of the passage the prompt was built from.
        prompt: The filled template.
        repeat: How many identical prompts for this passage came before (0 unless the same
            prompt is asked several times, as in abstractive mode with several questions).
        writer: The writer's identity (`writer_identity`).

    Returns:
        A SHA-256 hex digest.
    """
    payload = json.dumps([passage_id, prompt_sha(prompt), repeat, writer], ensure_ascii=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ReplyCache:
    """Writer replies on disk, keyed by `reply_key`.

    Args:
        path: The cache file: new (created with its header, parent folders too), empty, or a
            file this class wrote earlier.

    Raises:
        ValueError: `path` is a folder, or a file that is not a ContextFlow QA cache, or holds
            a malformed line before its last one (the message names file and line).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)) or str(path) == "":
            raise ValueError(f"cache: expected a file path (str or os.PathLike), got {path!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"cache: expected a file path, got the folder {str(self.path)!r}")
        self._replies: dict[str, str] = {}
        self.torn_lines = 0
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(CACHE_HEADER) + "\n")
            fsync_dir(self.path.parent)
        else:
            self._load()

    def __len__(self) -> int:
        return len(self._replies)

    def __contains__(self, key: object) -> bool:
        return key in self._replies

    def get(self, key: str) -> str | None:
        """The cached reply for `key`, or None."""
        return self._replies.get(key)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append reply records (each with ``key`` and a str ``reply``), flushed and fsynced.

        Args:
            records: JSON-serialisable dicts; later records win over earlier ones with the same key.
        """
        if not records:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self._replies[r["key"]] = r["reply"]

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        where = f"cache file {str(self.path)!r}"
        if not lines:  # a single line without newline: a torn header, or not our file
            self._check_header(torn, where)
            raise ValueError(f"cache: {where} holds only a header without its newline; pass a new path")
        self._check_header(lines[0], where)
        for number, line in enumerate(lines[1:], start=2):
            if line.strip():
                self._add(line, f"{where}, line {number}")
        if torn:
            self._drop_torn_tail(len(data) - len(torn))

    def _check_header(self, line: bytes, where: str) -> None:
        try:
            header = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict) or header.get("contextflow") != CACHE_HEADER["contextflow"]:
            raise ValueError(
                f"cache: {where} is not a ContextFlow QA cache (its first line is not "
                f"{json.dumps(CACHE_HEADER)}); it is left untouched: pass a new path"
            )
        if header.get("version") != CACHE_HEADER["version"]:
            raise ValueError(
                f"cache: {where} has version {header.get('version')!r}, expected "
                f"{CACHE_HEADER['version']}; pass a new path"
            )

    def _add(self, line: bytes, where: str) -> None:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"cache: invalid JSON in {where} (only the last line may be torn); "
                "the file was changed by something else: pass a new path"
            ) from e
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("key"), str)
            or not isinstance(record.get("reply"), str)
        ):
            raise ValueError(
                f"cache: expected an object with string 'key' and 'reply' in {where}, "
                f"got {str(record)[:80]!r}; pass a new path"
            )
        self._replies[record["key"]] = record["reply"]

    def _drop_torn_tail(self, size: int) -> None:
        """Cut the torn last line (a run that died mid-write), so appends start on a fresh line."""
        self.torn_lines = 1
        with self.path.open("r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
