# The embedding cache moved from the retrieval app to ingestion (which embeds chunks as it writes them). The table
# stays where the retrieval app created it: only Django's model state changes hands.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("ingestion", "0007_embedding_batches"),
        ("retrieval", "0003_outbox_compaction"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="EmbeddingCacheEntry",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                                   verbose_name="ID")),
                        ("model", models.CharField(max_length=200)),
                        ("text_hash", models.CharField(max_length=64)),
                        ("vector", models.BinaryField()),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        "db_table": "retrieval_embeddingcacheentry",
                        "constraints": [models.UniqueConstraint(fields=("model", "text_hash"),
                                                                name="embedding_cache_unique")],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
