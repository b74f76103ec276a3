"""Figures recorded in `contextflow_core/models/reader/reader.json` by `benchmarks/train_reader.py`.

- reader dev set: held-out `make_reader_examples` (another seed stream than training), all
  passages of an example in one prompt (as "concat" decoding), greedy; EM / F1;
- unseen-template corpus (`benchmarks/unseen_corpus.py`): zero-shot EM / F1 / recall of a
  RAGSequence (embedded MiniLM retrieval, K = 2, "fast" decoding), raw model vs reader;
- README quick start: the answers in every decoding mode, raw model vs reader.

The raw figures come from the same LoRA-wrapped model with its adapter disabled.
"""
from __future__ import annotations

import contextlib
import time

README_TEXTS = ["Zorblat is the capital of Quenia.", "The river Mivo flows through Tarsk."]
README_QA = [("What is the capital of Quenia?", "Zorblat"), ("Which river flows through Tarsk?", "Mivo")]
DECODINGS = ("thorough", "fast", "concat")


def dev_metrics(rag, examples, batch_size: int = 8, max_new_tokens: int = 24) -> dict:
    """EM / F1 of greedy answers to `examples` with all their passages in one prompt."""
    from contextflow_core.evaluation import qa_metrics
    from contextflow_core.generation import _run_generate

    predictions = []
    with rag.inference():
        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            encoded = [rag.prompts.encode(ex.question, ex.passages) for ex in chunk]
            predictions += _run_generate(rag, encoded, max_new_tokens)
    out = qa_metrics(predictions, [[ex.answer] for ex in examples])
    out["num_examples"] = len(examples)
    out["samples"] = [{"question": ex.question, "answer": ex.answer, "prediction": p}
                      for ex, p in list(zip(examples, predictions))[:5]]
    return out


def readme_answers(generator, tokenizer, encoder) -> dict:
    """The README quick start's answers in each decoding mode."""
    from contextflow_core.rag import RAGSequence
    from contextflow_core.retrieval import DocumentIndex

    index = DocumentIndex.from_texts(README_TEXTS, encoder)
    rag = RAGSequence(question_encoder=encoder, retriever=index, generator_tokenizer=tokenizer,
                      generator=generator).eval()
    questions = [q for q, _ in README_QA]
    return {mode: [a.text for a in rag.generate(questions=questions, max_new_tokens=16, num_docs=2, decoding=mode)]
            for mode in DECODINGS}


def _unseen_and_readme(model, tokenizer, encoder) -> dict:
    from unseen_corpus import build_rag, evaluate_unseen

    rag = build_rag(model, tokenizer, encoder, num_docs=2)
    unseen = evaluate_unseen(rag, decoding="fast", num_docs=2)
    return {"unseen": unseen, "readme": readme_answers(model, tokenizer, encoder)}


def evaluate_reader(model, tokenizer, cfg, dev_examples: int) -> dict:
    """All recorded figures for the LoRA-wrapped `model` (the raw ones with its adapter disabled)."""
    from contextflow_core.data.reader_data import make_reader_examples
    from contextflow_core.models.defaults import default_question_encoder
    from train_reader import DEV_SEED_OFFSET

    start = time.perf_counter()
    encoder = default_question_encoder()
    model.eval()
    reader = _unseen_and_readme(model, tokenizer, encoder)
    with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
        raw = _unseen_and_readme(model, tokenizer, encoder)
    from unseen_corpus import build_rag

    rag = build_rag(model, tokenizer, encoder)
    dev = dev_metrics(rag, make_reader_examples(dev_examples, seed=cfg.data_seed + DEV_SEED_OFFSET))
    out = {"reader_dev": dev, "unseen_corpus": {"raw": raw["unseen"], "reader": reader["unseen"],
                                               "setup": "embedded MiniLM retrieval, K=2, decoding=fast, greedy"},
           "readme_quick_start": {"raw": raw["readme"], "reader": reader["readme"],
                                  "expected": [a for _, a in README_QA]},
           "eval_seconds": round(time.perf_counter() - start, 1)}
    print({"dev_em": dev["exact_match"], "unseen_em_raw": raw["unseen"]["exact_match"],
           "unseen_em_reader": reader["unseen"]["exact_match"], "readme": reader["readme"]}, flush=True)
    return out
