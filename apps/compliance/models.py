from django.conf import settings
from django.db import models


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise TypeError("audit events are append-only")

    def delete(self):
        raise TypeError("audit events are append-only")


class AuditEvent(models.Model):
    """One security-relevant action. Rows are append-only and hash-chained through ``seq``.

    ``hash`` covers the row's canonical content and ``prev_hash`` (the hash of row ``seq - 1``), so an edited,
    deleted or re-ordered row breaks the chain at that row; ``apps.compliance.audit.verify_chain`` finds it.
    On PostgreSQL a trigger refuses UPDATE and DELETE on the table as well.
    """

    seq = models.BigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(editable=False, db_index=True)
    # No database constraint and no cascade: deleting a user must not touch (and so cannot rewrite) the audit.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        editable=False,
    )
    actor_name = models.CharField(max_length=150, blank=True, editable=False)
    action = models.CharField(max_length=64, db_index=True, editable=False)
    object_type = models.CharField(max_length=64, blank=True, editable=False)
    object_id = models.CharField(max_length=64, blank=True, editable=False)
    ip = models.GenericIPAddressField(null=True, blank=True, editable=False)
    data = models.JSONField(default=dict, blank=True, editable=False)
    prev_hash = models.CharField(max_length=64, editable=False)
    hash = models.CharField(max_length=64, unique=True, editable=False)
    # How ``hash`` was made: "hmac-sha256" (keyed with AUDIT_HMAC_KEY, the key never in the database) or
    # "sha256" for rows written before the keyed chain (the migration marks those); unkeyed rows may only precede
    # keyed ones, so verification names a row downgraded to the old scheme.
    scheme = models.CharField(max_length=16, default="hmac-sha256", db_default="hmac-sha256", editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self):
        return f"#{self.seq} {self.action} by {self.actor_name or 'system'}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise TypeError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("audit events are append-only")


class AuditHead(models.Model):
    """The chain's newest (seq, hash), updated with each append under a row lock.

    It serialises appends (``select_for_update`` on PostgreSQL, the IMMEDIATE write lock on SQLite) and lets
    verification notice rows removed from the end of the chain.
    """

    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64)

    def __str__(self):
        return f"audit head at seq {self.seq}"
