"""Hybrid search: the lexical side, fusion, explain, and statistics that reveal nothing of unreadable rows."""

import numpy as np
import pytest
import scipy.sparse as sp

from apps.retrieval.index.fusion import ROCCHIO_ALPHA, ROCCHIO_BETA, fuse, rocchio
from apps.retrieval.lexical import analyze, bm25_scores, term_rows
from tests.conftest import sync_now, token_client, write_corpus

URL = "/api/v1/search/"


def test_analyzer_drops_stop_words_and_stems():
    assert analyze("The engineers were calibrating sensors") == ["engin", "calibr", "sensor"]


def test_bm25_statistics_cover_only_the_allowed_rows():
    vocab: dict = {}
    public = ["tide gauge calibration schedule", "harbour crane maintenance"]
    restricted = ["tide tide tide salary review"]
    tf, lengths = term_rows(public + restricted, vocab)
    csc = tf.tocsc()
    seen_by_bob = bm25_scores("tide salary", vocab, csc, lengths, np.array([0, 1]))
    tf_public, lengths_public = term_rows(public, dict(vocab))
    tf_public.resize((2, len(vocab)))
    without_restricted = bm25_scores("tide salary", vocab, tf_public.tocsc(), lengths_public, np.array([0, 1]))
    assert seen_by_bob[0] > 0
    np.testing.assert_allclose(seen_by_bob, without_restricted)  # the restricted row changes nothing
    everyone = bm25_scores("tide salary", vocab, csc, lengths, None)
    assert everyone[0] != seen_by_bob[0]  # ...whereas corpus-wide statistics would have


def test_bm25_unknown_terms_score_nothing():
    vocab: dict = {}
    tf, lengths = term_rows(["alpha beta"], vocab)
    assert bm25_scores("zeta", vocab, tf.tocsc(), lengths, None).tolist() == [0.0]
    assert bm25_scores("zeta", vocab, sp.csc_matrix((0, 2)), np.zeros(0, np.float32), np.array([], int)).size == 0


def test_fusion_alpha_ends_are_the_single_sides():
    dense = np.array([0.9, 0.1, 0.5, 0.3], dtype=np.float32)
    lexical = np.array([0.0, 7.0, 1.0, 3.0], dtype=np.float32)
    assert [i for i, _ in fuse(dense, lexical, 4, alpha=1.0)][:3] == [0, 2, 3]
    assert [i for i, _ in fuse(dense, lexical, 4, alpha=0.0)][:2] == [1, 3]
    # min-max over each side's candidates: dense (0.1..0.9), lexical (1..7; row 0 is no lexical candidate)
    mixed = dict(fuse(dense, lexical, 4, alpha=0.5))
    assert mixed[0] == pytest.approx(0.5) and mixed[1] == pytest.approx(0.5)  # each tops one side
    assert mixed[2] == pytest.approx(0.5 * 0.5 + 0.5 * 0)
    assert mixed[3] == pytest.approx(0.5 * 0.25 + 0.5 * (2 / 6))
    rrf = fuse(dense, lexical, 4, alpha=0.5, fusion="rrf")
    assert rrf[0] == (1, pytest.approx(0.5 / 61 + 0.5 / 64))  # 1st and 4th edges out 2nd and 3rd
    assert dict(rrf)[2] == pytest.approx(0.5 / 62 + 0.5 / 63)
    assert [i for i, _ in fuse(dense, lexical, 2, mode="lexical")] == [1, 3]


