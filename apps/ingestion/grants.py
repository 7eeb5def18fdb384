"""Who may read a source's or a document's chunks: the rule, the grants, and keeping DocumentAccess in step.

A document's readers (its ``DocumentAccess`` principals, which the index and the search's database re-check
enforce) are computed by ONE function, :func:`effective_principals`, from

- what it inherits: the connector's ACL for it (a ``.ragsite-access.json`` sidecar, SharePoint or Confluence
  permissions), else its source's readers (``Source.reader_groups`` plus user and group grants on the source);
  nobody at all means every signed-in user;
- its own grants (users and groups), which widen it;
- a restriction, which drops what it inherits, so only its own grants (and superusers) read it.

The sync calls it for every document it lists (:class:`SyncAccess`); every grant, revoke, restriction or change of a
source's reader groups calls :func:`rewrite_access`, which rewrites the affected documents' rows and logs an
``IndexChange`` in one transaction, so the embedded index and Weaviate follow through the outbox. Group membership
needs no rewrite: principals name groups and ``access_scope`` reads a user's groups on every request.
"""

import logging
import time
from collections import defaultdict

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models import F
from django.db.models.signals import m2m_changed, post_delete, pre_delete

from apps.accounts.access import AUTHENTICATED, group_principal, user_principal
from apps.accounts.models import (
    AccessVersion,
    ConnectorAcl,
    DocumentGroupObjectPermission,
    DocumentRestriction,
    DocumentUserObjectPermission,
    SourceGroupObjectPermission,
    SourceUserObjectPermission,
)
from apps.compliance.audit import record
from ragsite.errors import FieldError

from .hooks import announce_changes
from .models import Document, DocumentAccess, Source, SyncRun

logger = logging.getLogger(__name__)

VIEW_SOURCE = "view_source"
VIEW_DOCUMENT = "view_document"
VERSION_CHECK_SECONDS = 1.0


class GrantError(FieldError):
    """Bad grant input, traced to one field (the API answers 400)."""


class GrantNotFound(LookupError):
    """Revoking something that was not granted."""


# --- the rule -----------------------------------------------------------------------------------------------


def effective_principals(*, acl_groups, source_readers, restricted: bool, document_readers) -> list[str]:
    """The principals that may read a document.

    ``acl_groups``: the reader groups the connector reports for it, or None when it reports none (an empty list
    means every signed-in user, as connectors always had it); ``source_readers``: the source's principals (reader
    groups, group and user grants; none means every signed-in user); ``restricted``: drop what is inherited;
    ``document_readers``: principals granted on the document itself. An empty result means superusers only.
    """
    if restricted:
        inherited = set()
    elif acl_groups is not None:
        inherited = {group_principal(g) for g in acl_groups} or {AUTHENTICATED}
    else:
        inherited = set(source_readers) or {AUTHENTICATED}
    return sorted(inherited | set(document_readers))


def _normalise_groups(groups):
    return None if groups is None else sorted({str(g) for g in groups})


