"""The append-only, hash-chained audit log: writing events and proving the chain.

Each row's hash is an HMAC-SHA256 of its canonical content (the previous row's hash included) under
AUDIT_HMAC_KEY, a key that lives in the environment and never in the database: someone who can write to the
database can edit a row but cannot recompute the chain after it. Rows written before the keyed chain (scheme
"sha256") still verify under the old plain hash; they may only precede keyed rows. Signed tree heads kept outside
the database (checkpoints.py) pin what the chain was, unkeyed prefix included."""

import functools
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from .merkle import MerkleTree
from .models import AuditEvent, AuditHead

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
SCHEME_UNKEYED = "sha256"  # rows written before the keyed chain
SCHEME_KEYED = "hmac-sha256"
OMITTED = "over AUDIT_MAX_DATA_BYTES"


def _canonical(event: AuditEvent) -> bytes:
    content = {
        "seq": event.seq,
        "created_at": event.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "ip": event.ip,
        "data": event.data,
        "prev_hash": event.prev_hash,
    }
    if event.scheme != SCHEME_UNKEYED:  # unkeyed rows keep the exact bytes the old code hashed
        content["scheme"] = event.scheme
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@functools.lru_cache(maxsize=4)
def _key_bytes(key: str) -> bytes:
    return key.encode()


def compute_hash(event: AuditEvent) -> str:
    if event.scheme == SCHEME_UNKEYED:
        return hashlib.sha256(_canonical(event)).hexdigest()
    if event.scheme != SCHEME_KEYED:
        raise ValueError(f"unknown audit hash scheme {event.scheme!r}")
    return hmac.new(_key_bytes(settings.AUDIT_HMAC_KEY), _canonical(event), hashlib.sha256).hexdigest()


def _locked_head() -> tuple[int, str]:
    """The chain's head (seq, hash), locked until the transaction ends: FOR UPDATE on PostgreSQL; on SQLite the
    transaction's IMMEDIATE BEGIN already holds the write lock. Hand-written SQL, like _move_head: the ORM's
    version of these two statements cost ~0.5 ms of Python on every audited request."""
    table = connection.ops.quote_name(AuditHead._meta.db_table)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT seq, hash FROM {table} WHERE id = 1{lock}")  # noqa: S608 (no values in the text)
        row = cursor.fetchone()
    if row is not None:
        return row[0], row[1]
    try:
        with transaction.atomic():
            AuditHead.objects.create(pk=1, seq=0, hash=GENESIS_HASH)
            return 0, GENESIS_HASH
    except IntegrityError:  # another writer created it first
        return _locked_head()


