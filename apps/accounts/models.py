import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

ROLES = ("admin", "power_user", "user", "readonly", "compliance_officer")
SCOPE_CHOICES = [("query", "query"), ("read", "read"), ("full", "full")]


class Capability(models.Model):
    """Holds the role permissions that belong to no single model; it has no table."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("query", "Can search and ask questions"),
            ("upload", "Can upload documents"),
            ("view_sources", "Can view sources and sync runs"),
            ("manage_sources", "Can create, change and delete sources"),
            ("run_syncs", "Can start syncs"),
            ("view_audit", "Can view the audit trail"),
            ("handle_subject_requests", "Can handle data subject requests"),
            ("configure_system", "Can configure the system"),
            ("administer_sources", "Can see every source and sync run, readable or not"),
            ("grant_access", "Can grant and restrict access to sources and documents the user may read"),
        ]

    def __str__(self):
        return "capability"


def hash_token(key: str) -> str:
    # The key carries 256 random bits, so one SHA-256 is enough: no dictionary can reach it.
    return hashlib.sha256(key.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def usable(self):
        now = timezone.now()
        unexpired = models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        return self.filter(unexpired, revoked_at__isnull=True)


class ApiToken(models.Model):
    """An API key. Only its SHA-256 is stored; the key itself is shown once, when it is made."""

    PREFIX = "rs_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    key_prefix = models.CharField(max_length=12, editable=False, help_text="The first characters, to tell keys apart")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    scope = models.CharField(
        max_length=10, choices=SCOPE_CHOICES, default="full",
        help_text="query: search, answer and read documents; read: also sources and sync runs; "
                  "full: everything the user's roles allow",
    )

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.key_prefix}… ({self.user})"

    def is_usable(self, now=None) -> bool:
        """Not revoked and not expired: ApiTokenQuerySet.usable() for one loaded token."""
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    @classmethod
    def issue(cls, user, *, name="", expires_at=None, scope="full"):
        """Create a token and return (token, key); the key is not recoverable afterwards."""
        key = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, key_prefix=key[:10], key_hash=hash_token(key), expires_at=expires_at,
            scope=scope,
        )
        return token, key


class SsoGroupGrant(models.Model):
    """A group membership an identity provider granted, so the next sign-in can take it back."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_group_grants")
    provider = models.CharField(max_length=50, help_text="saml, oidc or ldap")
    group = models.ForeignKey("auth.Group", on_delete=models.CASCADE, related_name="+")
    granted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "provider", "group"], name="sso_group_grant_unique")]

    def __str__(self):
        return f"{self.user} in {self.group} via {self.provider}"


# --- object permissions on sources and documents (apps/ingestion/grants.py is their only writer) ---------------
#
# Direct foreign-key tables (django-guardian's UserObjectPermissionBase / GroupObjectPermissionBase) rather than its
# generic ones: a join on an indexed integer or UUID column instead of a content type plus a text object id. The
# permission is always the built-in ``ingestion.view_source`` / ``ingestion.view_document``, so guardian's
# ``user.has_perm("ingestion.view_document", document)`` agrees with what the index enforces.


class _GrantFields(models.Model):
    granted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    granted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True


class SourceUserObjectPermission(UserObjectPermissionBase, _GrantFields):
    """A user may read a source's documents (beside its reader groups)."""

    content_object = models.ForeignKey("ingestion.Source", on_delete=models.CASCADE, related_name="user_grants")

    class Meta(UserObjectPermissionBase.Meta):
        verbose_name = "user grant on a source"

    def __str__(self):
        return f"{self.user} may read source {self.content_object_id}"


class SourceGroupObjectPermission(GroupObjectPermissionBase, _GrantFields):
    """A group may read a source's documents (like a reader group, granted as an object permission)."""

    content_object = models.ForeignKey("ingestion.Source", on_delete=models.CASCADE, related_name="group_grants")

    class Meta(GroupObjectPermissionBase.Meta):
        verbose_name = "group grant on a source"

    def __str__(self):
        return f"{self.group} may read source {self.content_object_id}"


class DocumentUserObjectPermission(UserObjectPermissionBase, _GrantFields):
    """A user may read one document, whatever it inherits (widens it)."""

    content_object = models.ForeignKey("ingestion.Document", on_delete=models.CASCADE, related_name="user_grants")

    class Meta(UserObjectPermissionBase.Meta):
        verbose_name = "user grant on a document"

    def __str__(self):
        return f"{self.user} may read document {self.content_object_id}"


class DocumentGroupObjectPermission(GroupObjectPermissionBase, _GrantFields):
    """A group may read one document, whatever it inherits (widens it)."""

    content_object = models.ForeignKey("ingestion.Document", on_delete=models.CASCADE, related_name="group_grants")

    class Meta(GroupObjectPermissionBase.Meta):
        verbose_name = "group grant on a document"

    def __str__(self):
        return f"{self.group} may read document {self.content_object_id}"


class DocumentRestriction(models.Model):
    """Narrows a document: the readers it inherits (connector ACL or source readers) no longer apply; only its own
    grants (and superusers) read it. A restricted document with no grants is readable by superusers alone."""

    document = models.OneToOneField("ingestion.Document", on_delete=models.CASCADE, related_name="restriction")
    reason = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"restricted: {self.document_id}"


class ConnectorAcl(models.Model):
    """The reader groups the connector reported for a document (a `.ragsite-access.json` sidecar, SharePoint or
    Confluence permissions), recorded by the sync so that a grant changed between syncs can recompute the
    document's readers without asking the connector. No row: the document inherits its source's readers.

    No database constraint on the document: the sync records the ACL before the document's own transaction writes
    it; a row whose document never arrives is ignored, and deleting the document deletes the row (ORM cascade)."""

    document = models.OneToOneField("ingestion.Document", on_delete=models.CASCADE, primary_key=True,
                                    db_constraint=False, related_name="connector_acl")
    groups = models.JSONField(default=list, help_text="Group names; empty: every signed-in user")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.document_id}: {', '.join(self.groups) or 'authenticated'}"


class AccessVersion(models.Model):
    """One row whose counter every grant change bumps in its transaction, so a running sync notices (one cheap
    query at most once a second) that its snapshot of the grants is stale and reloads it."""

    version = models.BigIntegerField(default=0)

    def __str__(self):
        return f"access version {self.version}"

