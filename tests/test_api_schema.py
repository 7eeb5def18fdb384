"""schemathesis against the live OpenAPI schema, as two ordinary users who each read documents the other may not.

The real app (pytest-django's live server, on the test PostgreSQL) serves two sources indexed through the real sync
pipeline, each restricted to one department group. schemathesis (its CLI, run as a subprocess) loads `/api/schema/`
at run time, so every operation the schema lists then is exercised, with every check it has (`--checks all`), among
them `ignored_auth` (each declared scheme is really enforced: the request without credentials, and with invalid
ones, is refused) and `object_level_authorization` (what one peer read, replayed as the other, must not come back
equivalent). Identities come from a Web Fuzzing Commons auth document; `[auth.wfc] peers` names the users that must
not see each other's objects. The run must end with no failure at all.

Deterministic (`--generation-deterministic`), bounded (`--max-examples`), one worker. tests/schemathesis_hooks.py
makes positive cases obey the two cross-field rules JSON Schema cannot state. Set SCHEMATHESIS_REPORT_DIR to keep
the JUnit and NDJSON reports.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, sync_now, write_corpus
from tests.factories import UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MAX_EXAMPLES = 20

HR_CORPUS = {
    "leave.md": "# Parental leave\n\nEmployees receive twenty-six weeks of fully paid parental leave after six "
    "months of service. Ask the people team to start the paperwork.",
}
FINANCE_CORPUS = {
    "close.md": "# Month-end close\n\nJournals are posted by the third working day. The controller signs off the "
    "balance sheet reconciliations before the ledger is locked.",
}


@pytest.fixture
def world(live_server, roles, tmp_path):
    """alice (hr) and bob (finance), ordinary users; one source each, readable only by that department."""
    from apps.ingestion.models import Document
    from apps.ingestion.sources import create_source

    alice = UserFactory(username="alice", groups=["user", "hr"])
    bob = UserFactory(username="bob", groups=["user", "finance"])
    for name, corpus, group in (("hr-docs", HR_CORPUS, "hr"), ("finance-docs", FINANCE_CORPUS, "finance")):
        source = create_source(name=name, config={"path": str(write_corpus(tmp_path / name, corpus))},
                               groups=[group])
        run = sync_now(source)
        assert run.status == "succeeded", run.errors
    assert Document.objects.count() == 2
    return {"alice": alice, "bob": bob}


def _token(user) -> str:
    from apps.accounts.models import ApiToken

    return ApiToken.issue(user, name="schemathesis")[1]


def run_schemathesis(base_url: str, identities: dict, peers: list, workdir: Path,
                     options=("--checks", "all"), env=None, max_examples=MAX_EXAMPLES) -> tuple[int, str, dict]:
    """Run `st run` against the live schema; return (exit code, output, counts taken from the NDJSON report)."""
    workdir.mkdir(parents=True, exist_ok=True)
    auth = workdir / "wfc-auth.json"
    auth.write_text(json.dumps({"auth": [
        {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Token {key}"}]}
        for name, key in identities.items()
    ]}))
    config = workdir / "schemathesis.toml"
    config.write_text(f"[auth.wfc]\npath = {json.dumps(str(auth))}\n"
                      + (f"peers = {json.dumps(peers)}\n" if peers else ""))
    report_dir = Path(os.environ.get("SCHEMATHESIS_REPORT_DIR") or workdir / "report") / workdir.name
    cmd = [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run", f"{base_url}/api/schema/",
           *options, "--max-examples", str(max_examples), "--generation-deterministic", "--workers", "1",
           "--request-timeout", "60", "--report", "junit,ndjson", "--report-dir", str(report_dir),
           "--no-color", "--output-truncate", "false"]
    env = {**os.environ, **(env or {}), "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1200, check=False)
    output = result.stdout + result.stderr
    counts = _counts(next(report_dir.glob("ndjson-*.ndjson"), None))
    return result.returncode, output, counts


def _counts(ndjson: Path | None) -> dict:
    """Cases per (identity, method, path template) that the report recorded, probes of the auth checks included."""
    counts = Counter()
    for line in (ndjson.read_text().splitlines() if ndjson else []):
        recorder = json.loads(line).get("ScenarioFinished", {}).get("recorder", {})
        for case in recorder.get("cases", {}).values():
            value = case["value"]
            counts[(value.get("auth_identity"), value["method"], value["path"])] += 1
    return counts


def _summary(output: str) -> str:
    start = output.find("=== SUMMARY")
    return output[start:] if start >= 0 else output[-5000:]


def test_two_peers_cannot_read_each_others_objects(world, live_server, tmp_path):
    tokens = {name: _token(user) for name, user in world.items()}
    code, output, counts = run_schemathesis(live_server.url, tokens, ["alice", "bob"], tmp_path / "peers")
    print(_summary(output))
    assert code == 0, output[-30000:]
    schema = requests.get(f"{live_server.url}/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"},
                          timeout=60).json()
    operations = {(method.upper(), path) for path, item in schema["paths"].items() for method in item
                  if method in ("get", "post", "put", "patch", "delete")}
    print(f"{len(operations)} operations in the schema, {sum(counts.values())} cases recorded")
    # Not vacuous: every operation was sent without credentials (ignored_auth's probe or the escalation's anonymous
    # rung), and alice's document read was replayed as bob (object_level_authorization's probe; he got a 404).
    assert operations <= {(method, path) for identity, method, path in counts if identity is None}
    assert counts[("bob", "GET", "/api/v1/documents/{id}/")] >= 1, sorted(counts.items())


WRITES = ("POST", "PUT", "PATCH", "DELETE")
WRITER_MAX_EXAMPLES = 15  # ~70 s on one machine
# What a writer's case is held to: no server error, and every answer (refusals included) as the schema says.
# Not positive_data_acceptance: a source's config is checked against the world (a path that exists), which a
# schema cannot say; nor the auth checks, which the peers' run above already makes of every operation.
WRITER_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
                 "response_headers_conformance", "response_schema_conformance")


def test_a_writer_gets_no_server_error(world, live_server, tmp_path):
    """The write operations (sources, sync, cancel, grants, restriction, search, answer) fuzzed as an admin, who may
    make them all, most cases aimed at objects that exist (tests/schemathesis_hooks.py), so they reach the code
    behind the permission check and the 404 (issue 12). Not the webhook: it takes no user, and the peers' run
    above fuzzes it already."""
    from apps.ingestion.models import Document, Source, SyncRun
    from apps.ingestion.sources import create_source

    writer = UserFactory(username="wendy", groups=["admin"])
    folder = write_corpus(tmp_path / "scratch", {"note.md": "# Scratch\n\nA folder the fuzzer may index."})
    scratch = [create_source(name=f"scratch-{n}", config={"path": str(folder)}).pk for n in range(3)]
    targets = {"source": list(Source.objects.exclude(pk__in=scratch).values_list("pk", flat=True)),
               "scratch_source": scratch, "document": [str(pk) for pk in Document.objects.values_list("pk", flat=True)],
               "sync_run": list(SyncRun.objects.values_list("pk", flat=True)),
               "users": ["alice", "bob", str(world["alice"].pk)], "groups": ["hr", "finance"], "folder": str(folder)}
    options = ["--checks", ",".join(WRITER_CHECKS)]
    for method in WRITES:
        options += ["--include-method", method]
    options += ["--exclude-path-regex", "/webhook/$"]
    code, output, counts = run_schemathesis(live_server.url, {"wendy": _token(writer)}, [], tmp_path / "writer",
                                            options=options, env={"SCHEMATHESIS_TARGETS": json.dumps(targets)},
                                            max_examples=WRITER_MAX_EXAMPLES)
    print(_summary(output))
    assert code == 0, output[-30000:]
    schema = requests.get(f"{live_server.url}/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"},
                          timeout=60).json()
    writes = {(method.upper(), path) for path, item in schema["paths"].items() for method in item
              if method.upper() in WRITES and not path.endswith("/webhook/")}
    print(f"{len(writes)} write operations, {sum(counts.values())} cases recorded")
    # Not vacuous: every write operation was sent (with the writer's token, the only credentials given)...
    assert writes <= {(method, path) for _, method, path in counts}, sorted(writes - set(counts))
    # ...and reached past the 404 to do what it does (the world's sources may be gone by now: fuzzed ids hit them).
    assert Source.objects.filter(pk__in=scratch).count() < len(scratch)
