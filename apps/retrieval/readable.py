"""The search's one hand-written read of the chunk tables: which of the chunks an index returned the caller may read
now, with what a citation or the feedback round needs. Owned by retrieval (its only user); the tables are
ingestion's, read through their models' metadata."""

import uuid

from django.db import connection

from apps.ingestion.models import Chunk, Document, DocumentAccess, Source


def readable_chunk_rows(scope, chunk_ids, columns: str, *, flt=None, embedding_model=None) -> list[tuple]:
    """The chunks among ``chunk_ids`` whose document the scope may read now, and that pass ``flt`` (an IndexFilter)
    now, as rows of ``columns``: "citation" (id, document_id, document title, source name, document uri, heading,
    page, text; ids as uuid.UUID) or "embedding" (the stored vector bytes) of chunks embedded with
    ``embedding_model`` = (name, dimension). The search's hot path: its fail-closed re-check and its feedback read.

    The same rule as apps.ingestion.models._readable_by (a per-row EXISTS on the document's access rows), as one
    hand-written, parameterised statement: building and compiling the equivalent ORM query cost ~1 ms of Python per
    call, ten times its execution. tests/retrieval/test_readable_rows.py holds it equal to the ORM form."""
    if not chunk_ids or scope.empty:
        return []
    q = connection.ops.quote_name
    chunk, document, source = Chunk._meta, Document._meta, Source._meta
    access = DocumentAccess._meta
    ids = [chunk.pk.get_db_prep_value(uuid.UUID(str(c)), connection) for c in chunk_ids]
    params = list(ids)
    if columns == "citation":
        select = (f"SELECT c.{q('id')}, c.{q('document_id')}, d.{q('title')}, s.{q('name')}, d.{q('uri')}, "  # noqa: S608
                  f"c.{q('heading')}, c.{q('page')}, c.{q('text')} FROM {q(chunk.db_table)} c "
                  f"JOIN {q(document.db_table)} d ON d.{q('id')} = c.{q('document_id')} "
                  f"JOIN {q(source.db_table)} s ON s.{q('id')} = d.{q('source_id')}")
    elif columns == "embedding":
        select = f"SELECT c.{q('embedding')} FROM {q(chunk.db_table)} c"  # noqa: S608
        if flt is not None and not flt.empty:
            select += f" JOIN {q(document.db_table)} d ON d.{q('id')} = c.{q('document_id')}"
    else:
        raise ValueError(f"unknown column set {columns!r}")
    where = [f"c.{q('id')} IN ({', '.join(['%s'] * len(ids))})"]
    if not scope.unrestricted:
        principals = sorted(scope.principals)
        where.append(f"EXISTS (SELECT 1 FROM {q(access.db_table)} a WHERE a.{q('document_id')} = c.{q('document_id')} "  # noqa: S608
                     f"AND a.{q('principal')} IN ({', '.join(['%s'] * len(principals))}))")
        params += principals
    if embedding_model is not None:
        where.append(f"c.{q('embedding_model')} = %s AND c.{q('embedding_dim')} = %s")
        params += list(embedding_model)
    if flt is not None:
        if flt.source_ids is not None:
            where.append(f"d.{q('source_id')} IN ({', '.join(['%s'] * len(flt.source_ids))})")
            params += sorted(flt.source_ids)
        if flt.classifications is not None:
            where.append(f"d.{q('classification')} IN ({', '.join(['%s'] * len(flt.classifications))})")
            params += sorted(flt.classifications)
        modified_at = document.get_field("modified_at")
        if flt.modified_after is not None:
            where.append(f"d.{q('modified_at')} >= %s")
            params.append(modified_at.get_db_prep_value(flt.modified_after, connection))
        if flt.modified_before is not None:
            where.append(f"d.{q('modified_at')} < %s")
            params.append(modified_at.get_db_prep_value(flt.modified_before, connection))
    with connection.cursor() as cursor:
        cursor.execute(f"{select} WHERE {' AND '.join(where)}", params)
        rows = cursor.fetchall()
    if columns == "embedding":
        return [(bytes(row[0]),) for row in rows]
    return [(_as_uuid(row[0]), _as_uuid(row[1]), *row[2:]) for row in rows]


def _as_uuid(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)
