import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

ROLES = ("admin", "power_user", "user", "readonly", "compliance_officer")


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

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.key_prefix}… ({self.user})"

    @classmethod
    def issue(cls, user, *, name="", expires_at=None):
        """Create a token and return (token, key); the key is not recoverable afterwards."""
        key = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, key_prefix=key[:10], key_hash=hash_token(key), expires_at=expires_at
        )
        return token, key
