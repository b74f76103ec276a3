"""`generate_qa`: question/answer pairs written from passages, each with its gold passage known.

Boundary: orchestration only. Prompts, answer spans, reply parsing and the built-in
writers come from `qa_prompts.py`; the filters from `qa_filters.py`; the reply cache from
`qa_cache.py`; the result type and its file formats from `qa_result.py`. A question writer
is any callable ``prompt -> text`` (ContextFlow's adapters turn LangChain and LlamaIndex
models into one); no model code lives here.

The pipeline, in order: passages -> sample -> prompts (extractive: one per answer span
picked from the passage; abstractive: the writer writes question and answer) -> replies
(the cache first, then the writer in batches) -> parse -> filters -> `QAExample`s whose
``gold_ids`` is ``[source passage id]``. Output order follows the passages' order, then
the prompt's slot, so a deterministic writer and the same ``seed`` give the same pairs in
the same order.

Writer protocol:
    ``writer(prompt) -> str``; optionally ``writer.batch(prompts) -> list`` (used when
    present, one entry per prompt: a str, or an ``Exception`` instance for a prompt that
    failed); optionally ``writer.cache_id`` (a str naming the writer and every setting that
    changes its output; default: the writer's qualified class or function name), part of
    each cache key. Bad output (an exception, a non-string, an empty, unparseable or
    over-long reply) is skipped and counted, never fatal; a writer that fails on every
    prompt raises `QAWriterError` naming the writer and its first error.

Example:
    >>> from contextflow_core.data import generate_qa
    >>> result = generate_qa(["Tarsk was founded by Ilo Varn in 1204."], "cloze", progress=False)
    >>> [(e.question, e.answer, e.gold_ids) for e in result.examples]
    [('In what year was Tarsk founded by Ilo Varn?', '1204', ['0'])]
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contextflow_core.data.qa_cache import ReplyCache, prompt_sha, reply_key
from contextflow_core.data.qa_filters import (
    QAFilters,
    check_question,
    near_duplicates,
    round_trip_hits,
)
from contextflow_core.data.qa_prompts import (
    ABSTRACTIVE_TEMPLATE,
    DEFAULT_QUESTION_TEMPLATE,
    WRITERS,
    parse_qa,
    parse_question,
    pick_answers,
)
from contextflow_core.data.qa_result import GENERATOR_TAG, QAGenerationResult, QAReport
from contextflow_core.data.qa_sampling import as_passages, sample_passages
from contextflow_core.data.readers import QAExample
from contextflow_core.types import Passage

__all__ = [
    "MODES",
    "QAFilters",
    "QAGenerationResult",
    "QAReport",
    "QAWriterError",
    "generate_qa",
    "resolve_writer",
    "writer_identity",
]


class QAWriterError(RuntimeError):
    """The question writer failed on every prompt (the message names it and its first error)."""


# ---------------------------------------------------------------------------- modes


def _extractive_prompts(passage: Passage, n: int, rng: random.Random, template: str) -> list[tuple[str, str | None]]:
    answers = pick_answers(passage.text, n, rng, title=passage.title)
    return [(template.format(title=passage.title or "", passage=passage.text, answer=a), a) for a in answers]


def _abstractive_prompts(passage: Passage, n: int, rng: random.Random, template: str) -> list[tuple[str, str | None]]:
    return [(template.format(title=passage.title or "", passage=passage.text), None)] * n


def _parse_extractive(reply: str, answer: str | None) -> tuple[str, str] | None:
    question = parse_question(reply)
    return None if question is None or answer is None else (question, answer)


def _parse_abstractive(reply: str, answer: str | None) -> tuple[str, str] | None:
    return parse_qa(reply)


@dataclass(frozen=True)
class _Mode:
    template: str  # the default template
    fields: frozenset  # fields a template may use
    required: frozenset  # fields a template must use
    prompts: Callable[[Passage, int, random.Random, str], list[tuple[str, str | None]]]
    parse: Callable[[str, str | None], tuple[str, str] | None]


MODES: dict[str, _Mode] = {
    "extractive": _Mode(
        DEFAULT_QUESTION_TEMPLATE,
        frozenset({"title", "passage", "answer"}),
        frozenset({"passage", "answer"}),
        _extractive_prompts,
        _parse_extractive,
    ),
    "abstractive": _Mode(
        ABSTRACTIVE_TEMPLATE,
        frozenset({"title", "passage"}),
        frozenset({"passage"}),
        _abstractive_prompts,
        _parse_abstractive,
    ),
}
"""Generation modes: extractive (an answer span is picked first, the writer asks for it) and
abstractive (the writer writes question and answer, parsed by `parse_qa`)."""


def _check_template(template: Any, mode: str) -> str:
    spec = MODES[mode]
    if template is None:
        return spec.template
    if not isinstance(template, str):
        raise ValueError(f"template: expected a str.format template, got {type(template).__name__}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"template: not a valid str.format template ({e}); write literal braces as {{{{ }}}}") from e
    unknown, missing = names - spec.fields, spec.required - names
    if unknown or missing:
        raise ValueError(
            f"template: {mode} mode fills the fields {sorted(spec.fields)} and needs "
            f"{sorted(spec.required)}; got unknown {sorted(unknown)}, missing {sorted(missing)} "
            "(write literal braces as {{ }})"
        )
    return template


# ---------------------------------------------------------------------------- writers


def writer_identity(writer: Any) -> str:
    """The writer's name in cache keys: its ``cache_id``, else its `WRITERS` name, else its qualified name."""
    cache_id = getattr(writer, "cache_id", None)
    if isinstance(cache_id, str) and cache_id:
        return cache_id
    registered = [name for name, cls in WRITERS.items() if type(writer) is cls]
    if registered:
        return registered[0]
    target = writer if callable(writer) and hasattr(writer, "__qualname__") else type(writer)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(writer).__name__)}"


