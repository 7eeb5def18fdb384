"""POST /api/v1/answer/: cited answers drawn only from what the caller may read.

The extractive path uses the real embedding model. The generator path talks to a LOCAL STAND-IN: a real HTTP
server this test starts on 127.0.0.1 in a thread, answering the OpenAI chat-completions JSON shape. It is not a
language model; it records what it was sent and replies with a fixed answer (or fails on purpose), so the tests
can check the request (model, Bearer key, only permitted passages) and every fallback.
"""

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps.compliance.models import AuditEvent
from apps.ingestion.embedding import get_embedder
from apps.ingestion.models import Chunk
from apps.retrieval.answer import REDUNDANCY_COSINE, _generated_citations, extractive_answer, split_sentences
from apps.retrieval.search import SearchResult
from tests.conftest import token_client

pytestmark = pytest.mark.django_db
URL = "/api/v1/answer/"
SEARCH_URL = "/api/v1/search/"
LEAVE = "how many weeks of paid parental leave do employees get"
HR_SENTENCE = "twenty-six weeks"
STAND_IN_KEY = "sk-stand-in-0123456789"
STAND_IN_REPLY = "Leave requests start with the people team [1]."


@pytest.fixture(autouse=True)
def _no_generator_by_default(settings):
    settings.ANSWER_LLM_URL = ""
    settings.ANSWER_LLM_MODEL = ""
    settings.ANSWER_LLM_API_KEY = ""
    settings.ANSWER_LLM_TIMEOUT = 30


def markers(answer: str) -> list[int]:
    return [int(n) for n in re.findall(r"\[(\d+)\]", answer)]


def assert_well_cited(body: dict):
    """Every [n] in the answer has a citation n, every citation is used, and each one is a real chunk."""
    numbers = {c["n"] for c in body["citations"]}
    assert set(markers(body["answer"])) == numbers
    assert sorted(numbers) == list(range(1, len(numbers) + 1))
    for citation in body["citations"]:
        chunk = Chunk.objects.get(pk=citation["chunk_id"])
        assert str(chunk.document_id) == citation["document_id"] and chunk.text == citation["text"]


# --- the extractive answer ---------------------------------------------------------------------------------


