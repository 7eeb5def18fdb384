from collections import Counter
from dataclasses import dataclass

from apps.ingestion.models import Chunk

from .index import get_index, projection


@dataclass
class ReconcileReport:
    database: int
    index: int
    missing: int
    orphaned: int
    duplicates: int
    stale: int = 0  # chunks whose vector is of another embedding model (indexed lexically; `manage.py reembed`)
    repaired: bool = False

    @property
    def drift(self) -> bool:
        return bool(self.missing or self.orphaned or self.duplicates)


def reconcile(repair=False) -> ReconcileReport:
    index = get_index()
    index.refresh()
    in_index = Counter(index.chunk_ids())
    # Every chunk is indexed, those of another embedding model lexically only (see reembed.py).
    in_db = {str(i) for i in Chunk.objects.values_list("id", flat=True)}
    report = ReconcileReport(
        database=len(in_db),
        index=sum(in_index.values()),
        missing=len(in_db - set(in_index)),
        orphaned=len(set(in_index) - in_db),
        duplicates=sum(n - 1 for n in in_index.values() if n > 1),
        stale=projection.stale_chunks().count(),
    )
    if repair and report.drift:
        index.rebuild()
        report.repaired = True
    return report
