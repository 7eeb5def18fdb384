"""Objects of an S3 bucket (or an S3-compatible store through ``endpoint_url``), one document per object.

Every sync lists the bucket under the prefix (ListObjectsV2, 1,000 keys a page): S3 has no listing filtered by
date, and the one listing serves both for finding changes and for ``present_ids()``, so deletions cost nothing
extra. Only changed objects are downloaded. The checkpoint keeps a ``floor`` (the newest LastModified seen, less
an hour) and the ETag of every object modified at or after it: an object is downloaded when it is newer than the
floor and its ETag is not the one recorded (so two writes within one second, or a PUT that became visible just
after a listing, are still seen), or when its last download failed. An object that appears with a LastModified
more than an hour older than the newest one already seen (a multipart upload that took longer than that to
complete) is only found by ``sync_source --full``.

Transient failures (throttling such as SlowDown, 5xx, connection errors, timeouts) are retried by botocore's
"standard" retry mode with exponential backoff; credentials, access and missing-bucket errors fail at once with
the reason.
"""

import fnmatch
import hashlib
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings

from ..parsing import content_type_for
from . import egress
from .base import ConfigError, Connector, ConnectorError, ItemError, RawDocument, reject_unknown, text_setting

logger = logging.getLogger(__name__)

SETTINGS = {"bucket", "prefix", "endpoint_url", "region", "access_key_id", "secret_access_key", "include", "exclude",
            "timeout", "max_retries"}
DEFAULTS = {"region": "us-east-1", "timeout": 30, "max_retries": 4}
LIST_PAGE_SIZE = 1000  # S3's own maximum
OVERLAP = timedelta(hours=1)  # how far below the newest LastModified the recorded ETags reach
MAX_RECENT = 20_000  # ETags kept in the checkpoint at most (the window narrows past this)
MAX_RETRY = 10_000  # failed downloads remembered for the next sync at most
DOWNLOADING = "downloading from"  # what _call() was doing, in messages: "... downloading from bucket 'x'"
ARCHIVED = {"GLACIER", "DEEP_ARCHIVE"}  # storage classes that cannot be read without a restore
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9-]{2,32}$")


def _globs(config, key):
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, "must be a list of glob patterns (matched against the key below the prefix)")
    return value


