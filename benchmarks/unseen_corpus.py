"""A small fictional corpus written unlike anything the reader adapter was trained on.

The reader (`contextflow_core/models/reader/`, trained by `benchmarks/train_reader.py` on
`contextflow_core.data.reader_data`) never sees these passage styles, relations or attribute
kinds: musicians' biographies (instrument, ensemble, debut record), product descriptions
(colour, weight, battery life) and event reports (duration, winner, attendance). Names are
hand-written and follow neither the benchmark's nor the reader's name makers. 42 passages,
one question each, gold passage ids ``u00``..``u41``.

    from unseen_corpus import corpus, evaluate_unseen
    passages, qa = corpus()
    metrics = evaluate_unseen(rag_model_over_these_passages)   # zero-shot EM / F1 / recall

`python benchmarks/unseen_corpus.py DIR` writes ``DIR/passages.jsonl`` and ``DIR/qa.jsonl``
(readable by `contextflow_core.data.load_passages` / `load_qa`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contextflow_core.data.readers import QAExample  # noqa: E402
from contextflow_core.types import Passage  # noqa: E402

# name, instrument, ensemble, debut record, debut year
_MUSICIANS = (
    ("Odalys Merrow", "cello", "the Harbour Lights Quartet", "Salt and Cedar", "1998"),
    ("Tibor Ancelet", "oboe", "the Vellacourt Chamber Players", "Morning in Ostrey", "2004"),
    ("Marisol Dunmere", "harp", "the Ninefold Ensemble", "Glass Rivers", "1987"),
    ("Eskil Varnhagen", "accordion", "the Canal Street Band", "Paper Boats", "2011"),
    ("Rosalind Peakes", "banjo", "the Hollow Pines", "Lanterns at Dusk", "1979"),
    ("Anselm Ortolani", "clarinet", "the Brisco Wind Sextet", "Seven Bridges", "1993"),
    ("Henrike Solvang", "trombone", "the Marlowe Brass", "Iron Weather", "2016"),
    ("Dario Feldmaris", "mandolin", "the Olive Grove Trio", "Small Hours", "2001"),
    ("Ottilie Brancroft", "viola", "the Eastmoor Strings", "Quiet Orchards", "1985"),
    ("Lucan Perrault", "bassoon", "the Rookery Consort", "Low Tide Songs", "2008"),
    ("Imogen Achterberg", "harpsichord", "the Saint Verran Players", "Candle Studies", "1976"),
    ("Bastian Morrowe", "marimba", "the Copperfield Percussion", "Rainmaker", "2013"),
    ("Ines Caldereira", "flute", "the Alder Lane Consort", "Birdsong Variations", "1991"),
    ("Ferris Langholm", "tuba", "the Dockside Marching Band", "Heavy Weather", "2019"),
)
# product, colour, weight, battery life
_PRODUCTS = (
    ("Orvane K3 kettle", "sage green", "840 grams", "no battery"),
    ("Pellico Trail lamp", "burnt orange", "310 grams", "22 hours"),
    ("Nimbra Solo speaker", "slate grey", "560 grams", "14 hours"),
    ("Drummond Echo headphones", "navy blue", "245 grams", "40 hours"),
    ("Quillo Mini drone", "matte black", "180 grams", "27 minutes"),
    ("Tessaly Flex keyboard", "pearl white", "690 grams", "3 months"),
    ("Arbor Glide scooter", "forest green", "11 kilograms", "35 kilometres"),
    ("Lumen Pocket torch", "signal yellow", "95 grams", "6 hours"),
    ("Corvel Smart scale", "rose pink", "1.4 kilograms", "8 months"),
    ("Halden Pro drill", "cobalt blue", "1.9 kilograms", "50 minutes"),
    ("Maribo Baby monitor", "sky blue", "130 grams", "12 hours"),
    ("Sorrel Street camera", "sandstone beige", "420 grams", "380 shots"),
    ("Ivra Fit band", "coral red", "24 grams", "9 days"),
    ("Brightwell Desk fan", "mint green", "1.1 kilograms", "10 hours"),
)
# event, duration, winner, attendance
_EVENTS = (
    ("the 2019 Harrowgate Lantern Race", "three hours", "Pell Oduya", "4,200"),
    ("the Marsh End Chess Marathon", "nineteen hours", "Agnes Vollmer", "350"),
    ("the 2021 Coldwater Regatta", "two days", "the Kittering Rowing Club", "12,000"),
    ("the Saltmarsh Pie Contest", "ninety minutes", "Walter Brundage", "800"),
    ("the 2017 Fennick Hill Climb", "forty minutes", "Sunniva Rask", "2,600"),
    ("the Greyport Kite Festival", "a whole weekend", "the Ashby Sisters", "15,500"),
    ("the Northbrook Spelling Bee", "five hours", "Milo Achebe", "600"),
    ("the 2022 Orrin Valley Cheese Fair", "four days", "the Haverlock Dairy", "31,000"),
    ("the Ellery Point Swim", "two and a half hours", "Freya Lindqvist", "1,900"),
    ("the 2015 Tamsin Lake Ice Derby", "six hours", "Corin Hale", "5,400"),
    ("the Bellmoor Poetry Slam", "three evenings", "Ada Okonkwo", "420"),
    ("the Wrenfield Tractor Pull", "seven hours", "Bram Dekker", "9,800"),
    ("the 2020 Silverdale Puzzle Hunt", "thirty-six hours", "Team Magpie", "1,150"),
    ("the Quarry Lane Bake-Off", "one afternoon", "Hettie Marwood", "700"),
)

_BIO = ("{name} took up the {instrument} at the age of nine and has played it ever since. After years with "
        "{ensemble}, {name} released a debut record, {record}, in {year}, to warm reviews.")
_SHEET = ("Meet the {product}. Finished in {colour}, it weighs just {weight}. Rated endurance: {battery}. "
          "Every unit is tested by hand before it leaves the workshop.")
_REPORT = ("Report: {event} lasted {duration} this year. The trophy went to {winner}, cheered on by a crowd "
           "of {attendance}. Organisers have already announced the next edition.")

# (which attribute is asked, question template) per passage kind, rotating
_BIO_Q = (("instrument", "Which instrument does {name} play?"), ("record", "What was the title of {name}'s debut record?"),
          ("ensemble", "Which group did {name} play with before going solo?"))
_SHEET_Q = (("colour", "What colour is the {product}?"), ("weight", "How much does the {product} weigh?"),
            ("battery", "What is the rated endurance of the {product}?"))
_REPORT_Q = (("duration", "How long did {event} last?"), ("winner", "Who won {event}?"),
             ("attendance", "How many spectators watched {event}?"))


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def corpus() -> tuple[list[Passage], list[QAExample]]:
    """The 42 passages (ids ``u00``..``u41``, no titles) and one QA example per passage."""
    passages, qa = [], []
    tables = ((_MUSICIANS, ("name", "instrument", "ensemble", "record", "year"), _BIO, _BIO_Q, "biography"),
              (_PRODUCTS, ("product", "colour", "weight", "battery"), _SHEET, _SHEET_Q, "product_sheet"),
              (_EVENTS, ("event", "duration", "winner", "attendance"), _REPORT, _REPORT_Q, "event_report"))
    for rows, fields, template, questions, style in tables:
        for i, row in enumerate(rows):
            values = dict(zip(fields, row))
            pid = f"u{len(passages):02d}"
            passages.append(Passage(id=pid, text=template.format(**values), metadata={"style": style}))
            attribute, question = questions[i % len(questions)]
            if values[attribute] == "no battery":  # the kettle: ask its colour instead
                attribute, question = questions[0]
            qa.append(QAExample(question=_cap(question.format(**values)), answer=values[attribute], gold_ids=[pid],
                                metadata={"style": style, "attribute": attribute}))
    return passages, qa


def build_rag(generator, tokenizer, encoder=None, num_docs: int = 2):
    """A RAGSequence over the unseen corpus with `generator` (encoder: the embedded MiniLM by default)."""
    from contextflow_core.models.defaults import default_question_encoder
    from contextflow_core.rag import RAGSequence
    from contextflow_core.retrieval import DocumentIndex

    encoder = encoder or default_question_encoder()
    passages, _ = corpus()
    index = DocumentIndex.from_texts([p.text for p in passages], encoder, ids=[p.id for p in passages],
                                     metadatas=[p.metadata for p in passages])
    return RAGSequence(question_encoder=encoder, retriever=index, generator_tokenizer=tokenizer,
                       generator=generator, num_docs=num_docs).eval()


def evaluate_unseen(model, *, decoding: str = "fast", num_docs: int = 2, max_new_tokens: int = 16,
                    batch_size: int = 6, limit: int | None = None) -> dict[str, float]:
    """Zero-shot EM / F1 / recall of a RAGSequence whose retriever indexes `corpus()`'s passages.

    Uses `contextflow_core.evaluation.evaluate` (generation with `decoding`, K = `num_docs`).
    """
    from contextflow_core.evaluation import evaluate

    _, qa = corpus()
    return evaluate(model, qa[:limit], batch_size=batch_size, num_docs=num_docs, max_new_tokens=max_new_tokens,
                    decoding=decoding)


def write_jsonl(directory: str) -> Path:
    """Write ``passages.jsonl`` and ``qa.jsonl`` into `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    passages, qa = corpus()
    rows = [{"id": p.id, "text": p.text, "metadata": p.metadata} for p in passages]
    (out / "passages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "qa.jsonl").write_text("".join(json.dumps(q.to_dict()) + "\n" for q in qa), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(write_jsonl(sys.argv[1] if len(sys.argv) > 1 else "unseen_corpus"))
