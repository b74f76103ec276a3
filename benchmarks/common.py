"""Shared helpers of the benchmark scripts (never part of the test suite).

- `header(name, config, device)`: the first lines of every output (device, versions,
  threads, the full config as JSON); the same facts go into every results JSON.
- `write_results(name, payload, quick)`: benchmarks/results/<name>[_quick].json.
- `PeakMemory`: peak of live tensor storage bytes allocated inside a block, on any
  device, via a `TorchDispatchMode` (see README.md, "Measuring peak memory").
- `summary(values)`: median, quartiles, min, max; `paired_ratios(a, b)`.
- `lean_core()`: contextflow_core.{config,types,loss,prompts,scoring,io_utils} without running
  the package `__init__` (which imports faiss): the GPU path uses it.
- `byte_tokenizer()`: an in-memory byte-level tokenizer with a chat template (no files).

Run `python benchmarks/common.py` to validate `PeakMemory` on toys with known sizes.
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MB = 1024 ** 2
if str(ROOT) not in sys.path:  # the repo tree may not be pip-installed (GPU machine)
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- environment
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return f"cpu: {cpu_name()}, {os.cpu_count()} logical cores"


def environment(device: str = "cpu") -> dict[str, Any]:
    import transformers

    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "load_average": _loadavg(),
    }


def _loadavg() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def header(name: str, config: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Print the header line and the config as JSON; return the environment record."""
    env = environment(device)
    print(f"# benchmark={name} date={env['date']} device={env['device_name']} torch={env['torch']} "
          f"transformers={env['transformers']} python={env['python']} threads={env['threads']} "
          f"load_average={env['load_average']}", flush=True)
    print("# config: " + json.dumps(config, sort_keys=True), flush=True)
    return env


def write_results(name: str, payload: dict[str, Any], quick: bool) -> Path:
    path = results_path(name, quick, "json")
    text = json.dumps(_json_safe(payload), indent=1, sort_keys=False) + "\n"
    lean_core()["io_utils"].atomic_write_text(path, text)  # a killed run never leaves a half-written file
    print(f"# wrote {os.path.relpath(path, ROOT)}", flush=True)
    return path


def results_path(name: str, quick: bool, ext: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{name}{'_quick' if quick else ''}.{ext}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    return value


def log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- statistics
def summary(values: Sequence[float]) -> dict[str, float]:
    """median, q1, q3 (inclusive quartiles), min, max, n."""
    v = sorted(float(x) for x in values)
    if not v:
        return {"n": 0}
    q1, q3 = (statistics.quantiles(v, n=4, method="inclusive")[::2] if len(v) > 1 else (v[0], v[0]))
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v)}


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Summary of numerator[i] / denominator[i] (pairs measured in the same round)."""
    return summary([a / b for a, b in zip(numerator, denominator)])


def fmt(s: dict[str, float], scale: float = 1.0, digits: int = 3) -> str:
    """'median [q1, q3]' of a summary."""
    if not s.get("n"):
        return "-"
    return (f"{s['median'] * scale:.{digits}g} [{s['q1'] * scale:.{digits}g}, {s['q3'] * scale:.{digits}g}]")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v).replace("|", "\\|").replace("\n", "\\n")


# ----------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


# ----------------------------------------------------------------------------- memory
class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storages allocated inside the block and alive at the same time.

    Every aten op dispatched inside the block (forward, autograd's backward, optimiser)
    passes through `__torch_dispatch__`; each output whose storage is new (not one of the
    op's inputs' storages: in-place ops and views allocate nothing) is counted with its
    `untyped_storage().nbytes()` and un-counted by a weakref callback when the storage is
    freed. Storages that existed before the block (weights) are never counted, storages
    created inside and still alive at the end (parameter gradients) are reported as
    `retained`. Blind spots: scratch buffers private to a single kernel (e.g. oneDNN or
    flash-attention workspaces) and caching-allocator rounding; see README.md.

    Example:
        >>> with PeakMemory() as mem:
        ...     x = torch.empty(25 * 2**20)  # 100 MiB
        >>> round(mem.peak / 2**20)
        100
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.refs: dict[int, weakref.ref] = {}
        self.current = 0
        self.peak = 0
        self.allocations = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t, inputs)
        return out

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if key in self.live:  # a counted storage seen again (resized by an out= op?)
            if size > self.live[key]:
                self.current += size - self.live[key]
                self.live[key] = size
        elif key not in inputs:
            self.live[key] = size
            self.current += size
            self.allocations += 1
            self.refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)
        self.refs.pop(key, None)

    @property
    def retained(self) -> int:
        return self.current

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        return out


def cuda_peak(fn: Callable[[], Any], device: str) -> tuple[int, Any]:
    """(peak bytes above the allocation at entry, fn()) by torch.cuda.max_memory_allocated."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - base, out


