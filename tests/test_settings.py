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


def _audit_keys(tmp_path) -> dict:
    """The audit chain's HMAC key and checkpoint signing key: production has no default for them either."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = tmp_path / "audit_signing_key.pem"
    pem.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {"AUDIT_HMAC_KEY": "h" * 64, "AUDIT_SIGNING_KEY_FILE": str(pem)}


def test_production_needs_audit_keys(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("k" * 50)
    env = {"RAGSITE_PROFILE": "production", "SECRET_KEY_FILE": str(secret), "ALLOWED_HOSTS": "rag.example.com",
           "DATA_DIR": str(tmp_path), "AUDIT_HMAC_KEY": "", "AUDIT_HMAC_KEY_FILE": ""}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "AUDIT_HMAC_KEY (or AUDIT_HMAC_KEY_FILE) must be set when RAGSITE_PROFILE=production" in result.stderr
    result = manage("check", env={**env, **_audit_keys(tmp_path), "AUDIT_SIGNING_KEY_FILE": ""})
    assert result.returncode != 0
    assert "AUDIT_SIGNING_KEY (or AUDIT_SIGNING_KEY_FILE) must be set" in result.stderr
    assert not (tmp_path / "audit_hmac_key").exists()  # nothing generated in production


def test_check_deploy_is_clean_in_production(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("k" * 20 + "Q9$zv!x7#pL2@wR5^tY8&uI0*oP3(aS6)dF1_gH4+jK" + "m" * 10)
    env = {"RAGSITE_PROFILE": "production", "SECRET_KEY_FILE": str(secret), "ALLOWED_HOSTS": "rag.example.com",
           "DATA_DIR": str(tmp_path), **_audit_keys(tmp_path)}
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


def test_local_profile_makes_and_keeps_its_audit_keys(tmp_path):
    env = {"DATA_DIR": str(tmp_path), "AUDIT_HMAC_KEY": ""}
    assert manage("check", env=env).returncode == 0
    hmac_key, signing_key = (tmp_path / "audit_hmac_key").read_text(), (tmp_path / "audit_signing_key.pem").read_text()
    assert len(hmac_key) == 64 and "PRIVATE KEY" in signing_key
    assert oct((tmp_path / "audit_hmac_key").stat().st_mode)[-3:] == "600"
    assert manage("check", env=env).returncode == 0
    assert (tmp_path / "audit_hmac_key").read_text() == hmac_key
    assert (tmp_path / "audit_signing_key.pem").read_text() == signing_key
