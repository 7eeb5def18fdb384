# The embedding cache's model now belongs to the ingestion app (ingestion 0008); its table is kept as it is.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("retrieval", "0003_outbox_compaction"),
        ("ingestion", "0008_embeddingcacheentry_moved"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="EmbeddingCacheEntry")],
            database_operations=[],
        ),
    ]
