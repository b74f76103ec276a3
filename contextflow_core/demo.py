"""`make demo` / `contextflow demo`: the main job on the embedded defaults.

Index the synthetic corpus, evaluate the raw embedded generator and the shipped
reader adapter zero-shot (EM, F1, recall@k), train question encoder (full) and
generator (LoRA, on top of the reader) jointly on the marginal likelihood,
evaluate again, print the three columns side by side (raw model, reader before
training, after joint training), save the curves plot and the model, and answer a
few held-out questions with sources in each decoding mode. All figures printed
come from this run.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

SIZES = {  # entities, eval questions, train steps, questions answered in every decoding mode at the end
    "quick": (30, 12, 24, 2),
    "full": (60, 24, 60, 2),
}
COLUMNS = ("raw model", "reader (before training)", "after joint training")
METRICS = ("loss", "exact_match", "f1", "recall@1", "recall@k", "mrr")


def _header() -> str:
    import transformers

    return (
        f"device=cpu threads={torch.get_num_threads()} python={platform.python_version()} "
        f"torch={torch.__version__} transformers={transformers.__version__}"
    )


def _train_config(output_dir: Path, steps: int, seed: int):
    from .config import TrainConfig

    return TrainConfig(
        num_epochs=10,
        max_steps=steps,
        learning_rate=2e-4,
        question_encoder_lr=5e-5,
        generator_lr=1e-3,
        train_mode="joint",
        generator_lora=True,
        lora_r=16,
        lora_alpha=32,
        warmup_ratio=0.1,
        eval_steps=steps // 2,
        save_steps=steps // 2,
        output_dir=str(output_dir),
        resume=False,
        save_total_limit=1,
        log_every=2,
        seed=seed,
        num_docs=4,
    )


def _show_answers(model, examples, num_docs: int) -> None:
    for ex in examples:
        print(f"\nQ: {ex.question}    (gold: {ex.answer}, gold passage {ex.gold_ids})")
        for mode in ("thorough", "fast", "concat"):
            start = time.perf_counter()
            ans = model.generate(questions=[ex.question], num_docs=num_docs, max_new_tokens=16, decoding=mode)[0]
            took = time.perf_counter() - start
            top = ", ".join(f"{p.id} ({w:.2f})" for p, w in ans.sources[:3])
            print(f"  {mode:<8} {took:5.1f}s  A: {ans.text!r}\n           sources: {top}")


def comparison_rows(raw: dict, reader: dict, after: dict, keys=METRICS) -> list[dict]:
    """One row per metric with the three columns of `COLUMNS` (raw model, reader, after training)."""
    return [{"metric": k, COLUMNS[0]: raw[k], COLUMNS[1]: reader[k], COLUMNS[2]: after[k]} for k in keys]


def _evaluate_raw(index, test, kwargs: dict) -> dict:
    """The embedded generator without the reader adapter, over the same index (freed on return)."""
    from .evaluation import evaluate
    from .rag import RAGSequence

    return evaluate(RAGSequence.from_defaults(index, num_docs=4, reader=False), test, **kwargs)


def main(quick: bool = False, output_dir: str = "runs/demo", seed: int = 0) -> dict:
    """Run the demo; returns the metrics of the three columns (raw, reader, after) and the history."""
    from .artifacts import RAG, check_replaceable
    from .data import make_synthetic
    from .evaluation import evaluate
    from .rag import RAGSequence
    from .training import make_dataloader, train_rag
    from .training.report import format_table

    entities, n_eval, steps, n_show = SIZES["quick" if quick else "full"]
    out = Path(output_dir)
    check_replaceable(out / "model", RAG)  # refuse before the run, not after it
    torch.manual_seed(seed)
    print(_header())
    data = make_synthetic(num_entities=entities, seed=seed)
    print(
        f"synthetic corpus: {len(data.passages)} passages, {len(data.train)} train / "
        f"{len(data.val)} val / {len(data.test)} test questions"
    )
    p = data.passages
    model = RAGSequence.from_defaults(
        [x.text for x in p],
        ids=[x.id for x in p],
        titles=[x.title for x in p],
        metadatas=[x.metadata for x in p],
        num_docs=4,
    )
    test = data.test[:n_eval]
    kwargs: dict[str, Any] = dict(decoding="fast", max_new_tokens=16, batch_size=4, progress=True)
    raw = _evaluate_raw(model.retriever, test, kwargs)
    reader = evaluate(model, test, **kwargs)
    config = _train_config(out / "train", steps, seed)
    train_dl = make_dataloader(data.train, batch_size=2, shuffle=True, seed=seed)
    val_dl = make_dataloader(data.val[:8], batch_size=4, shuffle=False)
    history = train_rag(model, train_dl, val_dl, config=config)
    after = evaluate(model, test, **kwargs)
    print(
        format_table(
            comparison_rows(raw, reader, after), title=f"held-out test questions (n={len(test)}, K=4, fast decoding)"
        )
    )
    model.save_pretrained(out / "model")
    print(f"saved model to {out / 'model'}; curves and metrics in {out / 'train'}")
    _show_answers(model, test[:n_show], num_docs=4)
    return {"raw": raw, "reader": reader, "after": after, "history": history}


if __name__ == "__main__":
    main()