def test_extractive_answer_cites_the_document_that_answers(indexed_source, bob):
    response = token_client(bob).post(URL, {"query": "What is the hotel cap per night in London?"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"answer", "citations", "generator", "took_ms"}
    assert body["generator"] == "extractive"
    assert "210 pounds in London [1]." in body["answer"]  # the best sentence comes first, cited [1]
    assert body["citations"][0]["uri"].endswith("policies/expenses.txt")
    assert body["citations"][0]["source"] == "handbook"
    assert len(markers(body["answer"])) == 3  # max_sentences defaults to 3
    assert_well_cited(body)


def test_vpn_question_and_max_sentences(indexed_source, bob):
    payload = {"query": "What is the VPN gateway for the Leeds office?", "max_sentences": 1}
    body = token_client(bob).post(URL, payload, format="json").json()
    assert body["answer"] == "The VPN gateway for the Leeds office is vpn-leeds.internal [1]."
    assert [c["document_title"] for c in body["citations"]] == ["Connecting to the VPN"]


def test_sentences_are_ordered_by_cosine_to_the_query(indexed_source, bob):
    query = "What should I do if my laptop is lost?"
    body = token_client(bob).post(URL, {"query": query, "max_sentences": 5, "top_k": 10}, format="json").json()
    sentences = [re.sub(r" \[\d+\]", "", s) for s in re.findall(r".+?\[\d+\][.!?]", body["answer"])]
    assert len(sentences) == 5
    embedder = get_embedder()
    scores = embedder.encode(sentences) @ embedder.encode_query(query)
    assert list(scores) == sorted(scores, reverse=True)
    assert "Lost devices are reported to the service desk within one hour" in sentences[0]


def test_answers_draw_only_on_readable_chunks(indexed_source, alice, bob):
    payload = {"query": LEAVE, "top_k": 20, "max_sentences": 10}
    alice_body = token_client(alice).post(URL, payload, format="json").json()
    bob_body = token_client(bob).post(URL, payload, format="json").json()
    hr_chunks = {str(pk) for pk in Chunk.objects.filter(document__title="Parental leave").values_list("pk", flat=True)}
    assert hr_chunks
    # alice is in hr: the answer to her question is the hr document's sentence
    assert HR_SENTENCE in alice_body["answer"].split("[")[0]
    assert hr_chunks & {c["chunk_id"] for c in alice_body["citations"]}
    # bob is not: an answer from what he may read, with no trace of the hr document
    assert bob_body["answer"] and bob_body["citations"]
    assert HR_SENTENCE not in json.dumps(bob_body) and "parental" not in json.dumps(bob_body).lower()
    assert not hr_chunks & {c["chunk_id"] for c in bob_body["citations"]}
    assert_well_cited(bob_body)


def test_nothing_readable_matches_gives_an_empty_answer(indexed_source, bob):
    response = token_client(bob).post(URL, {"query": "VPN", "filters": {"source": "other"}}, format="json")
    assert response.status_code == 200
    assert response.json()["answer"] == "" and response.json()["citations"] == []


def test_answer_is_audited_without_query_or_answer_text(indexed_source, bob):
    body = token_client(bob).post(URL, {"query": "hotel cap in London"}, format="json").json()
    event = AuditEvent.objects.filter(action="answer").latest("seq")
    assert event.actor_id == bob.pk
    assert event.data["chunk_ids"] == [c["chunk_id"] for c in body["citations"]] and event.data["chunk_ids"]
    assert event.data["generator_used"] is False
    assert AuditEvent.objects.filter(action="search", seq__lt=event.seq).exists()  # search() audited too
    stored = json.dumps(event.data).lower()
    assert "hotel" not in stored and "210" not in stored


def test_no_role_no_answer(indexed_source, charlie):
    response = token_client(charlie).post(URL, {"query": "VPN"}, format="json")
    assert response.status_code == 403 and "query" in response.json()["detail"]
    assert not AuditEvent.objects.filter(action="answer").exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({}, "query"),
        ({"query": "VPN", "max_sentences": 0}, "max_sentences"),
        ({"query": "VPN", "max_sentences": 11}, "max_sentences"),
        ({"query": "VPN", "top_k": 0}, "top_k"),
        ({"query": "VPN", "top_k": 21}, "top_k"),
        ({"query": "VPN", "generate": "maybe"}, "generate"),
        ({"query": "VPN", "generate": [True]}, "generate"),
        ({"query": "VPN", "mode": "fuzzy"}, "mode"),
        ({"query": "VPN", "alpha": 2}, "alpha"),
        ({"query": "VPN", "filters": {"colour": "red"}}, "filters.colour"),
        ({"query": "VPN", "generate": True}, "generate"),  # no generator configured
    ],
)
def test_bad_requests_get_400_naming_the_field(indexed_source, bob, payload, field):
    response = token_client(bob).post(URL, payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(f"{field}:")


def test_top_k_20_and_max_sentences_10_are_accepted(indexed_source, bob):
    response = token_client(bob).post(URL, {"query": "VPN", "top_k": 20, "max_sentences": 10}, format="json")
    assert response.status_code == 200, response.content


# --- the extractive service, directly ----------------------------------------------------------------------


def test_sentence_splitter_drops_headings_and_fragments():
    text = (
        "# Expenses\n\nTravel and expenses\n\nSee e.g. the travel desk for bookings. Prices rose 3.5 percent in May!"
        " Ask now.\n- Receipts are attached to every claim\n| grade | cap |"
    )
    assert split_sentences(text) == [
        "See e.g. the travel desk for bookings.",
        "Prices rose 3.5 percent in May!",
        "Receipts are attached to every claim",
    ]


def _result(n: int, text: str) -> SearchResult:
    return SearchResult(chunk_id=f"chunk-{n}", document_id=f"doc-{n}", document_title=f"Doc {n}", source="s",
                        uri=f"/doc-{n}", heading="", page=None, text=text, score=1.0)


def test_redundancy_guard_skips_a_near_duplicate():
    first = "Hotel nights in London are capped at 210 pounds."
    again = "Hotel nights in London are capped at 210 pounds per night."
    other = "Train tickets are reimbursed in standard class only."
    vectors = get_embedder().encode([first, again])
    assert float(vectors[0] @ vectors[1]) > REDUNDANCY_COSINE  # the premise: these two say the same thing
    results = [_result(1, f"{first} {other}"), _result(2, again)]
    answer, citations = extractive_answer("hotel cap in London", results, max_sentences=2)
    assert ("210 pounds [" in answer) and (other[:-1] in answer)
    assert answer.count("210 pounds") == 1


# --- the generator, against a local stand-in ---------------------------------------------------------------


class StandIn:
    """A LOCAL STAND-IN for an OpenAI-compatible server (not a model): POST /v1/chat/completions on 127.0.0.1.

    ``behaviour``: "ok" (the chat-completions shape with STAND_IN_REPLY), "error" (HTTP 500), "garbage" (200 with
    a body that is not JSON), "shapeless" (200 JSON without choices) or "slow" (answers after ``delay`` seconds).
    """

    def __init__(self, behaviour="ok", delay=5.0):
        self.behaviour, self.delay = behaviour, delay
        self.requests: list[dict] = []
        self.released = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if stand_in.behaviour == "slow":
                    stand_in.released.wait(stand_in.delay)
                if stand_in.behaviour == "error":
                    return self._send(500, b'{"error": {"message": "stand-in overloaded"}}')
                if stand_in.behaviour == "garbage":
                    return self._send(200, b"<html>upstream proxy error</html>")
                if stand_in.behaviour == "shapeless":
                    return self._send(200, b'{"object": "chat.completion", "choices": []}')
                reply = {
                    "id": "chatcmpl-stand-in",
                    "object": "chat.completion",
                    "created": 0,
                    "model": f"{body.get('model')}-stand-in-0001",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": STAND_IN_REPLY},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                return self._send(200, json.dumps(reply).encode())

            def _send(self, status, payload):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:  # the client gave up waiting (the timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def stand_in(settings):
    with StandIn() as server:
        settings.ANSWER_LLM_URL = server.url
        settings.ANSWER_LLM_MODEL = "stand-in-chat"
        settings.ANSWER_LLM_API_KEY = STAND_IN_KEY
        settings.ANSWER_LLM_TIMEOUT = 5
        yield server


def _user_message(request: dict) -> str:
    messages = request["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "only" in messages[0]["content"] and "[1]" in messages[0]["content"]
    return messages[1]["content"]


def test_generator_gets_only_permitted_passages_and_writes_the_answer(indexed_source, bob, stand_in, caplog):
    payload = {"query": LEAVE, "top_k": 20, "generate": True}
    response = token_client(bob).post(URL, payload, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["answer"] == STAND_IN_REPLY and body["generator"] == "stand-in-chat-stand-in-0001"
    assert "generator_error" not in body
    [request] = stand_in.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "stand-in-chat"
    assert request["headers"]["Authorization"] == f"Bearer {STAND_IN_KEY}"
    user = _user_message(request)
    assert LEAVE in user
    # exactly the chunks search() gives bob, numbered; nothing from the hr document
    permitted = token_client(bob).post(SEARCH_URL, {"query": LEAVE, "top_k": 20}, format="json").json()["results"]
    for n, result in enumerate(permitted, start=1):
        assert f"[{n}] " in user and result["text"].strip() in user
    assert f"[{len(permitted) + 1}] " not in user
    assert HR_SENTENCE not in user
    # the model cited [1]: that citation is the first passage it was given
    assert [c["chunk_id"] for c in body["citations"]] == [permitted[0]["chunk_id"]]
    event = AuditEvent.objects.filter(action="answer").latest("seq")
    assert event.data["generator_used"] is True and event.data["chunk_ids"] == [permitted[0]["chunk_id"]]
    assert "people team" not in json.dumps(event.data)
    assert STAND_IN_KEY not in caplog.text and STAND_IN_KEY not in json.dumps(event.data)


def test_generator_sees_restricted_passages_for_a_reader_of_them(indexed_source, alice, stand_in):
    response = token_client(alice).post(URL, {"query": LEAVE, "generate": True}, format="json")
    assert response.status_code == 200
    assert HR_SENTENCE in _user_message(stand_in.requests[0])  # the bob test's absence is not a blind spot


def test_generator_is_not_called_when_nothing_is_readable(indexed_source, bob, stand_in):
    payload = {"query": "VPN", "filters": {"source": "other"}, "generate": True}
    body = token_client(bob).post(URL, payload, format="json").json()
    assert body["answer"] == "" and body["citations"] == [] and stand_in.requests == []


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("error", "the generator answered HTTP 500"),
        ("garbage", "the generator's response is not valid JSON"),
        ("shapeless", "the generator's response has no choices[0].message.content"),
        ("slow", "the generator did not answer within 0.5 s"),
    ],
)
def test_generator_failure_falls_back_to_extractive(indexed_source, bob, stand_in, settings, caplog, behaviour,
                                                     reason):
    stand_in.behaviour = behaviour
    settings.ANSWER_LLM_TIMEOUT = 0.5
    payload = {"query": "What is the hotel cap per night in London?", "generate": True}
    response = token_client(bob).post(URL, payload, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert len(stand_in.requests) == 1  # the generator really was asked
    assert body["generator"] == "extractive" and body["generator_error"] == reason
    assert "210 pounds in London [1]." in body["answer"]
    assert_well_cited(body)
    if behaviour == "slow":
        assert body["took_ms"] < 4000  # gave up at the timeout, not after the stand-in's 5 s
    event = AuditEvent.objects.filter(action="answer").latest("seq")
    assert event.data["generator_used"] is False and event.data["generator_failed"] is True
    assert STAND_IN_KEY not in caplog.text and STAND_IN_KEY not in response.content.decode()


def test_unreachable_generator_falls_back(indexed_source, bob, settings):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.ANSWER_LLM_URL = f"http://127.0.0.1:{port}/v1"
    body = token_client(bob).post(URL, {"query": "VPN gateway", "generate": True}, format="json").json()
    assert body["generator"] == "extractive" and body["answer"]
    assert body["generator_error"].startswith("the generator could not be reached (ConnectError")


def test_generated_citations_follow_the_models_markers():
    results = [_result(n, f"passage {n}") for n in (1, 2, 3)]
    assert [c.n for c in _generated_citations("A [3]. B [1, 3]. C [9].", results)] == [1, 3]  # [9] was not given
    assert [c.chunk_id for c in _generated_citations("Only [2].", results)] == ["chunk-2"]
    assert [c.n for c in _generated_citations("No markers at all.", results)] == [1, 2, 3]
