"""Sync a source: the connector's documents in, changed ones re-indexed, vanished ones pruned.

Per document: content hash and readers unchanged -> skipped; readers changed only -> access rows rewritten;
content changed -> parse, chunk, embed (through the cache), then chunks, access rows and an IndexChange entry
written in one transaction. A failing document is recorded on the run with its reason and keeps whatever was
indexed before. Nothing is pruned unless the source was listed completely.

Embedding: chunk texts are staged in EmbeddingBatch rows of EMBEDDING_BATCH_CHUNKS and queued as
`embedding.embed_batch` on the `embedding` queue; at most EMBEDDING_MAX_IN_FLIGHT batches of a run (so of a
source) are outstanding. Where the sync would wait, it claims its unclaimed batches and embeds them itself (merged
into one model call of up to EMBEDDING_FLUSH_CHUNKS texts), so it only ever waits for batches another live process
is embedding: it cannot deadlock, even with a single worker process. A document is written (chunks, access,
IndexChange, in one transaction) once all its chunks have vectors; the run prunes and moves its checkpoint once all
its batches are in. A killed sync leaves only staging rows, which the next run deletes; what its batches embedded
is in the embedding cache.

Parts: ``runs`` (requesting, cancelling, ending, reaping and recovering runs), ``job`` (the sync job and its heartbeat),
``batches`` (the embedding batches), ``writer`` (the transactions that write documents and prune).
"""

from . import job
from .job import _SyncJob, run_sync
from .runs import (
    CancelError,
    SyncEnqueueError,
    _finish,
    cancel_sync,
    confirm_mass_delete,
    reap_stale_runs,
    recover_worker_runs,
    request_sync,
)

__all__ = ["CancelError", "SyncEnqueueError", "_SyncJob", "_finish", "cancel_sync", "confirm_mass_delete", "job",
           "reap_stale_runs", "recover_worker_runs", "request_sync", "run_sync"]
