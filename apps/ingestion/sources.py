"""Source management: the functions the API, the admin and the commands all call."""

import json

from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils.text import slugify
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from apps.compliance.audit import record
from apps.compliance.labels import CLASSIFICATIONS
from ragsite.errors import FieldError

from . import secrets
from .connectors import CONNECTORS, WEBHOOK_SECRET, egress
from .connectors.base import ConfigError, ConnectorError
from .connectors.roots import overlaps
from .embedding import forget_unused_embeddings
from .hooks import announce_changes
from .models import Chunk, Source


class SourceError(FieldError):
    pass


def validate_source(kind: str, config: dict, schedule: str = "", stored: dict | None = None) -> dict:
    """Return the config as it is stored: validated, its secrets encrypted. ``stored`` is the source's current
    config, whose secrets stand in for the mask ("********") an update sends back."""
    if kind not in CONNECTORS:
        raise SourceError("kind", f"unknown source type {kind!r}; known: {', '.join(sorted(CONNECTORS))}")
    if not isinstance(config, dict):
        raise SourceError("config", "must be a JSON object")
    secret_fields = (*CONNECTORS[kind].secret_fields, WEBHOOK_SECRET)
    try:
        config = secrets.decrypt_config(secrets.restore_masked(config, stored, secret_fields))
        webhook_secret = config.pop(WEBHOOK_SECRET, None)  # any kind may have one; no connector sees it
        config = CONNECTORS[kind].validate_config(config)
        with egress.saving():  # no raw response bodies in what the saving user reads
            CONNECTORS[kind](config).check()  # reachable now, or the operator hears why before saving
    except ConfigError as exc:
        raise SourceError(f"config.{exc.field}", exc.message) from exc
    except ConnectorError as exc:
        raise SourceError("config", str(exc)) from exc
    if webhook_secret is not None:
        config[WEBHOOK_SECRET] = _webhook_secret(webhook_secret)
    if schedule:
        _parse_cron(schedule)
    return secrets.encrypt_config(config, secret_fields)


WEBHOOK_SECRET_MIN_LENGTH = 16


def _webhook_secret(value) -> str:
    if not isinstance(value, str) or len(value.strip()) < WEBHOOK_SECRET_MIN_LENGTH or len(value) > 500:
        raise SourceError(f"config.{WEBHOOK_SECRET}", f"must be a string of {WEBHOOK_SECRET_MIN_LENGTH} to 500 "
                          "characters (e.g. the output of `openssl rand -hex 32`)")
    return value


def _parse_cron(schedule: str) -> dict:
    fields = schedule.split()
    if len(fields) != 5:
        raise SourceError("schedule", f"expected 5 cron fields (minute hour day month weekday), got {len(fields)}")
    from celery.schedules import crontab

    keys = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
    values = dict(zip(keys, fields, strict=True))
    try:
        crontab(**values)
    except (ValueError, TypeError) as exc:
        raise SourceError("schedule", f"not a valid cron expression: {exc}") from exc
    return values


def _groups(names) -> list[Group]:
    groups = []
    for name in names or []:
        group = Group.objects.filter(name=name).first()
        if group is None:
            raise SourceError("groups", f"no group named {name!r}")
        groups.append(group)
    return groups


def apply_schedule(source: Source) -> None:
    """Keep the source's django-celery-beat periodic task in step with its cron schedule."""
    name = f"sync source {source.pk}"
    if not source.schedule or not source.enabled:
        PeriodicTask.objects.filter(name=name).delete()
        return
    crontab, _ = CrontabSchedule.objects.get_or_create(**_parse_cron(source.schedule), timezone="UTC")
    PeriodicTask.objects.update_or_create(
        name=name,
        defaults={
            "task": "ingestion.scheduled_sync",
            "crontab": crontab,
            "interval": None,
            "args": json.dumps([source.pk]),
            "queue": "ingestion",
            "enabled": True,
        },
    )


def _check_overlap(kind: str, config: dict, user, source=None) -> None:
    """A user without administer_sources may not point a file-system source at files that a source with narrowed
    readers (reader groups, grants, restricted documents) already indexes: the copy would re-publish them with the
    readers its creator chose. A folder every signed-in user reads may be shared (its sidecars still apply, also from
    above the new source's folder). Commands, with no user, are the operator's."""
    if user is None or kind != "filesystem":
        return
    from apps.accounts.models import DocumentRestriction
    from apps.accounts.roles import has_capability

    if has_capability(user, "administer_sources"):
        return
    restricted = DocumentRestriction.objects.filter(document__source_id=OuterRef("pk"))
    others = Source.objects.filter(kind="filesystem").exclude(pk=getattr(source, "pk", None)).filter(
        Q(reader_groups__isnull=False) | Q(user_grants__isnull=False) | Q(group_grants__isnull=False)
        | Exists(restricted)
    ).distinct()
    for other_path in others.values_list("config__path", flat=True):
        if isinstance(other_path, str) and overlaps(config["path"], other_path):
            raise SourceError("config.path", "overlaps the folder of another source; only an administrator "
                              "(capability administer_sources) may point two sources at the same files")


