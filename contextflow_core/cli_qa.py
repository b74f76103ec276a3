"""`contextflow qa generate`: write training question/answer pairs from a passages file.

Boundary: argument parsing and printing only, over `contextflow_core.data.generate_qa`
(the same call a script makes); `cli.py` mounts these subcommands.

Example:
    $ contextflow qa generate --passages passages.jsonl --out qa.jsonl --writer cloze --sample 200 \\
          --cache qa_cache.jsonl --llamaindex-out qa_llamaindex.json
    $ contextflow train --passages passages.jsonl --train qa.jsonl --output-dir runs/docs-only
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_qa_commands"]

_FILTER_SWITCHES = ("answer_in_passage", "question_without_answer", "dedupe")


def _cmd_qa_generate(args: argparse.Namespace) -> None:
    from contextflow_core.data import (
        QAFilters,
        QAWriterError,
        generate_qa,
        load_passages,
    )
    from contextflow_core.data.qa_result import check_output_path

    for name in ("passages", "out"):
        if not getattr(args, name, None):
            raise ValueError(f"--{name}: required, got none (on the command line or in --config)")
    check_output_path(args.out, "jsonl")  # refuse before the (slow) generation, not after
    if args.llamaindex_out:
        check_output_path(args.llamaindex_out, "llamaindex")
    off = {name: False for name in args.filter_off or ()}
    filters = QAFilters(**off, dedupe_threshold=args.dedupe_threshold, max_question_chars=args.max_question_chars)
    try:
        result = generate_qa(
            load_passages(args.passages),
            args.writer,
            mode=args.mode,
            num_questions_per_passage=args.num_questions_per_passage,
            sample=args.sample,
            stratify_by=args.stratify_by,
            seed=args.seed,
            filters=filters,
            cache=args.cache,
            batch_size=args.batch_size,
            progress=args.progress,
        )
    except QAWriterError as e:
        raise ValueError(str(e)) from e
    result.save_jsonl(args.out)
    print(result.report.format())
    print(f"wrote {len(result)} question/answer pairs to {args.out}")
    if args.llamaindex_out:
        result.save_llamaindex(args.llamaindex_out)
        print(f"wrote the EmbeddingQAFinetuneDataset layout to {args.llamaindex_out}")


def add_qa_commands(subs: Any, make_subparser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``qa generate`` to the `contextflow` parser.

    Args:
        subs: The top-level subparsers action.
        make_subparser: `cli._subparser` (adds ``--config`` and the handler).
    """
    qa = subs.add_parser("qa", help="generate training questions from passages")
    actions = qa.add_subparsers(dest="action", metavar="ACTION")
    gen = make_subparser(
        actions,
        "generate",
        _cmd_qa_generate,
        "write question/answer pairs from passages (fine-tuning from documents alone)",
    )
    gen.add_argument("--passages", help="passages JSONL (id, text[, title, metadata]): the questions' sources")
    gen.add_argument(
        "--out",
        help="QA JSONL to write (what `contextflow train --train` reads): new, empty, or "
        "a file written by this command (replaced); any other file is refused",
    )
    gen.add_argument(
        "--writer",
        default="embedded",
        help="question writer: 'embedded' (SmolLM2-135M, the default) or 'cloze' (rule-based, no model)",
    )
    gen.add_argument(
        "--mode",
        default="extractive",
        help="'extractive' (pick an answer span, then ask for its "
        "question; default) or 'abstractive' (the writer writes question and answer)",
    )
    gen.add_argument("--num-questions-per-passage", type=int, default=1, help="prompts per passage (default: 1)")
    gen.add_argument("--sample", type=int, help="write for n passages drawn at random (default: all)")
    gen.add_argument("--stratify-by", metavar="KEY", help="with --sample: draw evenly across this metadata key")
    gen.add_argument("--seed", type=int, default=0, help="seed of the sampler and answer picker (default: 0)")
    gen.add_argument(
        "--cache",
        metavar="PATH",
        help="append-only JSONL reply cache: an interrupted run resumes, a rerun makes no writer calls",
    )
    gen.add_argument("--batch-size", type=int, default=8, help="prompts per writer call (default: 8)")
    gen.add_argument(
        "--filter-off",
        nargs="+",
        choices=_FILTER_SWITCHES,
        metavar="FILTER",
        help=f"turn filters off: {', '.join(_FILTER_SWITCHES)}",
    )
    gen.add_argument(
        "--dedupe-threshold",
        type=float,
        default=0.8,
        help="token Jaccard at which questions are near-duplicates (default: 0.8)",
    )
    gen.add_argument("--max-question-chars", type=int, default=300, help="longer questions are dropped (default: 300)")
    gen.add_argument(
        "--llamaindex-out",
        metavar="PATH",
        help="also write LlamaIndex's EmbeddingQAFinetuneDataset JSON (with the answers)",
    )
    gen.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar (default: on)"
    )
