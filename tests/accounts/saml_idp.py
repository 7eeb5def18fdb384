"""A real SAML 2.0 identity provider for tests: Debian's simplesamlphp served by ``php -S``.

Keys and certificates are generated per run; the config directory (config.php, authsources.php, IdP-hosted and
SP-remote metadata) is written into a temporary directory and handed to simplesamlphp through
``SIMPLESAMLPHP_CONFIG_DIR`` (the package's own default is /etc/simplesamlphp). Users and the signature algorithm are
read from files on every request, so a test can change a user's groups or make the IdP sign with RSA-SHA1 without a
restart. Nothing here imports Django.
"""

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SIMPLESAMLPHP = Path(os.environ.get("SIMPLESAMLPHP_DIR", "/usr/share/simplesamlphp"))
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"


def make_keypair(common_name: str) -> tuple[str, str]:
    """A 2048-bit RSA key and a self-signed SHA-256 certificate, both PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def cert_body(cert_pem: str) -> str:
    """The base64 body of a PEM certificate (what SAML metadata carries)."""
    return "".join(line for line in cert_pem.strip().splitlines() if "-----" not in line)


def require_simplesamlphp():
    """Fail (not skip) with a clear message when php or simplesamlphp is missing: `make test` installs them."""
    php = shutil.which("php")
    if php is None:
        raise RuntimeError("SAML tests need `php` (the php-cli package) on PATH; `make test` installs it "
                           "(apt-get install php-cli simplesamlphp)")
    if not (SIMPLESAMLPHP / "www" / "saml2" / "idp" / "SSOService.php").is_file():
        raise RuntimeError(f"SAML tests need simplesamlphp at {SIMPLESAMLPHP} (Debian package `simplesamlphp`, "
                           "or set SIMPLESAMLPHP_DIR); `make test` installs it")
    # Debian's simplesamlphp package does not pull in PHP's DOM extension, without which it cannot sign anything.
    check = subprocess.run([php, "-r", "exit(class_exists('DOMDocument') ? 0 : 1);"], capture_output=True,
                           timeout=30, check=False)
    if check.returncode != 0:
        raise RuntimeError("SAML tests need PHP's DOM/XML extension for simplesamlphp (apt-get install php-xml)")
    return php


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _php(value) -> str:
    """A Python value as a PHP literal (strings, bools, numbers, lists and dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, dict):
        return "[" + ", ".join(f"{_php(k)} => {_php(v)}" for k, v in value.items()) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_php(v) for v in value) + "]"
    raise TypeError(type(value))


