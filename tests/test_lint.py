"""The packages stay lint-clean, formatted and type-checked (issue 16 item 4).

The three tools read their settings from pyproject.toml ([tool.ruff], [tool.mypy]); a failure prints the tool's own
report so the fix is one look away. Caches live in .cache/ (git-ignored), so a second run takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["contextflow_core", "contextflow_integrations", "contextflow"]


def _tool(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _assert_clean(run: subprocess.CompletedProcess, what: str) -> None:
    assert run.returncode == 0, f"{what} failed (exit {run.returncode}):\n{run.stdout}\n{run.stderr}"


def test_ruff_check_is_clean():
    _assert_clean(_tool("ruff", "check", "--no-fix", *PACKAGES), "ruff check")


def test_ruff_format_check_is_clean():
    _assert_clean(_tool("ruff", "format", "--check", *PACKAGES), "ruff format --check")


@pytest.mark.slow
def test_mypy_is_clean():
    run = _tool("mypy")  # files, cache and settings come from [tool.mypy]
    _assert_clean(run, "mypy")
    assert "Success" in run.stdout, run.stdout


def test_the_tools_check_what_the_issue_names():
    """The configuration covers both packages, keeps the project's line length and ships the PEP 561 marker."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = config["tool"]
    assert tool["ruff"]["line-length"] == 120
    assert set(PACKAGES) <= set(tool["mypy"]["files"])
    assert all(not override.get("ignore_errors") for override in tool["mypy"].get("overrides", []))
    package_data = config["tool"]["setuptools"]["package-data"]
    for package in PACKAGES:
        assert "py.typed" in package_data[package]
        assert (ROOT / package / "py.typed").is_file()


def test_ruff_reports_a_planted_finding(tmp_path):
    """The check can fail: an unused import in a file under the project's settings is reported by name."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    run = _tool("ruff", "check", "--no-fix", "--config", str(ROOT / "pyproject.toml"), "--no-cache", str(bad))
    assert run.returncode == 1 and "F401" in run.stdout, run.stdout + run.stderr
