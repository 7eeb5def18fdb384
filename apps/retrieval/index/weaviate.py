"""The Weaviate backend (VECTOR_BACKEND=weaviate): one collection shared by every process, kept current from the
database's IndexChange outbox.

What goes in: one object per chunk, its id the chunk's UUID (so re-importing overwrites, never duplicates), its
vector the one stored with the chunk (Weaviate never embeds: the vectorizer is ``none``), and the properties the
search filters and ranks on: ``principals`` (text[], field tokenization: ``group:hr`` is one token), ``source_id``,
``classification``, ``modified_at`` (date), ``document_id``, ``chunk_id`` and ``text`` (the passage text the
embedded index ranks, the only property BM25 reads).

Permissions are a filter inside the query (DESIGN invariant 5): ``principals`` contains any of the scope's, so
``top_k`` is filled from what the caller may read however little that is.

What Weaviate cannot give, unlike the embedded index:
- BM25 statistics (document frequencies, average length) come from the whole collection, or the whole tenant with
  WEAVIATE_TENANT, not from the rows the caller may read; a lexical score can therefore move when a document the
  caller cannot see is added. Tenants isolate organisations from each other, not groups within one.
- Lexical analysis is Weaviate's ``word`` tokenization with its English stop words, without stemming.
- In hybrid mode the two sides' own scores are only in ``explain_score`` text, which is parsed (relative score
  fusion prints each side's original score; ranked fusion prints only rank contributions, so ``dense`` and
  ``lexical`` stay None there). ``candidates`` is not settable: Weaviate takes max(100, limit) from each side,
  the embedded default.

Keeping current: ``refresh`` replays the outbox after the cursor (an IndexCursor row, locked while applying so
processes apply one at a time), upserting each changed document's chunks and deleting objects the database no
longer has. An object Weaviate rejects is logged and counted, and the cursor stays before that document's change so
the next refresh retries it.

Nothing hangs: every call to Weaviate runs with a deadline (WEAVIATE_TIMEOUT) and a failed connection opens a
short circuit breaker, so a search answers 503 within seconds and /readyz reports the index down. The deadline
matters because the client retries an unavailable gRPC server with exponential backoff for about a minute.
"""

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
import weaviate
from django.conf import settings
from django.db import transaction
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery
from weaviate.exceptions import (
    WeaviateBaseError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateInsertManyAllFailedError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)

from apps.ingestion.embedding import get_embedder
from apps.ingestion.models import Document
from apps.retrieval.models import IndexChange, IndexCursor
from apps.retrieval.outbox import compacted_through, log_index_change, outbox_head, synced_through

from . import projection
from .base import IndexFilter, IndexUnavailable, SearchHit, VectorIndex

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "RagsiteChunk"
VECTOR_NAME = "default"
SEARCHABLE = ["text"]  # the only property BM25 reads
UPSERT_BATCH = 200  # objects per BatchObjects call
PAGE_CHANGES = 500  # outbox rows read per step
IMPORT_DOCUMENTS = 100  # documents loaded from the database per step of a full import
FETCH_LIMIT = 10_000  # Weaviate's default QUERY_MAXIMUM_RESULTS
LIST_PAGE = 1000
BREAKER_SECONDS = 5.0  # after a connection failure, calls fail at once for this long
FAILED_RETRY_SECONDS = 10.0  # after a refresh with rejected objects, searches wait this long before retrying
STALE_CHECK_SECONDS = 10.0  # how long a count of chunks of another embedding model is reused
# Filterable properties added after the first release: an older collection gets them added and is re-imported.
LATER_PROPERTIES = ("classification",)



class _WithoutObjects(logging.Filter):
    """The client logs a failed batch with every failed object in full: chunk text (personal data, which a log
    file would keep out of reach of erasure) and its vector. Keep the client's message and drop the objects; this
    module logs each failure itself, by chunk and document id."""

    def filter(self, record):
        if isinstance(record.msg, dict) and "errors" in record.msg:
            record.msg, record.args = f"{record.msg.get('message')} (objects omitted)", ()
        return True


logging.getLogger("weaviate-client").addFilter(_WithoutObjects())


class _NotLive(Exception):
    """Weaviate answered, but its liveness check (REST and gRPC) failed."""


