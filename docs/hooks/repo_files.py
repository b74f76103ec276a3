"""MkDocs hook: serve the repository files the docs link to, so links work on GitHub and on the site.

The pages link to files outside ``docs/`` the way GitHub shows them (e.g.
``../benchmarks/RESULTS.md``, ``../examples/milvus_in_place.py``,
``../benchmarks/results/quality_tau0.05.png``). MkDocs only serves files inside
``docs_dir``, so this hook

1. collects every relative link of the pages (and, transitively, of the linked
   Markdown files) that leaves ``docs/`` but stays inside the repository and exists,
2. adds each such file to the site under ``_repo/<its repository path>`` (Markdown
   files become pages, images and code are copied as they are), and
3. rewrites those links in the Markdown handed to MkDocs (never in the files) to
   point at the served copy.

Links that leave the repository or point at nothing are left alone, so the strict
build reports them. Code (fenced blocks and inline backticks) is never rewritten.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

PREFIX = "_repo"
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def _repo_root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _docs_prefix(config) -> str:
    return Path(config["docs_dir"]).resolve().relative_to(_repo_root(config)).as_posix()


def _is_relative(target: str) -> bool:
    return not (target.startswith(("#", "/", "mailto:")) or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target))


def _outside_code(markdown: str):
    """Yield (is_code, text) chunks: fenced blocks and inline code spans are code."""
    fence = None
    for line in markdown.splitlines(keepends=True):
        match = _FENCE.match(line)
        if fence is not None:
            yield True, line
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            continue
        if match:
            fence = match.group(1)
            yield True, line
            continue
        for i, part in enumerate(re.split(r"(`+[^`]*`+)", line)):
            yield i % 2 == 1, part


def repo_links(markdown: str, repo_path: str) -> list[str]:
    """Repository paths (normalized, no anchor) of the relative links in `markdown` of the file at `repo_path`."""
    found = []
    for is_code, text in _outside_code(markdown):
        if is_code:
            continue
        for match in _LINK.finditer(text):
            target = match.group(2).split("#")[0]
            if target and _is_relative(target):
                found.append(posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), target)))
    return found


def _site_uri(repo_path: str, docs: str) -> str:
    """Where a repository file lives in the site's source tree."""
    if repo_path.startswith(docs + "/"):
        return repo_path[len(docs) + 1:]
    return f"{PREFIX}/{repo_path}"


def _repo_path(src_uri: str, docs: str) -> str:
    return src_uri[len(PREFIX) + 1:] if src_uri.startswith(PREFIX + "/") else f"{docs}/{src_uri}"


def on_files(files: Files, config) -> Files:
    """Add the repository files the pages link to (transitively through linked Markdown)."""
    root, docs = _repo_root(config), _docs_prefix(config)
    queue = [f"{docs}/{f.src_uri}" for f in files if f.src_uri.endswith(".md")]
    seen = set(queue)
    while queue:
        page = queue.pop()
        for target in repo_links((root / page).read_text(encoding="utf-8"), page):
            path = root / target
            inside = not target.startswith("../") and target != ".."
            if target in seen or not inside or not path.is_file() or target.startswith(docs + "/"):
                continue
            seen.add(target)
            files.append(File.generated(config, f"{PREFIX}/{target}", abs_src_path=str(path)))
            if target.endswith(".md"):
                queue.append(target)
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    """Point links to repository files at their served copies."""
    docs, root = _docs_prefix(config), _repo_root(config)
    here = _repo_path(page.file.src_uri, docs)

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        path, _, anchor = target.partition("#")
        if not path or not _is_relative(path):
            return match.group(0)
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(here), path))
        if not (root / repo_path).is_file() or files.get_file_from_path(_site_uri(repo_path, docs)) is None:
            return match.group(0)
        new = posixpath.relpath(_site_uri(repo_path, docs), posixpath.dirname(page.file.src_uri) or ".")
        return f"{match.group(1)}{new}{'#' + anchor if anchor else ''}{match.group(3) or ''})"

    return "".join(text if is_code else _LINK.sub(rewrite, text) for is_code, text in _outside_code(markdown))
