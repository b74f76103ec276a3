r"""The GPU figure: joint RAG training of a 1B Llama-shaped generator + a MiniLM-shaped encoder, in MFU.

Trains, on one GPU, a random-init Llama-shaped generator (bf16; hidden 2048, 16 layers,
32 query / 8 key-value heads, intermediate 8192, vocabulary 49152, tied embeddings:
1,073,809,408 parameters) jointly with a random-init MiniLM-shaped BERT question encoder
(hidden 384, 6 layers, 12 heads, intermediate 1536, vocabulary 30522, no pooler: 22,565,376
parameters) at K=5, through ContextFlow's own `RAGSequence` and `train_rag` (retrieval
from an `InMemoryBackend` of encoded passages), with and without gradient
checkpointing, next to plain Hugging Face fine-tuning of the same B*K prompt+answer token
sequences (`model(input_ids, attention_mask, labels=...)`, AdamW), and writes one JSON.

Tokens: every passage, question and answer has a fixed byte length under an in-memory
byte tokenizer, so every sequence has the same length s (no padding) and a step trains
B*K*s generator tokens (tokens/s counts those).

Model FLOPs per step (fwd + bwd = 3 x forward; recomputation under gradient
checkpointing is not counted, as in MFU):
    6 * N_body * (B*K*s)                      generator matmuls (every non-embedding weight)
  + 6 * V * d * (B*K*n_logits)                LM head on the positions whose logits are computed:
                                              ContextFlow's "logits_to_keep" scoring computes the
                                              answer positions only (T+1), HF labels every position (s)
  + 12 * L * d * s^2 * (B*K)                  attention scores and values (not halved for causality)
  + 6 * N_enc_body * (B*q) + 12 * L_e * d_e * q^2 * B   the trained question encoder (ContextFlow only)
MFU = model FLOPs per second / peak dense bf16 FLOP/s of the device (--peak-tflops, else
looked up by name: H100/H200 989.4, A100 312, L40S 362).

No faiss on the GPU machine: retrieval here never touches FAISS (`InMemoryBackend`); when
`import faiss` fails, a stand-in module that raises on use lets `contextflow_core` import.

    PYTHONPATH=. python3 benchmarks/gpu_train.py --out $OUT/gpu_train.json
    python benchmarks/gpu_train.py --dry-run --out /tmp/gpu_train.json     # tiny sizes, CPU, < 60 s
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import torch

GENERATOR = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=8192, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048)
ENCODER = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
               vocab_size=30522, max_position_embeddings=512)
TINY_GENERATOR = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=1024)
TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    vocab_size=512, max_position_embeddings=128)
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0}
FULL = dict(batch_size=8, num_docs=5, passage_bytes=440, question_bytes=48, answer_bytes=16, passages=256,
            warmup=3, steps=10)
DRY = dict(batch_size=2, num_docs=2, passage_bytes=60, question_bytes=24, answer_bytes=6, passages=16,
           warmup=1, steps=2)


class _Missing(types.ModuleType):
    """Stands in for a package this machine lacks; any use names it."""

    def __getattr__(self, attr):
        raise AttributeError(f"{self.__name__} is not installed here (used for {attr!r}); gpu_train.py "
                             "retrieves from an InMemoryBackend and never needs it")


def _stand_in(*names: str) -> list[str]:
    """Put a `_Missing` module in place of each of `names` that cannot be imported; returns those."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _Missing(name)
            missing.append(name)
    return missing


def _text(rng, n: int) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < n:
        words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))))
    return " ".join(words)[:n].ljust(n, "x")


def make_data(sizes: dict, seed: int = 0):
    """(passages, training batches): fixed byte lengths, so every prompt+answer sequence has one length."""
    import random

    rng = random.Random(seed)
    passages = [_text(rng, sizes["passage_bytes"]) for _ in range(sizes["passages"])]
    batches = []
    for _ in range(sizes["warmup"] + sizes["steps"]):
        qs = [_text(rng, sizes["question_bytes"] - 1) + "?" for _ in range(sizes["batch_size"])]
        batches.append({"questions": qs, "answers": [_text(rng, sizes["answer_bytes"]) for _ in qs]})
    return passages, batches


