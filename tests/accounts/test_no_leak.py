"""Property: whatever the users, groups, memberships, grants, revocations and restrictions, no search, answer, document
list, document read, document count or error message reveals a document the user cannot read, and a forbidden
document answers exactly as a missing one.

The corpus (two small sources, one document narrowed by a `.ragsite-access.json` sidecar) is synced and embedded once
per test; hypothesis varies only the permissions, through the same service the API and the admin use. The expected
readers come from an oracle written here from the documented rule, independently of apps.ingestion.grants.
"""

import uuid

import pytest
from django.contrib.auth.models import Group
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.accounts.models import (
    DocumentGroupObjectPermission,
    DocumentRestriction,
    DocumentUserObjectPermission,
    SourceGroupObjectPermission,
    SourceUserObjectPermission,
)
from apps.ingestion import grants
from apps.ingestion.models import Chunk, Document
from tests.conftest import sync_now, token_client, write_corpus
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

GROUPS = ("hr", "g0", "g1")
USERS = ("u0", "u1", "u2", "u3")
NOTES = {
    "canteen.txt": "The canteen on the third floor serves vegetarian lunches from noon until two o'clock.",
    "parking.md": "# Parking\n\nVisitor parking permits are issued by reception and are valid for one day.",
}
QUERY = "VPN expenses hotel encryption passwords parental leave canteen lunch parking permits"
ALL_THE_WORDS = " ".join(sorted(set(QUERY.lower().split())))


@pytest.fixture
def corpus(indexed_source, tmp_path, roles):
    from apps.ingestion.sources import create_source

    notes = create_source(name="notes", config={"path": str(write_corpus(tmp_path / "notes", NOTES))})
    assert sync_now(notes).status == "succeeded"
    for name in GROUPS:
        Group.objects.get_or_create(name=name)
    users = {name: UserFactory(username=name, groups=["user"]) for name in USERS}
    documents = list(Document.objects.select_related("source").order_by("source__name", "external_id"))
    assert len(documents) == 6
    snippets = {}
    for chunk in Chunk.objects.order_by("document_id", "ordinal"):
        snippets.setdefault(chunk.document_id, chunk.text[:60])
    return {
        "sources": [indexed_source, notes],
        "documents": documents,
        "users": users,
        "clients": {name: token_client(user) for name, user in users.items()},
        "groups": {g.name: g for g in Group.objects.filter(name__in=GROUPS)},
        "snippets": snippets,
        "acl": {d.pk: ["hr"] for d in documents if d.external_id.startswith("hr/")},
    }


subsets_of_users = st.frozensets(st.sampled_from(USERS), max_size=2)
subsets_of_groups = st.frozensets(st.sampled_from(GROUPS), max_size=2)
target_grants = st.fixed_dictionaries({"users": subsets_of_users, "groups": subsets_of_groups})

world = st.fixed_dictionaries({
    "members": st.fixed_dictionaries({u: subsets_of_groups for u in USERS}),
    "inactive": st.frozensets(st.sampled_from(USERS), max_size=1),
    "answers": st.sampled_from(USERS),
    "reader_groups": st.lists(subsets_of_groups, min_size=2, max_size=2),
    "source_grants": st.lists(target_grants, min_size=2, max_size=2),
    "document_grants": st.lists(target_grants, min_size=6, max_size=6),
    "restricted": st.lists(st.booleans(), min_size=6, max_size=6),
    # Which grants to take back afterwards: ("source" | "document", index, "users" | "groups", seed)
    "revocations": st.lists(st.tuples(st.sampled_from(["source", "document"]), st.integers(0, 5),
                                      st.sampled_from(["users", "groups"]), st.integers(0, 10)), max_size=4),
})


def _reset(corpus):
    for model in (SourceUserObjectPermission, SourceGroupObjectPermission, DocumentUserObjectPermission,
                  DocumentGroupObjectPermission, DocumentRestriction):
        model.objects.all().delete()
    for source in corpus["sources"]:
        source.reader_groups.clear()  # rewrites the readers (the m2m signal)