def _move_head(seq: int, digest: str) -> None:
    table = connection.ops.quote_name(AuditHead._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET seq = %s, hash = %s WHERE id = 1", [seq, digest])  # noqa: S608


def _insert(event: AuditEvent) -> None:
    """INSERT the new event; hand-written like _locked_head (Model.save's machinery cost ~0.3 ms a request). Each
    value goes through its field's own get_db_prep_save, as the ORM's INSERT does."""
    meta = AuditEvent._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    q = connection.ops.quote_name
    sql = (f"INSERT INTO {q(meta.db_table)} ({', '.join(q(f.column) for f in fields)}) "  # noqa: S608
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    values = [f.get_db_prep_save(getattr(event, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        if connection.features.can_return_columns_from_insert:
            cursor.execute(f"{sql} RETURNING {q(meta.pk.column)}", values)
            event.pk = cursor.fetchone()[0]
        else:
            cursor.execute(sql, values)
            event.pk = connection.ops.last_insert_id(cursor, meta.db_table, meta.pk.column)
    event._state.adding, event._state.db = False, connection.alias


def record(action, *, actor=None, object_type="", object_id="", data=None, ip=None, claimed_actor=None) -> AuditEvent:
    """Append one event to the chain. Runs in (or joins) a transaction, so a rolled-back action leaves no event.

    ``actor`` is a signed-in user or the name of a part of the system ("webhook"); a name an unauthenticated
    caller wrote (a failed sign-in's username) goes in ``claimed_actor`` and is stored as ``data.claimed_actor``,
    never as the actor. ``data`` is bounded by AUDIT_MAX_DATA_BYTES (see _bounded)."""
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    data = dict(data or {})
    if claimed_actor is not None:
        data["claimed_actor"] = str(claimed_actor)[:150]
    with transaction.atomic():
        head_seq, head_hash = _locked_head()
        event = AuditEvent(
            seq=head_seq + 1,
            created_at=timezone.now(),
            actor=user,
            actor_name=user.get_username() if user else (actor if isinstance(actor, str) else ""),
            action=action,
            object_type=object_type,
            object_id=str(object_id) if object_id != "" else "",
            ip=ip,
            data=_jsonable(data),
            prev_hash=head_hash,
            scheme=SCHEME_KEYED,
        )
        event.hash = compute_hash(event)
        _insert(event)
        _move_head(event.seq, event.hash)
    return event


def _jsonable(data):
    text = json.dumps(data, default=str)  # ASCII (ensure_ascii): its length is its size in bytes
    value = json.loads(text)
    return value if len(text) <= settings.AUDIT_MAX_DATA_BYTES else _bounded(value)


def _digest(value) -> dict:
    """What stands in for a value too big to keep: its SHA-256 over the canonical JSON (sorted keys, no spaces,
    UTF-8), so whoever holds the original (a filter list) can prove it was this one, and its size."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return {"omitted": OMITTED, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def _bounded(data):
    """Replace the largest top-level values by their digest until the payload fits AUDIT_MAX_DATA_BYTES (a search
    with a 240,000-id filter wrote a 1.8 MB row); if many small values still do not fit, digest the whole."""
    limit = settings.AUDIT_MAX_DATA_BYTES
    if isinstance(data, dict):
        kept = dict(data)
        for key in sorted(kept, key=lambda k: len(json.dumps(kept[k])), reverse=True):
            kept[key] = _digest(kept[key])
            if len(json.dumps(kept)) <= limit:
                return kept
    return _digest(data)


@dataclass
class ChainReport:
    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""
    unkeyed_until: int = 0  # the last row of the unkeyed prefix (0: every row is keyed)
    roots: dict = field(default_factory=dict)  # {tree size: RFC 9162 root (hex)} for the sizes asked for
    root: str = ""  # the RFC 9162 root over every row walked (hex)

    def schemes(self) -> str:
        """Which rows use which scheme, for verify_audit's one line."""
        parts = []
        if self.unkeyed_until:
            parts.append(f"seq 1..{self.unkeyed_until} unkeyed SHA-256 (written before the keyed chain)")
        if self.checked > self.unkeyed_until:
            parts.append(f"seq {self.unkeyed_until + 1}..{self.checked} HMAC-SHA256")
        return "; ".join(parts) or "no rows"


def _row_fault(event, expected_seq, expected_prev, keyed_seen) -> str:
    """Why this row breaks the chain, or "" when it is sound."""
    if event.seq != expected_seq:
        return (f"row seq {event.seq} found where seq {expected_seq} was expected "
                "(a row was deleted or inserted out of order)")
    if event.prev_hash != expected_prev:
        return "prev_hash does not match the previous row's hash"
    if event.scheme not in (SCHEME_UNKEYED, SCHEME_KEYED):
        return f"unknown hash scheme {event.scheme!r}"
    if event.scheme == SCHEME_UNKEYED and keyed_seen:
        return "an unkeyed row after the keyed chain began (a row rewritten under the old scheme)"
    if not hmac.compare_digest(compute_hash(event), event.hash):
        if event.scheme == SCHEME_KEYED:
            return ("content does not match its keyed hash (the row was edited, or AUDIT_HMAC_KEY is not the key "
                    "it was written with)")
        return "content does not match its hash (the row was edited)"
    return ""


def verify_chain(roots_at=()) -> ChainReport:
    """Walk the chain in order; report the first row whose content, link, position or scheme is wrong. For each
    size in ``roots_at`` also compute the RFC 9162 Merkle root of the first that many rows' hashes (for signed
    checkpoints). On PostgreSQL, outside a transaction, the walk reads one snapshot, so rows appended meanwhile do
    not look like a head that ran ahead of its chain."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return _walk(set(roots_at))
    return _walk(set(roots_at))


def _walk(roots_at: set) -> ChainReport:
    expected_prev, expected_seq, checked, unkeyed_until = GENESIS_HASH, 1, 0, 0
    tree, roots = MerkleTree(), {}
    if 0 in roots_at:
        roots[0] = tree.root().hex()
    for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=2000):
        fault = _row_fault(event, expected_seq, expected_prev, keyed_seen=checked > unkeyed_until)
        if fault:
            return ChainReport(False, checked, event.seq, fault, unkeyed_until, roots)
        if event.scheme == SCHEME_UNKEYED:
            unkeyed_until = event.seq
        tree.add(bytes.fromhex(event.hash))
        if tree.size in roots_at:
            roots[tree.size] = tree.root().hex()
        expected_prev, expected_seq, checked = event.hash, expected_seq + 1, checked + 1
    head = AuditHead.objects.filter(pk=1).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    if (head_seq, head_hash) != (expected_seq - 1, expected_prev):
        reason = f"the chain ends at seq {expected_seq - 1} but its head records seq {head_seq} (rows were removed)"
        return ChainReport(False, checked, expected_seq, reason, unkeyed_until, roots)
    return ChainReport(True, checked, unkeyed_until=unkeyed_until, roots=roots, root=tree.root().hex())


def client_ip(request):
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None
