"""Change events from a Redis stream, read by a consumer group: the message-queue door to apply_events().

A message's fields are one event, flat, plus the source's name: ``source``, ``type`` (upsert | delete), ``id``,
and for a push source's upserts ``content``, optionally ``title``, ``content_type``, ``uri`` and ``groups`` (a JSON
array of group names). ``XADD changes * source kb type upsert id doc-1 content "..."``.

Delivery is at least once: a message is acknowledged (XACK) only after its events are committed and its sync
requested; a consumer that dies keeps its messages pending, and any consumer of the group claims them
(XAUTOCLAIM) once they have been idle for ``claim_idle_ms``. Handling twice is harmless (an upsert of the same
content is skipped by the sync's hash check; a delete of something gone does nothing). A message that can never
be handled (unknown source, bad field) or has been delivered ``max_deliveries`` times goes to the dead-letter
stream ``<stream>.dead`` with the reason, and is acknowledged.
"""

import json
import logging
import os
import socket
from dataclasses import dataclass, field

from apps.compliance.audit import record
from ragsite.db import fresh_connections
from ragsite.errors import FieldError

from .changes import apply_events, parse_event
from .models import Source

logger = logging.getLogger(__name__)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ConsumeStats:
    handled: int = 0
    reclaimed: int = 0
    dead_lettered: int = 0
    failed: int = 0  # left pending, to be retried
    sync_runs: set = field(default_factory=set)


class ChangeStreamConsumer:
    def __init__(self, client, stream: str, group: str, consumer: str | None = None, *, count=100, block_ms=5000,
                 claim_idle_ms=60_000, max_deliveries=5):
        # ``client`` is a redis.Redis made with decode_responses=True.
        self.client, self.stream, self.group = client, stream, group
        self.consumer = consumer or default_consumer_name()
        self.count, self.block_ms, self.claim_idle_ms = count, block_ms, claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dead_stream = f"{stream}.dead"
        self.stats = ConsumeStats()
        self._claim_cursor = "0-0"

    def ensure_group(self):
        """Create the group at the start of the stream (events sent before the first consumer ran are kept)."""
        import redis

        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, *, iterations: int | None = None, stop=lambda: False) -> ConsumeStats:
        """Read until ``stop()`` or for ``iterations`` rounds: reclaim idle messages, then read new ones."""
        self.ensure_group()
        # What this consumer name was handed before a restart and never acknowledged comes first.
        own = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=self.count)
        self._handle(_messages(own))
        done = 0
        while not stop() and (iterations is None or done < iterations):
            done += 1
            fresh_connections()
            self.reclaim()
            fresh = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=self.count,
                                           block=self.block_ms)
            self._handle(_messages(fresh))
        return self.stats

    def reclaim(self):
        """Claim messages pending longer than claim_idle_ms (a dead or stuck consumer's) and handle them."""
        cursor, claimed, *_ = self.client.xautoclaim(self.stream, self.group, self.consumer,
                                                     min_idle_time=self.claim_idle_ms, start_id=self._claim_cursor,
                                                     count=self.count)
        self._claim_cursor = cursor or "0-0"
        claimed = [(mid, fields) for mid, fields in claimed if fields is not None]  # None: trimmed from the stream
        if not claimed:
            return
        self.stats.reclaimed += len(claimed)
        logger.info("stream %s: reclaimed %d idle messages", self.stream, len(claimed))
        ready = []
        for mid, fields in claimed:
            pending = self.client.xpending_range(self.stream, self.group, min=mid, max=mid, count=1)
            if pending and pending[0]["times_delivered"] > self.max_deliveries:
                self._dead_letter(mid, fields, f"not handled after {self.max_deliveries} deliveries")
            else:
                ready.append((mid, fields))
        self._handle(ready)

    def _handle(self, messages):
        batches: dict[int, tuple[Source, list, list]] = {}
        for mid, fields in messages:
            try:
                source, event = self._parse(fields)
            except FieldError as exc:
                self._dead_letter(mid, fields, str(exc))
                continue
            batches.setdefault(source.pk, (source, [], []))
            batches[source.pk][1].append(event)
            batches[source.pk][2].append(mid)
        for source, events, ids in batches.values():
            try:
                run = apply_events(source, events, trigger="stream", actor=f"stream:{self.stream}")
            except Exception:
                # Left pending: reclaimed and retried once idle, dead-lettered after max_deliveries.
                logger.exception("stream %s: %d events for source %s failed", self.stream, len(ids), source.name)
                self.stats.failed += len(ids)
                continue
            self.client.xack(self.stream, self.group, *ids)
            self.stats.handled += len(ids)
            if run is not None:
                self.stats.sync_runs.add(run.pk)

    def _parse(self, fields: dict):
        fields = dict(fields)
        name = fields.pop("source", None)
        if not name:
            raise FieldError("source", "is required: the name of the source the event is for")
        source = Source.objects.filter(name=name).first()
        if source is None:
            raise FieldError("source", f"no source named {name!r}")
        if "groups" in fields:
            try:
                fields["groups"] = json.loads(fields["groups"])
            except ValueError:
                raise FieldError("groups", 'must be a JSON array of group names, e.g. ["hr"]') from None
        return source, parse_event(fields, "message", push=source.kind == "push")

    def _dead_letter(self, mid, fields, reason):
        self.client.xadd(self.dead_stream, {**(fields or {}), "error": reason, "message_id": mid,
                                            "group": self.group})
        self.client.xack(self.stream, self.group, mid)
        self.stats.dead_lettered += 1
        fresh_connections()
        record("changes.refused", actor=f"stream:{self.stream}", object_type="stream", object_id=self.stream,
               data={"message_id": mid, "reason": reason, "dead_letter": self.dead_stream})
        logger.warning("stream %s: message %s dead-lettered: %s", self.stream, mid, reason)


def _messages(response):
    """XREADGROUP's [[stream, [(id, fields), ...]]] as [(id, fields)]."""
    out = []
    for _stream, entries in response or []:
        out.extend((mid, fields) for mid, fields in entries if fields is not None)
    return out

