from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from ragsite.errors import FieldError


class ConnectorError(Exception):
    """The source as a whole cannot be read (bad config, path gone); nothing is pruned when this is raised."""


class ConfigError(FieldError, ConnectorError):
    """A connector setting is wrong; ``field`` names it inside the source's config."""



@dataclass
class RawDocument:
    external_id: str  # stable id at the source
    uri: str
    size: int
    modified_at: datetime | None
    read: Callable[[], bytes]  # fetches the content; may raise ItemError
    groups: tuple[str, ...] | None = None  # readers named by the source itself; None: the source's own readers
    content_type: str | None = None  # None: guessed from the external id's extension
    title: str | None = None  # None: whatever the parser finds (heading, <title>, file name)
    # Metadata that changes the indexed document without changing its bytes (a pushed title or link): mixed into
    # the content hash, so a change to it alone re-indexes the document. None for sources whose bytes say it all.
    hashed_metadata: str | None = None
    classification: str | None = None  # one of CLASSIFICATIONS; None: the source's own classification


def reject_unknown(config: dict, allowed, what: str) -> None:
    """ConfigError naming the first setting the connector does not take ("unknown setting for <what>")."""
    unknown = set(config) - set(allowed)
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"unknown setting for {what}")


def text_setting(config: dict, key: str, *, required=False) -> str | None:
    """A non-empty string setting (stripped), None when optional and absent; else a ConfigError naming it."""
    value = config.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "is required" if value is None else "must be a non-empty string")
    return value.strip()


def check_number(key: str, value, *, low, high, integer: bool):
    """The value if it is a number (a whole one when ``integer``) within [low, high]; else a ConfigError."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise ConfigError(key, f"must be {'a whole number' if integer else 'a number'} from {low} to {high}")
    return value


class ItemError(Exception):
    """One document cannot be read; the sync records the reason and goes on."""


def failing_read(reason: str):
    """A RawDocument.read that fails with the reason: for items whose problem is known while listing."""

    def read():
        raise ItemError(reason)

    return read


class Connector:
    """One source type. A sync calls check(), then documents(since), then next_checkpoint() and present_ids().

    A full-listing connector (``incremental = False``) yields every document each time; the sync prunes what it
    did not see. An incremental one yields only documents changed since the checkpoint and lists every id still
    present through present_ids(), so deletions are still found without fetching content.
    """

    incremental = False
    # Settings stored encrypted and shown masked (apps/ingestion/secrets.py): "key", or "key.*" for every value
    # of a mapping.
    secret_fields: tuple[str, ...] = ()

    def __init__(self, config: dict):
        self.config = self.validate_config(config or {})

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        """Return the config normalised, or raise ConfigError naming the bad field."""
        return config

    def check(self) -> None:
        """Raise ConnectorError with an operator-readable reason when the source cannot be reached."""

    def documents(self, since: dict | None = None) -> Iterator[RawDocument]:
        """Documents changed since the checkpoint (all of them when ``since`` is None or empty)."""
        raise NotImplementedError

    def next_checkpoint(self) -> dict:
        """After documents() is exhausted: where the next incremental pull starts."""
        return {}

    def present_ids(self) -> set[str]:
        """Every id still at the source (incremental connectors only)."""
        raise NotImplementedError
