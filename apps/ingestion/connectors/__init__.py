from .base import Connector, ConnectorError, RawDocument
from .confluence import ConfluenceConnector
from .filesystem import FileSystemConnector
from .http import HttpConnector
from .push import PushConnector
from .s3 import S3Connector
from .sharepoint import SharePointConnector
from .sql import SqlConnector

CONNECTORS = {"filesystem": FileSystemConnector, "sql": SqlConnector, "http": HttpConnector}
CONNECTORS["push"] = PushConnector
CONNECTORS.update(s3=S3Connector, sharepoint=SharePointConnector, confluence=ConfluenceConnector)

# Any source may carry a webhook secret (apps/ingestion/changes.py): validated, encrypted and masked by the source
# service for every kind, and kept from the connector, which has no use for it.
WEBHOOK_SECRET = "webhook_secret"  # noqa: S105 - the name of a config key, not a secret

__all__ = ["CONNECTORS", "Connector", "ConnectorError", "RawDocument", "get_connector"]


def get_connector(source) -> Connector:
    try:
        cls = CONNECTORS[source.kind]
    except KeyError:
        raise ConnectorError(f"unknown source type {source.kind!r}; known: {', '.join(sorted(CONNECTORS))}") from None
    from ..secrets import decrypt_config

    config = {k: v for k, v in (source.config or {}).items() if k != WEBHOOK_SECRET}
    connector = cls(decrypt_config(config))  # stored encrypted; the connector alone sees the clear values
    connector.source = source
    return connector
