"""Rows written so far were chained with a plain SHA-256: mark them "sha256"; new rows are keyed (HMAC-SHA256).

Adding a column with a default does not UPDATE existing rows row by row (PostgreSQL stores the default in the
catalogue), so the append-only trigger is not involved. The database default for later rows is the keyed scheme,
so a row INSERTed by hand without naming a scheme is held to the key."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("compliance", "0002_append_only_trigger"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="scheme",
            field=models.CharField(default="sha256", editable=False, max_length=16),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="scheme",
            field=models.CharField(db_default="hmac-sha256", default="hmac-sha256", editable=False, max_length=16),
        ),
    ]
