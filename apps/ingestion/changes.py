"""Change events pushed to ragsite: the signed webhook and the change stream both end in apply_events().

An event is ``{"type": "upsert" | "delete", "id": "<external id>", "title"?, "content"?, "content_type"?,
"groups"?, "uri"?}``. A ``push`` source keeps what it is sent (PushedDocument rows; upserts replace, deletes
remove) and the ordinary sync indexes it through the push connector. For any other kind an event only requests a
sync: that is how a file share or an API tells us something changed. Either way the sync is requested with
``follow_up``, after the events are committed, so a run that had already listed the source runs again.

Webhook signing: ``X-Ragsite-Timestamp: <unix seconds>`` and ``X-Ragsite-Signature: sha256=<hex>``, the hex
HMAC-SHA256 of ``f"{timestamp}.{raw body}"`` under the source's ``webhook_secret``. Refused (401, audited): a
missing or wrong signature, a timestamp more than WEBHOOK_TOLERANCE_SECONDS (300) from our clock, and a replay.
Replays are found in the database (WebhookDelivery, unique signature) rather than in Redis: the signature is
remembered in the same transaction that stores the events, so a delivery that failed half-way leaves nothing
behind and its retry is not mistaken for a replay; and the one-machine SQLite stack needs nothing more.
"""

import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.compliance.audit import record
from ragsite import parsers
from ragsite.errors import FieldError

from .connectors import WEBHOOK_SECRET
from .models import PushedDocument, Source, SyncRun, WebhookDelivery
from .secrets import SecretError, decrypt_config
from .sync import request_sync

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Ragsite-Signature"
TIMESTAMP_HEADER = "X-Ragsite-Timestamp"
EVENT_TYPES = ("upsert", "delete")
EVENT_FIELDS = {"type", "id", "title", "content", "content_type", "groups", "uri"}
# Text formats only: the content travels as a JSON string.
PUSH_CONTENT_TYPES = ("text/plain", "text/markdown", "text/html", "text/csv", "application/json")
_SIGNATURE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


def tolerance_seconds() -> int:
    return int(getattr(settings, "WEBHOOK_TOLERANCE_SECONDS", 300))


def max_events() -> int:
    return int(getattr(settings, "WEBHOOK_MAX_EVENTS", 1000))


@dataclass(frozen=True)
class ChangeEvent:
    type: str
    id: str
    title: str = ""
    content: str | None = None
    content_type: str = ""
    groups: tuple[str, ...] | None = None
    uri: str = ""


# --- events ------------------------------------------------------------------------------------------------


def _text(event: dict, key: str, where: str, *, limit: int, required=False) -> str:
    value = event.get(key)
    if value is None:
        if required:
            raise FieldError(f"{where}.{key}", "is required")
        return ""
    if not isinstance(value, str):
        raise FieldError(f"{where}.{key}", "must be a string")
    if "\x00" in value:
        raise FieldError(f"{where}.{key}", "must not contain NUL characters")
    if len(value) > limit:
        raise FieldError(f"{where}.{key}", f"must be at most {limit} characters")
    return value