class SourceAccess:
    """What :func:`effective_principals` needs for a source's documents, read in a fixed number of queries."""

    def __init__(self, source_id, document_ids=None):
        self.source_id = source_id
        self.reader_groups = sorted(
            Source.reader_groups.through.objects.filter(source_id=source_id).values_list("group__name", flat=True)
        )
        self.group_grants = sorted(
            SourceGroupObjectPermission.objects.filter(content_object_id=source_id, permission__codename=VIEW_SOURCE)
            .values_list("group__name", flat=True)
        )
        self.user_grants = sorted(
            SourceUserObjectPermission.objects.filter(content_object_id=source_id, permission__codename=VIEW_SOURCE)
            .values_list("user_id", flat=True)
        )
        self.source_readers = {
            *(group_principal(g) for g in self.reader_groups),
            *(group_principal(g) for g in self.group_grants),
            *(user_principal(u) for u in self.user_grants),
        }

        def docs(qs, field="document"):
            qs = qs.filter(**{f"{field}__source_id": source_id})
            return qs.filter(**{f"{field}_id__in": document_ids}) if document_ids is not None else qs

        self.acls = dict(docs(ConnectorAcl.objects).values_list("document_id", "groups"))
        self.restricted = set(docs(DocumentRestriction.objects).values_list("document_id", flat=True))
        self.document_readers = defaultdict(set)
        for document_id, user_id in docs(DocumentUserObjectPermission.objects, "content_object").filter(
            permission__codename=VIEW_DOCUMENT
        ).values_list("content_object_id", "user_id"):
            self.document_readers[document_id].add(user_principal(user_id))
        for document_id, name in docs(DocumentGroupObjectPermission.objects, "content_object").filter(
            permission__codename=VIEW_DOCUMENT
        ).values_list("content_object_id", "group__name"):
            self.document_readers[document_id].add(group_principal(name))

    def principals(self, document_id, acl_groups=...) -> list[str]:
        """The document's readers; ``acl_groups`` from the connector (the sync) or, left out, as last recorded."""
        if acl_groups is ...:
            acl_groups = self.acls.get(document_id)
        return effective_principals(
            acl_groups=acl_groups,
            source_readers=self.source_readers,
            restricted=document_id in self.restricted,
            document_readers=self.document_readers.get(document_id, ()),
        )


def _current_version() -> int:
    return AccessVersion.objects.filter(pk=1).values_list("version", flat=True).first() or 0


def _bump_version() -> None:
    if not AccessVersion.objects.filter(pk=1).update(version=F("version") + 1):
        AccessVersion.objects.get_or_create(pk=1, defaults={"version": 1})


class SyncAccess:
    """The sync's view of the grants on one source: read once, re-read when a grant changed (checked at most once a
    second), and the connector's ACL of each document recorded when it changes (so unchanged documents cost no
    query)."""

    def __init__(self, source_id):
        self.source_id = source_id
        self._load()

    def _load(self):
        self.version = _current_version()
        self.access = SourceAccess(self.source_id)
        self._checked = time.monotonic()

    def readers(self, document_id, acl_groups) -> list[str]:
        """What principals() gives, recording nothing (for the error entry of an item that failed)."""
        return self.access.principals(document_id, _normalise_groups(acl_groups))

    def principals(self, document_id, acl_groups) -> list[str]:
        if time.monotonic() - self._checked >= VERSION_CHECK_SECONDS:
            if _current_version() != self.version:
                self._load()
            self._checked = time.monotonic()
        acl_groups = _normalise_groups(acl_groups)
        if self.access.acls.get(document_id) != acl_groups:
            if acl_groups is None:
                ConnectorAcl.objects.filter(pk=document_id).delete()
                self.access.acls.pop(document_id, None)
            else:
                ConnectorAcl.objects.update_or_create(document_id=document_id, defaults={"groups": acl_groups})
                self.access.acls[document_id] = acl_groups
        return self.access.principals(document_id, acl_groups)


# --- keeping DocumentAccess in step --------------------------------------------------------------------------


def write_readers(changes: dict) -> None:
    """The one writer of DocumentAccess rows (the sync and :func:`rewrite_access` both come here): for each document
    id, (principals stored, principals wanted). Runs in the caller's transaction, which also announces the change;
    a row another writer added meanwhile is left as it is."""
    removals, additions = defaultdict(list), []
    for document_id, (have, wanted) in changes.items():
        for principal in have - wanted:
            removals[principal].append(document_id)
        additions += [DocumentAccess(document_id=document_id, principal=p) for p in sorted(wanted - have)]
    for principal, documents_losing in removals.items():
        DocumentAccess.objects.filter(principal=principal, document_id__in=documents_losing).delete()
    DocumentAccess.objects.bulk_create(additions, batch_size=1000, ignore_conflicts=True)


