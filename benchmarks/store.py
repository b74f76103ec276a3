"""Training and serving against a vector store in place (issue 15): Milvus Lite vs the in-process FAISS index.

Three measurements (CPU; never run by the test suite):

1. ``step``: one training step (forward + backward of the RAG-Sequence loss) and one
   ``generate`` on the embedded models (MiniLM + SmolLM2-135M) with K=5, the same
   passages and vectors in a FAISS `DocumentIndex` and in a Milvus Lite collection
   (`MilvusBackend`, FLAT, IP). Paired, interleaved repeats; the figure is the median of
   the per-repeat time ratios Milvus / FAISS (aim: <= 1.3x). Losses and answers are
   checked equal.
2. ``ann``: retrieval over N stored 384-d unit vectors in Milvus Lite (HNSW, IP):
   recall@10 of its top-10 against exact inner-product search (numpy), and queries per
   second, one query per request and 64 per request. Vectors are random Gaussian,
   normalised: no cluster structure, the hard case for an ANN index.
3. ``copy``: what the in-place path saves. The copy path exports every passage and
   re-embeds it with MiniLM into a FAISS index: wall time measured at N passages and
   extrapolated linearly to 100k; the in-place path re-embeds 0 passages (its
   embedding-space check embeds `probe` = 8 texts), timed too.

Run:
    python benchmarks/store.py --quick     # ~10 min on 2 free cores: ann N=100k, copy N=2k
    python benchmarks/store.py             # ann N=1M, copy N=10k
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, write_results  # noqa: E402

from contextflow_core.data.synthetic import make_synthetic  # noqa: E402
from contextflow_core.retrieval import DocumentIndex  # noqa: E402
from contextflow_core.retrieval.store import StoreRows  # noqa: E402

DIM = 384


def milvus_backend(folder: Path, name: str, index_type: str = "FLAT", params: dict | None = None):
    """An empty Milvus Lite collection (string ids, 384-d, IP) opened as a MilvusBackend."""
    from pymilvus import DataType, MilvusClient

    from contextflow_integrations.stores import MilvusBackend

    client = MilvusClient(str(folder / f"{name}.db"))
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("text", DataType.VARCHAR, max_length=65535)
    index = client.prepare_index_params()
    index.add_index("vector", index_type=index_type, metric_type="IP", params=params or {})
    client.create_collection(name, schema=schema, index_params=index)
    return MilvusBackend(client, name)


# ----------------------------------------------------------------------------- 1. step and generate
def bench_step(folder: Path, repeats: int, entities: int) -> dict:
    from contextflow_core.models import default_generator, default_question_encoder
    from contextflow_core.rag import RAGSequence

    data = make_synthetic(num_entities=entities, seed=0)
    encoder = default_question_encoder()
    generator, tokenizer = default_generator()
    index = DocumentIndex.from_passages(data.passages, encoder, show_progress=False)
    backend = milvus_backend(folder, "step")
    backend.upsert(StoreRows(index.ids, index.embeddings.numpy(), [p.text for p in data.passages],
                             [{"title": p.title or "", **p.metadata} for p in data.passages]))
    faiss_model = RAGSequence(encoder, index, tokenizer, generator, num_docs=5)
    store_model = RAGSequence(encoder, backend, tokenizer, generator, num_docs=5)
    batch = data.train[:4]
    questions, answers = [e.question for e in batch], [e.answer for e in batch]

    def step(model):
        model.zero_grad(set_to_none=True)
        loss = model(questions=questions, answers=answers).loss
        loss.backward()
        return loss.item()

    def gen(model):
        return model.generate(questions=questions[:1], max_new_tokens=16)[0].text

    rows = {"step": [], "generate": []}
    checks = {"loss_equal": True, "answer_equal": True}
    for _ in range(repeats):
        for kind, fn in (("step", step), ("generate", gen)):
            t0 = time.perf_counter(); a = fn(faiss_model); t1 = time.perf_counter()
            b = fn(store_model); t2 = time.perf_counter()
            rows[kind].append((t1 - t0, t2 - t1))
            key = "loss_equal" if kind == "step" else "answer_equal"
            checks[key] &= (abs(a - b) < 1e-4) if kind == "step" else (a == b)
    out = {"passages": len(data.passages), "k": 5, "batch": len(batch), **checks}
    for kind, pairs in rows.items():
        out[kind] = {"faiss_s": statistics.median(p[0] for p in pairs),
                     "milvus_s": statistics.median(p[1] for p in pairs),
                     "ratio_median": statistics.median(p[1] / p[0] for p in pairs), "repeats": len(pairs)}
    return out


# ----------------------------------------------------------------------------- 2. ANN over N vectors
def bench_ann(folder: Path, n: int, queries: int, ef: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    backend = milvus_backend(folder, "ann", "HNSW", {"M": 16, "efConstruction": 128})
    backend.search_params = {"ef": ef}
    vectors = np.empty((n, DIM), np.float32)
    t0, chunk = time.perf_counter(), 20_000
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), DIM)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start : start + len(block)] = block
        backend.client.insert("ann", [{"id": str(start + i), "vector": v, "text": ""}
                                      for i, v in enumerate(block.tolist())])
    insert_s = time.perf_counter() - t0
    q = rng.standard_normal((queries, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.argsort(-(q @ vectors.T), axis=1)[:, :10]  # (Q, 10)
    backend.search(q[:4], 10)  # warm-up (loads the index)
    t0 = time.perf_counter()
    single = [backend.search(q[i : i + 1], 10).ids[0] for i in range(queries)]
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = [ids for s in range(0, queries, 64) for ids in backend.search(q[s : s + 64], 10).ids]
    batched_s = time.perf_counter() - t0
    hits = sum(len({str(j) for j in exact[i]} & set(single[i])) for i in range(queries))
    return {"n": n, "dim": DIM, "index": "HNSW M=16 efConstruction=128", "ef": ef, "queries": queries,
            "insert_s": insert_s, "recall@10": hits / (10 * queries), "qps_1_per_request": queries / single_s,
            "qps_64_per_request": queries / batched_s, "batched_equals_single": batched == single}


# ----------------------------------------------------------------------------- 3. copy vs in place
def bench_copy(folder: Path, n: int) -> dict:
    from contextflow_core.models import default_question_encoder
    from contextflow_core.retrieval.space_check import check_embedding_space

    encoder = default_question_encoder()
    data = make_synthetic(num_entities=max(1, n // 5), seed=1)
    passages = data.passages[:n]
    backend = milvus_backend(folder, "copy")
    vectors = encoder.encode([p.text for p in passages], batch_size=128)
    backend.upsert(StoreRows([p.id for p in passages], vectors.numpy(), [p.text for p in passages],
                             [{"title": p.title or ""} for p in passages]))
    t0 = time.perf_counter()  # the copy path: export every row, re-embed, build the private index
    texts, ids = [], []
    for rows in backend.iter_rows(2000):
        texts += rows.texts
        ids += rows.ids
    export_s = time.perf_counter() - t0
    DocumentIndex.from_texts(texts, encoder, ids=ids, show_progress=False)
    copy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = check_embedding_space(backend, encoder)
    check_s = time.perf_counter() - t0
    return {"n": len(passages), "copy_s": copy_s, "export_s": export_s, "reembedded_copy": len(passages),
            "copy_s_per_100k_extrapolated": copy_s * 100_000 / len(passages), "reembedded_in_place": 0,
            "in_place_check_s": check_s, "in_place_probe_texts": report.probed}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="step,ann,copy", help="comma-separated: step, ann, copy")
    parser.add_argument("--ann-n", type=int, default=None, help="stored vectors (default 1M, quick 100k)")
    parser.add_argument("--copy-n", type=int, default=None, help="passages for the copy path (10k, quick 2k)")
    parser.add_argument("--repeats", type=int, default=None, help="step/generate repeats (default 7, quick 3)")
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--tag", default="", help="suffix of the results file name (store<_tag>[_quick].json)")
    args = parser.parse_args(argv)
    config = {"quick": args.quick, "parts": args.parts, "ann_n": args.ann_n or (100_000 if args.quick else 1_000_000),
              "copy_n": args.copy_n or (2_000 if args.quick else 10_000),
              "repeats": args.repeats or (3 if args.quick else 7), "ef": args.ef, "entities": 40}
    env = header("store", config)
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="contextflow-store-bench-"))
    results: dict = {"env": env, "config": config}
    try:
        parts = args.parts.split(",")
        if "step" in parts:
            results["step"] = bench_step(folder, config["repeats"], config["entities"])
            print("step:", results["step"], flush=True)
        if "ann" in parts:
            results["ann"] = bench_ann(folder, config["ann_n"], 200 if args.quick else 1000, args.ef)
            print("ann:", results["ann"], flush=True)
        if "copy" in parts:
            results["copy"] = bench_copy(folder, config["copy_n"])
            print("copy:", results["copy"], flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_results(f"store_{args.tag}" if args.tag else "store", results, args.quick)


if __name__ == "__main__":
    main()