def build_models(gen_shape: dict, enc_shape: dict, dtype: torch.dtype, device: str, tokenizer):
    """Random-init generator and question encoder, built on `device` in `dtype`."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from contextflow_core.models.encoders import TextEncoder

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            gen = LlamaForCausalLM(LlamaConfig(**gen_shape, pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=tokenizer.eos_token_id, use_cache=False))
            bert = BertModel(BertConfig(**enc_shape, pad_token_id=tokenizer.pad_token_id), add_pooling_layer=False)
    finally:
        torch.set_default_dtype(previous)
    encoder = TextEncoder(bert, tokenizer, pooling="mean", max_length=64, name="minilm-shaped-random")
    return gen, encoder


def param_counts(gen, encoder) -> dict:
    """Total and matmul ("body": non-embedding) parameter counts of both models."""
    cfg = gen.config
    embed = cfg.vocab_size * cfg.hidden_size
    total = sum(p.numel() for p in gen.parameters())
    enc_total = sum(p.numel() for p in encoder.parameters())
    enc_embed = sum(p.numel() for n, p in encoder.named_parameters() if "embeddings" in n)
    return {"generator": total, "generator_body": total - embed * (1 if cfg.tie_word_embeddings else 2),
            "lm_head": embed, "encoder": enc_total, "encoder_body": enc_total - enc_embed}


def model_flops(counts: dict, gen_cfg, enc_cfg, n_seq: int, s: int, n_logits: int, q: int, batch: int,
                encoder_trains: bool) -> float:
    """Model FLOPs of one training step (the formula in the module docstring)."""
    flops = 6 * counts["generator_body"] * n_seq * s + 6 * counts["lm_head"] * n_seq * n_logits
    flops += 12 * gen_cfg.num_hidden_layers * gen_cfg.hidden_size * s * s * n_seq
    if encoder_trains:
        flops += 6 * counts["encoder_body"] * batch * q + 12 * enc_cfg.num_hidden_layers * enc_cfg.hidden_size * q * q * batch
    return float(flops)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str):
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def run_contextflow(rag, batches: list, sizes: dict, checkpointing: bool) -> dict:
    """`train_rag` over the batches (log every step); seconds per step over the steps after the warm-up."""
    from contextflow_core.config import TrainConfig
    from contextflow_core.training import train_rag

    config = TrainConfig(num_epochs=1, learning_rate=1e-5, max_grad_norm=1.0, output_dir=None, progress=False,
                         plot=False, log_every=1, gradient_checkpointing=checkpointing, eval_on_epoch_end=False,
                         save_on_epoch_end=False, resume=False, seed=0, num_docs=sizes["num_docs"])
    history = train_rag(rag, list(batches), config=config)
    marks = [r["elapsed_s"] for r in history.train]  # float(loss) syncs the device every step
    if checkpointing:
        rag.generator.gradient_checkpointing_disable()
    return {"seconds_per_step": (marks[-1] - marks[sizes["warmup"] - 1]) / sizes["steps"],
            "loss_first": history.train[0]["loss"], "loss_last": history.train[-1]["loss"]}


def hf_sequences(rag, batches: list, sizes: dict, device: str) -> list:
    """The B*K prompt+answer sequences ContextFlow trains on, per batch, as HF inputs with answer-only labels."""
    out = []
    for batch in batches:
        with torch.no_grad():
            passages = rag.retrieve(batch["questions"], sizes["num_docs"])[1].passages  # (B, K)
        enc = [rag.prompts.encode(qu, p, a) for qu, row, a in zip(batch["questions"], passages, batch["answers"])
               for p in row]
        ids = torch.tensor([e.input_ids for e in enc], device=device)
        labels = torch.tensor([e.labels for e in enc], device=device)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def run_hf(gen, sequences: list, sizes: dict, device: str, checkpointing: bool) -> dict:
    """Plain HF fine-tuning of the same sequences (causal-LM loss on the answer tokens, AdamW)."""
    if checkpointing:
        gen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    gen.train()
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-5)
    losses, start = [], None
    for i, batch in enumerate(sequences):
        if i == sizes["warmup"]:
            _sync(device)
            start = time.perf_counter()
        loss = gen(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    _sync(device)
    elapsed = time.perf_counter() - start
    if checkpointing:
        gen.gradient_checkpointing_disable()
    del opt
    return {"seconds_per_step": elapsed / sizes["steps"], "loss_first": losses[0], "loss_last": losses[-1]}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="JSON path (default: $OUT/gpu_train.json, else ./gpu_train.json)")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on CPU, a few steps (< 60 s)")
    ap.add_argument("--device", help="default: cuda when available, else cpu")
    ap.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of the device (else looked up)")
    ap.add_argument("--variants", nargs="+", default=["contextflow", "contextflow_gc", "hf", "hf_gc"],
                    choices=["contextflow", "contextflow_gc", "hf", "hf_gc"])
    return ap.parse_args(argv)


def _peak(args, device: str):
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, value in PEAK_TFLOPS.items():
            if key in name:
                return value, f"spec sheet, dense bf16 ({key})"
    return None, "unknown (give --peak-tflops)"


def setup(args):
    """(device, dtype, sizes, rag, batches, environment record)."""
    stood_in = _stand_in("faiss")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    from contextflow_core.rag import RAGSequence
    from contextflow_core.retrieval.store import InMemoryBackend

    device = args.device or ("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    sizes = DRY if args.dry_run else FULL
    tokenizer = common.byte_tokenizer()
    gen, encoder = build_models(TINY_GENERATOR if args.dry_run else GENERATOR,
                                TINY_ENCODER if args.dry_run else ENCODER, dtype, device, tokenizer)
    passages, batches = make_data(sizes)
    backend = InMemoryBackend([f"p{i}" for i in range(len(passages))],
                              encoder.encode(passages, batch_size=64).float().numpy(), passages, name="gpu-train")
    rag = RAGSequence(encoder, backend, tokenizer, gen, num_docs=sizes["num_docs"], store_check=False)
    env = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "dtype": str(dtype).split(".")[-1],
           "stand_ins": stood_in}
    return device, dtype, sizes, rag, batches, env


def main(argv=None) -> dict:
    args = parse(argv)
    started = time.perf_counter()
    device, _, sizes, rag, batches, env = setup(args)
    peak, peak_source = _peak(args, device)
    counts = param_counts(rag.generator, rag.question_encoder)
    sequences = hf_sequences(rag, batches, sizes, device)
    n_seq, s = sequences[0]["input_ids"].shape
    answer = int((sequences[0]["labels"][0] != -100).sum())  # T (answer tokens incl. EOS)
    q = len(rag.question_encoder.tokenizer(batches[0]["questions"][0])["input_ids"])
    results = {}
    for name in args.variants:
        _reset_memory(device)
        gc_on = name.endswith("_gc")
        if name.startswith("contextflow"):
            row = run_contextflow(rag, batches, sizes, gc_on)
            flops = model_flops(counts, rag.generator.config, rag.question_encoder.model.config, n_seq, s,
                                answer + 1, q, sizes["batch_size"], True)
        else:
            row = run_hf(rag.generator, sequences, sizes, device, gc_on)
            flops = model_flops(counts, rag.generator.config, None, n_seq, s, s, q, sizes["batch_size"], False)
        tflops = flops / row["seconds_per_step"] / 1e12
        results[name] = {**row, "tokens_per_s": n_seq * s / row["seconds_per_step"], "model_tflops_per_s": tflops,
                         "mfu": tflops / peak if peak else None, "peak_memory_gib": _peak_gib(device),
                         "gradient_checkpointing": gc_on, "model_flops_per_step": flops}
    report = {"benchmark": "gpu_train", "dry_run": args.dry_run, **env, "peak_tflops": peak,
              "peak_source": peak_source, "params": counts,
              "shape": {"batch_size": sizes["batch_size"], "num_docs": sizes["num_docs"], "sequences_per_step": n_seq,
                        "sequence_length": s, "answer_tokens": answer, "question_tokens": q,
                        "tokens_per_step": n_seq * s, "warmup_steps": sizes["warmup"], "timed_steps": sizes["steps"]},
              "results": results, "total_seconds": round(time.perf_counter() - started, 1)}
    out = Path(args.out or os.path.join(os.environ.get("OUT", "."), "gpu_train.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: (round(v["mfu"], 3) if v["mfu"] else None, round(v["tokens_per_s"])) for k, v in
                      results.items()}))
    return report


if __name__ == "__main__":
    main()