def check_source(*, kind, config, schedule="", user=None, source=None, name=None) -> tuple[str | None, dict]:
    """What create_source and update_source check before they write (the admin's form shows the same errors):
    the name (when given) made a slug that no other source has, the config validated with its secrets encrypted, its
    reach checked for ``user``. Returns (name, config)."""
    if name is not None:
        name = _new_name(source, name)
    config = validate_source(kind, config, schedule, stored=source.config if source is not None else None)
    _check_overlap(kind, config, user, source)
    return name, config


def create_source(*, name, kind="filesystem", config=None, schedule="", groups=(), enabled=True, user=None,
                  classification="internal"):
    name, config = check_source(kind=kind, config=config or {}, schedule=schedule, user=user, name=name)
    _check_classification(classification)
    group_objs = _groups(groups)
    with transaction.atomic():
        if Source.objects.filter(name=name).exists():
            raise SourceError("name", f"a source named {name!r} already exists")
        source = Source.objects.create(
            name=name, kind=kind, config=config, schedule=schedule, enabled=enabled, created_by=user,
            classification=classification,
        )
        source.reader_groups.set(group_objs)
        apply_schedule(source)
        record("source.create", actor=user, object_type="source", object_id=source.pk,
               data={"name": source.name, "kind": kind, "groups": list(groups), "schedule": schedule,
                     "classification": classification})
    return source


def _check_classification(value):
    if value not in CLASSIFICATIONS:
        raise SourceError("classification", f"must be one of {', '.join(CLASSIFICATIONS)}")


def _new_name(source: Source | None, name) -> str:
    """A name is made a slug (the model would save "!!!" as "") and may not be another source's."""
    name = slugify(name)
    if not name:
        raise SourceError("name", "must contain letters or digits")
    if Source.objects.filter(name=name).exclude(pk=getattr(source, "pk", None)).exists():
        raise SourceError("name", f"a source named {name!r} already exists")
    return name


def update_source(source: Source, *, user=None, **changes):
    kind = changes.get("kind", source.kind)
    config = changes.get("config", source.config)
    schedule = changes.get("schedule", source.schedule)
    name, config = check_source(kind=kind, config=config, schedule=schedule, user=user, source=source,
                                name=changes.get("name"))
    relabelled = "classification" in changes and changes["classification"] != source.classification
    if "name" in changes:
        changes["name"] = name
    if relabelled:
        _check_classification(changes["classification"])
    with transaction.atomic():
        for field in ("name", "enabled", "classification"):
            if field in changes:
                setattr(source, field, changes[field])
        source.kind, source.config, source.schedule = kind, config, schedule
        try:
            with transaction.atomic():  # a savepoint: a rename racing another to the same name is a 400 too
                source.save()
        except IntegrityError:
            raise SourceError("name", f"a source named {source.name!r} already exists") from None
        if "groups" in changes:
            source.reader_groups.set(_groups(changes["groups"]))
        apply_schedule(source)
        record("source.update", actor=user, object_type="source", object_id=source.pk,
               data={"changed": sorted(changes)})
    if "groups" in changes or relabelled:
        # Readers and labels are written per document by the sync; an unchanged document costs only a hash check.
        # A new label must reach documents an incremental connector would not list again: a full pass.
        from .sync import request_sync

        request_sync(source, trigger="access-change", user=user, full=relabelled)
    return source


def delete_source(source: Source, *, user=None):
    with transaction.atomic():
        document_ids = list(source.documents.values_list("id", flat=True))
        text_hashes = set(Chunk.objects.filter(document__source=source).values_list("text_hash", flat=True))
        PeriodicTask.objects.filter(name=f"sync source {source.pk}").delete()
        record("source.delete", actor=user, object_type="source", object_id=source.pk,
               data={"name": source.name, "documents": len(document_ids)})
        source.delete()
        if document_ids:
            announce_changes(document_ids)
        forget_unused_embeddings(text_hashes)  # its chunks are gone: their cached vectors, unless shared, too
