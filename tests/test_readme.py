"""The README's and docs pages' Python blocks run offline and print what the page shows.

Conventions (``python`` / ``python hub`` / ``output`` fences): see `readme_blocks`.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from readme_blocks import (Block, check_block, check_output, describe_failure, hub_models, parse_blocks, run_block,
                           run_imports)

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCKS = [block for page in PAGES for block in parse_blocks(page)]


@pytest.mark.embedded
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_page_block_runs_and_prints_what_is_shown(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output folders (runs/x) land in an empty folder
    check_block(block)


def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_checker_fails_when_the_shown_output_differs(tmp_path):
    (block,) = parse_blocks(_page(tmp_path, """\
        ```python
        print("Zorblat", [(1, 0.5)])
        ```

        ```output
        Quenia [(1, 0.5)]
        ```
        """))
    with pytest.raises(AssertionError, match=r"-Quenia \[\(1, 0\.5\)\]\n\+Zorblat \[\(1, 0\.5\)\]"):
        check_output(block, run_block(block))


def test_checker_passes_the_real_output_and_fails_a_missing_line(tmp_path):
    right, short = parse_blocks(_page(tmp_path, """\
        ```python
        for word in ["Zorblat", "Mivo"]:
            print(word, "  ")
        ```
        ```output
        Zorblat
        Mivo
        ```

        ```python
        print("Zorblat")
        print("Mivo")
        ```
        ```output
        Zorblat
        ```
        """))
    check_output(right, run_block(right))
    with pytest.raises(AssertionError, match=r"\+Mivo"):
        check_output(short, run_block(short))


def test_a_block_that_fails_fails_with_the_page_line(tmp_path):
    (block,) = parse_blocks(_page(tmp_path, """\
        Text.

        ```python
        x = 1
        rag_model.generate()
        ```
        """))
    with pytest.raises(NameError, match="rag_model") as info:
        run_block(block)
    assert info.traceback[-1].lineno + 1 == 5 and info.traceback[-1].path == tmp_path / "page.md"
    report = describe_failure(block, info.value)
    assert "    5  rag_model.generate()" in report and f'"{tmp_path / "page.md"}", line 5' in report
    assert "NameError: name 'rag_model' is not defined" in report and "readme_blocks" not in report


@pytest.mark.parametrize("text, fragment", [
    ("Text.\n\n```output\n1\n```\n", "must directly follow a Python block"),
    ("```python\nprint(1)\n```\nSee:\n```output\n1\n```\n", "must directly follow a Python block"),
    ("```python\nprint(1)\n```\n```output\n1\n```\n```output\n1\n```\n", "must directly follow a Python block"),
    ("```python notets\nprint(1)\n```\n", "unknown option(s) ['notets']"),
    ("```python\nprint(1)\n", "is never closed"),
])
def test_malformed_pages_are_errors_not_silent_skips(tmp_path, text, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_blocks(_page(tmp_path, text))


def test_hub_blocks_name_their_models_and_still_import(tmp_path):
    hub, bad_import = parse_blocks(_page(tmp_path, """\
        ```python hub
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("meta-llama/Meta-Llama-3-8B-Instruct")
        ```

        ```python hub
        from contextflow import NoSuchName
        ```
        """))
    assert hub_models(hub) == ["meta-llama/Meta-Llama-3-8B-Instruct"] and hub_models(bad_import) == []
    run_imports(hub)
    with pytest.raises(ImportError, match="NoSuchName"):
        run_imports(bad_import)


def test_check_block_fails_a_wrong_output_or_a_raising_block_and_skips_hub_blocks_visibly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wrong, raising, hub, hub_without_model, right = parse_blocks(_page(tmp_path, """\
        ```python
        print("The answer to the question is: Quenia.")
        ```

        ```output
        Zorblat
        ```

        ```python
        open("runs/x/missing.txt").read()
        ```

        ```python hub
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained("meta-llama/Meta-Llama-3-8B-Instruct")
        ```

        ```python hub
        print("no model here")
        ```

        ```python
        from pathlib import Path
        Path("written.txt").write_text("x")
        print(Path.cwd().name)
        ```

        ```output
        {cwd}
        ```
        """.replace("{cwd}", tmp_path.name)))
    with pytest.raises(AssertionError, match="-Zorblat\n\\+The answer to the question is: Quenia."):
        check_block(wrong)
    with pytest.raises(pytest.fail.Exception, match="FileNotFoundError") as failed:
        check_block(raising)
    assert 'open("runs/x/missing.txt")' in str(failed.value)
    with pytest.raises(pytest.skip.Exception, match="needs hub models.*meta-llama/Meta-Llama-3-8B-Instruct"):
        check_block(hub)
    with pytest.raises(AssertionError, match="must load at least one hub model id"):
        check_block(hub_without_model)
    check_block(right)
    assert (tmp_path / "written.txt").is_file()


def test_pytest_reports_a_wrong_output_as_failed_and_a_hub_block_as_a_visible_skip(tmp_path):
    """End to end: the same check as the README's, collected and run by pytest in a subprocess."""
    _page(tmp_path, """\
        ```python
        print("The answer to the question is: Quenia.")
        ```

        ```output
        Zorblat
        ```

        ```python hub
        import json
        model = AutoModelForCausalLM.from_pretrained("meta-llama/Meta-Llama-3-8B-Instruct")
        ```
        """)
    (tmp_path / "test_page.py").write_text(textwrap.dedent("""\
        import pytest
        from readme_blocks import check_block, parse_blocks

        @pytest.mark.parametrize("block", parse_blocks("page.md"), ids=lambda block: block.id)
        def test_block(block):
            check_block(block)
        """), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "test_page.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 skipped" in run.stdout, run.stdout
    assert "-Zorblat" in run.stdout and "+The answer to the question is: Quenia." in run.stdout
    assert "SKIPPED [1]" in run.stdout and "page.md:10 needs hub models (tests run offline): meta-llama/Meta-Llama-3-8B-Instruct" in run.stdout


def test_fences_inside_list_items_are_found_and_dedented(tmp_path):
    (block,) = parse_blocks(_page(tmp_path, """\
        1. Ask:

           ```python
           if True:
               print("Zorblat")
           ```
           ```output
           Mivo
           ```
        """))
    assert block.line == 4 and block.output == "Mivo\n"
    with pytest.raises(AssertionError, match=r"-Mivo\n\+Zorblat"):
        check_output(block, run_block(block))


def test_fragment_blocks_say_what_they_need_run_their_imports_and_skip_visibly(tmp_path):
    good, unsaid, bad_import = parse_blocks(_page(tmp_path, """\
        ```python fragment
        # needs: torchrun and a model `rag`
        from contextflow_core.training import train_rag
        train_rag(rag)
        ```

        ```python fragment
        train_rag(rag)
        ```

        ```python fragment
        # needs: nothing real
        from contextflow_core.training import no_such_name
        ```
        """))
    with pytest.raises(pytest.skip.Exception, match="is a fragment; needs: torchrun and a model `rag`"):
        check_block(good)
    with pytest.raises(AssertionError, match="must start with a `# needs: ...` comment"):
        check_block(unsaid)
    with pytest.raises(ImportError):
        check_block(bad_import)
