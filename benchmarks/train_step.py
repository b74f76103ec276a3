"""One training step (forward + backward of the loss): ContextFlow against the naive design and plain HF.

Variants, all starting from text (question, K passages, answer) and ending after `backward()`,
run alternately in one process on the same batches:

- contextflow_logits_to_keep / contextflow_hidden: `PromptBuilder.encode_batch` + `collate`
  (left padding) + `score_sequences(mode=...)` + `rag_sequence_nll` with doc log-probs from
  scores q . d_k that require grad (q a leaf standing for the live question embedding).
- naive_pad512: the design ContextFlow replaces: every prompt right-padded to 512 tokens,
  logits at every position, `log_softmax` over the whole vocabulary in float32, gather the answer
  tokens, then the same RAG loss.
- plain_hf_labels: plain HF fine-tuning of the same B*K sequences: right padding to the longest,
  `model(input_ids, attention_mask, labels=labels).loss * num_answer_tokens` (no retriever, no
  marginalisation): the cost of training the generator alone.

CPU (default): the embedded SmolLM2-135M-Instruct (49k vocabulary, float32) on synthetic-corpus
questions with their top-K passages retrieved by the embedded MiniLM encoder, real answers.
GPU (`--device cuda --gpu-config`): a random-init ~1.2B Llama-style model (Llama-3.2-1B shapes,
128k vocabulary) in bf16, B=4, K=5, ~400-500-token prompts of synthetic text under an in-memory
byte tokenizer; imports neither faiss nor the embedded models; prints one JSON line at the end.

Peak memory: `common.PeakMemory` (live tensor storages allocated during the step, weights excluded,
parameter gradients included) everywhere, and `torch.cuda.max_memory_allocated` on CUDA.

    python benchmarks/train_step.py --quick
    python benchmarks/train_step.py
    python benchmarks/train_step.py --device cuda --gpu-config
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import random
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = ("contextflow_logits_to_keep", "contextflow_hidden", "naive_pad512", "plain_hf_labels")
CF = ("contextflow_logits_to_keep", "contextflow_hidden")
IGNORE = -100


@dataclass
class StepConfig:
    """What one run of the benchmark measures (printed and saved as JSON)."""

    device: str = "cpu"
    model: str = "SmolLM2-135M-Instruct (embedded, float32)"
    dtype: str = "float32"
    batch_size: int = 2
    num_docs: int = 5
    variants: tuple = VARIANTS
    rounds: int = 8  # timed steps per variant, the variants alternating (rotated order) in each round
    warmup: int = 3  # untimed steps per variant first (each one measures peak memory)
    memory_batches: int = 3  # batches whose peak memory is measured per variant (one warm-up step each)
    num_batches: int = 6  # distinct batches cycled through
    naive_length: int = 512
    seed: int = 0
    num_entities: int = 200  # synthetic corpus (CPU)
    passages: str = "top-K retrieved by the embedded MiniLM over the synthetic corpus"
    requires_grad: str = "all generator weights (full fine-tuning); parameter grads set to None before each step"
    gpu_prompt_tokens: tuple = (400, 500)  # GPU: prompt length range (byte tokens)
    gpu_answer_tokens: tuple = (4, 12)  # GPU: answer length range (byte tokens, EOS added)
    gpu_model_shape: dict = field(default_factory=dict)
    gradient_checkpointing: bool = False  # HF activation checkpointing on the generator (every variant)


# ----------------------------------------------------------------------------- batches
@dataclass
class Batch:
    questions: list[str]
    passages: list[list[Any]]  # (B, K) Passage or str
    answers: list[str]
    q: torch.Tensor  # (B, D) question embeddings (a leaf with grad is made from it each step)
    d: torch.Tensor  # (B, K, D) passage embeddings


@dataclass
class Ctx:
    """The generator, the prompt builder and the contextflow modules a step needs."""

    model: torch.nn.Module
    builder: Any
    mods: dict[str, Any]
    device: str
    naive_length: int = 512

    @property
    def pad_id(self) -> int:
        tok = self.builder.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def contextflow_modules(gpu_safe: bool) -> dict[str, Any]:
    """contextflow_core's loss/prompts/scoring; `gpu_safe` never runs the package __init__ (faiss)."""
    if not gpu_safe:
        import contextflow_core  # noqa: F401  the real package, when faiss is there
    return common.lean_core()


