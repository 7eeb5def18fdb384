"""Turning the dense and lexical scores of the allowed rows into one ranking.

``relative_score`` (the default) min-max normalises each side's top candidates and mixes them as
``alpha * dense + (1 - alpha) * lexical``; a row missing from one side's candidates gets 0 there. ``rrf`` is
reciprocal rank fusion, weighted the same way (alpha 0.5 is plain RRF). ``alpha`` 1 is dense only, 0 lexical only,
as in Weaviate's hybrid query, so a request means the same thing on either backend.

``rocchio`` is the dense side's pseudo-relevance feedback used by hybrid search (search.py): the query vector is
moved towards the mean vector of the top ``settings.SEARCH_HYBRID_PRF_DEPTH`` (5) results of a first hybrid
ranking, ``ROCCHIO_ALPHA * q + ROCCHIO_BETA * mean(feedback)``, and the hybrid search runs again with it. The parameters
are the published Rocchio vector-PRF setting of Li et al. (2021, "Pseudo Relevance Feedback with Deep Language
Models and Dense Retrievers: Successes and Pitfalls"; Pyserini's "Rocchio PRF 5 A0.4 B0.6"), fixed before our
collection was measured; the README's "Search quality" section has the numbers.
"""

import numpy as np

FUSIONS = ("relative_score", "rrf")
MODES = ("hybrid", "dense", "lexical")
RRF_K = 60
ROCCHIO_ALPHA = 0.4
ROCCHIO_BETA = 0.6


def _top(scores: np.ndarray, k: int, positive_only=False, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k highest scores, best first. Ties are broken by ``tiebreak`` (ascending; the index when
    None), also at the cut: of equal scores straddling position k the lowest tiebreak values are kept, so the top
    k of a longer list is always the shorter list (stable pages). Scores of -inf (not scored) are never returned."""
    keep = np.flatnonzero(scores > 0) if positive_only else np.flatnonzero(np.isfinite(scores))
    if len(keep) == len(scores):
        keep = None
    values = scores if keep is None else scores[keep]
    k = min(k, len(values))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-values, k - 1)[:k]
    threshold = values[part].min()
    part = np.flatnonzero(values >= threshold)  # every tie at the cut, then cut by the tiebreak
    ties = part if tiebreak is None else (tiebreak[part] if keep is None else tiebreak[keep[part]])
    order = part[np.lexsort((ties, -values[part]))][:k]
    return order if keep is None else keep[order]


def _minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.ones_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def fuse(dense, lexical, top_k, *, mode="hybrid", alpha=0.75, fusion="relative_score", candidates=100,
         tiebreak=None):
    """[(row position, fused score)] best first, at most top_k; equal scores ordered by ``tiebreak`` (ascending,
    aligned with the rows; the row position when None). ``dense`` may hold -inf for rows an approximate search
    did not return: they are not candidates."""
    if mode == "dense":
        best = _top(dense, top_k, tiebreak=tiebreak)
        return [(int(i), float(dense[i])) for i in best]
    if mode == "lexical":
        best = _top(lexical, top_k, positive_only=True, tiebreak=tiebreak)
        return [(int(i), float(lexical[i])) for i in best]
    depth = max(candidates, top_k)
    dense_top = _top(dense, depth, tiebreak=tiebreak)
    lexical_top = _top(lexical, depth, positive_only=True, tiebreak=tiebreak)
    fused: dict[int, float] = {}
    if fusion == "rrf":
        for weight, ranking in ((alpha, dense_top), (1 - alpha, lexical_top)):
            for rank, i in enumerate(ranking, 1):
                fused[int(i)] = fused.get(int(i), 0.0) + weight / (RRF_K + rank)
    else:
        for weight, ranking, scores in ((alpha, dense_top, dense), (1 - alpha, lexical_top, lexical)):
            if len(ranking):
                for i, value in zip(ranking, _minmax(scores[ranking]), strict=True):
                    fused[int(i)] = fused.get(int(i), 0.0) + weight * float(value)
    if tiebreak is None:
        ordered = sorted(fused.items(), key=lambda item: (-item[1], item[0]))
    else:
        ordered = sorted(fused.items(), key=lambda item: (-item[1], tiebreak[item[0]]))
    return ordered[:top_k]


def rocchio(query_vector, feedback_vectors, alpha: float = ROCCHIO_ALPHA, beta: float = ROCCHIO_BETA) -> np.ndarray:
    """``alpha * q + beta * mean(feedback)``, scaled to unit length (so dense scores stay cosines of unit vectors;
    the ranking does not depend on the scale). No feedback vectors: the query vector itself (as float32)."""
    query_vector = np.asarray(query_vector, dtype=np.float32)
    feedback = np.asarray(feedback_vectors, dtype=np.float32).reshape(-1, len(query_vector))
    if not len(feedback):
        return query_vector
    moved = alpha * query_vector + beta * feedback.mean(axis=0)
    norm = float(np.linalg.norm(moved))
    return query_vector if norm < 1e-12 else (moved / norm).astype(np.float32)