def _number(config, key, *, low, high, integer):
    value = config.get(key, DEFAULTS[key])
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise ConfigError(key, f"must be {'a whole number' if integer else 'a number'} from {low} to {high}")
    return value


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _parse_iso(value) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class S3Connector(Connector):
    """Objects under a bucket prefix; incremental on LastModified and ETag, deletions from the same listing."""

    incremental = True
    secret_fields = ("secret_access_key",)

    @classmethod
    def validate_config(cls, config):
        reject_unknown(config, SETTINGS, "an s3 source")
        bucket = text_setting(config, "bucket", required=True)
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ConfigError("bucket", "not a valid bucket name (3-63 lower-case letters, digits, dots and hyphens)")
        cfg = {"bucket": bucket}
        prefix = config.get("prefix", "")
        if not isinstance(prefix, str):
            raise ConfigError("prefix", "must be a key prefix such as docs/ (empty: the whole bucket)")
        if prefix:
            cfg["prefix"] = prefix
        endpoint = text_setting(config, "endpoint_url")
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError("endpoint_url", "must be an http:// or https:// URL with a host")
            if parts.username or parts.password:
                raise ConfigError("endpoint_url", "must not carry credentials; use access_key_id and "
                                  "secret_access_key")
            egress.check_url("endpoint_url", endpoint)
            cfg["endpoint_url"] = endpoint.rstrip("/")
        region = text_setting(config, "region")
        if region is not None:
            if not _REGION.match(region):
                raise ConfigError("region", "not a region name such as eu-west-2")
            cfg["region"] = region
        cfg["access_key_id"] = text_setting(config, "access_key_id", required=True)
        cfg["secret_access_key"] = text_setting(config, "secret_access_key", required=True)
        for key in ("include", "exclude"):
            globs = _globs(config, key)
            if globs:
                cfg[key] = globs
        for key, low, high, integer in (("timeout", 0.1, 300, False), ("max_retries", 0, 10, True)):
            value = _number(config, key, low=low, high=high, integer=integer)
            if key in config:
                cfg[key] = value
        return cfg

    def __init__(self, config):
        super().__init__(config)
        self._client = None
        self._since = None
        self._listing: dict[str, tuple[str, datetime]] | None = None  # key -> (ETag, LastModified)
        self._failed: set[str] = set()

    def _setting(self, key):
        return self.config.get(key, DEFAULTS[key])

    @property
    def _where(self) -> str:
        return self.config.get("endpoint_url") or f"S3 ({self._setting('region')})"

    @property
    def client(self):
        if self._client is None:
            endpoint = urlsplit(self.config.get("endpoint_url") or "")
            if endpoint.hostname:  # checked again each time a client is made (a sync, a save's connection test)
                egress.check_before_connecting(endpoint.hostname,
                                               endpoint.port or (443 if endpoint.scheme == "https" else 80))
            import boto3
            from botocore.config import Config

            timeout = self._setting("timeout")
            options = {"addressing_style": "path"} if "endpoint_url" in self.config else {}
            config = Config(
                # "standard": retries throttling (SlowDown, 429), 5xx and connection errors, exponential backoff.
                retries={"total_max_attempts": self._setting("max_retries") + 1, "mode": "standard"},
                connect_timeout=timeout, read_timeout=timeout, s3=options, user_agent_extra="ragsite-connector",
            )
            # Explicit keys: the process's own AWS credentials (environment, instance role) are never used.
            session = boto3.session.Session(
                aws_access_key_id=self.config["access_key_id"],
                aws_secret_access_key=self.config["secret_access_key"],
                region_name=self._setting("region"),
            )
            self._client = session.client("s3", endpoint_url=self.config.get("endpoint_url"), config=config)
        return self._client

    # --- errors -------------------------------------------------------------------------------------------

    def _error(self, exc, doing: str) -> ConnectorError | None:
        """A source-level reason for a botocore failure, or None when it is about one object only."""
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key_id = self.config["bucket"], self.config["access_key_id"]
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            code, status = error.get("Code", ""), meta.get("HTTPStatusCode")
            message = error.get("Message") or ""
            retries = meta.get("RetryAttempts") or 0
            if code == "NoSuchBucket":
                return ConnectorError(f"bucket {bucket!r} does not exist at {self._where}")
            if code == "InvalidAccessKeyId":
                return ConnectorError(f"{self._where} does not know the access key id {key_id!r} "
                                      "(check access_key_id)")
            if code == "SignatureDoesNotMatch":
                return ConnectorError(f"{self._where} rejected the request signature: secret_access_key does not "
                                      f"belong to access key id {key_id!r}")
            if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
                return ConnectorError(f"{self._where} rejected the credentials of {key_id!r}: {message}")
            if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException") \
                    or status == 301:
                return ConnectorError(f"bucket {bucket!r} is not in region {self._setting('region')!r}; set region "
                                      f"to the bucket's ({code}: {message})")
            if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
                if doing == DOWNLOADING:
                    return None  # one object the key may not read; others may still be readable
                return ConnectorError(f"access denied {doing} bucket {bucket!r} as {key_id!r} ({code}): {message}")
            if doing == DOWNLOADING and (code in ("NoSuchKey", "InvalidObjectState") or status in (404, 412)):
                return None
            after = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
            return ConnectorError(f"{self._where} answered {code or 'an error'} (HTTP {status}){after} {doing} "
                                  f"bucket {bucket!r}: {message}")
        from botocore.exceptions import ConnectionError as Unreachable
        from botocore.exceptions import HTTPClientError

        if isinstance(exc, Unreachable | HTTPClientError | OSError):  # no answer at all: refused, reset, timed out
            retries = self._setting("max_retries")
            return ConnectorError(f"cannot reach {self._where} after {retries} {'retry' if retries == 1 else 'retries'}"
                                  f" ({doing} bucket {bucket!r}): {exc}")
        if isinstance(exc, BotoCoreError):
            return ConnectorError(f"S3 client error {doing} bucket {bucket!r}: {exc}")
        return None

    def _call(self, doing: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError, OSError) as exc:
            error = self._error(exc, doing)
            if error is None:
                raise
            raise error from None

    # --- listing ------------------------------------------------------------------------------------------

    def _scope(self) -> str:
        """What the checkpoint was made for: a different bucket, prefix or filter means a full pull."""
        cfg = self.config
        basis = [cfg.get("endpoint_url", ""), cfg["bucket"], cfg.get("prefix", ""), cfg.get("include", []),
                 cfg.get("exclude", [])]
        return hashlib.sha256(json.dumps(basis).encode()).hexdigest()[:16]

    def _wanted(self, key: str) -> bool:
        if key.endswith("/") or content_type_for(key) is None:
            return False  # "folder" markers and file types the parser does not read
        rel = key[len(self.config.get("prefix", "")):]
        include = self.config.get("include") or ["*"]
        exclude = self.config.get("exclude") or []
        return any(fnmatch.fnmatch(rel, p) for p in include) and not any(fnmatch.fnmatch(rel, p) for p in exclude)

    def _objects(self):
        """Every wanted object under the prefix, page by page (ListObjectsV2 with continuation tokens)."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.config["bucket"], Prefix=self.config.get("prefix", ""),
                                   PaginationConfig={"PageSize": LIST_PAGE_SIZE})
        iterator = iter(pages)
        while True:
            page = self._call("listing", next, iterator, None)
            if page is None:
                return
            for obj in page.get("Contents", ()):
                if self._wanted(obj["Key"]):
                    yield obj

    # --- the interface ------------------------------------------------------------------------------------

    def check(self):
        """List one key: the endpoint answers, the bucket exists, the credentials are valid and may list it."""
        self._call("listing", self.client.list_objects_v2, Bucket=self.config["bucket"],
                   Prefix=self.config.get("prefix", ""), MaxKeys=1)

    def _usable(self, since):
        if not since or since.get("scope") != self._scope() or since.get("floor") is None:
            return None
        if _parse_iso(since.get("floor")) is None or not isinstance(since.get("recent"), dict):
            logger.warning("unreadable s3 checkpoint; pulling everything")
            return None
        return since

    def documents(self, since=None):
        self._since = self._usable(since)
        self._listing, self._failed = None, set()
        listing = {}
        floor, recent, retry = None, {}, set()
        if self._since:
            floor = _parse_iso(self._since["floor"])
            recent, retry = self._since["recent"], set(self._since.get("retry", ()))
        for obj in self._objects():
            key = obj["Key"]
            etag = str(obj.get("ETag", "")).strip('"')
            modified = obj["LastModified"].astimezone(UTC)
            listing[key] = (etag, modified)
            if self._since is None or key in retry or (modified >= floor and recent.get(key) != etag):
                yield self._raw(obj, etag, modified)
        self._listing = listing

    def next_checkpoint(self):
        if self._listing is None:
            return dict(self._since) if self._since else {}
        if len(self._failed) > MAX_RETRY:
            # Too many to remember: start from the same place again, which downloads them again.
            return dict(self._since) if self._since else {}
        listing = self._listing
        old_floor = _parse_iso(self._since["floor"]) if self._since else None
        if not listing:
            floor = old_floor
        else:
            newest = max(modified for _, modified in listing.values())
            floor = max(old_floor, newest - OVERLAP) if old_floor else newest - OVERLAP
        if floor is None:
            return {"scope": self._scope(), "floor": None, "recent": {}}  # an empty bucket: pull all next time
        window = sorted(((modified, key) for key, (_, modified) in listing.items()
                         if modified >= floor and key not in self._failed), reverse=True)
        if len(window) > MAX_RECENT:
            window = window[:MAX_RECENT]
            floor = window[-1][0]  # the window narrows; everything below it was listed and handled in this run
        recent = {key: listing[key][0] for _, key in window}
        checkpoint = {"scope": self._scope(), "floor": _iso(floor), "recent": recent}
        retry = sorted(key for key in self._failed if key in listing)
        if retry:
            checkpoint["retry"] = retry
        return checkpoint

    def present_ids(self):
        if self._listing is not None:
            return set(self._listing)
        return {obj["Key"] for obj in self._objects()}

    # --- objects into documents ---------------------------------------------------------------------------

    def _raw(self, obj, etag: str, modified: datetime) -> RawDocument:
        key, size = obj["Key"], int(obj.get("Size", 0))
        limit = settings.MAX_DOCUMENT_BYTES
        storage = obj.get("StorageClass", "STANDARD")

        def read():
            try:
                if size > limit:
                    raise ItemError(f"object is {size:,} bytes, over the {limit:,}-byte limit (MAX_DOCUMENT_BYTES)")
                if storage in ARCHIVED:
                    raise ItemError(f"object is archived (storage class {storage}); restore it to index it")
                return self._download(key, limit)
            except ItemError:
                self._failed.add(key)
                raise

        return RawDocument(
            external_id=key,
            uri=f"s3://{self.config['bucket']}/{key}",
            size=size,
            modified_at=modified,
            read=read,
            content_type=content_type_for(key),
        )

    def _download(self, key: str, limit: int) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._call(DOWNLOADING, self.client.get_object, Bucket=self.config["bucket"], Key=key)
            length = response.get("ContentLength") or 0
            if length > limit:  # replaced by a bigger object since the listing
                raise ItemError(f"object is {length:,} bytes, over the {limit:,}-byte limit (MAX_DOCUMENT_BYTES)")
            with response["Body"] as body:
                data = self._call(DOWNLOADING, body.read, limit + 1)
        except ClientError as exc:  # the ones _call left to this object alone
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            if code == "NoSuchKey" or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise ItemError("object was deleted before it could be downloaded") from None
            if code == "InvalidObjectState":
                raise ItemError("object is archived; restore it to index it") from None
            raise ItemError(f"cannot download the object ({code}): {error.get('Message', '')}") from None
        except BotoCoreError as exc:
            raise ItemError(f"cannot download the object: {exc}") from None
        if len(data) > limit:
            raise ItemError(f"object is over the {limit:,}-byte limit (MAX_DOCUMENT_BYTES)")
        return data