# ----------------------------------------------------------------------------- imports
_LEAN_MODULES = ("config", "types", "loss", "prompts", "scoring", "io_utils")


def lean_core() -> dict[str, Any]:
    """{name: module} for contextflow_core's faiss-free modules, without the package __init__.

    When `contextflow_core` is not imported yet, an empty package module pointing at the
    source folder is registered in its place, so `import contextflow_core.loss` runs only
    that module (the real `__init__` imports `rag`, which imports faiss).
    """
    if "contextflow_core" not in sys.modules:
        folder = ROOT / "contextflow_core"
        spec = importlib.util.spec_from_file_location("contextflow_core", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)  # not executed: no faiss import
        sys.modules["contextflow_core"] = package
    return {name: importlib.import_module(f"contextflow_core.{name}") for name in _LEAN_MODULES}


def byte_tokenizer(model_max_length: int = 4096):
    """Byte-level tokenizer built in memory (ids 0..5 specials, byte b -> b + 6), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<pad>", "<eos>", "<bos>", "<|user|>", "<|assistant|>", "<|system|>"]
    chars = bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({chars[b]: b + len(specials) for b in range(256)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>",
                                   pad_token="<pad>", model_max_length=model_max_length)
    fast.chat_template = (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}<|system|>{% elif m['role'] == 'user' %}<|user|>"
        "{% else %}<|assistant|>{% endif %}"
        "{{ m['content'] }}{% if m['role'] != 'assistant' %}{{ '\\n' }}{% else %}<eos>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return fast


# ----------------------------------------------------------------------------- self-test
def _validate_peak_memory(device: str = "cpu") -> list[dict[str, Any]]:
    """Toys with known sizes; returns rows (case, expected MiB, measured MiB)."""
    rows = []

    def case(name, expected_mb, fn, retained_mb=None):
        with PeakMemory() as mem:
            fn()
        rows.append({"case": name, "expected_peak_MiB": expected_mb, "measured_peak_MiB": round(mem.peak / MB, 2),
                     "expected_retained_MiB": retained_mb, "measured_retained_MiB": round(mem.retained / MB, 2)})

    n = 25 * 2 ** 20  # 100 MiB of float32

    def alloc_100():
        x = torch.ones(n, device=device)
        del x

    def alloc_free_loop():
        for _ in range(5):
            x = torch.ones(n, device=device)
            del x

    def views_and_inplace():
        x = torch.ones(n, device=device)
        y = x.view(-1, 1024).t()  # a view: no new storage
        y.mul_(2.0)  # in place: none either
        del x, y

    def two_live():
        x = torch.ones(n, device=device)
        y = x * 2  # a second 100 MiB storage while x is alive
        del x, y

    w = torch.randn(1024, 1024, device=device, requires_grad=True)  # 4 MiB, allocated before the block

    def linear_fwd_bwd():  # x (16 MiB, saved for backward), y = x @ w (16 MiB), grad_y (16 MiB), w.grad (4 MiB)
        x = torch.randn(4096, 1024, device=device)
        y = x @ w
        y.backward(torch.ones_like(y))

    case("one 100 MiB tensor, freed", 100, alloc_100, 0)
    case("five 100 MiB tensors, one at a time", 100, alloc_free_loop, 0)
    case("100 MiB + view + in-place op", 100, views_and_inplace, 0)
    case("two 100 MiB tensors alive together", 200, two_live, 0)
    case("y = x @ w, backward: x, y, grad_y 16 MiB each + w.grad 4 MiB", 16 + 16 + 16 + 4, linear_fwd_bwd, 4)
    return rows


if __name__ == "__main__":
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(markdown_table(_validate_peak_memory(dev)))
