"""The tiny RAG training run of `train_tiny.py`, sharded with FSDP2: run under torchrun by tests/test_fsdp.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_tiny.py \
        --output-dir runs/fsdp --save-steps 2 --epochs 2 --digest-out runs/digest

Batches are not shuffled, so 2 processes x 2 questions see the same examples per
optimizer step as 1 process x 4 (`--batch-size 4` without torchrun: the reference run).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

import torch  # noqa: E402
import train_tiny  # noqa: E402

from contextflow_core.training import make_dataloader, train_rag  # noqa: E402
from contextflow_core.training.fsdp import full_state_dict  # noqa: E402


def run(output_dir, fsdp, batch_size, epochs, save_steps=None, resume=False, max_steps=None):
    """Train the tiny model; returns (model, history)."""
    torch.set_num_threads(1)
    model = train_tiny.build_rag()
    train = make_dataloader(train_tiny.QA, batch_size=batch_size, shuffle=False)
    config = train_tiny.tiny_config(output_dir, num_epochs=epochs, save_steps=save_steps, fsdp=fsdp,
                                    resume=resume, max_steps=max_steps)
    return model, train_rag(model, train, config=config)


def state_digest(state: dict) -> str:
    """sha256 over every tensor of a state dict (name and float32 bytes), buffers included."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir")
    parser.add_argument("--fsdp", default="full_shard", help="full_shard, shard_grad_op or none")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--save-steps", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--resume", default=False)
    parser.add_argument("--digest-out", help="write the parameter sha256 and the losses to this path + .rank<N>")
    args = parser.parse_args(argv)
    fsdp = None if args.fsdp == "none" else args.fsdp
    model, history = run(args.output_dir, fsdp, args.batch_size, args.epochs, args.save_steps, args.resume,
                         args.max_steps)
    digest = state_digest(full_state_dict(model))  # FSDP: gathered on every process
    if args.digest_out:
        rank = int(os.environ.get("RANK", "0"))
        record = {"digest": digest, "global_step": history.global_step, "stop_reason": history.stop_reason,
                  "losses": [r["loss"] for r in history.train], "resumed_from": history.resumed_from}
        with open(f"{args.digest_out}.rank{rank}", "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main()
