"""schemathesis against the live OpenAPI schema, as two ordinary users who each read documents the other may not.

The real app (pytest-django's live server, on the test PostgreSQL) serves two sources indexed through the real sync
pipeline, each restricted to one department group. schemathesis (its CLI, run as a subprocess) loads `/api/schema/`
at run time, so every operation the schema lists then is exercised, and runs all its checks, among them
`ignored_auth` (each declared scheme really enforced) and `object_level_authorization` (what one peer reads, replayed
as the other, must not come back equivalent). The test asserts the run found nothing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, sync_now, write_corpus
from tests.factories import UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SEED = 20240611
MAX_EXAMPLES = 25

HR_CORPUS = {
    "leave.md": "# Parental leave\n\nEmployees receive twenty-six weeks of fully paid parental leave after six "
    "months of service. Ask the people team to start the paperwork.",
}
FINANCE_CORPUS = {
    "close.md": "# Month-end close\n\nJournals are posted by the third working day. The controller signs off the "
    "balance sheet reconciliations before the ledger is locked.",
}


@pytest.fixture
def two_peers(live_server, roles, tmp_path):
    """alice (hr) and bob (finance), ordinary users; one source each, readable only by that department."""
    from apps.accounts.models import ApiToken
    from apps.ingestion.services import create_source

    alice = UserFactory(username="alice", groups=["user", "hr"])
    bob = UserFactory(username="bob", groups=["user", "finance"])
    for name, corpus, group in (("hr-docs", HR_CORPUS, "hr"), ("finance-docs", FINANCE_CORPUS, "finance")):
        source = create_source(name=name, config={"path": str(write_corpus(tmp_path / name, corpus))},
                               groups=[group])
        run = sync_now(source)
        assert run.status == "succeeded", run.errors
    return {user.username: ApiToken.issue(user, name="schemathesis")[1] for user in (alice, bob)}


def _run_schemathesis(base_url: str, tokens: dict, workdir: Path) -> subprocess.CompletedProcess:
    auth = workdir / "wfc-auth.json"
    auth.write_text(json.dumps({"auth": [
        {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Token {key}"}]}
        for name, key in tokens.items()
    ]}))
    config = workdir / "schemathesis.toml"
    config.write_text(
        f'[auth.wfc]\npath = "{auth}"\npeers = {json.dumps(list(tokens))}\n'
    )
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "--config-file", str(config), "run", f"{base_url}/api/schema/",
           "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
           "--generation-deterministic", "--workers", "1", "--no-shrink",
           "--report", "junit,ndjson", "--report-dir", str(workdir / "report"), "--no-color",
           "--request-timeout", "60", "--output-truncate", "false"]
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1200, check=False)


def test_schemathesis_finds_nothing_with_two_peers(two_peers, live_server, tmp_path):
    result = _run_schemathesis(live_server.url, two_peers, tmp_path)
    print(result.stdout[-20000:])
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