_UNREACHABLE = (
    _NotLive, WeaviateConnectionError, WeaviateStartUpError, WeaviateTimeoutError, WeaviateGRPCUnavailableError,
    WeaviateClosedClientError, WeaviateRetryError, httpx.TransportError, grpc.RpcError, OSError,
)
_UNREACHABLE_TEXT = ("deadline exceeded", "failed to connect", "unavailable", "connection refused", "timed out")
# "(Result Set 'keyword') Document <id>: original score 2.3, normalized score: 0.25" (older servers print
# "Hybrid (Result Set keyword,hybridSearch) ..."): the side's own score before fusion.
_EXPLAIN_SIDE = re.compile(r"Result Set '?([A-Za-z,]+)'?\) Document \S+: original score ([-+0-9.eE]+)")


class WeaviateIndex(VectorIndex):
    name = "weaviate"

    def __init__(self, url: str, *, grpc_port: int = 50051, api_key: str = "", collection: str = DEFAULT_COLLECTION,
                 tenant: str = "", timeout: float = 3.0, insert_timeout: float = 30.0):
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise IndexUnavailable(
                f"VECTOR_BACKEND=weaviate needs WEAVIATE_URL like http://weaviate:8080, not {url!r}"
            )
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self.secure = parts.scheme == "https"
        self.host, self.http_port = parts.hostname, parts.port or (443 if self.secure else 80)
        self.grpc_port = int(grpc_port)
        if self.grpc_port == self.http_port:
            raise IndexUnavailable(f"WEAVIATE_GRPC_PORT ({self.grpc_port}) must differ from the port of WEAVIATE_URL")
        self.api_key = api_key or ""
        self.collection_name = collection[:1].upper() + collection[1:]  # Weaviate capitalises class names
        self.tenant = tenant or ""
        self.timeout = float(timeout)
        self.insert_timeout = float(insert_timeout)
        self._lock = threading.RLock()  # guards the client
        self._apply_lock = threading.Lock()  # one refresh at a time in this process
        self._client = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="weaviate-call")
        self._down_until = 0.0
        self._last_error = ""
        self._last_refresh = 0.0
        self._retry_at = 0.0
        self._known_seq = 0  # the shared cursor's position when this process last read or moved it
        self.failed_objects = 0  # rejected by Weaviate since this process started
        self.last_failures: list[dict] = []  # [{document_id, error}] of the latest refresh

    @classmethod
    def from_settings(cls) -> "WeaviateIndex":
        return cls(
            settings.WEAVIATE_URL,
            grpc_port=settings.WEAVIATE_GRPC_PORT,
            api_key=settings.WEAVIATE_API_KEY,
            collection=settings.WEAVIATE_COLLECTION or DEFAULT_COLLECTION,
            tenant=settings.WEAVIATE_TENANT or "",
            timeout=settings.WEAVIATE_TIMEOUT,
            insert_timeout=settings.WEAVIATE_INSERT_TIMEOUT,
        )

    # --- calling Weaviate with a deadline ------------------------------------------------------------------

    def _call(self, what: str, fn, *, deadline: float | None = None):
        """Run one client call in the pool and wait at most ``deadline`` seconds; any failure is IndexUnavailable."""
        if time.monotonic() < self._down_until:
            raise IndexUnavailable(f"Weaviate at {self.url} is unreachable ({self._last_error}); not retried for "
                                   f"{self._down_until - time.monotonic():.0f} s")
        deadline = self.timeout if deadline is None else deadline
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=deadline)
        except FutureTimeout:
            future.add_done_callback(_close_late_client)
            raise self._unreachable(f"{what}: no answer within {deadline:g} s") from None
        except IndexUnavailable:
            raise
        except _UNREACHABLE as exc:
            raise self._unreachable(f"{what}: {_first_line(exc)}") from exc
        except (WeaviateBaseError, ValueError) as exc:  # ValueError: the client's own validation (pydantic)
            if any(text in str(exc).lower() for text in _UNREACHABLE_TEXT):
                raise self._unreachable(f"{what}: {_first_line(exc)}") from exc
            self._drop_client()  # the schema may be gone: check it again on the next call
            raise IndexUnavailable(f"Weaviate at {self.url} failed {what}: {_first_line(exc)}") from exc

    def _unreachable(self, reason: str) -> IndexUnavailable:
        self._last_error = reason
        self._down_until = time.monotonic() + BREAKER_SECONDS
        self._drop_client()
        logger.warning("Weaviate at %s is unreachable: %s", self.url, reason)
        return IndexUnavailable(f"Weaviate at {self.url} is unreachable: {reason}")

    def _drop_client(self, *, now=False):
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        if now:
            _close_quietly(client)
        else:  # closing can wait on a call still running against a dead server; not in the caller's time
            self._pool.submit(_close_quietly, client)

    def close(self):
        """Release the connections and threads (the index cannot be used afterwards)."""
        self._drop_client(now=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- connecting and the schema -------------------------------------------------------------------------

    def _connected(self):
        """The connected client; connecting checks liveness (REST and gRPC) and creates the collection if missing."""
        with self._lock:
            client = self._client
            if client is None:
                client, created = self._call("connect", self._connect)
                self._client = client
            else:
                created = False
        if created:
            self._reset_cursor()
        return client

    def _connect(self):
        client = weaviate.connect_to_custom(
            http_host=self.host, http_port=self.http_port, http_secure=self.secure,
            grpc_host=self.host, grpc_port=self.grpc_port, grpc_secure=self.secure,
            auth_credentials=Auth.api_key(self.api_key) if self.api_key else None,
            additional_config=AdditionalConfig(
                timeout=Timeout(init=self.timeout, query=self.timeout, insert=self.insert_timeout)
            ),
            # The init checks would also ask pypi.org for the latest client version on every connection; the gRPC
            # health check they include is done below by is_live().
            skip_init_checks=True,
        )
        try:
            if not client.is_live():
                raise _NotLive(f"not live (REST /v1/.well-known/live or the gRPC health check on port "
                               f"{self.grpc_port} failed)")
            created = self._ensure_schema(client)
        except BaseException:
            _close_quietly(client)
            raise
        return client, created

    def _ensure_schema(self, client) -> bool:
        """Create the collection (and tenant) when missing; True when anything was created."""
        created = False
        if not client.collections.exists(self.collection_name):
            try:
                self._create_collection(client)
                created = True
            except WeaviateBaseError as exc:
                if "already exists" not in str(exc):  # another process created it first
                    raise
        else:
            created = self._add_later_properties(client)
        if self.tenant:
            collection = client.collections.use(self.collection_name)
            if not collection.tenants.exists(self.tenant):
                try:
                    collection.tenants.create(self.tenant)
                    created = True
                except WeaviateBaseError as exc:
                    if "already exists" not in str(exc):
                        raise
        return created

    def _add_later_properties(self, client) -> bool:
        """Add the filterable properties a collection made by an older release lacks; True when any was added
        (the cursor is then reset, so every object is written again with them). Plain REST (GET the class, POST
        a property) rather than the client's config parser, which needs every optional section of the schema."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        base = f"{self.url}/v1/schema/{self.collection_name}"
        with httpx.Client(timeout=self.timeout, headers=headers) as http:
            response = http.get(base)
            response.raise_for_status()
            have = {p.get("name") for p in response.json().get("properties") or []}
            missing = [name for name in LATER_PROPERTIES if name not in have]
            for name in missing:
                logger.info("adding property %s to Weaviate collection %s", name, self.collection_name)
                added = http.post(f"{base}/properties", json={"name": name, "dataType": ["text"],
                                                              "tokenization": "field", "indexSearchable": False})
                if added.status_code >= 400 and "already exists" not in added.text:
                    raise IndexUnavailable(f"Weaviate refused to add property {name}: {added.status_code} "
                                           f"{added.text[:200]}")
        return bool(missing)

    def _create_collection(self, client):
        logger.info("creating Weaviate collection %s at %s", self.collection_name, self.url)
        keyword = {"data_type": DataType.TEXT, "tokenization": Tokenization.FIELD, "index_searchable": False}
        client.collections.create(
            self.collection_name,
            description="ragsite chunks: a projection of the database, rebuilt by manage.py rebuild_index",
            properties=[
                Property(name="chunk_id", **keyword),
                Property(name="document_id", **keyword),
                Property(name="source_id", data_type=DataType.INT),
                Property(name="classification", **keyword),
                Property(name="principals", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD,
                         index_searchable=False),
                Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
                Property(name="heading", data_type=DataType.TEXT, index_searchable=False),
                Property(name="modified_at", data_type=DataType.DATE),
                Property(name="content_type", **keyword),
            ],
            vector_config=Configure.Vectors.self_provided(
                name=VECTOR_NAME,
                vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE),
            ),
            multi_tenancy_config=Configure.multi_tenancy(enabled=True) if self.tenant else None,
        )

    def _recreate(self, client):
        """Empty the index: drop the tenant (others share the collection) or the whole collection, then create."""
        if self.tenant:
            collection = client.collections.use(self.collection_name)
            if not client.collections.exists(self.collection_name):
                self._create_collection(client)
            elif collection.tenants.exists(self.tenant):
                collection.tenants.remove([self.tenant])
            collection.tenants.create(self.tenant)
        else:
            client.collections.delete(self.collection_name)
            self._create_collection(client)

    def _collection(self, client):
        collection = client.collections.use(self.collection_name)
        return collection.with_tenant(self.tenant) if self.tenant else collection

    @property
    def model_name(self) -> str:
        return get_embedder().name

    @property
    def cursor_key(self) -> str:
        return f"weaviate:{self.collection_name}:{self.tenant or '-'}:{self.model_name}"

    def _reset_cursor(self):
        self._known_seq = 0
        IndexCursor.objects.filter(key=self.cursor_key).update(seq=None)

    # --- keeping current -----------------------------------------------------------------------------------

    def refresh(self, *, wait: bool = True) -> None:
        """Apply the outbox after the cursor (a full import when never loaded). With ``wait=False`` a refresh
        another process or thread is running is left to finish the job."""

        self._connected()
        IndexCursor.objects.get_or_create(key=self.cursor_key)
        if not self._apply_lock.acquire(blocking=wait):
            return
        try:
            with transaction.atomic():
                rows = IndexCursor.objects.filter(key=self.cursor_key)
                cursor = (rows.select_for_update() if wait else rows.select_for_update(skip_locked=True)).first()
                if cursor is None:
                    return  # locked by another process, which is applying the same changes
                self.last_failures = []
                if cursor.seq is None or cursor.seq < compacted_through():
                    # never loaded, or (a cursor created while compaction ran) behind rows that are gone
                    self._import_all(cursor)
                else:
                    self._apply_outbox(cursor)
                self._known_seq = cursor.seq or 0
        finally:
            self._apply_lock.release()
        self._last_refresh = time.monotonic()
        self._stale = None  # chunks may have been re-embedded: count again
        if self.last_failures:
            self._retry_at = self._last_refresh + FAILED_RETRY_SECONDS

    def refresh_if_due(self) -> None:
        now = time.monotonic()
        if now < self._retry_at:
            return
        if now - self._last_refresh < settings.INDEX_REFRESH_SECONDS:
            if self._behind_a_finished_sync():
                # Read-your-writes: a sync ended whose changes the cursor has not passed (the worker could not
                # reach Weaviate, or another process is applying them now: wait for it rather than skip).
                self.refresh(wait=True)
            return
        row = IndexCursor.objects.filter(key=self.cursor_key).values("seq").first()
        if row is not None and row["seq"] is not None and not IndexChange.objects.filter(id__gt=row["seq"]).exists():
            self._last_refresh = now
            return
        self.refresh(wait=False)

    def _behind_a_finished_sync(self) -> bool:
        """Has a sync ended past the shared cursor? One index probe per search; the cursor row is read only when
        an ended sync is past where this process last saw it (a never-loaded cursor is left to the timed path)."""

        synced = synced_through()
        if synced <= self._known_seq:
            return False
        seq = IndexCursor.objects.filter(key=self.cursor_key).values_list("seq", flat=True).first()
        self._known_seq = max(self._known_seq, seq or 0)
        return seq is not None and synced > seq

    def rebuild(self) -> int:
        self._connected()
        IndexCursor.objects.get_or_create(key=self.cursor_key)
        with self._apply_lock, transaction.atomic():
            cursor = IndexCursor.objects.select_for_update().get(key=self.cursor_key)
            self.last_failures = []
            count = self._import_all(cursor)
            self._known_seq = cursor.seq or 0
        self._last_refresh = time.monotonic()
        return count

    def _import_all(self, cursor) -> int:
        """Empty the index and import every chunk; documents Weaviate rejects go back into the outbox."""

        seq = outbox_head()
        client = self._connected()
        self._call("recreate the collection", lambda: self._recreate(client), deadline=self.insert_timeout)
        document_ids = [str(d) for d in Document.objects.order_by("pk").values_list("pk", flat=True)]
        imported, failed = 0, set()
        for start in range(0, len(document_ids), IMPORT_DOCUMENTS):
            count, rejected = self._apply_documents(client, document_ids[start : start + IMPORT_DOCUMENTS], fresh=True)
            imported += count
            failed |= rejected
        if failed:
            log_index_change(sorted(failed))  # retried by the next refresh like any other change
        cursor.seq = seq
        cursor.save(update_fields=["seq", "updated_at"])
        logger.info("Weaviate %s: imported %d chunks (%d documents rejected)", self.collection_name, imported,
                    len(failed))
        return imported

    def _apply_outbox(self, cursor):
        client = self._connected()
        read_to, stuck_at = cursor.seq, None
        while True:
            changes = list(IndexChange.objects.filter(id__gt=read_to).order_by("id")
                           .values_list("id", "document_id")[:PAGE_CHANGES])
            if not changes:
                break
            first_change: dict[str, int] = {}
            for change_id, document_id in changes:
                first_change.setdefault(str(document_id), change_id)
            _, failed = self._apply_documents(client, list(first_change))
            for document_id in failed:
                stuck_at = min(first_change[document_id], stuck_at or first_change[document_id])
            read_to = changes[-1][0]
            if len(changes) < PAGE_CHANGES:
                break
        # Not past a document that failed: the next refresh starts again at its change (re-applying is harmless).
        cursor.seq = read_to if stuck_at is None else max(cursor.seq, stuck_at - 1)
        cursor.save(update_fields=["seq", "updated_at"])

    def _apply_documents(self, client, document_ids: list[str], fresh=False) -> tuple[int, set[str]]:
        """Make Weaviate hold exactly the database's chunks of these documents. Returns (objects written,
        documents that failed)."""
        collection = self._collection(client)
        objects = self._objects(document_ids)
        existing = {} if fresh else self._existing(collection, document_ids)
        written, failed = 0, set()
        batch_list = [o for d in document_ids for o in objects.get(d, [])]
        for start in range(0, len(batch_list), UPSERT_BATCH):
            batch = batch_list[start : start + UPSERT_BATCH]
            errors = self._call("import", lambda b=batch: _insert(collection, b), deadline=self.insert_timeout)
            written += len(batch) - len(errors)
            for index, message in sorted(errors.items()):
                document_id = batch[index].properties["document_id"]
                failed.add(document_id)
                self.failed_objects += 1
                if len(self.last_failures) < 100:
                    self.last_failures.append({"document_id": document_id, "chunk_id": str(batch[index].uuid),
                                               "error": message})
                logger.error("Weaviate rejected chunk %s of document %s: %s", batch[index].uuid, document_id, message)
        for document_id in document_ids:
            keep = {str(o.uuid) for o in objects.get(document_id, ())}
            stale = existing.get(document_id, set()) - keep
            if document_id in failed or not stale:
                continue
            if keep:
                where = Filter.by_id().contains_any(sorted(stale))
            else:  # the document is gone (or has no chunks): all of its objects go
                where = Filter.by_property("document_id").equal(document_id)
            result = self._call("delete", lambda w=where: collection.data.delete_many(where=w),
                                deadline=self.insert_timeout)
            if result.failed:
                failed.add(document_id)
                self.last_failures.append({"document_id": document_id, "error": f"{result.failed} deletions failed"})
                logger.error("Weaviate failed %d deletions of document %s", result.failed, document_id)
        return written, failed

    def _existing(self, collection, document_ids: list[str]) -> dict[str, set[str]]:
        """The object ids Weaviate holds for these documents."""
        if not document_ids:
            return {}
        response = self._call("list objects", lambda: collection.query.fetch_objects(
            filters=Filter.by_property("document_id").contains_any(document_ids), limit=FETCH_LIMIT,
            return_properties=["document_id"],
        ))
        if len(response.objects) >= FETCH_LIMIT:
            if len(document_ids) == 1:
                raise IndexUnavailable(f"document {document_ids[0]} has {FETCH_LIMIT} or more objects in Weaviate")
            half = len(document_ids) // 2
            return {**self._existing(collection, document_ids[:half]),
                    **self._existing(collection, document_ids[half:])}
        found: dict[str, set[str]] = {}
        for obj in response.objects:
            found.setdefault(obj.properties.get("document_id"), set()).add(str(obj.uuid))
        return found

    def _objects(self, document_ids: list[str]) -> dict[str, list]:
        """The database's chunks of these documents as Weaviate objects (vectors as stored, never re-embedded)."""
        docs = projection.documents(document_ids)
        objects: dict[str, list] = {}
        # Every chunk, also those whose vector is of another embedding model: those go in without a vector (found
        # by BM25 only; search.py refuses dense scoring while any exist) until `manage.py reembed` replaces them.
        for chunk in projection.chunks(docs, model=(self.model_name, _current_dimension()), ordered=True):
            doc = chunk.document
            properties = {
                "chunk_id": chunk.id,
                "document_id": doc.id,
                "source_id": doc.source_id,
                "classification": doc.classification,
                "principals": list(doc.principals),
                "text": chunk.text,
                "heading": chunk.heading,
                "content_type": doc.content_type,
            }
            if doc.modified_at is not None:
                properties["modified_at"] = doc.modified_at
            vector = None if chunk.vector is None else {VECTOR_NAME: chunk.vector.tolist()}
            objects.setdefault(doc.id, []).append(DataObject(uuid=chunk.id, properties=properties, vector=vector))
        return objects

    # --- searching -----------------------------------------------------------------------------------------

    @staticmethod
    def _filters(scope, flt: IndexFilter):
        parts = []
        if not scope.unrestricted:
            parts.append(Filter.by_property("principals").contains_any(sorted(scope.principals)))
        if flt.source_ids is not None:
            parts.append(Filter.by_property("source_id").contains_any(sorted(flt.source_ids) or [-1]))
        if flt.classifications is not None:
            parts.append(Filter.by_property("classification").contains_any(sorted(flt.classifications)))
        if flt.modified_after is not None:
            parts.append(Filter.by_property("modified_at").greater_or_equal(flt.modified_after))
        if flt.modified_before is not None:
            parts.append(Filter.by_property("modified_at").less_than(flt.modified_before))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else Filter.all_of(parts)

    def search(self, vector, scope, top_k: int, source_ids=None, *, query: str = "", mode: str = "dense",
               alpha: float = 0.75, fusion: str = "relative_score", candidates: int = 100,
               filters: IndexFilter | None = None) -> list[SearchHit]:
        """Ties are put in chunk-id order here (Weaviate orders them by its internal ids)."""
        if scope.empty:
            return []
        hits = self._search(vector, scope, top_k, IndexFilter.of(source_ids, filters), query=query, mode=mode,
                            alpha=alpha, fusion=fusion)
        return sorted(hits, key=lambda h: (-h.score, h.chunk_id))

    def _search(self, vector, scope, top_k, flt, *, query, mode, alpha, fusion) -> list[SearchHit]:
        self.refresh_if_due()
        collection = self._collection(self._connected())
        common = {"limit": top_k, "filters": self._filters(scope, flt), "return_properties": ["chunk_id"]}
        if mode == "dense":
            response = self._call("search", lambda: collection.query.near_vector(
                near_vector=np.asarray(vector, dtype=np.float32).tolist(), target_vector=VECTOR_NAME,
                return_metadata=MetadataQuery(distance=True), **common))
            hits = []
            for obj in response.objects:
                cosine = 1.0 - float(obj.metadata.distance)
                hits.append(SearchHit(_chunk_id(obj), cosine, dense=cosine))
            return hits
        if mode == "lexical":
            response = self._call("search", lambda: collection.query.bm25(
                query=query, query_properties=SEARCHABLE, return_metadata=MetadataQuery(score=True), **common))
            return [SearchHit(_chunk_id(o), float(o.metadata.score), lexical=float(o.metadata.score))
                    for o in response.objects]
        fusion_type = HybridFusion.RANKED if fusion == "rrf" else HybridFusion.RELATIVE_SCORE
        response = self._call("search", lambda: collection.query.hybrid(
            query=query, vector=np.asarray(vector, dtype=np.float32).tolist(), alpha=alpha, fusion_type=fusion_type,
            query_properties=SEARCHABLE, target_vector=VECTOR_NAME,
            return_metadata=MetadataQuery(score=True, explain_score=True), **common))
        hits = []
        for obj in response.objects:
            dense, lexical = sides_from_explain(obj.metadata.explain_score or "")
            hits.append(SearchHit(_chunk_id(obj), float(obj.metadata.score), dense=dense, lexical=lexical))
        return hits

    # --- inspection ----------------------------------------------------------------------------------------

    def stale_chunks(self) -> int:
        """Counted in the database (the source of truth), reused for STALE_CHECK_SECONDS."""
        now = time.monotonic()
        cached = getattr(self, "_stale", None)
        if cached is None or now - cached[0] > STALE_CHECK_SECONDS:
            count = projection.stale_chunks().count()
            self._stale = cached = (now, count)
        return cached[1]

    def chunk_ids(self) -> list[str]:
        """Every object's chunk_id (duplicates included: an object under a foreign id shows up twice)."""
        collection = self._collection(self._connected())
        ids, after = [], None
        while True:
            page = self._call("list objects", lambda a=after: collection.query.fetch_objects(
                limit=LIST_PAGE, after=a, return_properties=["chunk_id"]), deadline=self.insert_timeout)
            ids.extend(_chunk_id(o) for o in page.objects)
            if len(page.objects) < LIST_PAGE:
                return ids
            after = page.objects[-1].uuid

    def status(self) -> dict:
        client = self._connected()
        if not self._call("readiness probe", client.is_live, deadline=min(self.timeout, 2.0)):
            raise self._unreachable("REST /v1/.well-known/live or the gRPC health check failed")
        row = IndexCursor.objects.filter(key=self.cursor_key).values("seq").first()
        seq = row["seq"] if row else None
        return {
            "backend": self.name,
            "url": self.url,
            "grpc_port": self.grpc_port,
            "collection": self.collection_name,
            "tenant": self.tenant or None,
            "seq": seq,
            "pending_changes": IndexChange.objects.filter(id__gt=seq or 0).count() if seq is not None else None,
            "embedding_model": self.model_name,
            "stale_vectors": self.stale_chunks(),
            "failed_objects": self.failed_objects,
            "last_failures": self.last_failures[:5],
        }


