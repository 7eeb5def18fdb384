"""A real OpenID Provider for the OIDC tests: panva/oidc-provider under node (tests/accounts/idp/oidc/).

`npm ci` installs it from the committed package-lock.json the first time (node_modules missing), then
`node server.js` serves it on a free port of 127.0.0.1 with one confidential client whose redirect URI is our
`/auth/complete/oidc/`, and accounts read from a JSON file the test may rewrite (to change a user's groups).
"""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.processes import stop_process

IDP_DIR = Path(__file__).resolve().parent / "idp" / "oidc"
CLIENT_ID = "ragsite-test"
CLIENT_SECRET = "test-client-secret-6b1f"  # a throwaway secret of the throwaway test IdP


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"`{tool}` was not found on PATH: the OIDC tests run a real OpenID Provider under Node.js 20+ "
                    "(`make test` installs nodejs and npm; on Debian: apt-get install nodejs npm)", pytrace=False)
    return path


MIN_NODE = (20, 19)  # oidc-provider 9's floor (package.json "engines"); Debian 12's own nodejs is 18


def ensure_installed():
    """`npm ci` from the committed lock file when node_modules is missing (a fresh checkout, CI)."""
    node = _require("node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    found = tuple(int(part) for part in version.lstrip("v").split(".")[:2])
    if found < MIN_NODE:
        pytest.fail(f"Node.js {version} is too old for oidc-provider 9 (needs {MIN_NODE[0]}.{MIN_NODE[1]}+): install "
                    "nodejs 20 or 22 (NodeSource, or Debian 13's nodejs)", pytrace=False)
    if (IDP_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = _require("npm")
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=IDP_DIR, capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        pytest.fail(f"npm ci in {IDP_DIR} failed ({result.returncode}):\n{result.stdout[-2000:]}\n"
                    f"{result.stderr[-2000:]}", pytrace=False)


class OidcIdp:
    def __init__(self, workdir: Path, redirect_uri: str):
        self.workdir = workdir
        self.redirect_uri = redirect_uri
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.accounts_file = workdir / "accounts.json"
        self.log_path = workdir / "oidc-provider.log"
        self.proc = None

    def set_accounts(self, accounts: dict):
        tmp = self.accounts_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(accounts))
        tmp.replace(self.accounts_file)  # the server never reads half a file

    def start(self, timeout: float = 60):
        ensure_installed()
        if not self.accounts_file.exists():
            self.set_accounts({})
        env = {**os.environ, "IDP_PORT": str(self.port), "IDP_CLIENT_ID": CLIENT_ID,
               "IDP_CLIENT_SECRET": CLIENT_SECRET, "IDP_REDIRECT_URI": self.redirect_uri,
               "IDP_ACCOUNTS_FILE": str(self.accounts_file), "NODE_ENV": "test"}
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([shutil.which("node"), "server.js"], cwd=IDP_DIR, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        url = f"{self.issuer}/.well-known/openid-configuration"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"oidc-provider exited with {self.proc.returncode}:\n{self.log()}", pytrace=False)
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"oidc-provider did not answer {url} within {timeout}s:\n{self.log()}", pytrace=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