def resolve_writer(writer: Any) -> tuple[Any, str]:
    """``(writer, identity)``: None -> the embedded writer, a name -> `WRITERS`, a callable as is.

    Raises:
        ValueError: An unknown writer name.
        TypeError: Neither None, a name nor a callable (or a writer class instead of an instance).
    """
    if writer is None or isinstance(writer, str):
        name = writer or "embedded"
        if name not in WRITERS:
            raise ValueError(f"writer: expected one of {sorted(WRITERS)} or a callable prompt -> text, got {name!r}")
        made = WRITERS[name]()
        return made, writer_identity(made)
    if isinstance(writer, type):
        raise TypeError(
            f"writer: expected a writer object, got the class {writer.__name__}; "
            f"pass an instance, e.g. writer={writer.__name__}()"
        )
    if not callable(writer):
        raise TypeError(
            f"writer: expected None, a name in {sorted(WRITERS)} or a callable prompt -> text, "
            f"got {type(writer).__name__}"
        )
    return writer, writer_identity(writer)


def _call_writer(writer: Any, prompts: list[str]) -> list[Any]:
    """One entry per prompt: the reply, or the exception that replaced it."""
    batch = getattr(writer, "batch", None)
    if callable(batch):
        try:
            replies = list(batch(prompts))
        except Exception as e:  # the whole batch failed: every prompt in it is a writer error
            return [e] * len(prompts)
        if len(replies) != len(prompts):
            error = ValueError(f"writer.batch returned {len(replies)} replies for {len(prompts)} prompts")
            return [error] * len(prompts)
        return replies
    out: list[Any] = []
    for prompt in prompts:
        try:
            out.append(writer(prompt))
        except Exception as e:
            out.append(e)
    return out


# ---------------------------------------------------------------------------- the run


@dataclass
class _Job:
    passage: Passage
    slot: int
    prompt: str
    answer: str | None
    key: str


def _build_jobs(
    passages: list[Passage], mode: str, template: str, n: int, seed: int, writer_id: str, report: QAReport
) -> list[_Job]:
    jobs = []
    for passage in passages:
        rng = random.Random(f"{seed}\x00{passage.id}")  # per passage: independent of which others were sampled
        pairs = MODES[mode].prompts(passage, n, rng, template)
        if not pairs:
            report.skipped["no_answer_span"] += 1
        seen: dict[str, int] = {}
        for slot, (prompt, answer) in enumerate(pairs):
            repeat = seen[prompt] = seen.get(prompt, -1) + 1
            jobs.append(_Job(passage, slot, prompt, answer, reply_key(passage.id, prompt, repeat, writer_id)))
    report.prompts = len(jobs)
    return jobs


