import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from apps.ingestion.connectors import ConnectorError
from apps.ingestion.models import Source
from apps.ingestion.watch import watch


class Command(BaseCommand):
    help = ("Watch a filesystem source's directory and queue a sync within seconds of a change (a burst of changes "
            "makes one sync). Runs until SIGTERM or Ctrl-C.")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--debounce", type=float, default=2.0,
                            help="seconds of quiet after a change before the sync is queued (default 2)")
        parser.add_argument("--max-wait", type=float, default=10.0,
                            help="queue a sync at most this long after the first change of a burst (default 10)")
        parser.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                            help="poll the tree every SECONDS instead of inotify (network shares: NFS, SMB)")
        parser.add_argument("--no-initial-sync", action="store_true",
                            help="do not sync at start (by default one catches what changed while unwatched)")

    def handle(self, *args, name, debounce, max_wait, poll, no_initial_sync, **options):
        source = Source.objects.filter(name=name).first()
        if source is None:
            raise CommandError(f"no source named {name!r}")
        if source.kind != "filesystem":
            raise CommandError(f"source {name!r} is a {source.kind} source; only filesystem sources can be watched "
                               "(others can tell us of changes through POST /api/v1/sources/{id}/webhook/)")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        signal.signal(signal.SIGINT, lambda signum, frame: stop.set())

        def ready(root):
            self.stdout.write(f"watching {root} for source {name!r}")
            self.stdout.flush()

        def synced(run, created):
            self.stdout.write(f"sync run #{run.pk} {'queued' if created else 'already active; joined'}")
            self.stdout.flush()

        try:
            watch(source, quiet=debounce, max_wait=max_wait, poll_seconds=poll, initial_sync=not no_initial_sync,
                  stop=stop, on_ready=ready, on_sync=synced)
        except (ConnectorError, RuntimeError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write("stopped")
