import time

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from tqdm import tqdm

from apps.ingestion.models import Source, SyncRun
from apps.ingestion.sync import allow_mass_delete as confirm_mass_delete
from apps.ingestion.sync import request_sync


class Command(BaseCommand):
    help = "Queue a sync of source NAME on the worker; --wait follows it to the end."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--full", action="store_true", help="re-parse every document (embeddings still cached)")
        parser.add_argument("--wait", action="store_true", help="wait for the run to finish, showing progress")
        parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait with --wait")
        parser.add_argument("--allow-mass-delete", action="store_true",
                            help="let this run delete more than SYNC_PRUNE_MAX_FRACTION of the source's documents")

    def handle(self, *args, name, full, wait, timeout, allow_mass_delete: bool, **options):
        source = Source.objects.filter(name=name).first()
        if source is None:
            raise CommandError(f"no source named {name!r}")
        with transaction.atomic():  # the worker starts on commit, with the confirmation already on the run
            run, created = request_sync(source, full=full, trigger="cli")
            if allow_mass_delete:
                confirm_mass_delete(run)
        self.stdout.write(f"sync run #{run.pk} {'queued' if created else 'already active; following it'}")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        # A progress bar on a terminal; plain lines when the output is a file or a pipe.
        bar = tqdm(desc=f"sync #{run.pk}", unit=" docs", file=self.stdout._out, disable=not self.stdout.isatty())
        last = None
        with bar:
            while True:
                run.refresh_from_db()
                bar.update(run.items_seen - bar.n)
                bar.set_postfix_str(f"new {run.items_new} updated {run.items_updated} unchanged "
                                    f"{run.items_unchanged} failed {run.items_failed}", refresh=False)
                line = (f"  {run.status}: seen {run.items_seen}, new {run.items_new}, updated {run.items_updated}, "
                        f"unchanged {run.items_unchanged}, deleted {run.items_deleted}, failed {run.items_failed}")
                if line != last and bar.disable:
                    self.stdout.write(line)
                last = line
                if run.status not in SyncRun.ACTIVE:
                    break
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"sync run #{run.pk} still {run.status} after {timeout:.0f}s; is a worker running "
                        "(celery -A ragsite worker -Q ingestion,embedding,compliance,maintenance)?"
                    )
                time.sleep(0.5)
        if not bar.disable:
            self.stdout.write(last)
        for error in run.errors:
            self.stdout.write(f"  failed: {error['item']}: {error['reason']}")
        if run.status == SyncRun.FAILED:
            raise CommandError(f"sync run #{run.pk} failed: {run.message}")
        self.stdout.write(f"sync run #{run.pk} {run.status}; chunks embedded {run.chunks_embedded}, "
                          f"cache hits {run.embedding_cache_hits}")
