from django.core.management.base import BaseCommand, CommandError

from apps.retrieval.index import IndexUnavailable, get_index


class Command(BaseCommand):
    help = "Rebuild the vector index from the chunks in the database (no re-embedding)."

    def handle(self, *args, **options):
        try:
            count = get_index().rebuild()
        except IndexUnavailable as exc:
            raise CommandError(f"vector index unavailable: {exc}") from exc
        self.stdout.write(f"index rebuilt from the database: {count} chunks")