def parse_event(event, where: str, *, push: bool) -> ChangeEvent:
    """One event, checked; FieldError names the bad field (``events[2].content``)."""
    if not isinstance(event, dict):
        raise FieldError(where, "must be a JSON object")
    unknown = sorted(set(event) - EVENT_FIELDS)
    if unknown:
        raise FieldError(f"{where}.{unknown[0]}", f"unknown field; known: {', '.join(sorted(EVENT_FIELDS))}")
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        raise FieldError(f"{where}.type", f"must be one of {', '.join(EVENT_TYPES)}")
    external_id = _text(event, "id", where, limit=1024, required=True)
    if not external_id.strip():
        raise FieldError(f"{where}.id", "must not be blank")
    if kind == "delete" or not push:
        return ChangeEvent(kind, external_id)  # the rest describes content this kind of source fetches itself
    content = _text(event, "content", where, limit=settings.MAX_DOCUMENT_BYTES, required=True)
    if not content.strip():
        raise FieldError(f"{where}.content", "must hold some text")
    if len(content.encode()) > settings.MAX_DOCUMENT_BYTES:
        raise FieldError(f"{where}.content", f"is over the {settings.MAX_DOCUMENT_BYTES:,}-byte limit")
    content_type = _text(event, "content_type", where, limit=100) or "text/plain"
    if content_type not in PUSH_CONTENT_TYPES:
        raise FieldError(f"{where}.content_type", f"must be one of {', '.join(PUSH_CONTENT_TYPES)}")
    groups = event.get("groups")
    if groups is not None:
        if (not isinstance(groups, list) or not groups
                or not all(isinstance(g, str) and g.strip() and len(g) <= 150 for g in groups)):
            raise FieldError(f"{where}.groups", "must be a non-empty list of group names (leave it out for the "
                                                "source's own readers)")
        groups = tuple(sorted({g.strip() for g in groups}))
    uri = _text(event, "uri", where, limit=2048)
    if uri and (urlsplit(uri).scheme not in ("http", "https") or not urlsplit(uri).netloc):
        raise FieldError(f"{where}.uri", "must be an http:// or https:// URL")
    return ChangeEvent(kind, external_id, _text(event, "title", where, limit=500), content, content_type, groups, uri)


def parse_events(payload, *, push: bool) -> list[ChangeEvent]:
    """The body of a webhook: ``{"events": [...]}``."""
    if not isinstance(payload, dict):
        raise FieldError("body", 'must be a JSON object: {"events": [...]}')
    unknown = sorted(set(payload) - {"events", "delivery_id"})
    if unknown:
        raise FieldError(unknown[0], "unknown field; the body holds events and optionally delivery_id")
    # The sender's own id for the delivery, if it has one: it makes two identical bodies sent in the same second two
    # deliveries (different signatures) rather than one and a replay.
    delivery_id = payload.get("delivery_id")
    if delivery_id is not None and (not isinstance(delivery_id, str) or len(delivery_id) > 200):
        raise FieldError("delivery_id", "must be a string of at most 200 characters")
    events = payload.get("events")
    if not isinstance(events, list):
        raise FieldError("events", "is required: a list of change events")
    if len(events) > max_events():
        raise FieldError("events", f"at most {max_events()} events per delivery; send more deliveries")
    return [parse_event(event, f"events[{i}]", push=push) for i, event in enumerate(events)]


# --- applying ----------------------------------------------------------------------------------------------


class Replay(Exception):
    pass


def _remember_delivery(source: Source, signature: str):
    # A delivery stays replayable for twice the tolerance: its timestamp may be that far ahead of our clock.
    WebhookDelivery.objects.filter(received_at__lt=timezone.now() - timedelta(seconds=2 * tolerance_seconds())).delete()
    try:
        with transaction.atomic():
            WebhookDelivery.objects.create(signature=signature.lower(), source=source)
    except IntegrityError:
        raise Replay from None


def _store(source: Source, events: list[ChangeEvent]):
    """Keep a push source's events. The source's row lock is held to commit, so ``seq`` follows commit order and
    an incremental sync that resumes after the highest seq it saw misses nothing."""
    locked = Source.objects.select_for_update().get(pk=source.pk)
    highest = PushedDocument.objects.filter(source=source).aggregate(m=Max("seq"))["m"] or 0
    # Past the checkpoint too: after every row was deleted, new rows must still sort after what was synced.
    seq = max(highest, int((locked.checkpoint or {}).get("seq", 0)))
    for event in events:
        if event.type == "delete":
            PushedDocument.objects.filter(source=source, external_id=event.id).delete()
            continue
        seq += 1
        PushedDocument.objects.update_or_create(
            source=source, external_id=event.id,
            defaults={"seq": seq, "title": event.title, "content": event.content, "uri": event.uri,
                      "content_type": event.content_type,
                      "groups": list(event.groups) if event.groups is not None else None},
        )


