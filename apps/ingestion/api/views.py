from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from apps.accounts.access import access_scope
from apps.accounts.authentication import token_of
from apps.accounts.permissions import HasCapability
from apps.compliance.audit import client_ip, record
from ragsite.api_schema import ErrorSerializer
from ragsite.parsers import BoundedJSONParser

from .. import changes
from .. import sources as source_service
from ..models import Document, Source, SyncRun
from ..sync import CancelError, SyncEnqueueError, cancel_sync, request_sync
from ..visibility import failure_scope, visible_sources, visible_sync_runs
from .serializers import (
    DocumentDetailSerializer,
    DocumentSerializer,
    SourceSerializer,
    SyncRequestSerializer,
    SyncRunSerializer,
    WebhookAcceptedSerializer,
    WebhookDeliverySerializer,
)


class _WebhookThrottle(SimpleRateThrottle):
    """Per client address: webhooks come unauthenticated and each refusal writes an audit event."""

    scope = "webhook"

    def get_rate(self):
        return getattr(settings, "WEBHOOK_THROTTLE_RATE", "600/min")

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class SourceViewSet(viewsets.ModelViewSet):
    serializer_class = SourceSerializer
    # JSON only: `config` is a nested object and `full` a boolean, which a form post cannot carry (a form's
    # "true" was refused as not a boolean, its config as not an object; found by tests/test_api_schema.py).
    parser_classes = [BoundedJSONParser]
    permission_classes = [HasCapability]
    read_capability = "view_sources"
    write_capability = "manage_sources"
    action_capabilities = {"sync": "run_syncs"}

    def get_queryset(self):
        recent = SyncRun.objects.order_by("-created_at")
        sources = Source.objects.prefetch_related(
            "reader_groups", Prefetch("sync_runs", queryset=recent[:1], to_attr="recent_runs")
        )
        # Unreadable sources answer 404 like missing ones (DESIGN invariant 5: their metadata names documents).
        return visible_sources(sources, self.request.user, token_of(self.request))

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = source_service.create_source(
            name=data["name"], kind=data.get("kind", "filesystem"), config=data.get("config", {}),
            schedule=data.get("schedule", ""), groups=data.get("group_names", []),
            enabled=data.get("enabled", True), user=self.request.user,
            classification=data.get("classification", "internal"),
        )

    def perform_update(self, serializer):
        changes = dict(serializer.validated_data)
        if "group_names" in changes:
            changes["groups"] = changes.pop("group_names")
        serializer.instance = source_service.update_source(serializer.instance, user=self.request.user, **changes)

    def perform_destroy(self, instance):
        source_service.delete_source(instance, user=self.request.user)

    @extend_schema(
        request=SyncRequestSerializer,
        responses={202: inline_serializer("SyncAccepted", {"sync_run_id": serializers.IntegerField(),
                                                          "created": serializers.BooleanField()}),
                   503: inline_serializer("SyncNotQueued", {"detail": serializers.CharField()})},
    )
    @action(detail=True, methods=["post"])
    def sync(self, request, pk=None):
        source = self.get_object()
        params = SyncRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            run, created = request_sync(source, full=params.validated_data["full"], trigger="api", user=request.user,
                                        allow_mass_delete=params.validated_data["allow_mass_delete"])
        except SyncEnqueueError as exc:  # the run is marked failed; the caller may retry when the broker is back
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response({"sync_run_id": run.pk, "created": created}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        auth=[],
        request=WebhookDeliverySerializer,
        responses={202: WebhookAcceptedSerializer,
                   **{code: inline_serializer(f"WebhookRefused{code}", {"detail": serializers.CharField()})
                      for code in (400, 401, 403, 404, 409, 413)}},
        parameters=[OpenApiParameter(changes.SIGNATURE_HEADER, location="header", required=True,
                                     description="sha256=<hex HMAC-SHA256 of '{timestamp}.{body}'>"),
                    OpenApiParameter(changes.TIMESTAMP_HEADER, location="header", required=True,
                                     description="Unix seconds; at most 5 minutes from the server's clock")],
    )
    @action(detail=True, methods=["post"], authentication_classes=[], permission_classes=[AllowAny],
            throttle_classes=[_WebhookThrottle])
    def webhook(self, request, pk=None):
        """Change events from the source system, signed with the source's webhook_secret (no user auth).
        A push source stores them; any other kind requests a sync."""
        source = get_object_or_404(Source, pk=pk)
        try:
            body = request.body  # the raw bytes, as signed
        except RequestDataTooBig:
            return Response({"detail": f"body: over the {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,}-byte limit "
                                       "(DATA_UPLOAD_MAX_MEMORY_SIZE); split the events over several deliveries"},
                            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        try:
            result = changes.receive_webhook(source, body, request.headers, ip=client_ip(request))
        except changes.WebhookRefused as exc:
            headers = {"WWW-Authenticate": f'HMAC-SHA256 header="{changes.SIGNATURE_HEADER}"'} \
                if exc.status == 401 else None
            return Response({"detail": exc.message}, status=exc.status, headers=headers)
        return Response(result, status=status.HTTP_202_ACCEPTED)


class SyncRunViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = SyncRunSerializer
    permission_classes = [HasCapability]
    read_capability = "view_sources"
    write_capability = "run_syncs"

    def get_queryset(self):
        runs = SyncRun.objects.select_related("source")
        return visible_sync_runs(runs, self.request.user, token_of(self.request))

    def get_serializer_context(self):
        return {**super().get_serializer_context(),
                "scope": failure_scope(self.request.user, token_of(self.request))}

    @extend_schema(request=None, responses={202: SyncRunSerializer, 409: ErrorSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a pending run at once, or ask a running one to stop at its next heartbeat (seconds)."""
        try:
            run = cancel_sync(self.get_object(), user=request.user)
        except CancelError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(self.get_serializer(run).data, status=status.HTTP_202_ACCEPTED)


class DocumentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    permission_classes = [HasCapability]
    read_capability = "query"
    write_capability = "upload"

    def get_queryset(self):
        # Forbidden and missing documents both end in the same 404.
        documents = Document.objects.readable_by(access_scope(self.request.user)).select_related("source")
        if self.action == "retrieve":
            documents = documents.prefetch_related("chunks")
        return documents

    def get_serializer_class(self):
        return DocumentDetailSerializer if self.action == "retrieve" else DocumentSerializer

    def retrieve(self, request, *args, **kwargs):
        document = self.get_object()
        record("document.read", actor=request.user, object_type="document", object_id=document.pk,
               ip=client_ip(request))
        return Response(self.get_serializer(document).data)