def rewrite_access(source_id, document_ids=None) -> list:
    """Recompute the readers of a source's documents (or of the given ones) and rewrite the rows that differ, with
    an IndexChange for each changed document, in one transaction. Returns the changed document ids."""
    with transaction.atomic():
        # The outbox's lock (PostgreSQL advisory lock, held to commit) also serialises this rewrite with the sync's
        # writes of the same rows; readers are read only once it is held.
        announce_changes([])
        _bump_version()
        documents = Document.objects.filter(source_id=source_id)
        if document_ids is not None:
            documents = documents.filter(pk__in=list(document_ids))
        ids = list(documents.values_list("pk", flat=True))
        if not ids:
            return []
        access = SourceAccess(source_id, ids if document_ids is not None else None)
        current = defaultdict(set)
        for document_id, principal in DocumentAccess.objects.filter(document_id__in=ids).values_list(
            "document_id", "principal"
        ):
            current[document_id].add(principal)
        changes = {}
        for document_id in ids:
            wanted = set(access.principals(document_id))
            have = current.get(document_id, set())
            if wanted != have:
                changes[document_id] = (have, wanted)
        write_readers(changes)
        changed = list(changes)
        if changed:
            announce_changes(changed)
        transaction.on_commit(lambda: _follow_up_running_sync(source_id))
    return changed


def _follow_up_running_sync(source_id):
    """A sync running now may have read the grants before this change and write its documents after it: have it
    followed by another run, which writes them again from the grants as they are now."""
    from .sync import request_sync  # the sync reads grants (SyncAccess): imported when needed

    if SyncRun.objects.filter(source_id=source_id, status=SyncRun.RUNNING).exists():
        source = Source.objects.filter(pk=source_id).first()
        if source is not None:
            request_sync(source, trigger="access-change", follow_up=True)


def _reader_groups_changed(sender, instance, action, reverse, pk_set, **kwargs):
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if not reverse:
        rewrite_access(instance.pk)
    else:  # group.readable_sources.add(...): pk_set holds source ids (empty on clear: all of the group's)
        for source_id in sorted(pk_set or ()):
            rewrite_access(source_id)


def _reader_groups_before_clear(sender, instance, action, reverse, **kwargs):
    # group.readable_sources.clear() reports no source ids afterwards: rewrite them now, then again after.
    if action == "pre_clear" and reverse:
        instance._cleared_source_ids = list(instance.readable_sources.values_list("pk", flat=True))
    elif action == "post_clear" and reverse:
        for source_id in getattr(instance, "_cleared_source_ids", ()):
            rewrite_access(source_id)



def _group_about_to_go(sender, instance, **kwargs):
    # Its reader-group rows and grants are deleted by cascade, which sends no m2m signal: note what it reached.
    documents = DocumentGroupObjectPermission.objects.filter(group=instance).values_list("content_object_id")
    instance._reached_sources = {
        *instance.readable_sources.values_list("pk", flat=True),
        *SourceGroupObjectPermission.objects.filter(group=instance).values_list("content_object_id", flat=True),
        *Document.objects.filter(pk__in=documents).values_list("source_id", flat=True),
    }


def _group_gone(sender, instance, **kwargs):
    for source_id in sorted(getattr(instance, "_reached_sources", ())):
        rewrite_access(source_id)


def connect_signals() -> None:
    """Called from IngestionConfig.ready(): a change of a source's reader groups, or a group deleted, rewrites the
    readers of the documents it reached."""
    m2m_changed.connect(_reader_groups_changed, sender=Source.reader_groups.through,
                        dispatch_uid="ingestion.reader_groups_changed")
    m2m_changed.connect(_reader_groups_before_clear, sender=Source.reader_groups.through,
                        dispatch_uid="ingestion.reader_groups_before_clear")
    pre_delete.connect(_group_about_to_go, sender=Group, dispatch_uid="ingestion.group_about_to_go")
    post_delete.connect(_group_gone, sender=Group, dispatch_uid="ingestion.group_gone")


# --- grants -------------------------------------------------------------------------------------------------


