from django.core.management.base import BaseCommand, CommandError

from apps.retrieval.index import IndexUnavailable
from apps.retrieval.index.projection import stale_chunks
from apps.retrieval.reembed import BATCH_DOCUMENTS, reembed


class Command(BaseCommand):
    help = ("Re-embed the chunks whose vector was made by another embedding model (name or dimension) than "
            "EMBEDDING_MODEL, then bring the vector index up to date. Safe to interrupt and run again.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="only count the chunks that would be re-embedded")
        parser.add_argument("--batch", type=int, default=BATCH_DOCUMENTS, help="documents per transaction")

    def handle(self, *args, dry_run, batch, **options):
        if batch < 1:
            raise CommandError("--batch must be at least 1")
        stale = stale_chunks()
        if dry_run:
            documents = stale.values("document_id").distinct().count()
            self.stdout.write(f"{stale.count()} chunks of {documents} documents would be re-embedded")
            return

        def progress(report, total):
            self.stdout.write(f"  {report.documents}/{total} documents, {report.chunks} chunks")

        try:
            report = reembed(batch_documents=batch, progress=progress)
        except IndexUnavailable as exc:
            raise CommandError(f"chunks re-embedded but the vector index is unavailable: {exc}; run "
                               "`manage.py rebuild_index` once it is back") from exc
        self.stdout.write(
            f"re-embedded {report.chunks} chunks of {report.documents} documents with {report.model} "
            f"(dimension {report.dimension}; {report.cache_hits} from the cache, {report.skipped} changed meanwhile); "
            f"{report.remaining} chunks of another model remain"
        )
        if report.remaining:
            raise CommandError("some chunks still carry another model's vectors; run the command again")
