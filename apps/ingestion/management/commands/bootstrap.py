import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.accounts.roles import ensure_roles
from apps.compliance.audit import record
from apps.ingestion.models import Source
from apps.ingestion.sources import create_source

DEMO_CORPUS = Path(settings.BASE_DIR) / "demo" / "corpus"
DEMO_GROUPS = ("hr", "finance")


class Command(BaseCommand):
    help = (
        "Make a fresh install usable: roles, an admin account (password from RAGSITE_ADMIN_PASSWORD or generated "
        "and printed once), the demo groups and the demo source. Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-demo", action="store_true", help="skip the demo groups and source")

    def handle(self, *args, no_demo=False, **options):
        with transaction.atomic():
            ensure_roles()
            self._admin()
            if not no_demo:
                for name in DEMO_GROUPS:
                    Group.objects.get_or_create(name=name)
                if not Source.objects.filter(name="demo").exists():
                    create_source(name="demo", kind="filesystem", config={"path": str(DEMO_CORPUS)})
                    self.stdout.write(f"created source 'demo' on {DEMO_CORPUS}")

    def _admin(self):
        username = os.environ.get("RAGSITE_ADMIN_USER", "admin")
        users = get_user_model().objects
        if users.filter(username=username).exists():
            return
        password = os.environ.get("RAGSITE_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user = users.create_superuser(username=username, email="", password=password)
        user.groups.add(Group.objects.get_or_create(name="admin")[0])
        record("user.create", actor="bootstrap", object_type="user", object_id=user.pk, data={"superuser": True})
        if os.environ.get("RAGSITE_ADMIN_PASSWORD"):
            self.stdout.write(f"created superuser '{username}' with the password from RAGSITE_ADMIN_PASSWORD")
        else:
            self.stdout.write(f"created superuser '{username}' with password: {password}  (shown once)")
