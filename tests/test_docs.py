"""The documentation: the site builds strictly, public names have docstrings, links stay inside the repository.

The pages' Python blocks are run by `test_readme.py`; this file checks the site and the links.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)]
PACKAGES = ["contextflow", "contextflow_core", "contextflow_core.models", "contextflow_core.retrieval",
            "contextflow_core.training", "contextflow_core.evaluation", "contextflow_core.data",
            "contextflow_integrations.langchain", "contextflow_integrations.llamaindex"]
OUR_CODE = ("contextflow", "contextflow_core", "contextflow_integrations")


def _hooks():
    spec = importlib.util.spec_from_file_location("repo_files_hook", DOCS / "hooks" / "repo_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mkdocs_build_strict(tmp_path):
    for package in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(package.split(".")[0]) is None or importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install 'contextflow[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    site = tmp_path / "site"
    assert "RAGSequence" in (site / "api" / "core.html").read_text(encoding="utf-8")
    assert "usage: contextflow train" in (site / "cli.html").read_text(encoding="utf-8")
    assert (site / "_repo" / "benchmarks" / "RESULTS.html").is_file()
    assert (site / "_repo" / "benchmarks" / "results" / "quality_tau0.05.png").is_file()


def _public_objects():
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isroutine(obj):
                yield f"{package}.{name}", obj


def _own_members(cls):
    """Public functions and properties defined in `cls` itself, by our code."""
    for attr, value in vars(cls).items():
        fn = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        fn = fn.fget if isinstance(fn, property) else fn
        if attr.startswith("_") or not inspect.isfunction(fn) or not fn.__module__.startswith(OUR_CODE):
            continue
        yield attr, fn


def test_every_public_name_and_its_methods_have_a_docstring():
    missing = []
    for name, obj in _public_objects():
        if not (obj.__doc__ or "").strip():  # a class's own docstring, never its parent's
            missing.append(name)
        if inspect.isclass(obj) and obj.__module__.startswith(OUR_CODE):
            missing += [f"{name}.{attr}" for attr, fn in _own_members(obj) if not (fn.__doc__ or "").strip()]
    assert not missing, f"public names without a docstring: {sorted(set(missing))}"


def _links():
    hooks = _hooks()
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        for target in hooks.repo_links(page.read_text(encoding="utf-8"), rel):
            yield rel, target


def test_every_relative_link_of_the_readme_and_the_docs_stays_inside_the_repository_and_exists():
    bad = [(page, target) for page, target in _links()
           if target.startswith("../") or target == ".." or not (ROOT / target).exists()]
    assert not bad, f"links that leave the repository or point at nothing: {bad}"


def test_no_page_points_at_files_outside_the_repository():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert "DESIGN.md" not in text and "/work/shared" not in text and "../shared" not in text, page
        assert not re.search(r"\]\((/|file:)", text), f"{page}: absolute link"


def test_the_link_finder_skips_code_and_resolves_relative_paths():
    text = ("See [a](../benchmarks/RESULTS.md#x), ![p](img/a.png \"t\") and [web](https://x.org).\n"
            "`[not](code.md)`\n```md\n[not](fenced.md)\n```\n[b](#anchor)\n")
    assert _hooks().repo_links(text, "docs/page.md") == ["benchmarks/RESULTS.md", "docs/img/a.png"]


def _subcommands(parser: argparse.ArgumentParser, prefix=()):
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield " ".join(prefix)
        return
    for name, sub in actions[0].choices.items():
        yield from _subcommands(sub, (*prefix, name))


def test_the_cli_page_shows_every_subcommand():
    from contextflow_core.cli import build_parser

    shown = set(re.findall(r"^<!-- contextflow-help:([^>]*)-->", (DOCS / "cli.md").read_text(), re.MULTILINE))
    shown = {" ".join(s.split()) for s in shown}
    assert set(_subcommands(build_parser())) | {""} == shown


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))

    def entries(nav):
        for item in nav:
            for value in (item.values() if isinstance(item, dict) else [item]):
                yield from (entries(value) if isinstance(value, list) else [value])

    nav = set(entries(config["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in PAGES if p.is_relative_to(DOCS)}
    assert nav == pages