def _current_dimension() -> int:
    return get_embedder().dimension


def _insert(collection, batch) -> dict[int, str]:
    """One BatchObjects call; {position in batch: error} for the objects Weaviate rejected."""
    try:
        result = collection.data.insert_many(batch)
    except WeaviateInsertManyAllFailedError as exc:
        return dict.fromkeys(range(len(batch)), _first_line(exc))
    return {index: error.message for index, error in result.errors.items()}


def _chunk_id(obj) -> str:
    return str(obj.properties.get("chunk_id") or obj.uuid)


def sides_from_explain(explain: str) -> tuple[float | None, float | None]:
    """(dense, lexical) original scores from a relative-score hybrid result's explain_score; None when absent."""
    dense = lexical = None
    for name, value in _EXPLAIN_SIDE.findall(explain):
        if "vector" in name:
            dense = float(value)
        elif "keyword" in name or "bm25" in name:
            lexical = float(value)
    return dense, lexical


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _close_late_client(future):
    """A connection that succeeded after its caller gave up is nobody's: close it."""
    if not future.cancelled() and future.exception() is None:
        result = future.result()
        if isinstance(result, tuple) and hasattr(result[0], "close"):
            _close_quietly(result[0])


def _close_quietly(client):
    try:
        client.close()
    except Exception:  # closing a client whose server is gone may fail; nothing is left to release then
        logger.debug("closing the Weaviate client failed", exc_info=True)