def apply_events(source: Source, events: list[ChangeEvent], *, trigger: str, actor: str, ip=None,
                 signature: str | None = None) -> SyncRun | None:
    """Store a push source's events (or nothing, for other kinds) and request a sync. The one entry point of the
    webhook and the change stream. Raises Replay when ``signature`` was seen before; then nothing is stored."""
    with transaction.atomic():
        if signature is not None:
            _remember_delivery(source, signature)
        if source.kind == "push" and events:
            _store(source, events)
    if not events:
        return None  # a sender's connectivity check
    # Only now, the events committed: a pending run that we join lists the source after this.
    run, _ = request_sync(source, trigger=trigger, follow_up=True)
    record("changes.received", actor=actor, object_type="source", object_id=source.pk, ip=ip,
           data={"via": trigger, "upserts": sum(e.type == "upsert" for e in events),
                 "deletes": sum(e.type == "delete" for e in events), "sync_run": run.pk})
    return run


# --- the webhook -------------------------------------------------------------------------------------------


def sign(secret: str, timestamp, body: bytes) -> str:
    """The ``X-Ragsite-Signature`` value a sender puts on ``body`` sent at ``timestamp``."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class WebhookRefused(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class WebhookInvalid(FieldError):
    pass


def _refuse(source, ip, status, reason, message) -> WebhookRefused:
    """Audit a refusal and return the exception to raise."""
    record("webhook.refused", actor="webhook", object_type="source", object_id=source.pk, ip=ip,
           data={"reason": reason, "status": status, "detail": message})
    logger.warning("webhook for source %s refused (%s): %s", source.pk, reason, message)
    return WebhookRefused(status, reason, message)


def receive_webhook(source: Source, body: bytes, headers, *, ip=None, now: float | None = None) -> dict:
    """Check a delivery's signature, timestamp and body, then apply its events. Every refusal is audited and
    raised: WebhookRefused (401, 403, 409) or WebhookInvalid (400, naming the field)."""
    try:
        secret = decrypt_config({WEBHOOK_SECRET: (source.config or {}).get(WEBHOOK_SECRET)})[WEBHOOK_SECRET]
    except SecretError as exc:
        raise _refuse(source, ip, 403, "secret_unreadable", str(exc)) from None
    if not secret:
        raise _refuse(source, ip, 403, "no_secret",
                      f"source {source.name!r} has no webhook_secret in its config, so it accepts no webhooks")
    given = headers.get(SIGNATURE_HEADER)
    if not given:
        raise _refuse(source, ip, 401, "missing_signature", f"the {SIGNATURE_HEADER} header is missing")
    match = _SIGNATURE.match(given.strip())
    if not match:
        raise _refuse(source, ip, 401, "bad_signature", f"{SIGNATURE_HEADER} must be sha256=<64 hex digits>")
    timestamp = (headers.get(TIMESTAMP_HEADER) or "").strip()
    if not _TIMESTAMP.match(timestamp):
        raise _refuse(source, ip, 401, "missing_timestamp", f"{TIMESTAMP_HEADER} must be the time in Unix seconds")
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), f"sha256={match.group(1).lower()}".encode()):
        raise _refuse(source, ip, 401, "bad_signature", "the signature does not match the body and timestamp")
    skew = int(timestamp) - (time.time() if now is None else now)
    if abs(skew) > tolerance_seconds():
        raise _refuse(source, ip, 401, "stale_timestamp", f"the timestamp is {abs(skew):.0f} s "
                      f"{'ahead of' if skew > 0 else 'behind'} our clock; at most {tolerance_seconds()} s allowed")
    if not source.enabled:
        raise _refuse(source, ip, 409, "disabled", f"source {source.name!r} is disabled")
    try:
        try:
            payload = parsers.loads(body)  # bounded: nesting and NUL are a 400, never a 500
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookInvalid("body", f"not valid JSON: {exc}") from None
        events = parse_events(payload, push=source.kind == "push")
    except FieldError as exc:
        _refuse(source, ip, 400, "malformed", str(exc))
        raise WebhookInvalid(exc.field, exc.message) from None
    try:
        run = apply_events(source, events, trigger="webhook", actor="webhook", ip=ip, signature=match.group(1))
    except Replay:
        raise _refuse(source, ip, 401, "replay", "this delivery was received before (same signature)") from None
    return {"accepted": len(events), **({"sync_run_id": run.pk} if run else {})}
