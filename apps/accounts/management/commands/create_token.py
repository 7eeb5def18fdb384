from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.accounts.models import SCOPE_CHOICES, ApiToken
from apps.compliance.audit import record


class Command(BaseCommand):
    help = "Create an API token for USER and print it (it is stored hashed and cannot be shown again)."

    def add_arguments(self, parser):
        parser.add_argument("user")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--expires-days", type=int, default=None, help="days until the token expires")
        parser.add_argument("--scope", choices=[c for c, _ in SCOPE_CHOICES], default="full",
                            help="query: search, answer and read documents; read: also sources and sync runs; "
                                 "full: all the user's roles allow (default)")

    def handle(self, *args, user, name, expires_days, scope, **options):
        account = get_user_model().objects.filter(username=user).first()
        if account is None:
            raise CommandError(f"no user named {user!r}")
        if expires_days is not None and expires_days <= 0:
            raise CommandError("--expires-days must be a positive number of days")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
        token, key = ApiToken.issue(account, name=name, expires_at=expires_at, scope=scope)
        record("token.create", actor="cli", object_type="user", object_id=account.pk,
               data={"token": token.key_prefix, "scope": scope,
                     "expires_at": expires_at.isoformat() if expires_at else None})
        self.stdout.write(key)
