"""Secrets inside source configs: encrypted at rest, masked on the way out, decrypted only for the connector.

A connector names its secret settings in ``secret_fields``: ``"password"`` (the value of that key is a secret) or
``"headers.*"`` (every value of that mapping is one, so the header names stay readable). Stored, a secret is
``{"$secret": "<Fernet token>"}``; shown (API, admin), it is ``"********"``; an update that sends ``"********"``
back keeps the stored value.

The Fernet key is HKDF-SHA256 over ``settings.SECRET_KEY`` (salt-less, info ``ragsite source config secrets``),
so it never has to be stored next to the data it protects. Tokens made under a key listed in
``settings.SECRET_KEY_FALLBACKS`` still decrypt, so SECRET_KEY can be rotated the way Django rotates it; a
config saved again is re-encrypted under the current key.
"""

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from .connectors.base import ConfigError, ConnectorError

MASK = "********"
MARKER = "$secret"
_HKDF_INFO = b"ragsite source config secrets"


class SecretError(ConnectorError):
    """A stored secret cannot be decrypted (SECRET_KEY changed without a fallback); the run fails with this."""


@lru_cache(maxsize=8)
def _fernet_for(secret_keys: tuple[str, ...]) -> MultiFernet:
    fernets = []
    for secret_key in secret_keys:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret_key.encode())
        fernets.append(Fernet(base64.urlsafe_b64encode(derived)))
    return MultiFernet(fernets)


def _fernet() -> MultiFernet:
    fallbacks = tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ())
    return _fernet_for((settings.SECRET_KEY, *fallbacks))


def is_secret(value) -> bool:
    return isinstance(value, dict) and set(value) == {MARKER} and isinstance(value[MARKER], str)


def _seal(value) -> dict:
    if is_secret(value):
        return value
    if not isinstance(value, str):
        raise ConfigError("config", "secret values must be strings")
    return {MARKER: _fernet().encrypt(value.encode()).decode()}


def _open(value, where: str) -> str:
    try:
        return _fernet().decrypt(value[MARKER].encode()).decode()
    except InvalidToken:
        raise SecretError(
            f"cannot decrypt the stored secret {where}: SECRET_KEY changed (list the old one in "
            f"SECRET_KEY_FALLBACKS) or the value was edited; enter the secret again"
        ) from None


def _secret_slots(config: dict, secret_fields):
    """(container, key, dotted name) for every secret value present in the config."""
    for spec in secret_fields:
        if spec.endswith(".*"):
            mapping = config.get(spec[:-2])
            if isinstance(mapping, dict):
                for key in mapping:
                    yield mapping, key, f"{spec[:-2]}.{key}"
        elif spec in config:
            yield config, spec, spec


def _copy(config):
    """A deep enough copy: nested dicts and lists are rebuilt, scalars shared."""
    if isinstance(config, dict):
        return {k: _copy(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_copy(v) for v in config]
    return config


def encrypt_config(config: dict, secret_fields) -> dict:
    """The config as stored: every declared secret sealed (already sealed ones kept as they are)."""
    config = _copy(config)
    for container, key, _name in _secret_slots(config, secret_fields):
        if container[key] is not None:
            container[key] = _seal(container[key])
    return config


def decrypt_config(config: dict) -> dict:
    """The config a connector runs with: every sealed value, wherever it is, opened."""

    def walk(value, where):
        if is_secret(value):
            return _open(value, where)
        if isinstance(value, dict):
            return {k: walk(v, f"{where}.{k}" if where else k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, where) for v in value]
        return value

    return walk(config or {}, "")


def mask_config(config: dict) -> dict:
    """The config as shown: every sealed value replaced by the mask."""

    def walk(value):
        if is_secret(value):
            return MASK
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(config or {})


def restore_masked(config: dict, stored: dict | None, secret_fields) -> dict:
    """Put the stored (decrypted) secret back wherever an update sent the mask; a mask with nothing stored
    behind it is an error naming the field."""
    config = _copy(config)
    previous = decrypt_config(stored) if stored else {}
    for container, key, name in list(_secret_slots(config, secret_fields)):
        if container[key] != MASK:
            continue
        head, _, tail = name.partition(".")
        old = previous.get(head)
        if tail:
            old = old.get(tail) if isinstance(old, dict) else None
        if old is None or is_secret(old):
            raise ConfigError(name, f"{MASK!r} stands for the stored secret, but none is stored; enter the value")
        container[key] = old
    return config
