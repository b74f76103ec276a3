"""Train the reader adapter shipped in `contextflow_core/models/reader/`.

A LoRA adapter for the embedded SmolLM2-135M-Instruct that answers a question from
its passage(s) with the answer span only, trained by ContextFlow's own pieces:
`make_reader_examples` (data), `PromptBuilder` with the default `PromptConfig`
(prompts and answer + EOS labels), `score_sequences` (answer log-likelihoods) and
`rag_sequence_nll` (the RAG-Sequence loss). Example i is rendered, by i mod 3, as

- "single": the gold passage alone, one prompt;
- "rag":    one prompt per passage (K <= 2 prompts, as RAG-Sequence decoding sees them),
            loss = -log mean_k p(y | f(x, z_k)) (a uniform passage prior);
- "concat": all passages in one prompt (as "concat" decoding sees them).

Deterministic: fixed example order, `torch.manual_seed(seed)` before LoRA init,
a fixed thread count; the same seed gives byte-identical adapter files on the same
machine and library versions. Writes `adapter_model.safetensors`,
`adapter_config.json` (peft's files: `PeftModel.from_pretrained(base, dir)` loads
them) and `reader.json` (checksums, command, seeds, config, base pin, metrics).

    python benchmarks/train_reader.py                      # the shipped adapter
    python benchmarks/train_reader.py --steps 2 --out /tmp/r --skip-eval   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contextflow_core.data.reader_data import ReaderExample, make_reader_examples  # noqa: E402
from contextflow_core.io_utils import atomic_write_bytes, atomic_write_text, sha256_file  # noqa: E402
from contextflow_core.loss import rag_sequence_nll  # noqa: E402
from contextflow_core.prompts import PromptBuilder  # noqa: E402
from contextflow_core.scoring import score_sequences  # noqa: E402

SCRIPT = "benchmarks/train_reader.py"
DEFAULT_OUT = ROOT / "contextflow_core" / "models" / "reader"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
RENDERINGS = ("single", "rag", "concat")
DEV_SEED_OFFSET = 1_000_003  # dev examples come from another stream of the reader's seed space
BASE_NAME = "contextflow-embedded:SmolLM2-135M-Instruct"


@dataclass
class ReaderTrainConfig:
    """Everything that decides the adapter's bytes (with the machine and library versions).

    Attributes:
        steps: Optimiser steps.
        batch_size: Examples per step (each example seen once: steps * batch_size examples).
        learning_rate: Peak AdamW learning rate (linear warm-up over 5 %, then linear decay to 0).
        seed: Torch seed (LoRA initialisation).
        data_seed: Seed of `make_reader_examples`.
        threads: `torch.set_num_threads`.
        lora_r, lora_alpha: LoRA rank and scaling.
        target_modules: Projections that get LoRA.
        max_grad_norm: Gradient clipping.
    """

    steps: int = 32
    batch_size: int = 3
    learning_rate: float = 1e-3
    seed: int = 0
    data_seed: int = 0
    threads: int = 2
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    max_grad_norm: float = 1.0

    @property
    def num_examples(self) -> int:
        return self.steps * self.batch_size


def add_reader_lora(model, cfg: ReaderTrainConfig):
    """Wrap `model` in a fresh LoRA adapter, initialised under `cfg.seed`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def example_loss(model, builder: PromptBuilder, ex: ReaderExample, rendering: str) -> tuple[list, callable]:
    """Encoded sequences of one example and how to turn their log-probs into its loss."""
    if rendering == "single":
        return [builder.encode(ex.question, ex.gold, ex.answer)], lambda lp: -lp[0]
    if rendering == "concat":
        return [builder.encode(ex.question, ex.passages, ex.answer)], lambda lp: -lp[0]
    passages = [p for i, p in enumerate(ex.passages) if i == ex.gold_index or i == (ex.gold_index + 1) % len(ex.passages)]
    encoded = builder.encode_batch([ex.question], [passages], [ex.answer])  # gold + at most one distractor
    K = len(encoded)
    prior = torch.full((1, K), -math.log(K))  # (1, K) uniform log p(z|x)
    return encoded, lambda lp: rag_sequence_nll(prior, lp.view(1, K))


def _lr_at(step: int, cfg: ReaderTrainConfig) -> float:
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.learning_rate * (step + 1) / warm
    return cfg.learning_rate * max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))