def resolve_user(value):
    """A user by username (or numeric id); GrantError naming the field when there is none."""
    User = get_user_model()
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise GrantError("user", "must be a username or a user id")
    user = User.objects.filter(**{User.USERNAME_FIELD: str(value)}).first()
    # isascii: "²".isdigit() is true, yet int("²") raises (was a 500)
    if user is None and (isinstance(value, int) or (str(value).isascii() and str(value).isdigit())):
        user = User.objects.filter(pk=int(value)).first()
    if user is None:
        raise GrantError("user", f"no user {value!r}")
    return user


def resolve_group(value):
    if not isinstance(value, str) or not value:
        raise GrantError("group", "must be a group name")
    group = Group.objects.filter(name=value).first()
    if group is None:
        raise GrantError("group", f"no group {value!r}")
    return group


def _target(obj):
    """(kind, user table, group table, permission, source id, document ids) for a Source or a Document."""
    if isinstance(obj, Source):
        return ("source", SourceUserObjectPermission, SourceGroupObjectPermission,
                Permission.objects.get(content_type__app_label="ingestion", codename=VIEW_SOURCE), obj.pk, None)
    if isinstance(obj, Document):
        return ("document", DocumentUserObjectPermission, DocumentGroupObjectPermission,
                Permission.objects.get(content_type__app_label="ingestion", codename=VIEW_DOCUMENT),
                obj.source_id, [obj.pk])
    raise TypeError(f"grants are on sources and documents, not {type(obj).__name__}")


def _who(user, group):
    if (user is None) == (group is None):
        raise GrantError("user", "give exactly one of user or group")
    return {"user": user.get_username(), "user_id": user.pk} if user is not None else {"group": group.name}


def grant(obj, *, user=None, group=None, actor=None):
    """Let a user or a group read a source or a document. Returns (grant row, created); repeating it is a no-op
    (not audited twice)."""
    who = _who(user, group)
    kind, user_model, group_model, permission, source_id, document_ids = _target(obj)
    model, holder = (user_model, {"user": user}) if user is not None else (group_model, {"group": group})
    with transaction.atomic():
        row, created = model.objects.get_or_create(
            content_object=obj, permission=permission, **holder, defaults={"granted_by": actor}
        )
        if created:
            changed = rewrite_access(source_id, document_ids)
            _audit("access.grant", actor, kind, obj.pk, {**who, "documents_changed": len(changed)})
    return row, created


def revoke(obj, *, user=None, group=None, actor=None) -> int:
    """Take a grant back. Returns the number of documents whose readers changed; GrantNotFound if none existed."""
    who = _who(user, group)
    kind, user_model, group_model, permission, source_id, document_ids = _target(obj)
    model, holder = (user_model, {"user": user}) if user is not None else (group_model, {"group": group})
    with transaction.atomic():
        deleted, _ = model.objects.filter(content_object=obj, permission=permission, **holder).delete()
        if not deleted:
            name = who.get("user") or who.get("group")
            raise GrantNotFound(f"{'user' if user is not None else 'group'} {name!r} holds no grant on this {kind}")
        changed = rewrite_access(source_id, document_ids)
        _audit("access.revoke", actor, kind, obj.pk, {**who, "documents_changed": len(changed)})
    return len(changed)


def restrict(document, *, reason="", actor=None) -> bool:
    """Narrow a document to its own grants (its inherited readers stop applying). False if it already was."""
    if not isinstance(reason, str) or len(reason) > 500:
        raise GrantError("reason", "must be text of at most 500 characters")
    with transaction.atomic():
        _, created = DocumentRestriction.objects.get_or_create(
            document=document, defaults={"reason": reason, "created_by": actor}
        )
        if created:
            changed = rewrite_access(document.source_id, [document.pk])
            _audit("access.restrict", actor, "document", document.pk,
                   {"reason": reason, "documents_changed": len(changed)})
    return created


