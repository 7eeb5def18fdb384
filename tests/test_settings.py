"""Production settings: no secret defaults, check --deploy clean. Run as subprocesses with their own env."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def manage(*args, env):
    full = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS")}
    full.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=120)


def test_production_needs_a_secret_key(tmp_path):
    result = manage("check", env={"RAGSITE_PROFILE": "production", "DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set when RAGSITE_PROFILE=production" in result.stderr


def test_check_deploy_is_clean_in_production(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("k" * 20 + "Q9$zv!x7#pL2@wR5^tY8&uI0*oP3(aS6)dF1_gH4+jK" + "m" * 10)
    env = {"RAGSITE_PROFILE": "production", "SECRET_KEY_FILE": str(secret), "ALLOWED_HOSTS": "rag.example.com",
           "DATA_DIR": str(tmp_path)}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_local_profile_makes_and_keeps_its_own_key(tmp_path):
    env = {"DATA_DIR": str(tmp_path)}
    assert manage("check", env=env).returncode == 0
    key = (tmp_path / "secret_key").read_text()
    assert len(key) >= 50 and oct((tmp_path / "secret_key").stat().st_mode)[-3:] == "600"
    assert manage("check", env=env).returncode == 0
    assert (tmp_path / "secret_key").read_text() == key
