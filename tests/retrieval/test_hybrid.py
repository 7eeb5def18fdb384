"""Hybrid search: the lexical side, fusion, explain, and statistics that reveal nothing of unreadable rows."""

import numpy as np
import pytest
import scipy.sparse as sp

from apps.retrieval.index.fusion import fuse
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