def unrestrict(document, *, actor=None) -> None:
    with transaction.atomic():
        deleted, _ = DocumentRestriction.objects.filter(document=document).delete()
        if not deleted:
            raise GrantNotFound("this document is not restricted")
        changed = rewrite_access(document.source_id, [document.pk])
        _audit("access.unrestrict", actor, "document", document.pk, {"documents_changed": len(changed)})


def _audit(action, actor, kind, object_id, data):
    record(action, actor=actor, object_type=kind, object_id=object_id, data=data)


def grants_of(obj):
    """The grant rows on a source or a document, users then groups, with what a listing shows (fixed queries)."""
    _, user_model, group_model, permission, _, _ = _target(obj)
    users = user_model.objects.filter(content_object=obj, permission=permission).select_related("user", "granted_by")
    groups = group_model.objects.filter(content_object=obj, permission=permission).select_related(
        "group", "granted_by"
    )
    return list(users.order_by("user__username")), list(groups.order_by("group__name"))


# --- who can read this, and why ------------------------------------------------------------------------------

MAX_LISTED_READERS = 500


def explain_readers(document) -> dict:
    """Each active user who can read the document now and the route(s) by which they can, from the stored readers
    (what the search enforces) and the grants that produced them.

    Returns {"readers": [(user, [route, ...])], "truncated": bool, "pending": [principal, ...]} where ``pending``
    lists principals the grants call for but the stored rows do not hold yet, or the reverse (a sync in flight)."""
    User = get_user_model()
    source_name = document.source.name
    access = SourceAccess(document.source_id, [document.pk])
    reasons = defaultdict(list)
    if document.pk in access.restricted:
        reasons[None].append("restricted: inherited readers do not apply")
    else:
        acl = access.acls.get(document.pk)
        if acl is not None:
            for name in acl:
                reasons[group_principal(name)].append("named by the connector's access list for this document")
            if not acl:
                reasons[AUTHENTICATED].append("the connector's access list names no group: every signed-in user")
        elif access.source_readers:
            for name in access.reader_groups:
                reasons[group_principal(name)].append(f"a reader group of source {source_name}")
            for name in access.group_grants:
                reasons[group_principal(name)].append(f"granted on source {source_name}")
            for user_id in access.user_grants:
                reasons[user_principal(user_id)].append(f"direct grant on source {source_name}")
        else:
            reasons[AUTHENTICATED].append(f"source {source_name} names no readers: every signed-in user")
    for principal in sorted(access.document_readers.get(document.pk, ())):
        reasons[principal].append("granted on this document")

    stored = set(DocumentAccess.objects.filter(document=document).values_list("principal", flat=True))
    wanted = set(access.principals(document.pk))
    routes = defaultdict(list)
    for user in User.objects.filter(is_active=True, is_superuser=True).order_by("username"):
        routes[user].append("superuser: reads every document")
    active = User.objects.filter(is_active=True).order_by("username")
    for principal in sorted(stored):
        why = "; ".join(reasons.get(principal) or ["stored reader, no longer granted (removed at the next rewrite)"])
        if principal == AUTHENTICATED:
            for user in active[:MAX_LISTED_READERS]:
                routes[user].append(f"signed in ({why})")
        elif principal.startswith("group:"):
            name = principal.removeprefix("group:")
            for user in active.filter(groups__name=name)[:MAX_LISTED_READERS]:
                routes[user].append(f"member of group {name} ({why})")
        elif principal.startswith("user:"):
            for user in active.filter(pk=principal.removeprefix("user:")):
                routes[user].append(f"named directly ({why})")
    readers = sorted(routes.items(), key=lambda item: item[0].get_username())
    return {
        "readers": readers[:MAX_LISTED_READERS],
        "truncated": len(readers) > MAX_LISTED_READERS
        or (AUTHENTICATED in stored and active.count() > MAX_LISTED_READERS),
        "pending": sorted(stored ^ wanted),
        "notes": reasons.get(None, []),
    }
