import fnmatch
import json
import os
import stat as stat_mode
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from apps.compliance.labels import CLASSIFICATIONS

from ..parsing import content_type_for
from .base import (
    ConfigError,
    Connector,
    ConnectorError,
    ItemError,
    RawDocument,
    failing_read,
    reject_unknown,
)
from .roots import allowed_roots, check_root

ACCESS_SIDECAR = ".ragsite-access.json"
# A FIFO, socket or device under the folder: reading one can block for good (a FIFO without a writer) or never end.
_FILE_KINDS = {stat_mode.S_IFIFO: "a FIFO", stat_mode.S_IFSOCK: "a socket", stat_mode.S_IFCHR: "a character device",
               stat_mode.S_IFBLK: "a block device", stat_mode.S_IFDIR: "a directory"}


def readable_name(name: str) -> str:
    """A file name as text that can be stored and shown: bytes that are not UTF-8 (which os.walk hands over as
    lone surrogates) written as backslash escapes, ``bad-\\xff.txt``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is not read, or None for a regular file."""
    if stat_mode.S_ISREG(mode):
        return None
    kind = _FILE_KINDS.get(stat_mode.S_IFMT(mode), "not a plain file")
    return f"not a regular file ({kind}); skipped"


class FileSystemConnector(Connector):
    """Files under a directory. A `.ragsite-access.json` in a directory ({"groups": [...], "classification":
    "confidential"}, either key optional) restricts it and everything below it to those groups and gives it that
    classification; for each key the nearest sidecar that names it wins."""

    @classmethod
    def validate_config(cls, config):
        path = config.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError("path", "a directory path is required")
        for key in ("include", "exclude"):
            value = config.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(key, "must be a list of glob patterns")
        reject_unknown(config, {"path", "include", "exclude"}, "a filesystem source")
        # Checked here, so on save and again whenever a sync builds the connector (a root may have been removed).
        return {**config, "path": str(check_root(Path(path).expanduser()))}

    @property
    def root(self) -> Path:
        return Path(self.config["path"])

    def check(self):
        root = self.root
        if not root.exists():
            raise ConnectorError(f"source path {root} does not exist")
        if not root.is_dir():
            raise ConnectorError(f"source path {root} is not a directory")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConnectorError(f"source path {root} is not readable by this process")

    def _wanted(self, rel: str) -> bool:
        include = self.config.get("include") or ["*"]
        exclude = self.config.get("exclude") or []
        return any(fnmatch.fnmatch(rel, p) for p in include) and not any(fnmatch.fnmatch(rel, p) for p in exclude)

    # The sync reads the listing in a thread of its own, so its heartbeat (and a cancel) goes on while a slow or
    # hung share keeps os.walk waiting. Safe here: the listing touches only the file system, never the database.
    list_in_thread = True

    def documents(self, since=None):
        self.check()
        root = self.root
        # Sidecars above the source's folder, up to the allowed root holding it, apply too: a source made on a
        # sub-folder of a restricted tree keeps its restriction.
        top = next((r for r in allowed_roots() if root.is_relative_to(r)), root)
        sidecars: dict[Path, tuple[tuple[str, ...] | None, str | None]] = {}

        def sidecar_for(directory: Path):
            """(groups, classification) of a directory: its sidecar's, each inherited when the sidecar is silent."""
            if directory not in sidecars:
                inherited = sidecar_for(directory.parent) if directory not in (top, directory.parent) else (None, None)
                sidecar = directory / ACCESS_SIDECAR
                if sidecar.is_file():
                    try:
                        settings_ = json.loads(sidecar.read_text())
                        if not isinstance(settings_, dict) or not ({"groups", "classification"} & set(settings_)):
                            raise ValueError('expected an object with "groups" and/or "classification"')
                        groups = settings_.get("groups", inherited[0])
                        if groups is not None and (
                            not isinstance(groups, list) or not all(isinstance(g, str) for g in groups)
                        ):
                            raise ValueError("groups must be a list of names")
                        classification = settings_.get("classification", inherited[1])
                        if classification is not None and classification not in CLASSIFICATIONS:
                            raise ValueError(f"classification must be one of {', '.join(CLASSIFICATIONS)}")
                    except (OSError, ValueError, TypeError) as exc:
                        # Fail closed: an unreadable restriction hides the directory rather than opening it.
                        raise ItemError(f"unreadable access file {sidecar}: {exc}") from exc
                    sidecars[directory] = (tuple(groups) if groups is not None else None, classification)
                else:
                    sidecars[directory] = inherited
            return sidecars[directory]

        def on_error(exc):
            raise ConnectorError(f"cannot list {exc.filename}: {exc.strerror}")

        for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            directory = Path(dirpath)
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = directory / filename
                rel = path.relative_to(root).as_posix()
                if not self._wanted(rel) or content_type_for(filename) is None:
                    continue
                shown = readable_name(rel)
                if shown != rel:
                    # A name that is not UTF-8 cannot be an id, a URI or a database string: the file fails with
                    # its reason under an escaped name (not indexed under it, which another file could also take).
                    yield RawDocument(shown, "", 0, None, failing_read(
                        "file name is not valid UTF-8 (shown here with \\x escapes); rename the file to index it"))
                    continue
                yield self._raw(path, rel, sidecar_for, directory)

    def _raw(self, path: Path, rel: str, sidecar_for, directory: Path) -> RawDocument:
        try:
            stat = path.stat()
        except OSError as exc:
            return RawDocument(rel, path.as_uri(), 0, None, failing_read(f"cannot stat file: {exc.strerror}"))
        if path.is_symlink() and not path.resolve().is_relative_to(self.root):
            return RawDocument(rel, path.as_uri(), 0, None, failing_read("symbolic link points outside the source"))
        reason = _not_regular(stat.st_mode)
        if reason:
            return RawDocument(rel, path.as_uri(), 0, None, failing_read(reason))

        def read():
            return read_regular_file(path)

        try:
            groups, classification = sidecar_for(directory)
        except ItemError as exc:
            return RawDocument(rel, path.as_uri(), stat.st_size, None, failing_read(str(exc)))
        modified = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
        return RawDocument(rel, path.as_uri(), stat.st_size, modified, read, groups, classification=classification)



def read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file, never blocking: opened non-blocking (a FIFO put there since it was listed
    then returns at once instead of waiting for a writer) and checked on the open descriptor before any read, so a
    file swapped for a FIFO or a device between the check and the open is refused too. At most
    MAX_DOCUMENT_BYTES are read."""
    limit = settings.MAX_DOCUMENT_BYTES
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ItemError(f"cannot read file: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        try:
            info = os.fstat(fd)
            reason = _not_regular(info.st_mode)
            if reason:
                raise ItemError(reason)
            if info.st_size > limit:
                raise ItemError(f"file is {info.st_size:,} bytes, over the {limit:,}-byte limit (MAX_DOCUMENT_BYTES)")
            data = handle.read(limit + 1)
        except OSError as exc:
            raise ItemError(f"cannot read file: {exc.strerror}") from exc
    if len(data) > limit:  # it grew since fstat
        raise ItemError(f"file is over the {limit:,}-byte limit (MAX_DOCUMENT_BYTES)")
    return data
