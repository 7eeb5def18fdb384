from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ragsite.serializers import RejectUnknownFields, StrictBooleanField

from ..changes import EVENT_TYPES, PUSH_CONTENT_TYPES
from ..models import Chunk, Document, Source, SyncRun
from ..secrets import mask_config


class SyncErrorSerializer(serializers.Serializer):
    item = serializers.CharField(help_text="the failed item's id at its source (a file's path, a row's id)")
    reason = serializers.CharField()


class SyncRunSerializer(serializers.ModelSerializer):
    """A run. Its failed items are listed only to callers who could read them had they been indexed (the context's
    ``scope``; none: every entry): a source readable by all may hold narrower sub-folders."""

    source = serializers.SlugRelatedField(slug_field="name", read_only=True)
    counts = serializers.DictField(read_only=True)
    errors = serializers.SerializerMethodField()

    @extend_schema_field(SyncErrorSerializer(many=True))
    def get_errors(self, run) -> list:
        scope = self.context.get("scope")
        readers = list(run.error_readers) + [None] * (len(run.errors) - len(run.error_readers))
        return [{"item": e.get("item"), "reason": e.get("reason")} for e, who in zip(run.errors, readers, strict=False)
                if scope is None or who is None or scope.allows(who)]

    class Meta:
        model = SyncRun
        fields = ["id", "source", "status", "trigger", "full", "created_at", "started_at", "finished_at",
                  "heartbeat_at", "counts", "embedding_batches", "embedding_batches_queued",
                  "embedding_max_in_flight", "errors", "message", "cancel_requested"]
        read_only_fields = fields


class SourceSerializer(RejectUnknownFields, serializers.ModelSerializer):
    name = serializers.CharField(max_length=100, help_text="Made into a slug: 'Team Docs' becomes 'team-docs'")
    groups = serializers.ListField(child=serializers.CharField(), required=False, source="group_names")
    latest_sync = serializers.SerializerMethodField()

    class Meta:
        model = Source
        fields = ["id", "name", "kind", "config", "schedule", "groups", "classification", "enabled", "created_at",
                  "updated_at", "latest_sync"]
        read_only_fields = ["id", "created_at", "updated_at", "latest_sync"]
        # Uniqueness and config are checked by the service, which names the field.
        extra_kwargs = {"name": {"validators": []}}

    def get_latest_sync(self, source) -> dict | None:
        runs = getattr(source, "recent_runs", None)
        run = runs[0] if runs else None
        return {"id": run.pk, "status": run.status, "finished_at": run.finished_at} if run else None

    def to_representation(self, source):
        source.group_names = [g.name for g in source.reader_groups.all()]
        data = super().to_representation(source)
        data["config"] = mask_config(source.config)  # secrets go out neither in clear nor encrypted
        return data


class SyncRequestSerializer(RejectUnknownFields, serializers.Serializer):
    full = StrictBooleanField(default=False, help_text="re-read every document, not only what changed")
    allow_mass_delete = StrictBooleanField(default=False, help_text="confirm a run that would delete more than "
                                           "SYNC_PRUNE_MAX_FRACTION of the source's documents (the prune guard)")


class DocumentSerializer(serializers.ModelSerializer):
    source = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Document
        fields = ["id", "source", "external_id", "uri", "title", "content_type", "size", "modified_at",
                  "classification", "content_hash", "created_at", "updated_at"]
        read_only_fields = fields


class ChunkSerializer(serializers.ModelSerializer):
    class Meta:
        model = Chunk
        fields = ["id", "ordinal", "heading", "text"]
        read_only_fields = fields


class DocumentDetailSerializer(DocumentSerializer):
    chunks = ChunkSerializer(many=True, read_only=True)

    class Meta(DocumentSerializer.Meta):
        fields = [*DocumentSerializer.Meta.fields, "chunks"]
        read_only_fields = fields


# The webhook's body, for the schema only: the view checks the raw signed bytes itself (apps/ingestion/changes.py).
class WebhookEventSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=EVENT_TYPES)
    id = serializers.CharField(max_length=1024, help_text="The document's id at the source")
    title = serializers.CharField(required=False, max_length=500)
    content = serializers.CharField(required=False, help_text="The text; required to upsert into a push source")
    content_type = serializers.ChoiceField(choices=PUSH_CONTENT_TYPES, required=False, help_text="Default text/plain")
    groups = serializers.ListField(child=serializers.CharField(), required=False,
                                   help_text="Reader groups; left out: the source's own readers")
    uri = serializers.URLField(required=False, max_length=2048)


class WebhookDeliverySerializer(serializers.Serializer):
    events = WebhookEventSerializer(many=True)
    delivery_id = serializers.CharField(required=False, max_length=200,
                                        help_text="The sender's id for the delivery (tells identical bodies apart)")


class WebhookAcceptedSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    sync_run_id = serializers.IntegerField(required=False, help_text="The run that will index the events")