def _collect_replies(
    jobs: list[_Job],
    writer: Any,
    writer_id: str,
    cache: ReplyCache | None,
    batch_size: int,
    progress: bool,
    report: QAReport,
) -> list[Any]:
    from tqdm.auto import tqdm

    replies: list[Any] = [cache.get(j.key) if cache is not None else None for j in jobs]
    pending = [i for i, r in enumerate(replies) if r is None]
    report.cached = len(jobs) - len(pending)
    started = time.perf_counter()
    with tqdm(total=len(pending), desc="writing questions", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(pending), batch_size):
            rows = pending[start : start + batch_size]
            got = _call_writer(writer, [jobs[i].prompt for i in rows])
            report.writer_calls += len(rows)
            records = []
            for i, reply in zip(rows, got, strict=True):
                replies[i] = reply
                if isinstance(reply, str):
                    records.append(
                        {
                            "key": jobs[i].key,
                            "passage_id": jobs[i].passage.id,
                            "prompt_sha": prompt_sha(jobs[i].prompt),
                            "writer": writer_id,
                            "reply": reply,
                        }
                    )
            if cache is not None:
                cache.append(records)
            bar.update(len(rows))
    report.writer_seconds = time.perf_counter() - started
    return replies


def _reply_pair(job: _Job, reply: Any, mode: str, filters: QAFilters, report: QAReport) -> tuple[str, str] | None:
    """The parsed, per-pair-filtered (question, answer), or None (counted in the report)."""
    if isinstance(reply, BaseException):
        report.skipped["writer_error"] += 1
        report.first_error = report.first_error or f"{type(reply).__name__}: {reply}"
        return None
    if not isinstance(reply, str):
        report.skipped["not_text"] += 1
        report.first_error = report.first_error or f"the writer returned {type(reply).__name__}, not str"
        return None
    report.replies += 1
    if not reply.strip():
        report.skipped["empty"] += 1
        return None
    if len(reply) > filters.max_reply_chars:
        report.skipped["over_long"] += 1
        return None
    pair = MODES[mode].parse(reply, job.answer)
    reason = "unparseable" if pair is None else check_question(pair[0], pair[1], job.passage.text, filters)
    if reason is not None:
        report.skipped[reason] += 1
        return None
    return pair


def _filter_set(
    found: list[tuple[_Job, str, str]], filters: QAFilters, batch_size: int, report: QAReport
) -> list[tuple[_Job, str, str]]:
    if filters.dedupe and found:
        flags = near_duplicates([q for _, q, _ in found], filters.dedupe_threshold)
        report.skipped["duplicate"] += sum(flags)
        found = [f for f, dup in zip(found, flags, strict=True) if not dup]
    if filters.round_trip is not None and found:
        hits = round_trip_hits(
            filters.round_trip,
            [q for _, q, _ in found],
            [j.passage.id for j, _, _ in found],
            filters.round_trip_k,
            batch_size=max(batch_size, 32),
        )
        report.skipped["round_trip_miss"] += hits.count(False)
        found = [f for f, hit in zip(found, hits, strict=True) if hit]
    return found


def _example(job: _Job, question: str, answer: str, mode: str, writer_id: str) -> QAExample:
    metadata = {
        "source": GENERATOR_TAG,
        "mode": mode,
        "writer": writer_id,
        "passage_id": job.passage.id,
        "qa_id": f"{job.passage.id}#{job.slot}",
    }
    return QAExample(question=question, answer=answer, gold_ids=[job.passage.id], metadata=metadata)


def _check_failed_writer(report: QAReport, writer_id: str) -> None:
    bad = report.skipped["writer_error"] + report.skipped["not_text"]
    if report.writer_calls and report.cached == 0 and bad == report.writer_calls:
        raise QAWriterError(
            f"writer: {writer_id} failed on all {report.writer_calls} prompts; first error: "
            f"{report.first_error}. Check the writer (try it on one prompt), or pass another "
            "writer (e.g. writer='cloze')"
        )


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _check_options(mode: Any, seed: Any, filters: Any, progress: Any) -> QAFilters:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {sorted(MODES)}, got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if not isinstance(progress, bool):
        raise ValueError(f"progress: expected True or False, got {progress!r}")
    if filters is None:
        return QAFilters()
    if not isinstance(filters, QAFilters):
        raise ValueError(f"filters: expected a QAFilters (or None for the defaults), got {type(filters).__name__}")
    return filters