def _apply(corpus, w):
    """Set up the world through the service; returns the grants still standing after the revocations."""
    _reset(corpus)
    users, groups = corpus["users"], corpus["groups"]
    admin = None
    for name, user in users.items():
        user.groups.set([Group.objects.get(name="user"), *(groups[g] for g in w["members"][name])])
        user.is_active = name not in w["inactive"]
        user.save(update_fields=["is_active"])
    standing = {}
    targets = [("source", i, s) for i, s in enumerate(corpus["sources"])] + \
              [("document", i, d) for i, d in enumerate(corpus["documents"])]
    for kind, i, target in targets:
        given_grants = w["source_grants"][i] if kind == "source" else w["document_grants"][i]
        if kind == "source":
            target.reader_groups.set([groups[g] for g in w["reader_groups"][i]])
        elif w["restricted"][i]:
            grants.restrict(target, actor=admin)
        for u in sorted(given_grants["users"]):
            grants.grant(target, user=users[u], actor=admin)
        for g in sorted(given_grants["groups"]):
            grants.grant(target, group=groups[g], actor=admin)
        standing[(kind, i)] = {"users": set(given_grants["users"]), "groups": set(given_grants["groups"])}
    for kind, i, holder_kind, seed in w["revocations"]:
        i = i % len(corpus["sources"]) if kind == "source" else i
        held = sorted(standing[(kind, i)][holder_kind])
        if not held:
            continue
        name = held[seed % len(held)]
        target = corpus["sources"][i] if kind == "source" else corpus["documents"][i]
        holder = {"user": users[name]} if holder_kind == "users" else {"group": groups[name]}
        grants.revoke(target, actor=admin, **holder)
        standing[(kind, i)][holder_kind].discard(name)
    return standing


def _oracle(corpus, w, standing) -> dict:
    """user name -> the ids of the documents the documented rule lets them read."""
    sources = corpus["sources"]
    readable = {}
    for name in USERS:
        if name in w["inactive"]:
            readable[name] = set()
            continue
        mine = set(w["members"][name])
        ids = set()
        for i, document in enumerate(corpus["documents"]):
            s = sources.index(document.source)
            if w["restricted"][i]:
                inherited_groups, inherited_users, everyone = set(), set(), False
            elif document.pk in corpus["acl"]:
                inherited_groups, inherited_users = set(corpus["acl"][document.pk]), set()
                everyone = not inherited_groups
            else:
                inherited_groups = set(w["reader_groups"][s]) | standing[("source", s)]["groups"]
                inherited_users = standing[("source", s)]["users"]
                everyone = not inherited_groups and not inherited_users
            own = standing[("document", i)]
            if (everyone or name in inherited_users or name in own["users"]
                    or mine & (inherited_groups | own["groups"])):
                ids.add(document.pk)
        readable[name] = ids
    return readable


def _strings(response) -> str:
    """Every string in a JSON body, decoded (so a snippet is found whatever JSON escaped in it)."""
    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield str(k)
                yield from walk(v)
        elif isinstance(value, list):
            for v in value:
                yield from walk(v)
        else:
            yield str(value)

    try:
        return "\n".join(walk(response.json()))
    except ValueError:
        return response.content.decode()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(w=world)
def test_nothing_leaks(corpus, w):
    standing = _apply(corpus, w)
    expected = _oracle(corpus, w, standing)
    all_ids = {d.pk for d in corpus["documents"]}
    missing = uuid.uuid4()
    for name, client in corpus["clients"].items():
        readable = expected[name]
        forbidden = all_ids - readable
        bodies = []

        def call(method, url, data=None, _client=client, _bodies=bodies):
            response = getattr(_client, method)(url, data, format="json") if data else getattr(_client, method)(url)
            _bodies.append(_strings(response))
            return response

        listing = call("get", "/api/v1/documents/")
        if name in w["inactive"]:
            assert listing.status_code in (401, 403)
        else:
            body = listing.json()
            assert {uuid.UUID(d["id"]) for d in body["results"]} == readable  # exactly: nothing leaks, none lost
            assert body["count"] == len(readable)

            missing_body = call("get", f"/api/v1/documents/{missing}/")
            assert missing_body.status_code == 404
            for document in corpus["documents"]:
                response = call("get", f"/api/v1/documents/{document.pk}/")
                if document.pk in readable:
                    assert response.status_code == 200
                else:
                    assert (response.status_code, response.content) == (404, missing_body.content)

            for payload in ({"query": QUERY, "top_k": 50, "mode": "lexical"},
                            {"query": ALL_THE_WORDS, "top_k": 50, "filters": {"source": "notes"}},
                            {"query": QUERY, "top_k": 50, "filters": {"source": ["handbook", "notes"]}}):
                response = call("post", "/api/v1/search/", payload)
                assert response.status_code == 200, response.content
                assert {uuid.UUID(r["document_id"]) for r in response.json()["results"]} <= readable
            if name == w["answers"]:  # the extractive answer embeds sentences: one user per example asks
                response = call("post", "/api/v1/answer/", {"query": QUERY, "top_k": 10})
                assert response.status_code == 200, response.content
                assert {uuid.UUID(c["document_id"]) for c in response.json()["citations"]} <= readable
            response = call("post", "/api/v1/search/", {"query": QUERY, "top_k": 1000})  # an error message
            assert response.status_code == 400

        for text in bodies:
            for document_id in forbidden:
                assert str(document_id) not in text, (name, document_id)
                assert corpus["snippets"][document_id] not in text, (name, document_id)