def load_corpus(num_entities: int, seed: int):
    """(synthetic dataset, embedded encoder, DocumentIndex over its passages)."""
    from contextflow_core.data import make_synthetic
    from contextflow_core.models.defaults import default_question_encoder
    from contextflow_core.retrieval import DocumentIndex

    data = make_synthetic(num_entities=num_entities, seed=seed)
    encoder = default_question_encoder()
    index = DocumentIndex.from_passages(data.passages, encoder, show_progress=False)
    return data, encoder, index


def corpus_batches(corpus, batch_size: int, num_docs: int, num_batches: int, seed: int) -> list[Batch]:
    """Training questions with their retrieved top-K passages and real answers."""
    data, encoder, index = corpus
    rng = random.Random(seed)
    examples = rng.sample(list(data.train), batch_size * num_batches)
    batches = []
    for i in range(num_batches):
        rows = examples[i * batch_size:(i + 1) * batch_size]
        questions = [e.question for e in rows]
        q = encoder.encode(questions)  # (B, D)
        got = index.search(q, num_docs)
        batches.append(Batch(questions, got.passages, [e.answer for e in rows], q, got.embeddings))
    return batches


def _words(rng: random.Random, n_chars: int) -> str:
    out = []
    while sum(len(w) + 1 for w in out) < n_chars:
        out.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))))
    return " ".join(out)[:n_chars]


