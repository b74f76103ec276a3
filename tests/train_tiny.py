"""A tiny, deterministic RAG training run shared by the training tests.

Imported by tests (`build_rag`, `QA`, `tiny_config`, ...), and run as a script in
a subprocess (kill / crash-and-resume tests) or under
`python -m torch.distributed.run --nproc_per_node 2` (the 2-process CPU test).
Dropout is off everywhere so that two runs with the same seed agree to the bit.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

import torch  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

import tiny  # noqa: E402
from contextflow_core.config import TrainConfig  # noqa: E402
from contextflow_core.models.encoders import TextEncoder  # noqa: E402
from contextflow_core.rag import RAGSequence  # noqa: E402
from contextflow_core.retrieval import DocumentIndex  # noqa: E402
from contextflow_core.training import make_dataloader, train_rag  # noqa: E402

PASSAGES = [
    "Zorblat is the capital of Quenia.",
    "The river Mivo flows through Tarsk.",
    "Quenia exports blue salt.",
    "Tarsk was founded in 1204.",
    "The emblem of Quenia is a heron.",
    "Mivo is the longest river of Eldra.",
]
IDS = [f"p{i}" for i in range(len(PASSAGES))]
QA = [
    ("What is the capital of Quenia?", "Zorblat", ["p0"]),
    ("Which river flows through Tarsk?", "Mivo", ["p1"]),
    ("What does Quenia export?", "blue salt", ["p2"]),
    ("When was Tarsk founded?", "1204", ["p3"]),
    ("What is the emblem of Quenia?", "a heron", ["p4"]),
    ("Which is the longest river of Eldra?", "Mivo", ["p5"]),
    ("Name the capital city of Quenia.", "Zorblat", ["p0"]),
    ("In which year was Tarsk founded?", "1204", ["p3"]),
]


def tiny_encoder(seed: int = 0, hidden: int = 16) -> TextEncoder:
    """A BERT question encoder with no dropout and no (unused) pooler."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tiny.VOCAB_SIZE, hidden_size=hidden, intermediate_size=2 * hidden,
                     num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=256,
                     pad_token_id=tiny.PAD, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return TextEncoder(BertModel(cfg, add_pooling_layer=False), tiny.tiny_tokenizer(chat_template=False),
                       pooling="mean", max_length=64, name="tiny-bert-nodrop")


def build_rag(seed: int = 0, num_docs: int = 2, hidden: int = 32, **kwargs) -> RAGSequence:
    """A RAGSequence over PASSAGES with tiny random models (same seed -> same weights)."""
    encoder = tiny_encoder(seed)
    index = DocumentIndex.from_texts(PASSAGES, encoder, ids=IDS, show_progress=False)
    generator = tiny.tiny_generator(seed=seed, hidden=hidden)
    return RAGSequence(encoder, index, tiny.tiny_tokenizer(), generator, num_docs=num_docs, **kwargs)


def loaders(batch_size: int = 2, seed: int = 0):
    """(train, val) dataloaders over QA."""
    return make_dataloader(QA, batch_size=batch_size, seed=seed), make_dataloader(QA, batch_size=4, shuffle=False)


def tiny_config(output_dir=None, **overrides) -> TrainConfig:
    """A quick TrainConfig: 3 epochs, high learning rate, no progress output."""
    values = dict(num_epochs=3, learning_rate=5e-3, output_dir=None if output_dir is None else str(output_dir),
                  progress=False, plot=False, log_every=1, seed=0, resume=False, save_on_epoch_end=False)
    values.update(overrides)
    return TrainConfig(**values)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters, by name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def all_params(model) -> dict[str, torch.Tensor]:
    """CPU copies of every parameter, by name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


def params_digest(model) -> str:
    """sha256 over every parameter (name and float32 bytes)."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _crash_on_save(nth: int) -> None:
    """Make the `nth` checkpoint write die (os._exit) half way through its files."""
    from contextflow_core.training import checkpoint

    original, seen = checkpoint._write_file, {"n": 0}

    def write(path, data):
        if path.name == "optimizer.safetensors":
            seen["n"] += 1
            if seen["n"] == nth:
                os._exit(3)
        return original(path, data)

    checkpoint._write_file = write


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir")
    parser.add_argument("--save-steps", type=int)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds of sleep per generator forward")
    parser.add_argument("--crash-on-save", type=int, default=0)
    parser.add_argument("--digest-out", help="write the parameter sha256 to this path + .rank<N>")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = build_rag()
    if args.delay:
        model.generator.register_forward_pre_hook(lambda *_: time.sleep(args.delay))
    if args.crash_on_save:
        _crash_on_save(args.crash_on_save)
    train, val = loaders()
    config = tiny_config(args.output_dir, num_epochs=args.epochs, save_steps=args.save_steps)
    history = train_rag(model, train, val if args.digest_out else None, config=config)
    if args.digest_out:
        rank = int(os.environ.get("RANK", "0"))
        with open(f"{args.digest_out}.rank{rank}", "w") as f:
            f.write(f"{params_digest(model)} {history.global_step} {history.stop_reason}\n")


if __name__ == "__main__":
    main()
