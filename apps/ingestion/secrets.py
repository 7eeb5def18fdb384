"""Secrets inside source configs: encrypted at rest, masked on the way out, decrypted only for the connector.

A connector names its secret settings in ``secret_fields``: ``"password"`` (the value of that key is a secret) or
``"headers.*"`` (every value of that mapping is one, so the header names stay readable). Stored, a secret is
``{"$secret": "<Fernet token>"}``; shown (API, admin), it is ``"********"``; an update that sends ``"********"``
back keeps the stored value.

``"url?"`` names a URL whose query values are secrets (an ``?api_key=...``): when it has a query it is stored as
``{"$secret": "<token of the whole URL>", "$shown": "https://host/path?api_key=********"}`` and shown as that URL
with every query value masked (the host, path and parameter names stay readable). An update may send the shown
URL back, or change it and keep ``********`` for a parameter: that parameter gets its stored value again.

The Fernet key is HKDF-SHA256 over ``settings.SECRET_KEY`` (salt-less, info ``ragsite source config secrets``),
so it never has to be stored next to the data it protects. Tokens made under a key listed in
``settings.SECRET_KEY_FALLBACKS`` still decrypt, so SECRET_KEY can be rotated the way Django rotates it; a
config saved again is re-encrypted under the current key.
"""

import base64
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from .connectors.base import ConfigError, ConnectorError

MASK = "********"
MARKER = "$secret"
SHOWN = "$shown"  # beside MARKER for a URL: how it is shown, its query values masked
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
    return (isinstance(value, dict) and MARKER in value and set(value) <= {MARKER, SHOWN}
            and all(isinstance(v, str) for v in value.values()))


def _query_pairs(url: str) -> list[tuple[str, str]]:
    """The raw (still percent-encoded) name and value of each query parameter, in order."""
    return [piece.partition("=")[::2] for piece in urlsplit(url).query.split("&") if piece]


def _with_query(url: str, pairs) -> str:
    return urlunsplit(urlsplit(url)._replace(query="&".join(f"{name}={value}" for name, value in pairs)))


def _seal_url(value):
    """A URL with a query sealed whole, with its masked form beside it; one without a query left as it is."""
    if is_secret(value) or not isinstance(value, str):
        return value
    pairs = _query_pairs(value)
    if not pairs:
        return value
    return {**_seal(value), SHOWN: _with_query(value, [(name, MASK) for name, _ in pairs])}


def _restore_url(value, stored, name: str):
    """The URL an update sent, each masked query value replaced by the stored URL's value of that parameter."""
    if not isinstance(value, str):
        return value
    pairs = _query_pairs(value)
    if not any(v == MASK for _, v in pairs):
        return value
    previous = dict(reversed(_query_pairs(stored))) if isinstance(stored, str) else {}
    restored = []
    for key, v in pairs:
        if v == MASK:
            if key not in previous:
                raise ConfigError(name, f"{MASK!r} stands for the stored value of query parameter {key!r}, but "
                                        "none is stored; enter the value")
            v = previous[key]
        restored.append((key, v))
    return _with_query(value, restored)


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
        if spec.endswith("?"):
            if spec[:-1] in config:
                yield config, spec[:-1], spec
        elif spec.endswith(".*"):
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
    for container, key, spec in _secret_slots(config, secret_fields):
        if spec.endswith("?"):
            container[key] = _seal_url(container[key])
        elif container[key] is not None:
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
            return value.get(SHOWN, MASK)
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
        if name.endswith("?"):
            container[key] = _restore_url(container[key], previous.get(key), key)
            continue
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
