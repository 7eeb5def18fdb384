"""The lexical side of hybrid search: an analyzer and BM25 over a sparse term-frequency matrix.

Written here rather than taken from a BM25 library because the statistics must be computed over the rows the
user may read: document frequencies and average length over the whole corpus would let scores hint at the
words inside documents the user cannot see. With term frequencies in a sparse matrix, per-scope statistics cost
a few column slices.
"""

import math
import re
from functools import lru_cache

import numpy as np
import scipy.sparse as sp

K1 = 1.2
B = 0.75
_TOKEN = re.compile(r"\w+", re.UNICODE)


@lru_cache(maxsize=1)
def _stop_words() -> frozenset:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def analyze(text: str) -> list[str]:
    """Lower-cased word tokens without English stop words, Snowball-stemmed (the usual English BM25 analysis)."""
    stop = _stop_words()
    return _stemmer().stemWords([t for t in _TOKEN.findall(text.lower()) if t not in stop])


def term_rows(texts, vocab: dict) -> tuple[sp.csr_matrix, np.ndarray]:
    """Term-frequency rows for texts, adding new terms to vocab. Returns (csr rows x len(vocab), lengths)."""
    indptr, indices, data, lengths = [0], [], [], []
    for text in texts:
        counts: dict[int, int] = {}
        terms = analyze(text)
        for term in terms:
            col = vocab.setdefault(term, len(vocab))
            counts[col] = counts.get(col, 0) + 1
        indices.extend(counts)
        data.extend(counts.values())
        indptr.append(len(indices))
        lengths.append(len(terms))
    matrix = sp.csr_matrix(
        (np.array(data, dtype=np.float32), np.array(indices, dtype=np.int64), np.array(indptr, dtype=np.int64)),
        shape=(len(lengths), len(vocab)),
    )
    return matrix, np.array(lengths, dtype=np.float32)


def bm25_scores(query: str, vocab: dict, tf_csc: sp.csc_matrix, lengths: np.ndarray, rows: np.ndarray | None,
                allowed: np.ndarray | None = None, avgdl: float | None = None):
    """BM25 of every allowed row against the query, with statistics over the allowed rows only.

    ``rows``: positions of the allowed rows (None: all rows); ``allowed``: the same as a boolean mask over all rows
    (computed when not given); ``avgdl``: their mean length (computed when not given). Returns scores aligned with
    ``rows`` (or with all rows when rows is None)."""
    n_total = tf_csc.shape[0]
    n_rows = n_total if rows is None else len(rows)
    if n_rows == 0:
        return np.zeros(0, dtype=np.float32)
    query_counts: dict[int, int] = {}
    for term in analyze(query):
        col = vocab.get(term)
        if col is not None and col < tf_csc.shape[1]:
            query_counts[col] = query_counts.get(col, 0) + 1
    if not query_counts:
        return np.zeros(n_rows, dtype=np.float32)
    if rows is not None and allowed is None:
        allowed = np.zeros(n_total, dtype=bool)
        allowed[rows] = True
    if avgdl is None:
        avgdl = float((lengths if rows is None else lengths[rows]).mean())
    avgdl = avgdl or 1.0
    # Walk only the query terms' columns; entries of rows the caller may not read are dropped before any
    # statistic is taken.
    entry_rows, contributions = [], []
    for col, count in query_counts.items():
        start, end = tf_csc.indptr[col], tf_csc.indptr[col + 1]
        r, tf = tf_csc.indices[start:end], tf_csc.data[start:end]
        if allowed is not None:
            keep = allowed[r]
            r, tf = r[keep], tf[keep]
        if not len(r):
            continue
        idf = math.log(1 + (n_rows - len(r) + 0.5) / (len(r) + 0.5))
        norm = K1 * (1 - B + B * lengths[r] / avgdl)
        entry_rows.append(r)
        contributions.append(count * idf * tf * (K1 + 1) / (tf + norm))
    if not entry_rows:
        return np.zeros(n_rows, dtype=np.float32)
    scores = np.bincount(np.concatenate(entry_rows), weights=np.concatenate(contributions), minlength=n_total)
    return (scores if rows is None else scores[rows]).astype(np.float32)
