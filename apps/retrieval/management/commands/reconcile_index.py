from django.core.management.base import BaseCommand, CommandError

from apps.retrieval.index import IndexUnavailable
from apps.retrieval.reconcile import reconcile


class Command(BaseCommand):
    help = "Compare the vector index with the database: missing, orphaned and duplicate vectors."

    def add_arguments(self, parser):
        parser.add_argument("--repair", action="store_true", help="rebuild the index when it has drifted")

    def handle(self, *args, repair, **options):
        try:
            report = reconcile(repair=repair)
        except IndexUnavailable as exc:
            raise CommandError(f"vector index unavailable: {exc}") from exc
        self.stdout.write(
            f"database {report.database} chunks, index {report.index} vectors: missing {report.missing}, "
            f"orphaned {report.orphaned}, duplicates {report.duplicates}"
        )
        if report.stale:
            self.stdout.write(f"{report.stale} chunks carry vectors of another embedding model (served lexical-only); "
                              "run `manage.py reembed`")
        if report.repaired:
            self.stdout.write("repaired: index rebuilt from the database")
        elif report.drift:
            raise CommandError("index has drifted from the database; run with --repair")
