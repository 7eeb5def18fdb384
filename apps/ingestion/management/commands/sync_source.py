import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from apps.ingestion.models import Source, SyncRun
from apps.ingestion.sync import SyncEnqueueError, request_sync


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
        try:
            run, created = request_sync(source, full=full, trigger="cli", allow_mass_delete=allow_mass_delete)
        except SyncEnqueueError as exc:
            raise CommandError(str(exc)) from None  # one line; the run is marked failed, not left pending
        joined = "already active; following it"
        if full and not created and not run.full:
            joined = "already active (not full); a full run follows it"
        self.stdout.write(f"sync run #{run.pk} {'queued' if created else joined}")
        if not wait:
            return
        run = self._follow(run, timeout)
        if run.follow_up_full and not run.full:
            run = self._follow(self._next_run(run, timeout), timeout)
        for error in run.errors:
            self.stdout.write(f"  failed: {error['item']}: {error['reason']}")
        if run.status == SyncRun.FAILED:
            raise CommandError(f"sync run #{run.pk} failed: {run.message}")
        self.stdout.write(f"sync run #{run.pk} {run.status}; chunks embedded {run.chunks_embedded}, "
                          f"cache hits {run.embedding_cache_hits}")

    def _next_run(self, run, timeout):
        """The run requested when ``run`` ended (its full follow-up), which the worker creates right after."""
        deadline = time.monotonic() + timeout
        while (after := SyncRun.objects.filter(source_id=run.source_id, pk__gt=run.pk).order_by("pk").first()) is None:
            if time.monotonic() > deadline:
                raise CommandError(f"sync run #{run.pk} ended but the full run to follow it was not requested")
            time.sleep(0.2)
        self.stdout.write(f"sync run #{run.pk} {run.status}; following the full run #{after.pk}")
        return after

    def _follow(self, run, timeout):
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
        return run
