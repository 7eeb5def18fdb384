from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.retrieval.outbox import compact_outbox


class Command(BaseCommand):
    help = ("Remove index outbox (IndexChange) rows older than --days that every external index has applied; "
            "beat runs this every 6 hours with INDEX_OUTBOX_RETENTION_DAYS.")

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=None,
                            help=f"retention in days (default INDEX_OUTBOX_RETENTION_DAYS, "
                                 f"{settings.INDEX_OUTBOX_RETENTION_DAYS:g})")

    def handle(self, *args, days=None, **options):
        if days is not None and days < 0:
            raise CommandError("--days must be 0 or more")
        report = compact_outbox(None if days is None else timedelta(days=days))
        self.stdout.write(str(report))
