"""MkDocs hook: put each `contextflow` subcommand's current ``--help`` into the CLI page.

A line ``<!-- contextflow-help: index build -->`` in a page becomes a text block
with the help of ``contextflow index build`` as the installed parser prints it, so
the page can never drift from the code. A marker naming no subcommand fails the
build (strict or not).
"""
from __future__ import annotations

import argparse
import os
import re

_MARKER = re.compile(r"^<!-- contextflow-help:(?P<words>[^>]*)-->\s*$", re.MULTILINE)


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            raise ValueError(f"cli.md: no `contextflow {' '.join(words)}` subcommand (at {word!r})")
        parser = actions[0].choices[word]
    return parser


def help_text(words: list[str]) -> str:
    """`contextflow <words> --help`, formatted 100 columns wide."""
    from contextflow_core.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return _subparser(build_parser(), words).format_help()
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the help markers of a page by the help texts."""
    def block(match: re.Match) -> str:
        return "```text\n" + help_text(match.group("words").split()).rstrip() + "\n```\n"

    return _MARKER.sub(block, markdown)
