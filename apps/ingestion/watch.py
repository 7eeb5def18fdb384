"""Live watching of a filesystem source: a change under its path requests a sync within seconds.

watchdog (inotify on Linux; ``poll_seconds`` for network shares, where inotify sees nothing) reports changes on
its own thread; the Debouncer turns a burst of them into one request_sync, ``quiet`` seconds after the last one
(or ``max_wait`` after the first, so steady churn still syncs). Reads (the sync itself opening files) are not
changes. Files the source would skip (hidden, excluded, unsupported types) are ignored, except the access sidecar,
whose change re-computes the readers of everything below it.
"""

import logging
import threading
import time
from pathlib import Path

from ragsite.db import fresh_connections

from .connectors import get_connector
from .connectors.filesystem import ACCESS_SIDECAR, FileSystemConnector
from .models import Source
from .parsing import content_type_for
from .sync import request_sync

logger = logging.getLogger(__name__)


CHANGE_EVENTS = {"created", "deleted", "modified", "moved", "closed", "attrib"}  # "closed": after writing


class Debouncer:
    """notify() from any thread; due() tells the owner's thread when a burst has settled."""

    def __init__(self, quiet: float = 2.0, max_wait: float = 10.0, clock=time.monotonic):
        self.quiet, self.max_wait, self.clock = quiet, max_wait, clock
        self._lock = threading.Lock()
        self._first = self._last = None
        self.wake = threading.Event()

    def notify(self):
        with self._lock:
            now = self.clock()
            self._first = now if self._first is None else self._first
            self._last = now
        self.wake.set()

    def due(self) -> bool:
        """True once per burst, when it has settled; the burst is then forgotten."""
        with self._lock:
            if self._first is None:
                return False
            now = self.clock()
            if now - self._last < self.quiet and now - self._first < self.max_wait:
                return False
            self._first = self._last = None
            return True


class ChangeFilter:
    """Whether a path change can matter to the source's next listing."""

    def __init__(self, connector: FileSystemConnector):
        self.connector = connector
        self.root = connector.root

    def relevant(self, path, is_directory: bool, event_type: str) -> bool:
        path = Path(path.decode() if isinstance(path, bytes) else path)
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return False
        parts = rel.parts
        if not parts:
            return False
        if parts[-1] == ACCESS_SIDECAR:
            return not any(p.startswith(".") for p in parts[:-1])
        if any(p.startswith(".") for p in parts):
            return False  # the connector skips hidden files and directories (editors' swap files among them)
        if is_directory:
            return event_type != "modified"  # a file inside reports itself; a directory moved or deleted does not
        # The connector's own include/exclude test: a change it would skip must not cost a listing of the tree.
        return content_type_for(parts[-1]) is not None and self.connector._wanted(rel.as_posix())


class _Handler:
    def __init__(self, change_filter: ChangeFilter, debouncer: Debouncer):
        self.filter, self.debouncer = change_filter, debouncer

    def dispatch(self, event):  # watchdog's entry point
        if event.event_type not in CHANGE_EVENTS:
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(p and self.filter.relevant(p, event.is_directory, event.event_type) for p in paths):
            logger.debug("change: %s %s", event.event_type, event.src_path)
            self.debouncer.notify()


def watch(source: Source, *, quiet=2.0, max_wait=10.0, poll_seconds=None, initial_sync=True,
          stop: threading.Event, on_ready=lambda root: None, on_sync=lambda run, created: None):
    """Watch until ``stop`` is set. Raises RuntimeError if the observer dies (the path vanished, say), so a
    supervisor restarts the command."""
    if source.kind != "filesystem":
        raise ValueError(f"source {source.name!r} is a {source.kind} source; only filesystem sources can be watched")
    connector = get_connector(source)
    connector.check()
    if poll_seconds:
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=poll_seconds)
    else:
        from watchdog.observers import Observer

        observer = Observer()
    debouncer = Debouncer(quiet, max_wait)
    observer.schedule(_Handler(ChangeFilter(connector), debouncer), str(connector.root), recursive=True)
    observer.start()
    try:
        if initial_sync:  # what changed while nobody watched
            on_sync(*request_sync(source, trigger="watch-start", follow_up=True))
        on_ready(connector.root)
        while not stop.is_set():
            debouncer.wake.wait(timeout=min(0.5, quiet))
            debouncer.wake.clear()
            if not observer.is_alive():
                raise RuntimeError(f"the watch on {connector.root} stopped; is the directory still there?")
            if debouncer.due():
                fresh_connections()
                on_sync(*request_sync(source, trigger="watch", follow_up=True))
    finally:
        observer.stop()
        observer.join(timeout=10)