def train_reader(model, tokenizer, examples: list[ReaderExample], cfg: ReaderTrainConfig, log=print) -> list[float]:
    """Train the LoRA-wrapped `model` in place on `examples` in their order; returns the loss per step."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    builder = PromptBuilder(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(cfg.steps):
        batch = examples[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        parts = [example_loss(model, builder, ex, RENDERINGS[(step * cfg.batch_size + i) % len(RENDERINGS)])
                 for i, ex in enumerate(batch)]
        encoded = [e for enc, _ in parts for e in enc]
        lp = score_sequences(model, encoded, builder.collate, mode="logits_to_keep")  # (N,)
        total, row = 0.0, 0
        for enc, fn in parts:
            total = total + fn(lp[row:row + len(enc)])
            row += len(enc)
        loss = total / len(parts)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        losses.append(loss.item())
        if log and (step % 10 == 0 or step == cfg.steps - 1):
            log(f"step {step + 1}/{cfg.steps} loss {losses[-1]:.4f} ({time.perf_counter() - start:.0f}s)")
    model.eval()
    return losses


def save_adapter(model, out: Path) -> dict[str, str]:
    """Write peft's adapter files into `out` (each atomically); returns their sha256."""
    out.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = BASE_NAME  # no machine path in the shipped file
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        for name in ADAPTER_FILES:
            atomic_write_bytes(out / name, (Path(tmp) / name).read_bytes())
    return {name: sha256_file(out / name) for name in ADAPTER_FILES}


def build_parser() -> argparse.ArgumentParser:
    d = ReaderTrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("steps", "batch_size", "seed", "data_seed", "threads", "lora_r", "lora_alpha"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--dev-examples", type=int, default=120)
    p.add_argument("--out", default=None, help="output folder (default: contextflow_core/models/reader)")
    p.add_argument("--skip-eval", action="store_true", help="no dev / unseen-corpus evaluation")
    p.add_argument("--eval-only", action="store_true", help="only (re-)evaluate the adapter in --out")
    return p


def command_line(argv: list[str]) -> str:
    """The command as recorded in reader.json: `python benchmarks/train_reader.py` plus the given arguments."""
    return " ".join(["python", SCRIPT] + [shlex.quote(a) for a in argv])


def config_from_args(args) -> ReaderTrainConfig:
    return ReaderTrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             seed=args.seed, data_seed=args.data_seed, threads=args.threads,
                             lora_r=args.lora_r, lora_alpha=args.lora_alpha)


def raw_generator():
    """The embedded SmolLM2 without any reader (reader=False where `default_generator` offers it)."""
    import inspect

    from contextflow_core.models.defaults import default_generator

    if "reader" in inspect.signature(default_generator).parameters:
        return default_generator(reader=False)
    return default_generator()


def _versions(cfg: ReaderTrainConfig) -> dict:
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "threads": cfg.threads,
            "machine": platform.machine()}


def add_metrics(model, tokenizer, cfg: ReaderTrainConfig, dev_examples: int, out: Path) -> dict:
    """Evaluate the trained `model` and add the figures to `out/reader.json` (training fields unchanged)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reader_eval import evaluate_reader  # benchmarks/reader_eval.py

    record = json.loads((out / "reader.json").read_text(encoding="utf-8"))
    record["metrics"] = evaluate_reader(model, tokenizer, cfg, dev_examples)
    atomic_write_text(out / "reader.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def eval_only(args) -> dict:
    """Re-run the evaluation of the adapter already in the output folder (after an interrupted run)."""
    from peft import PeftModel

    out = Path(args.out) if args.out else DEFAULT_OUT
    cfg = ReaderTrainConfig(**json.loads((out / "reader.json").read_text(encoding="utf-8"))["config"])
    torch.set_num_threads(cfg.threads)
    base, tokenizer = raw_generator()
    model = PeftModel.from_pretrained(base, str(out)).eval()
    return add_metrics(model, tokenizer, cfg, args.dev_examples, out)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.eval_only:
        return eval_only(args)
    cfg = config_from_args(args)
    out = Path(args.out) if args.out else DEFAULT_OUT
    from contextflow_core.models.base_pin import weights_sha256

    torch.set_num_threads(cfg.threads)
    model, tokenizer = raw_generator()
    base_sha = weights_sha256(model)
    examples = make_reader_examples(cfg.num_examples, seed=cfg.data_seed)
    model = add_reader_lora(model, cfg)
    start = time.perf_counter()
    losses = train_reader(model, tokenizer, examples, cfg)
    train_s = time.perf_counter() - start
    checksums = save_adapter(model, out)
    record = {"command": command_line(argv), "seed": cfg.seed, "data_seed": cfg.data_seed,
              "dev_seed": cfg.data_seed + DEV_SEED_OFFSET, "num_examples": cfg.num_examples, "steps": cfg.steps,
              "config": asdict(cfg), "renderings": list(RENDERINGS),
              "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": 0.0,
                       "target_modules": list(cfg.target_modules)},
              "base": {"name": BASE_NAME, "weights_sha256": base_sha}, "files": checksums,
              "train_seconds": round(train_s, 1), "loss_first": losses[0], "loss_last": losses[-1],
              "loss_last10_mean": sum(losses[-10:]) / len(losses[-10:]), "versions": _versions(cfg)}
    atomic_write_text(out / "reader.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    if not args.skip_eval:
        record = add_metrics(model, tokenizer, cfg, args.dev_examples, out)
    print(json.dumps({k: record[k] for k in ("files", "train_seconds", "loss_first", "loss_last")}, indent=2))
    if "metrics" in record:
        print(json.dumps(record["metrics"], indent=2))
    return record


if __name__ == "__main__":
    main()
