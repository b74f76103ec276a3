"""Safe serialization: no pickle, no unsafe torch.load, no trust_remote_code by default."""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["contextflow_core", "contextflow_integrations", "contextflow"]


def _sources():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def test_sources_found():
    assert len(list(_sources())) > 20


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_or_unsafe_loading(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] in {"pickle", "cPickle", "dill", "joblib", "cloudpickle"} for n in names), \
                f"{path}: imports a pickle module"
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func.endswith("torch.load") and not func.startswith("safetensors"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("weights_only") == "True", f"{path}:{node.lineno}: torch.load without weights_only=True"
            for k in node.keywords:
                if k.arg == "trust_remote_code":
                    assert ast.unparse(k.value) != "True", f"{path}:{node.lineno}: trust_remote_code=True"
    assert not re.search(r"trust_remote_code\s*(:\s*bool\s*)?=\s*True", path.read_text()), \
        f"{path}: trust_remote_code defaults to True"


def test_scanner_catches_what_it_forbids(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport torch\ntorch.load('x')\n")
    with pytest.raises(AssertionError, match="pickle"):
        test_no_pickle_or_unsafe_loading(bad)
    bad.write_text("import torch\ntorch.load('x')\n")
    with pytest.raises(AssertionError, match="weights_only"):
        test_no_pickle_or_unsafe_loading(bad)
    bad.write_text("def f(trust_remote_code: bool = True):\n    pass\n")
    with pytest.raises(AssertionError, match="trust_remote_code"):
        test_no_pickle_or_unsafe_loading(bad)
