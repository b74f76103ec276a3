"""Generated QA for the fine-tune helpers: generate, check, hold out a validation split.

Boundary: the framework-free part of the adapters' documents-only path
(`finetune_from_vectorstore(store)`, `finetune_from_index(index)` without QA pairs). The
adapters turn their framework's LLM into a writer; this module calls `generate_qa` with
the user's options and splits the result by source passage. No models, no training.

Example:
    >>> qa = generate_training_qa(passages, "cloze", qa_options=None, val_fraction=None,
    ...                           has_val_pairs=False, seed=0)  # doctest: +SKIP
    >>> len(qa.train.examples), len(qa.val.examples)  # doctest: +SKIP
    (27, 3)
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any

from contextflow_core.data.qa_generation import generate_qa
from contextflow_core.data.qa_result import QAGenerationResult

__all__ = ["DEFAULT_VAL_FRACTION", "GeneratedQA", "check_generation_arguments", "generate_training_qa"]

DEFAULT_VAL_FRACTION = 0.1
"""Share of the source passages whose generated pairs are held out for validation by default."""

_NOT_OPTIONS = ("passages", "writer")


@dataclass
class GeneratedQA:
    """Generated pairs and the split used for training.

    Attributes:
        all: Every kept pair, with the generation report (``all.report``).
        train: The pairs trained on.
        val: The held-out pairs (None when nothing was held out).
    """

    all: QAGenerationResult
    train: QAGenerationResult
    val: QAGenerationResult | None

    def training_examples(self, val_examples: list | None) -> tuple[list, list | None]:
        """(train examples, validation examples): the held-out pairs, else the caller's own `val_examples`."""
        return self.train.examples, (self.val.examples if self.val is not None else val_examples)


def check_generation_arguments(
    qa_pairs: Any, question_llm: Any, qa_options: Any, val_fraction: Any, has_val_pairs: bool
) -> None:
    """Check the generation options before any slow work; refuse them next to given QA pairs.

    Raises:
        ValueError: `question_llm`, `qa_options` or `val_fraction` given with `qa_pairs` (they
            would be silently unused), or a malformed `qa_options` / `val_fraction`.
    """
    if qa_pairs is None:
        _fraction(val_fraction, has_val_pairs)
        _options(qa_options, 0, True)
        return
    for name, value in (("question_llm", question_llm), ("qa_options", qa_options), ("val_fraction", val_fraction)):
        if value is not None:
            raise ValueError(
                f"{name}: applies when the QA pairs are generated (qa_pairs=None), got it together "
                f"with qa_pairs; drop {name}, or drop qa_pairs to generate pairs from the documents"
            )


def _options(qa_options: Any, seed: int, progress: bool) -> dict[str, Any]:
    if qa_options is None:
        return {"seed": seed, "progress": progress}
    if not isinstance(qa_options, dict):
        raise ValueError(
            f"qa_options: expected a dict of generate_qa keyword arguments, got {type(qa_options).__name__}"
        )
    accepted = [name for name in inspect.signature(generate_qa).parameters if name not in _NOT_OPTIONS]
    unknown = sorted(set(qa_options) - set(accepted))
    if unknown:
        hint = " (the writer is chosen by question_llm=)" if "writer" in unknown else ""
        raise ValueError(f"qa_options: unknown key(s) {unknown}{hint}; expected some of {accepted}")
    return {"seed": seed, "progress": progress, **qa_options}


def _fraction(val_fraction: Any, has_val_pairs: bool) -> float:
    if has_val_pairs:
        if val_fraction is not None:
            raise ValueError(
                f"val_fraction: holds out generated pairs for validation, got {val_fraction!r} together "
                "with val_pairs; drop one of them"
            )
        return 0.0
    if val_fraction is None:
        return DEFAULT_VAL_FRACTION
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in [0, 1) (0: no hold-out), got {val_fraction!r}")
    return float(val_fraction)


def generate_training_qa(
    passages: Any,
    writer: Any,
    *,
    qa_options: dict | None,
    val_fraction: float | None,
    has_val_pairs: bool,
    seed: int,
    progress: bool = True,
) -> GeneratedQA:
    """Generate QA pairs from `passages` and hold out a validation split by source passage.

    Args:
        passages: What `generate_qa` takes (the helpers pass the indexed passages).
        writer: What `generate_qa(writer=...)` takes.
        qa_options: Further `generate_qa` keyword arguments (``seed`` defaults to `seed`).
        val_fraction: Share of source passages held out (None: `DEFAULT_VAL_FRACTION`, or no
            hold-out when the caller has `val_pairs`; 0: no hold-out).
        has_val_pairs: The caller validates on its own pairs.
        seed: Default generation seed, also the split's seed.
        progress: Default of ``qa_options["progress"]`` (the helpers pass `TrainConfig.progress`).

    Returns:
        A `GeneratedQA`.

    Raises:
        ValueError: Bad `qa_options` / `val_fraction`, no pair survived the filters, or too few
            source passages to hold any out.
        QAWriterError: The writer failed on every prompt.
    """
    fraction = _fraction(val_fraction, has_val_pairs)
    options = _options(qa_options, seed, progress)
    result = generate_qa(passages, writer, **options)
    if not result.examples:
        raise ValueError(
            "question_llm: no generated question/answer pair passed the filters, so there is "
            f"nothing to train on; the generation report:\n{result.report.format()}\n"
            "Try another question_llm, or relax qa_options={'filters': QAFilters(...)}"
        )
    if fraction == 0:
        return GeneratedQA(all=result, train=result, val=None)
    if len({e.gold_ids[0] for e in result.examples}) < 2:
        if val_fraction is None:  # the default hold-out needs two source passages: train on all, say so
            warnings.warn(
                "val_fraction: the generated pairs come from one passage, so none are held out for "
                "validation; training on all of them (pass val_fraction=0 to silence this, or more "
                "documents)",
                UserWarning,
                stacklevel=3,
            )
            return GeneratedQA(all=result, train=result, val=None)
        raise ValueError(
            f"val_fraction: holding out {fraction} of the generated pairs by source passage needs "
            "pairs from at least 2 passages, got 1; pass val_fraction=0 (no validation) or more documents"
        )
    train, val = result.split(fraction, seed=options["seed"])
    return GeneratedQA(all=result, train=train, val=val)
