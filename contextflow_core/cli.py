"""The `contextflow` command: build an index, train, evaluate, ask, run the demo, check the installation.

Boundary: argument parsing and printing only; every subcommand calls the same
library functions a script would (`DocumentIndex`, `RAGSequence`, `train_rag`,
`evaluate`). Configuration flags are generated from the config dataclasses
(`add_dataclass_arguments`), so `contextflow train --help` documents every
`TrainConfig` field; `--config file.json` (or .yaml with PyYAML) supplies defaults
that explicit flags override.

Example:
    $ contextflow index build --passages passages.jsonl --out index/
    $ contextflow train --index index/ --train train.jsonl --val val.jsonl --output-dir runs/a --num-epochs 2
    $ contextflow eval --model runs/a/model --data test.jsonl
    $ contextflow ask --model runs/a/model "Who founded Tarsk?"
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from contextflow_core.artifacts import INDEX, RAG, check_replaceable
from contextflow_core.config import TrainConfig, from_dict

EMBEDDED = "embedded"
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null")

__all__ = ["add_dataclass_arguments", "build_parser", "dataclass_from_args", "docstring_attributes", "main"]


# ---------------------------------------------------------------------------- dataclass -> flags


def docstring_attributes(cls) -> dict[str, str]:
    """Field descriptions from the "Attributes:" section of a Google-style class docstring."""
    lines = (inspect.getdoc(cls) or "").splitlines()
    if "Attributes:" not in lines:
        return {}
    found: dict[str, str] = {}
    name = None
    for line in lines[lines.index("Attributes:") + 1 :]:
        match = re.match(r"^ {4}(\w+): (.*)$", line)
        if match:
            name, found[match.group(1)] = match.group(1), match.group(2).strip()
        elif line.startswith("        ") and name:
            found[name] += " " + line.strip()
        elif line.strip():
            break
    return found


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() in _NONE else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def _free_value(text: str) -> Any:
    """For untyped fields (e.g. `resume`): "false"/"none" -> False/None, else the text."""
    lowered = text.lower()
    return False if lowered in _FALSE else None if lowered in _NONE else text


def _argument_kwargs(hint: Any) -> dict[str, Any]:
    args = typing.get_args(hint)
    optional = (
        typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    )  # Optional[X], X | None
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) in (list, tuple):
        inner = (typing.get_args(base) or (str,))[0]
        return {"nargs": "+", "type": inner, "metavar": "VALUE"}
    if base in (int, float, str):
        return {"type": _optional(base) if optional else base, "metavar": base.__name__.upper()}
    return {"type": _free_value, "metavar": "VALUE"}


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls, exclude: Sequence[str] = (), title: str | None = None
) -> list[str]:
    """Add `--field-name` for every field of dataclass `cls`; returns the field names added.

    Types come from the annotations (bool -> `--x/--no-x`, list -> several values,
    Optional -> also accepts "none"), help from the docstring's Attributes section.
    Defaults are left out of the namespace (argparse.SUPPRESS), so
    `dataclass_from_args` sees only what was given and the dataclass fills the rest.
    """
    hints, helps = typing.get_type_hints(cls), docstring_attributes(cls)
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    names = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{helps.get(f.name, '')} (default: {default!r})".replace("%", "%%")
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=text,
            **_argument_kwargs(hints[f.name]),
        )
        names.append(f.name)
    return names


def dataclass_from_args(cls, args: argparse.Namespace):
    """Build `cls` from the fields present in `args` (the rest take the dataclass defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return from_dict(cls, values)


def load_config_file(path: str) -> dict[str, Any]:
    """A flat mapping from a .json or .yaml/.yml file (keys may use - or _)."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ValueError(
                f"--config: {path} is YAML but PyYAML is not installed; pip install pyyaml or use JSON"
            ) from e
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config: {path} is not valid JSON ({e.msg}, line {e.lineno})") from e
    if not isinstance(data, dict):
        raise ValueError(f"--config: expected a mapping of option names to values in {path}, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# ---------------------------------------------------------------------------- models and data


def _encoder(spec: str):
    from contextflow_core.models import default_question_encoder, load_encoder

    return default_question_encoder() if spec == EMBEDDED else load_encoder(spec)


def _generator(spec: str, reader: bool | None = None):
    """The embedded generator (with the reader unless `reader` is False) or a path/hub id."""
    from contextflow_core.models import default_generator, load_generator

    return default_generator(reader=reader is not False) if spec == EMBEDDED else load_generator(spec)


def _check_reader_flag(args) -> None:
    """--reader/--no-reader choose the embedded generator's reader; refuse them where they mean nothing."""
    reader = getattr(args, "reader", None)
    if reader is None:
        return
    flag = "--reader" if reader else "--no-reader"
    if getattr(args, "model", None):
        raise ValueError(
            f"{flag}: --model {args.model} keeps the generator it was saved with (its "
            "rag_config.json records the reader); drop the flag"
        )
    if args.generator != EMBEDDED:
        raise ValueError(
            f"{flag}: the reader adapter fits --generator embedded only, got --generator "
            f"{args.generator}; drop the flag"
        )


def _index(args, encoder):
    from contextflow_core.data import load_passages
    from contextflow_core.retrieval import DocumentIndex

    if getattr(args, "index", None):
        return DocumentIndex.load(args.index)
    if getattr(args, "passages", None):
        return DocumentIndex.from_passages(
            load_passages(args.passages), encoder, index_factory=getattr(args, "factory", "Flat")
        )
    raise ValueError("--model, --index or --passages: expected one of them to say where the passages are, got none")


def _model(args):
    """A RAGSequence from --model DIR, or from --index/--passages with --encoder, --generator and --reader."""
    from contextflow_core.rag import RAGSequence

    _check_reader_flag(args)
    if getattr(args, "model", None):
        return RAGSequence.from_pretrained(args.model)
    encoder = _encoder(args.encoder)
    index = _index(args, encoder)
    generator, tokenizer = _generator(args.generator, getattr(args, "reader", None))
    return RAGSequence(encoder, index, tokenizer, generator, num_docs=getattr(args, "num_docs", None))


def _add_model_source(parser: argparse.ArgumentParser, training: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        help="a folder written by RAGSequence.save_pretrained" + (" to continue training" if training else ""),
    )
    group.add_argument("--index", help="a DocumentIndex folder (from `contextflow index build`)")
    group.add_argument("--passages", help="passages JSONL (id, text[, title, metadata]) to index on the fly")
    group.add_argument("--encoder", default=EMBEDDED, help="question encoder: 'embedded' or a path/hub id")
    group.add_argument("--generator", default=EMBEDDED, help="generator LLM: 'embedded' or a path/hub id")
    group.add_argument(
        "--reader",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="merge the shipped reader adapter into --generator embedded (default: on); "
        "--no-reader: the raw SmolLM2-135M-Instruct",
    )


# ---------------------------------------------------------------------------- subcommands


def _cmd_index_build(args) -> None:
    from contextflow_core.data import load_passages
    from contextflow_core.retrieval import DocumentIndex

    check_replaceable(args.out, INDEX)  # refuse before the (slow) encoding, not after
    passages = load_passages(args.passages)
    index = DocumentIndex.from_passages(
        passages, _encoder(args.encoder), index_factory=args.factory, batch_size=args.batch_size
    )
    index.save(args.out)
    print(f"indexed {len(index)} passages (dim {index.dim}, {args.factory}) into {args.out}")


def _cmd_train(args) -> None:
    from contextflow_core.data import load_qa
    from contextflow_core.training import make_dataloader, train_rag

    _require(args, "train")
    config = dataclass_from_args(TrainConfig, args)
    if config.output_dir is None:
        raise ValueError("--output-dir: expected a folder for checkpoints and the trained model, got none")
    out = Path(args.save_model or Path(config.output_dir) / "model")
    _check_save_model(out, Path(config.output_dir))
    model = _model(args)
    train = make_dataloader(load_qa(args.train), batch_size=args.batch_size, shuffle=True, seed=config.seed)
    val = make_dataloader(load_qa(args.val), batch_size=args.eval_batch_size, shuffle=False) if args.val else None
    history = train_rag(model, train, val, config=config)
    if _is_main_process():
        model.save_pretrained(out)
        print(f"{history.stop_reason} after {history.global_step} steps; model saved to {out}")


def _check_save_model(out: Path, output_dir: Path) -> None:
    """Refuse, before training, a --save-model folder the save would have to refuse after it."""
    out_real, run_real = Path(os.path.realpath(out)), Path(os.path.realpath(output_dir))
    if out_real == run_real or out_real in run_real.parents:
        raise ValueError(
            f"--save-model: {out} would hold the run's checkpoints and metrics (--output-dir "
            f"{output_dir}); pick a folder of its own, e.g. the default {output_dir / 'model'}"
        )
    check_replaceable(out, RAG)


def _cmd_eval(args) -> None:
    from contextflow_core.evaluation import evaluate
    from contextflow_core.training import format_table

    _require(args, "data")
    metrics = evaluate(
        _model(args),
        args.data,
        batch_size=args.batch_size,
        num_docs=args.num_docs,
        generate=not args.no_generate,
        max_new_tokens=args.max_new_tokens,
        decoding=args.decoding,
        progress=True,
    )
    print(format_table(metrics, title=f"evaluation on {args.data}"))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        print(f"metrics written to {args.json}")


def _cmd_ask(args) -> None:
    model = _model(args)
    answers = model.generate(
        questions=[" ".join(args.question)],
        num_docs=args.num_docs,
        max_new_tokens=args.max_new_tokens,
        decoding=args.decoding,
    )
    answer = answers[0]
    if args.json:
        sources = [{"id": p.id, "title": p.title, "text": p.text, "weight": w} for p, w in answer.sources]
        print(json.dumps({"answer": answer.text, "score": answer.score, "sources": sources}, indent=2))
        return
    print(answer.text)
    for passage, weight in answer.sources:
        print(f"  [{weight:.2f}] {passage.id}: {passage.text[:100]}")


def _cmd_demo(args) -> None:
    from contextflow_core import demo

    demo.main(quick=args.quick, output_dir=args.output_dir)


def _cmd_doctor(args) -> int:
    from contextflow_core import doctor

    return doctor.main(as_json=args.json, require=args.require or ())


def _require(args, name: str) -> None:
    if not getattr(args, name, None):
        raise ValueError(f"--{name.replace('_', '-')}: required, got none (on the command line or in --config)")


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


# ---------------------------------------------------------------------------- parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("contextflow")
    except PackageNotFoundError:  # a source checkout that was not pip-installed
        from contextflow_core import __version__

        return __version__


def _subparser(subs, name: str, handler, help_text: str) -> argparse.ArgumentParser:
    parser = subs.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--config", help="JSON (or YAML) file of option defaults; flags override it")
    parser.set_defaults(handler=handler, subparser=parser)
    return parser


def _add_generation(parser: argparse.ArgumentParser, tokens: int) -> None:
    parser.add_argument("--num-docs", type=int, help="K passages per question (default: the model's)")
    parser.add_argument("--max-new-tokens", type=int, default=tokens, help=f"answer budget (default: {tokens})")
    parser.add_argument(
        "--decoding",
        default="thorough",
        choices=("thorough", "fast", "concat"),
        help="RAG decoding mode (default: thorough)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `contextflow` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="contextflow", description="Jointly trained RAG for decoder-only LLMs.")
    parser.add_argument("--version", action="version", version=f"contextflow {_version()}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    index = subs.add_parser("index", help="build a passage index").add_subparsers(dest="action", metavar="ACTION")
    build = _subparser(index, "build", _cmd_index_build, "embed passages and save a FAISS index")
    build.add_argument("--passages", required=True, help="passages JSONL (id, text[, title, metadata])")
    build.add_argument(
        "--out",
        required=True,
        help="folder to write the index to: new, empty, or a saved index (replaced); any other folder is refused",
    )
    build.add_argument("--factory", default="Flat", help="FAISS factory string (Flat, HNSW32, IVF256,Flat, ...)")
    build.add_argument("--encoder", default=EMBEDDED, help="'embedded' or a path/hub id")
    build.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    train = _subparser(subs, "train", _cmd_train, "fine-tune retriever and generator jointly")
    _add_model_source(train, training=True)
    data = train.add_argument_group("data")
    data.add_argument("--train", help="training QA file (.jsonl/.json/.csv/.tsv)")
    data.add_argument("--val", help="validation QA file")
    data.add_argument("--batch-size", type=int, default=8, help="questions per training batch (default: 8)")
    data.add_argument("--eval-batch-size", type=int, default=8, help="questions per evaluation batch (default: 8)")
    data.add_argument(
        "--save-model",
        help="where to save the trained model (default: OUTPUT_DIR/model): new, empty, "
        "or a saved model (replaced); any other folder is refused before training starts",
    )
    add_dataclass_arguments(train, TrainConfig, title="training (TrainConfig)")
    evaluate = _subparser(subs, "eval", _cmd_eval, "evaluate a model on QA data")
    _add_model_source(evaluate)
    evaluate.add_argument("--data", help="QA file to evaluate on")
    evaluate.add_argument("--batch-size", type=int, default=8, help="questions per batch (default: 8)")
    evaluate.add_argument("--no-generate", action="store_true", help="skip generation (no exact match / F1)")
    evaluate.add_argument("--json", metavar="PATH", help="also write the metrics to this JSON file")
    _add_generation(evaluate, 32)
    ask = _subparser(subs, "ask", _cmd_ask, "answer a question with its sources")
    _add_model_source(ask)
    ask.add_argument("question", nargs="+", help="the question")
    ask.add_argument("--json", action="store_true", help="print the answer and sources as JSON")
    _add_generation(ask, 64)
    demo = _subparser(subs, "demo", _cmd_demo, "train and evaluate the embedded models on synthetic data")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    demo.add_argument("--output-dir", default="runs/demo", help="where the demo writes (default: runs/demo)")
    doctor = _subparser(
        subs,
        "doctor",
        _cmd_doctor,
        "check the installation: torch build, extras, embedded "
        "models, cache folder, GPU; prints the command for what is missing (exit 1: core broken)",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--require",
        nargs="+",
        metavar="EXTRA",
        help="extras that must be installed too (e.g. langchain embedded): exit 1 when one is missing",
    )
    from contextflow_core.cli_qa import add_qa_commands

    add_qa_commands(subs, _subparser)  # `qa generate` (cli_qa.py)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        sub = args.subparser
        try:
            values = load_config_file(args.config)
        except (ValueError, OSError) as e:
            sub.error(str(e))
        known = {a.dest for a in sub._actions} - {"help", "config", "handler", "subparser"}
        unknown = sorted(set(values) - known)
        if unknown:
            sub.error(f"--config: unknown option(s) {unknown} in {args.config}")
        sub.set_defaults(**values)
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `contextflow` console script; returns the exit status."""
    parser = build_parser()
    args = _parse(parser, argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        status = args.handler(args)  # None, or an exit status (`doctor`)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"contextflow {args.command}: error: {e}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