def generate_qa(
    passages: Any,
    writer: Any = None,
    *,
    num_questions_per_passage: int = 1,
    template: str | None = None,
    mode: str = "extractive",
    sample: int | None = None,
    stratify_by: str | None = None,
    seed: int = 0,
    filters: QAFilters | None = None,
    cache: None | str | Any = None,
    batch_size: int = 8,
    progress: bool = True,
) -> QAGenerationResult:
    """Write question/answer pairs from passages; each pair's gold passage is the one it was written from.

    Args:
        passages: A list of str (ids "0", "1", ...), a list of `Passage`, a `DocumentIndex`,
            or anything with an ``index`` holding one (a `RAGSequence`, a `Retriever`).
        writer: The question writer: None (the embedded SmolLM2, `EmbeddedQuestionWriter`),
            a name in `WRITERS` ("embedded", "cloze"), or any callable ``prompt -> text``
            (see the module docstring for the protocol).
        num_questions_per_passage: Prompts per passage (>= 1). Extractive: one per distinct
            answer span, so fewer when the passage has fewer spans. Abstractive: the same
            prompt this many times (a deterministic writer then repeats itself, and dedupe
            drops the repeats).
        template: The prompt, a ``str.format`` template. Extractive fields ``{title}``,
            ``{passage}``, ``{answer}`` (passage and answer required); abstractive ``{title}``,
            ``{passage}``. None: `DEFAULT_QUESTION_TEMPLATE` / `ABSTRACTIVE_TEMPLATE`.
        mode: "extractive" (pick an answer span, ask the writer for its question) or
            "abstractive" (the writer writes both; see `QAFilters.answer_in_passage`).
        sample: None: every passage; n: n passages drawn at random (all when n >= their number).
        stratify_by: A metadata key: with `sample`, draw evenly across its values (round robin
            over the values in random order; passages without the key form one more group).
        seed: Seeds the sampler and the answer-span picker.
        filters: `QAFilters` (None: the defaults, every filter on but the round trip).
        cache: Path of an append-only JSONL reply cache (see `qa_cache.py`), or None. A rerun
            with the same passages, prompts and writer makes no writer calls; an interrupted
            run resumes with the missing prompts.
        batch_size: Prompts per writer call (``writer.batch``) and per cache append.
        progress: Show a tqdm bar over the prompts sent to the writer.

    Returns:
        A `QAGenerationResult`: ``.examples``, ``.report`` (counts per filter, pairs/s),
        ``.save_jsonl``, ``.save_llamaindex`` and ``.split``.

    Raises:
        ValueError: A malformed argument (the message names it).
        TypeError: `passages` or `writer` of an unsupported type.
        QAWriterError: The writer failed (raised or returned a non-string) on every prompt.
    """
    started = time.perf_counter()
    filters = _check_options(mode, seed, filters, progress)
    n = _positive_int("num_questions_per_passage", num_questions_per_passage)
    batch_size = _positive_int("batch_size", batch_size)
    template = _check_template(template, mode)
    corpus = as_passages(passages)
    chosen = sample_passages(corpus, sample, stratify_by, seed)
    writer, writer_id = resolve_writer(writer)
    reply_cache = ReplyCache(cache) if cache is not None else None
    report = QAReport(passages=len(corpus), sampled=len(chosen))
    jobs = _build_jobs(chosen, mode, template, n, seed, writer_id, report)
    replies = _collect_replies(jobs, writer, writer_id, reply_cache, batch_size, progress, report)
    found = [
        (job, *pair)
        for job, reply in zip(jobs, replies, strict=True)
        if (pair := _reply_pair(job, reply, mode, filters, report)) is not None
    ]
    _check_failed_writer(report, writer_id)
    found = _filter_set(found, filters, batch_size, report)
    examples = [_example(job, q, a, mode, writer_id) for job, q, a in found]
    report.kept, report.seconds = len(examples), time.perf_counter() - started
    return QAGenerationResult(examples=examples, report=report, passages=corpus)
