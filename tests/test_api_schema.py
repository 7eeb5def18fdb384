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
    from apps.ingestion.services import create_source

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


def run_schemathesis(base_url: str, identities: dict, peers: list, workdir: Path) -> tuple[int, str, dict]:
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
           "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic", "--workers", "1",
           "--request-timeout", "60", "--report", "junit,ndjson", "--report-dir", str(report_dir),
           "--no-color", "--output-truncate", "false"]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
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