def synthetic_batches(builder, batch_size: int, num_docs: int, num_batches: int, prompt_tokens: Sequence[int],
                      answer_tokens: Sequence[int], seed: int, device: str, dim: int = 384) -> list[Batch]:
    """Random-text batches for the byte tokenizer: prompt lengths uniform in `prompt_tokens`."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        questions = [_words(rng, rng.randint(40, 80)).capitalize() + "?" for _ in range(batch_size)]
        answers = [_words(rng, rng.randint(answer_tokens[0] - 1, answer_tokens[1] - 1)) for _ in range(batch_size)]
        passages = []
        for question in questions:
            prefix, suffix = builder.frame_ids(question)
            frame = len(prefix) + len(suffix)
            passages.append([_words(rng, max(8, rng.randint(*prompt_tokens) - frame)) for _ in range(num_docs)])
        q = torch.nn.functional.normalize(torch.randn(batch_size, dim, generator=gen), dim=-1)
        d = torch.nn.functional.normalize(torch.randn(batch_size, num_docs, dim, generator=gen), dim=-1)
        batches.append(Batch(questions, passages, answers, q.to(device), d.to(device)))
    return batches


def batch_shapes(ctx: Ctx, batches: Sequence[Batch]) -> dict[str, Any]:
    lengths, answers, padded = [], [], []
    for b in batches:
        enc = ctx.builder.encode_batch(b.questions, b.passages, b.answers)
        lengths += [len(e.input_ids) for e in enc]
        answers += [len(e.input_ids) - e.prompt_length for e in enc]
        padded.append(max(len(e.input_ids) for e in enc))
    return {"sequences_per_step": len(batches[0].questions) * len(batches[0].passages[0]),
            "tokens_per_sequence": common.summary(lengths), "answer_tokens_with_eos": common.summary(answers),
            "padded_length_dynamic": common.summary(padded), "padded_length_naive": ctx.naive_length}


# ----------------------------------------------------------------------------- the steps
def _doc_logprobs(ctx: Ctx, batch: Batch) -> torch.Tensor:
    q = batch.q.detach().to(ctx.device).clone().requires_grad_(True)  # (B, D) live question embeddings
    scores = torch.einsum("bd,bkd->bk", q, batch.d.to(ctx.device))  # (B, K), with grad
    return ctx.mods["loss"].doc_log_probs(scores, 1.0)


def _encode(ctx: Ctx, batch: Batch):
    return ctx.builder.encode_batch(batch.questions, batch.passages, batch.answers)


def step_contextflow(ctx: Ctx, batch: Batch, mode: str):
    encoded = _encode(ctx, batch)
    seq = ctx.mods["scoring"].score_sequences(ctx.model, encoded, ctx.builder.collate, mode=mode)
    seq = seq.view(len(batch.questions), -1)  # (B, K)
    doc = _doc_logprobs(ctx, batch)
    loss = ctx.mods["loss"].rag_sequence_nll(doc, seq.to(doc.device))
    loss.backward()
    return float(loss.detach()), seq.detach().float().cpu()


def right_pad(ctx: Ctx, encoded, length: Optional[int] = None):
    """(input_ids, attention_mask, labels), each (N, L), right-padded (the HF default)."""
    longest = max(len(e.input_ids) for e in encoded)
    length = length or longest
    if longest > length:
        raise ValueError(f"a sequence of {longest} tokens does not fit the naive design's {length}")
    ids = torch.full((len(encoded), length), ctx.pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return ids.to(ctx.device), mask.to(ctx.device), labels.to(ctx.device)


def step_naive(ctx: Ctx, batch: Batch):
    ids, mask, labels = right_pad(ctx, _encode(ctx, batch), ctx.naive_length)
    logits = ctx.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (N, 512, V)
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (N, 512, V) float32
    targets = labels[:, 1:]
    keep = targets != IGNORE
    picked = logprobs[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, 511)
    seq = (picked * keep).sum(-1).view(len(batch.questions), -1)  # (B, K)
    doc = _doc_logprobs(ctx, batch)
    loss = ctx.mods["loss"].rag_sequence_nll(doc, seq)
    loss.backward()
    return float(loss.detach()), seq.detach().float().cpu()


def step_plain_hf(ctx: Ctx, batch: Batch):
    ids, mask, labels = right_pad(ctx, _encode(ctx, batch))
    out = ctx.model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
    num_tokens = (labels[:, 1:] != IGNORE).sum()
    loss = out.loss * num_tokens  # summed answer NLL over the B*K sequences
    loss.backward()
    return float(loss.detach()), None


def steps_for(ctx: Ctx) -> dict[str, Callable[[Batch], Any]]:
    return {
        "contextflow_logits_to_keep": functools.partial(step_contextflow, ctx, mode="logits_to_keep"),
        "contextflow_hidden": functools.partial(step_contextflow, ctx, mode="hidden"),
        "naive_pad512": functools.partial(step_naive, ctx),
        "plain_hf_labels": functools.partial(step_plain_hf, ctx),
    }


# ----------------------------------------------------------------------------- measuring
def _fresh(model) -> None:
    model.zero_grad(set_to_none=True)
    gc.collect()


def _rotated(items: Sequence[str], r: int) -> list[str]:
    r %= len(items)
    return list(items[r:]) + list(items[:r])


def agreement(checks: dict[str, Any]) -> dict[str, float]:
    """Max |difference| of log p(y|f(x,z)) and of the loss between the variants (same batch)."""
    out = {}
    ref = checks.get("contextflow_logits_to_keep")
    if ref is None:
        return out
    for name, (loss, seq) in checks.items():
        if seq is not None and name != "contextflow_logits_to_keep":
            out[f"{name}_seq_logprob_max_abs_diff"] = float((seq - ref[1]).abs().max())
            out[f"{name}_loss_abs_diff"] = abs(loss - ref[0])
        if name == "plain_hf_labels":
            out["plain_hf_sum_nll_vs_contextflow_abs_diff"] = abs(loss + float(ref[1].sum()))
    return out


def measure(ctx: Ctx, batches: Sequence[Batch], variants: Sequence[str], rounds: int, warmup: int,
            memory_batches: int, tracker: bool = True, say: Callable[[str], None] = common.log) -> dict[str, Any]:
    """Warm-up steps that measure peak memory, then alternating timed rounds.

    Warm-up: max(warmup, memory_batches) untimed steps per variant on batches 0, 1, ..., each under
    `PeakMemory` (CPU) or `torch.cuda.max_memory_allocated` (CUDA; plus one `PeakMemory` step per
    variant as a cross-check). Timed: `rounds` rounds, each running every variant once on the same
    batch, in an order rotated per round.
    """
    steps = {v: steps_for(ctx)[v] for v in variants}
    device, model = ctx.device, ctx.model
    cuda = device.startswith("cuda")
    checks = {}
    memory = {v: {"peak_bytes": [], "retained_bytes": [], "cuda_peak_bytes": []} for v in variants}
    for i in range(max(warmup, memory_batches)):
        batch = batches[i % len(batches)]
        for v in _rotated(variants, i):
            _fresh(model)
            if cuda:  # the first step also allocates one-time buffers (cuBLAS workspace): not recorded
                peak, out = common.cuda_peak(lambda: steps[v](batch), device)
                if i > 0 or max(warmup, memory_batches) == 1:
                    memory[v]["cuda_peak_bytes"].append(peak)
            elif tracker:
                with common.PeakMemory() as mem:
                    out = steps[v](batch)
                memory[v]["peak_bytes"].append(mem.peak)
                memory[v]["retained_bytes"].append(mem.retained)
            else:
                out = steps[v](batch)
            if i == 0:
                checks[v] = out
        say(f"  warm-up {i + 1}: " + "  ".join(
            f"{v}={(memory[v]['cuda_peak_bytes'] or memory[v]['peak_bytes'] or [0])[-1] / common.MB:.0f}MiB"
            for v in variants))
    if cuda and tracker:
        for v in variants:
            _fresh(model)
            with common.PeakMemory() as mem:
                steps[v](batches[0])
            memory[v]["peak_bytes"].append(mem.peak)
            memory[v]["retained_bytes"].append(mem.retained)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        batch = batches[r % len(batches)]
        for v in _rotated(variants, r):
            _fresh(model)
            t, _ = common.timed(lambda: steps[v](batch), device)
            times[v].append(t)
        say(f"  round {r + 1}/{rounds}: " + "  ".join(f"{v}={times[v][-1]:.3f}s" for v in variants))
    _fresh(model)
    return {"times_s": times, "memory": memory, "agreement": agreement(checks)}


def summarize(raw: dict[str, Any], variants: Sequence[str]) -> dict[str, Any]:
    """Per-variant summaries and paired ratios (same round / same batch)."""
    t, mem = raw["times_s"], raw["memory"]
    cuda = any(mem[v]["cuda_peak_bytes"] for v in variants)
    key = "cuda_peak_bytes" if cuda else "peak_bytes"
    per = {v: {"time_s": common.summary(t[v]), "peak_MiB": common.summary([b / common.MB for b in mem[v][key]]),
               "tracked_peak_MiB": common.summary([b / common.MB for b in mem[v]["peak_bytes"]]),
               "retained_MiB": common.summary([b / common.MB for b in mem[v]["retained_bytes"]])}
           for v in variants}
    ratios = {}
    pairs = [("naive_pad512", c) for c in CF] + [(c, "plain_hf_labels") for c in CF]
    for a, b in pairs:
        if a in variants and b in variants:
            ratios[f"{a}/{b}"] = {"time": common.paired_ratios(t[a], t[b]),
                                  "peak_memory": common.paired_ratios(mem[a][key], mem[b][key])}
    return {"per_variant": per, "ratios": ratios, "memory_measure": key}


GOALS = {  # ratio name -> (quantity, comparison, threshold)
    "naive_pad512/contextflow_logits_to_keep": (("time", ">=", 2.0), ("peak_memory", ">=", 4.0)),
    "naive_pad512/contextflow_hidden": (("time", ">=", 2.0), ("peak_memory", ">=", 4.0)),
    "contextflow_logits_to_keep/plain_hf_labels": (("time", "<=", 1.0), ("peak_memory", "<", 1.0)),
    "contextflow_hidden/plain_hf_labels": (("time", "<=", 1.0), ("peak_memory", "<", 1.0)),
}


def check_goals(ratios: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, goals in GOALS.items():
        if name not in ratios:
            continue
        for quantity, op, threshold in goals:
            value = ratios[name][quantity]["median"]
            ok = value >= threshold if op == ">=" else value <= threshold if op == "<=" else value < threshold
            out[f"{name} {quantity} {op} {threshold}"] = {"median": round(value, 3), "met": bool(ok)}
    return out


def report(summary: dict[str, Any]) -> str:
    rows = []
    for v, s in summary["per_variant"].items():
        rows.append({"variant": v, "step time s, median [IQR]": common.fmt(s["time_s"]),
                     "min-max s": f"{s['time_s']['min']:.3g}-{s['time_s']['max']:.3g}",
                     "peak MiB, median [IQR]": common.fmt(s["peak_MiB"], digits=4),
                     "of which param grads MiB": common.fmt(s["retained_MiB"], digits=4)})
    lines = [common.markdown_table(rows), ""]
    ratio_rows = [{"ratio": name, "time, median [IQR]": common.fmt(r["time"]),
                   "time min-max": f"{r['time']['min']:.3g}-{r['time']['max']:.3g}",
                   "peak memory, median [min-max]": f"{r['peak_memory']['median']:.3g} "
                                                    f"[{r['peak_memory']['min']:.3g}-{r['peak_memory']['max']:.3g}]"}
                  for name, r in summary["ratios"].items()]
    lines.append(common.markdown_table(ratio_rows))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- models
GPU_SHAPE = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                 tie_word_embeddings=True)


def random_llama(shape: dict[str, Any], dtype: torch.dtype, device: str, tokenizer, seed: int = 0):
    """A random-init LlamaForCausalLM of `shape`, built directly on `device` in `dtype`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    config.use_cache = False
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- main
def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: fewer rounds and batches")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-config", action="store_true",
                    help="random-init ~1.2B Llama (bf16), B=4, K=5, ~512-token prompts; no faiss, no embedded models")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--num-docs", type=int)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS)
    ap.add_argument("--prompt-tokens", type=int, nargs=2, metavar=("MIN", "MAX"),
                    help="--gpu-config: prompt length range in tokens (default 400 500)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="enable HF gradient checkpointing on the generator for every variant")
    ap.add_argument("--tag", default="", help="results file suffix")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    return ap.parse_args(argv)


def make_config(args) -> StepConfig:
    if args.gpu_config:
        cfg = StepConfig(device=args.device, model="random-init Llama (Llama-3.2-1B shapes), bf16", dtype="bfloat16",
                         batch_size=4, num_docs=5, rounds=6 if args.quick else 10, warmup=3, memory_batches=3,
                         num_batches=4, passages="synthetic random-word text, byte tokenizer (1 token per char)",
                         gpu_model_shape=dict(GPU_SHAPE))
    elif args.quick:
        cfg = StepConfig(device=args.device, rounds=2, warmup=1, memory_batches=1, num_batches=2, num_entities=60)
    else:
        cfg = StepConfig(device=args.device)
    overrides = {k: v for k, v in (("rounds", args.rounds), ("batch_size", args.batch_size),
                                   ("num_docs", args.num_docs)) if v is not None}
    if args.variants:
        overrides["variants"] = tuple(args.variants)
    if args.prompt_tokens:
        overrides["gpu_prompt_tokens"] = tuple(args.prompt_tokens)
    if args.gradient_checkpointing:
        overrides["gradient_checkpointing"] = True
    return dataclasses.replace(cfg, **overrides)


def setup_cpu(cfg: StepConfig):
    from contextflow_core.models.defaults import default_generator

    mods = contextflow_modules(gpu_safe=False)
    model, tokenizer = default_generator()
    model.train()
    builder = mods["prompts"].PromptBuilder(tokenizer)
    ctx = Ctx(model, builder, mods, cfg.device, cfg.naive_length)
    corpus = load_corpus(cfg.num_entities, cfg.seed)
    batches = corpus_batches(corpus, cfg.batch_size, cfg.num_docs, cfg.num_batches, cfg.seed)
    return ctx, batches


def setup_gpu(cfg: StepConfig):
    mods = contextflow_modules(gpu_safe=True)
    tokenizer = common.byte_tokenizer()
    model = random_llama(cfg.gpu_model_shape, torch.bfloat16, cfg.device, tokenizer, cfg.seed)
    model.train()
    builder = mods["prompts"].PromptBuilder(tokenizer, mods["config"].PromptConfig(max_length=cfg.naive_length))
    ctx = Ctx(model, builder, mods, cfg.device, cfg.naive_length)
    batches = synthetic_batches(builder, cfg.batch_size, cfg.num_docs, cfg.num_batches, cfg.gpu_prompt_tokens,
                                cfg.gpu_answer_tokens, cfg.seed, cfg.device)
    return ctx, batches


def main(argv=None) -> dict[str, Any]:
    args = parse(argv)
    cfg = make_config(args)
    name = ("train_step_gpu" if args.gpu_config else "train_step") + (f"_{args.tag}" if args.tag else "")
    env = common.header(name, dataclasses.asdict(cfg), cfg.device)
    start = time.perf_counter()
    ctx, batches = (setup_gpu if args.gpu_config else setup_cpu)(cfg)
    if cfg.gradient_checkpointing:
        ctx.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    shapes = batch_shapes(ctx, batches)
    shapes["parameters"] = _count(ctx.model)
    shapes["vocab_size"] = ctx.model.config.vocab_size
    env["linear_cross_entropy_in_torch"] = hasattr(torch.nn.functional, "linear_cross_entropy")
    common.log(f"# setup {time.perf_counter() - start:.1f}s; shapes: {json.dumps(shapes)}")
    raw = measure(ctx, batches, cfg.variants, cfg.rounds, cfg.warmup, cfg.memory_batches)
    summary = summarize(raw, cfg.variants)
    goals = check_goals(summary["ratios"])
    common.log(report(summary))
    common.log("agreement between variants: " + json.dumps(raw["agreement"]))
    common.log("goals: " + json.dumps(goals))
    result = {"env": env, "config": dataclasses.asdict(cfg), "shapes": shapes, "summary": summary, "goals": goals,
              "agreement": raw["agreement"], "raw": raw, "wall_s": time.perf_counter() - start}
    if not args.no_write:
        common.write_results(name, result, args.quick)
    line = {"benchmark": name, "device": env["device_name"], "torch": env["torch"], "quick": args.quick,
            "ratios_median": {k: {q: round(v[q]["median"], 3) for q in ("time", "peak_memory")}
                              for k, v in summary["ratios"].items()},
            "time_s_median": {v: round(s["time_s"]["median"], 4) for v, s in summary["per_variant"].items()},
            "peak_MiB_median": {v: round(s["peak_MiB"]["median"], 1) for v, s in summary["per_variant"].items()},
            "tracked_peak_MiB_median": {v: round(s["tracked_peak_MiB"]["median"], 1)
                                        for v, s in summary["per_variant"].items()},
            "goals_met": {k: g["met"] for k, g in goals.items()}, "wall_s": round(result["wall_s"], 1)}
    print(json.dumps(line), flush=True)
    return result


if __name__ == "__main__":
    main()
