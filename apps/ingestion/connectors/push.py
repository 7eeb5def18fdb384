"""Documents sent to ragsite rather than fetched: pushed through the webhook or the change stream
(apps/ingestion/changes.py), kept in PushedDocument rows, and listed from there by the ordinary sync.

Incremental: a sync yields the rows pushed since the highest ``seq`` it saw last time and prunes the documents
whose row a delete event removed (present_ids). A full sync lists every row.
"""

import json

from .base import Connector, ItemError, RawDocument, reject_unknown


class PushConnector(Connector):
    """No settings of its own; like every source it may carry a ``webhook_secret`` (see connectors/__init__.py)."""

    incremental = True

    def __init__(self, config: dict):
        super().__init__(config)
        self.source = None  # set by get_connector: the rows live under the source
        self._last_seq = 0

    @classmethod
    def validate_config(cls, config):
        reject_unknown(config or {}, (), "a push source (it takes only webhook_secret)")
        return {}

    def _rows(self):
        from ..models import PushedDocument

        if self.source is None:
            raise RuntimeError("a push connector lists the rows of one source; use get_connector(source)")
        return PushedDocument.objects.filter(source_id=self.source.pk)

    def documents(self, since=None):
        self._last_seq = int((since or {}).get("seq", 0))
        rows = self._rows().filter(seq__gt=self._last_seq).defer("content").order_by("seq")
        for row in rows.iterator(chunk_size=500):
            self._last_seq = max(self._last_seq, row.seq)
            yield RawDocument(
                external_id=row.external_id,
                uri=row.uri or f"push://{self.source.name}/{row.external_id}",
                size=0,
                modified_at=row.pushed_at,
                read=self._reader(row.pk, row.seq),
                groups=tuple(row.groups) if row.groups is not None else None,
                content_type=row.content_type,
                title=row.title or None,
                hashed_metadata=json.dumps([row.title, row.uri, row.content_type]),
            )

    def _reader(self, pk, seq):
        def read() -> bytes:
            content = self._rows().filter(pk=pk).values_list("content", flat=True).first()
            if content is None:
                # Deleted after it was listed: present_ids() no longer names it, so the sync prunes it.
                raise ItemError(f"withdrawn by a delete event while the sync ran (push #{seq})")
            return content.encode()

        return read

    def next_checkpoint(self):
        return {"seq": self._last_seq}

    def present_ids(self):
        return set(self._rows().values_list("external_id", flat=True))
