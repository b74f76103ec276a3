"""Okapi BM25 over the passages of a DocumentIndex, vectorized with numpy.

Boundary: sparse lexical scores only; no encoders, no FAISS. Postings are kept
as flat numpy arrays sorted by term, so a query costs one slice and one
`np.add.at` per query term.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (unicode-aware)."""
    return _TOKEN.findall(text.lower())


class BM25:
    """BM25 scorer over a fixed list of texts.

    Args:
        texts: The documents, in row order.
        k1: Term-frequency saturation.
        b: Length normalisation.
    """

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        docs = [Counter(tokenize(t)) for t in texts]
        self.vocab: dict[str, int] = {}
        terms, rows, tfs = [], [], []
        for row, counts in enumerate(docs):
            for term, term_count in counts.items():
                terms.append(self.vocab.setdefault(term, len(self.vocab)))
                rows.append(row)
                tfs.append(term_count)
        order = np.argsort(np.asarray(terms, dtype=np.int64), kind="stable")
        self._rows = np.asarray(rows, dtype=np.int64)[order]
        tf = np.asarray(tfs, dtype=np.float32)[order]
        term_sorted = np.asarray(terms, dtype=np.int64)[order]
        self._starts = np.searchsorted(term_sorted, np.arange(len(self.vocab) + 1))
        lengths = np.asarray([sum(c.values()) for c in docs], dtype=np.float32)
        norm = k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-9))
        self._weights = tf * (k1 + 1) / (tf + norm[self._rows])  # per posting
        df = np.diff(self._starts).astype(np.float32)
        self._idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        self.num_docs = len(docs)

    def scores(self, query: str) -> np.ndarray:
        """(N,) BM25 score of every document for `query`."""
        out = np.zeros(self.num_docs, dtype=np.float32)
        for term in tokenize(query):
            t = self.vocab.get(term)
            if t is None:
                continue
            lo, hi = self._starts[t], self._starts[t + 1]
            np.add.at(out, self._rows[lo:hi], self._idf[t] * self._weights[lo:hi])
        return out

    def top_rows(self, query: str, k: int) -> np.ndarray:
        """Rows of up to k best documents with a positive score, best first (ties by row).

        Documents sharing no term with the query are not lexical matches and are
        left out, so they never gain rank in a fusion.
        """
        scores = self.scores(query)
        hits = np.flatnonzero(scores > 0)
        hits = hits[np.lexsort((hits, -scores[hits]))]
        return hits[:k]