def test_rocchio_moves_the_query_towards_the_feedback_mean():
    assert (ROCCHIO_ALPHA, ROCCHIO_BETA) == (0.4, 0.6)  # the published setting the README cites
    query = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    feedback = np.array([[0.0, 1.0, 0.0], [0.0, 0.6, 0.8]], dtype=np.float32)
    moved = rocchio(query, feedback)
    expected = np.array([0.4, 0.6 * 0.8, 0.6 * 0.4])  # 0.4 q + 0.6 mean(feedback), before scaling
    np.testing.assert_allclose(moved, expected / np.linalg.norm(expected), rtol=1e-6)
    assert np.linalg.norm(moved) == pytest.approx(1.0)
    # a passage like the feedback now outranks one that only matched the query's own direction best
    near_query, near_feedback = np.array([0.9, 0.436, 0.0]), np.array([0.5, 0.7, 0.5])
    assert near_query @ query > near_feedback @ query and near_feedback @ moved > near_query @ moved
    np.testing.assert_array_equal(rocchio(query, np.zeros((0, 3))), query)  # nothing to learn from
    np.testing.assert_allclose(rocchio(query, [[2.0, 0.0, 0.0]], alpha=0.5, beta=0.5), query)  # same direction


@pytest.mark.django_db
def test_hybrid_feedback_comes_from_the_users_own_first_ranking(indexed_source, bob, alice, settings):
    from apps.accounts.access import access_scope
    from apps.ingestion.embedding import get_embedder
    from apps.ingestion.models import Chunk, Document
    from apps.retrieval.index import IndexFilter, get_index
    from apps.retrieval.search import feedback_vector, search

    query = "parental leave paperwork"
    vector = get_embedder().encode_query(query)
    index = get_index()
    for user in (bob, alice):
        scope = access_scope(user)
        first = index.search(vector, scope, settings.SEARCH_HYBRID_PRF_DEPTH, query=query, mode="hybrid",
                             alpha=0.75, fusion="relative_score", filters=IndexFilter())
        chunks = Chunk.objects.filter(pk__in=[h.chunk_id for h in first])
        assert len(first) == settings.SEARCH_HYBRID_PRF_DEPTH and chunks.count() == len(first)
        assert not chunks.exclude(document__in=Document.objects.readable_by(scope)).exists()
        expected = rocchio(vector, [np.frombuffer(bytes(c.embedding), dtype="<f4") for c in chunks])
        moved = feedback_vector(index, vector, scope, query, alpha=0.75, fusion="relative_score",
                                filters=IndexFilter())
        np.testing.assert_allclose(moved, expected, rtol=1e-5, atol=1e-6)
        assert float(moved @ vector) < 0.999  # it did move
    # search uses the moved vector for its dense side in hybrid mode, and the plain query vector in dense mode
    results, _ = search(bob, query, top_k=3, explain=True)
    moved = feedback_vector(index, vector, access_scope(bob), query, alpha=0.75, fusion="relative_score",
                            filters=IndexFilter())
    top = Chunk.objects.get(pk=results[0].chunk_id)
    own = np.frombuffer(bytes(top.embedding), dtype="<f4")
    assert results[0].explain["dense"] == pytest.approx(float(own @ moved), abs=1e-5)
    dense_results, _ = search(bob, query, top_k=1, mode="dense")
    top = Chunk.objects.get(pk=dense_results[0].chunk_id)
    assert dense_results[0].score == pytest.approx(float(np.frombuffer(bytes(top.embedding), "<f4") @ vector),
                                                   abs=1e-5)
    settings.SEARCH_HYBRID_PRF_DEPTH = 0  # off: hybrid's dense side is the plain query vector again
    results, _ = search(bob, query, top_k=1, explain=True)
    top = Chunk.objects.get(pk=results[0].chunk_id)
    assert results[0].explain["dense"] == pytest.approx(
        float(np.frombuffer(bytes(top.embedding), "<f4") @ vector), abs=1e-5)


class _StaleIndexStandIn:
    """Stand-in for an index whose last refresh predates a revocation: its first ranking still returns the given
    chunks, whoever asks."""

    def __init__(self, chunk_ids):
        from apps.retrieval.index.base import SearchHit

        self.hits = [SearchHit(str(c), 1.0 - i / 10) for i, c in enumerate(chunk_ids)]

    def search(self, vector, scope, top_k, **kwargs):
        return self.hits[:top_k]


