from collections import Counter
from dataclasses import dataclass

from apps.ingestion.models import Chunk

from .embedder import get_embedder
from .index import get_index


@dataclass
class ReconcileReport:
    database: int
    index: int
    missing: int
    orphaned: int
    duplicates: int
    repaired: bool = False

    @property
    def drift(self) -> bool:
        return bool(self.missing or self.orphaned or self.duplicates)


def reconcile(repair=False) -> ReconcileReport:
    index = get_index()
    index.refresh()
    in_index = Counter(index.chunk_ids())
    in_db = {str(i) for i in Chunk.objects.filter(embedding_model=get_embedder().name).values_list("id", flat=True)}
    report = ReconcileReport(
        database=len(in_db),
        index=sum(in_index.values()),
        missing=len(in_db - set(in_index)),
        orphaned=len(set(in_index) - in_db),
        duplicates=sum(n - 1 for n in in_index.values() if n > 1),
    )
    if repair and report.drift:
        index.rebuild()
        report.repaired = True
    return report
