"""Run the Python blocks of the README and the docs pages, and check their shown output.

Boundary: test support only. Reads markdown, executes its Python fences, compares
what they print with what the page shows; knows nothing of ContextFlow itself.

Conventions (a fence's info string: its language, then option words):

- ```` ```python ````: runs offline, on the embedded default models, in a fresh
  namespace and an empty temporary working folder (relative paths such as
  ``runs/x`` land there).
- ```` ```python hub ````: needs models from the Hugging Face hub, so it is not run
  (the test is skipped with the model ids as its reason, visible under ``pytest -ra``).
  Its import statements still run, so a renamed API fails. A ``hub`` block must name
  at least one model id (``from_pretrained("org/name")`` or ``load_encoder("org/name")``).
- ```` ```python fragment ````: a fragment of a larger program that the page describes
  (it needs a launcher such as ``torchrun``, a cluster, a GPU, or names set up elsewhere),
  so it is not run (a visible skip, like ``hub``). Its import statements still run, and its
  first line must be a ``# needs: ...`` comment that says what it needs.
- ```` ```output ````, right after a Python block (only blank lines between): what
  that block prints. The block's stdout must equal it, line for line (trailing spaces
  and trailing blank lines aside). A block with no ``output`` fence may print anything.

Anything else (an ``output`` fence after no Python block, an unknown option word)
is an error, so a typo never turns a check off silently.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import io
import re
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

PYTHON_LANGS = ("python", "py", "python3")
OPTIONS = ("hub", "fragment")
_FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")  # indented too (fences inside list items)
_HUB_ID = re.compile(r"""(?:from_pretrained|load_encoder|load_generator)\(\s*["']([\w.-]+/[\w.-]+)["']""")


@dataclass
class Block:
    """One Python fence of a markdown page.

    Attributes:
        path: The markdown file.
        line: 1-based line number of the first code line (the line after the fence).
        source: The code.
        options: Option words of the info string (``{"hub"}`` or empty).
        output: The following ``output`` fence's text, or None when none is shown.
    """

    path: Path
    line: int
    source: str
    options: frozenset
    output: Optional[str] = None

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def _fences(text: str, path: Path):
    """Yield (info, first code line, code, blank-only-before) for each fence of a page."""
    lines = text.splitlines()
    i, last_end = 0, 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info, start = match["fence"], match["info"].strip(), i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            raise ValueError(f"{path}:{i + 1}: fence {fence}{info} is never closed")
        adjacent = all(not line.strip() for line in lines[last_end:i])
        yield info, start + 1, textwrap.dedent("\n".join(lines[start:end]) + "\n"), adjacent
        i = last_end = end + 1


def parse_blocks(path: Path) -> list[Block]:
    """The Python blocks of one markdown file, each with its shown output.

    Raises:
        ValueError: An ``output`` fence that follows no Python block, or an unknown
            option word on a Python fence.
    """
    blocks: list[Block] = []
    previous_was_python = False
    for info, line, code, adjacent in _fences(Path(path).read_text(encoding="utf-8"), Path(path)):
        words = info.split()
        lang = words[0] if words else ""
        if lang == "output":
            if not (previous_was_python and adjacent):
                raise ValueError(f"{path}:{line - 1}: an `output` fence must directly follow a Python block "
                                 "(only blank lines between)")
            blocks[-1].output = code
        elif lang in PYTHON_LANGS:
            unknown = set(words[1:]) - set(OPTIONS)
            if unknown:
                raise ValueError(f"{path}:{line - 1}: unknown option(s) {sorted(unknown)} on a Python fence; "
                                 f"known: {list(OPTIONS)}")
            blocks.append(Block(Path(path), line, code, frozenset(words[1:])))
        previous_was_python = lang in PYTHON_LANGS
    return blocks


def hub_models(block: Block) -> list[str]:
    """Hub model ids a ``hub`` block loads."""
    return list(dict.fromkeys(_HUB_ID.findall(block.source)))


def _compile(block: Block, tree: ast.Module):
    return compile(tree, str(block.path), "exec", dont_inherit=True)


def _parse(block: Block) -> ast.Module:
    """The block's syntax tree, with README line numbers (tracebacks point into the page)."""
    return ast.parse("\n" * (block.line - 1) + block.source, filename=str(block.path))


def run_imports(block: Block) -> None:
    """Execute only the block's top-level import statements (for blocks that cannot run)."""
    tree = _parse(block)
    tree.body = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(_compile(block, tree), {"__name__": "__main__"})


def run_block(block: Block) -> str:
    """Execute a block in a fresh namespace; return what it printed to stdout."""
    code = _compile(block, _parse(block))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(code, {"__name__": "__main__"})
    return buffer.getvalue()


def describe_failure(block: Block, exc: BaseException) -> str:
    """A short report of a block that raised: its code with page line numbers, and the
    traceback from the block's own frame down (the test harness's frames left out)."""
    frames = traceback.extract_tb(exc.__traceback__)
    first = next((i for i, frame in enumerate(frames) if frame.filename == str(block.path)), 0)
    code = "\n".join(f"{number:>5}  {text}" for number, text in enumerate(block.source.splitlines(), block.line))
    trace = "".join(traceback.format_list(frames[first:]) + traceback.format_exception_only(exc))
    return f"{block.id}: the block raised\n{code}\nTraceback (most recent call last):\n{trace}"


def _normalize(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def check_output(block: Block, printed: str) -> None:
    """Compare what a block printed with the output its page shows.

    Raises:
        AssertionError: The page shows an output that differs from `printed` (with a diff).
    """
    if block.output is None:
        return
    shown, real = _normalize(block.output), _normalize(printed)
    if shown != real:
        diff = "\n".join(difflib.unified_diff(shown, real, "shown in the page", "printed", lineterm=""))
        raise AssertionError(f"{block.id}: the output shown under this block is not what it prints:\n{diff}")


def check_block(block: Block) -> None:
    """The whole check of one block, as the page test runs it (in the current folder).

    A ``hub`` block: its model ids are listed and its imports run, then it is skipped.
    Any other block runs; an exception fails the test with the page's lines, and the
    shown output (if any) must be what it printed.
    """
    if "hub" in block.options:
        models = hub_models(block)
        assert models, f"{block.id}: a `hub` block must load at least one hub model id (from_pretrained(\"org/name\"))"
        run_imports(block)
        pytest.skip(f"{block.id} needs hub models (tests run offline): {', '.join(models)}")
    if "fragment" in block.options:
        first = block.source.lstrip().splitlines()[0] if block.source.strip() else ""
        assert first.startswith("# needs:"), f"{block.id}: a `fragment` block must start with a `# needs: ...` comment"
        run_imports(block)
        pytest.skip(f"{block.id} is a fragment; {first[2:]}")
    try:
        printed = run_block(block)
    except Exception as exc:  # report the page's lines, not the harness's
        pytest.fail(describe_failure(block, exc), pytrace=False)
    check_output(block, printed)