@pytest.mark.django_db
def test_feedback_ignores_chunks_the_user_may_no_longer_read(indexed_source, bob, alice):
    from apps.accounts.access import access_scope
    from apps.ingestion.embedding import get_embedder
    from apps.ingestion.models import Chunk
    from apps.retrieval.index import IndexFilter
    from apps.retrieval.search import feedback_vector

    hr = list(Chunk.objects.filter(document__external_id__startswith="hr/"))
    public = list(Chunk.objects.exclude(document__external_id__startswith="hr/")[:2])
    assert hr and len(public) == 2
    index = _StaleIndexStandIn([hr[0].pk, *(c.pk for c in public)])
    vector = get_embedder().encode_query("parental leave")
    args = {"alpha": 0.75, "fusion": "relative_score", "filters": IndexFilter()}

    def vectors(chunks):
        return [np.frombuffer(bytes(c.embedding), dtype="<f4") for c in chunks]

    moved_for_bob = feedback_vector(index, vector, access_scope(bob), "parental leave", **args)
    np.testing.assert_allclose(moved_for_bob, rocchio(vector, vectors(public)), rtol=1e-5, atol=1e-6)
    moved_for_alice = feedback_vector(index, vector, access_scope(alice), "parental leave", **args)
    np.testing.assert_allclose(moved_for_alice, rocchio(vector, vectors([hr[0], *public])), rtol=1e-5, atol=1e-6)
    assert not np.allclose(moved_for_bob, moved_for_alice)
    only_hr = _StaleIndexStandIn([hr[0].pk])
    np.testing.assert_array_equal(feedback_vector(only_hr, vector, access_scope(bob), "parental leave", **args),
                                  vector)  # nothing bob may read: the query is not moved at all


@pytest.mark.django_db
def test_lexical_mode_finds_exact_identifiers(indexed_source, bob):
    response = token_client(bob).post(URL, {"query": "vpn-leeds.internal", "mode": "lexical", "top_k": 2},
                                      format="json")
    assert response.status_code == 200
    assert response.json()["results"][0]["document_title"] == "Connecting to the VPN"


@pytest.mark.django_db
def test_explain_shows_both_sides(indexed_source, bob):
    body = token_client(bob).post(URL, {"query": "GateKeeper client badge number", "explain": True, "top_k": 3},
                                  format="json").json()
    top = body["results"][0]
    assert top["document_title"] == "Connecting to the VPN"
    assert top["explain"]["mode"] == "hybrid" and top["explain"]["alpha"] == 0.75
    assert top["explain"]["dense"] > 0.3 and top["explain"]["lexical"] > 0
    plain = token_client(bob).post(URL, {"query": "GateKeeper"}, format="json").json()["results"][0]
    assert "explain" not in plain


@pytest.mark.django_db
def test_restricted_document_does_not_move_public_scores(indexed_source, bob, corpus_dir):
    query = {"query": "parental leave paperwork", "mode": "lexical", "explain": True, "top_k": 10}
    before = {r["chunk_id"]: r["explain"]["lexical"]
              for r in token_client(bob).post(URL, query, format="json").json()["results"]}
    write_corpus(corpus_dir, {"hr/more-leave.md": "# Leave\n\nParental leave paperwork parental leave paperwork."})
    run = sync_now(indexed_source)
    assert run.items_new == 1  # the restricted document really was added
    after = {r["chunk_id"]: r["explain"]["lexical"]
             for r in token_client(bob).post(URL, query, format="json").json()["results"]}
    assert after == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "field"),
    [({"mode": "fuzzy"}, "mode"), ({"alpha": 1.5}, "alpha"), ({"alpha": "high"}, "alpha"),
     ({"fusion": "sum"}, "fusion"), ({"explain": "maybe"}, "explain")],
)
def test_bad_hybrid_parameters(indexed_source, bob, payload, field):
    response = token_client(bob).post(URL, {"query": "VPN", **payload}, format="json")
    assert response.status_code == 400 and response.json()["detail"].startswith(f"{field}:")