class SimpleSamlIdp:
    """One simplesamlphp IdP on 127.0.0.1 with its own keys, users and trusted SP."""

    def __init__(self, workdir: Path, *, sp_entity_id: str, acs_url: str, sp_cert_pem: str):
        self.php = require_simplesamlphp()
        self.dir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.entity_id = f"{self.url}/saml2/idp/metadata.php"
        self.sso_url = f"{self.url}/saml2/idp/SSOService.php"
        self.sp_entity_id, self.acs_url = sp_entity_id, acs_url
        self.key_pem, self.cert_pem = make_keypair(f"test-idp-{self.port}")
        self.proc = None
        self._write_config(sp_cert_pem)
        self.set_users({})

    # -- configuration -------------------------------------------------------------------------------------------
    def _write_config(self, sp_cert_pem: str):
        d = self.dir
        for sub in ("cert", "metadata", "log", "data", "tmp", "sessions"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "cert" / "idp.key").write_text(self.key_pem)
        (d / "cert" / "idp.crt").write_text(self.cert_pem)
        (d / "sigalg.txt").write_text(RSA_SHA256)
        config = {
            "baseurlpath": "/",
            "certdir": str(d / "cert") + "/",
            "loggingdir": str(d / "log") + "/",
            "datadir": str(d / "data") + "/",
            "tempdir": str(d / "tmp"),
            "secretsalt": os.urandom(16).hex(),
            "auth.adminpassword": os.urandom(16).hex(),
            "admin.protectindexpage": True,
            "admin.protectmetadata": False,
            "technicalcontact_name": "ragsite tests",
            "technicalcontact_email": "na@example.org",
            "timezone": "UTC",
            "logging.handler": "file",
            "logging.logfile": "simplesamlphp.log",
            "enable.saml20-idp": True,
            "module.enable": {"exampleauth": True, "core": True, "saml": True, "admin": True},
            "store.type": "phpsession",
            "session.phpsession.savepath": str(d / "sessions"),
            "session.cookie.secure": False,
            "metadata.sources": [{"type": "flatfile", "directory": str(d / "metadata")}],
            "language.default": "en",
            "production": False,
        }
        (d / "config.php").write_text(
            "<?php\n$config = " + _php(config) + ";\n$config['logging.level'] = SimpleSAML\\Logger::DEBUG;\n"
        )
        (d / "authsources.php").write_text(
            "<?php\n"
            "$users = json_decode(file_get_contents(__DIR__ . '/users.json'), true);\n"
            "$userpass = ['exampleauth:UserPass'];\n"
            "foreach ($users as $name => $user) { $userpass[$name . ':' . $user['password']] = $user['attributes']; }\n"
            "$config = ['admin' => ['core:AdminPassword'], 'example-userpass' => $userpass];\n"
        )
        idp = {
            "host": "__DEFAULT__",
            "privatekey": "idp.key",
            "certificate": "idp.crt",
            "auth": "example-userpass",
            "attributes.NameFormat": "urn:oasis:names:tc:SAML:2.0:attrname-format:basic",
        }
        (d / "metadata" / "saml20-idp-hosted.php").write_text(
            f"<?php\n$metadata[{_php(self.entity_id)}] = {_php(idp)};\n"
        )
        sp = {
            "AssertionConsumerService": self.acs_url,
            "NameIDFormat": "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
            "simplesaml.nameidattribute": "uid",
            "saml20.sign.response": True,
            "saml20.sign.assertion": True,
            "validate.authnrequest": True,
            "certData": cert_body(sp_cert_pem),
        }
        (d / "metadata" / "saml20-sp-remote.php").write_text(
            f"<?php\n$metadata[{_php(self.sp_entity_id)}] = {_php(sp)};\n"
            f"$metadata[{_php(self.sp_entity_id)}]['signature.algorithm'] = "
            "trim(file_get_contents(__DIR__ . '/../sigalg.txt'));\n"
        )

    def set_users(self, users: dict):
        """``{"alice": {"password": "...", "uid": "alice", "mail": "...", "groups": [...]}}``"""
        data = {}
        for name, user in users.items():
            attributes = {k: (v if isinstance(v, list) else [v]) for k, v in user.items() if k != "password"}
            data[name] = {"password": user["password"], "attributes": attributes}
        (self.dir / "users.json").write_text(json.dumps(data))

    @contextlib.contextmanager
    def signature_algorithm(self, algorithm: str):
        """Make the IdP sign with ``algorithm`` (e.g. RSA_SHA1) inside the block."""
        path = self.dir / "sigalg.txt"
        before = path.read_text()
        path.write_text(algorithm)
        try:
            yield
        finally:
            path.write_text(before)

    # -- process -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30):
        env = {**os.environ, "SIMPLESAMLPHP_CONFIG_DIR": str(self.dir)}
        self.log = open(self.dir / "php-server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.php, "-S", f"127.0.0.1:{self.port}", "-t", str(SIMPLESAMLPHP / "www")],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"php -S exited with {self.proc.returncode}: {self.server_log()[-2000:]}")
            try:
                response = requests.get(f"{self.url}/saml2/idp/metadata.php", timeout=5)
            except requests.RequestException:
                time.sleep(0.1)
                continue
            if response.status_code == 200 and "EntityDescriptor" in response.text:
                return self
            raise RuntimeError(f"simplesamlphp metadata answered {response.status_code}: {response.text[:2000]}\n"
                               f"{self.server_log()[-2000:]}")
        raise RuntimeError(f"simplesamlphp did not answer within {timeout}s: {self.server_log()[-2000:]}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def server_log(self) -> str:
        parts = []
        for path in (self.dir / "php-server.log", self.dir / "log" / "simplesamlphp.log"):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
