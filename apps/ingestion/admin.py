from django import forms
from django.contrib import admin, messages

from ragsite.admin_base import ReadOnlyAdmin

from . import sources as source_service
from .grants_admin import (
    GRANT_INLINES_FOR_DOCUMENT,
    GRANT_INLINES_FOR_SOURCE,
    DocumentGrantAdminMixin,
    GrantAdminMixin,
)
from .models import Chunk, Document, DocumentAccess, Source, SyncRun
from .secrets import mask_config
from .sync import CancelError, cancel_sync, request_sync


class SourceForm(forms.ModelForm):
    request_user = None  # set per request by SourceAdmin.get_form: the reach checks depend on who saves

    class Meta:
        model = Source
        fields = ["name", "kind", "config", "schedule", "reader_groups", "enabled"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:  # secrets shown as "********"; sent back unchanged, they keep the stored value
            self.initial["config"] = mask_config(self.instance.config)

    def clean(self):
        """The services' own checks, so their errors show on the form; SourceAdmin.save_model then writes through
        the same services as the API (which check again: a second connection test on an admin save)."""
        data = super().clean()
        try:
            source_service.check_source(kind=data.get("kind"), config=data.get("config") or {},
                                  schedule=data.get("schedule", ""), user=self.request_user,
                                  source=self.instance if self.instance.pk else None, name=data.get("name"))
        except source_service.SourceError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return data


@admin.register(Source)
class SourceAdmin(GrantAdminMixin, admin.ModelAdmin):
    list_display = ("name", "kind", "enabled", "schedule", "created_at")
    list_filter = ("kind", "enabled")
    search_fields = ("name",)
    filter_horizontal = ("reader_groups",)
    actions = ["sync_now"]
    inlines = GRANT_INLINES_FOR_SOURCE  # saved through apps.ingestion.grants

    form = SourceForm

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.request_user = request.user
        return form

    def save_model(self, request, obj, form, change):
        """Through source_service.create_source / update_source, the API's path: validation, reach checks, encrypted
        secrets, schedule, readers, audit."""
        data = form.cleaned_data
        groups = [group.name for group in data.get("reader_groups", [])]
        if change:
            changes = {f: data[f] for f in ("name", "kind", "config", "schedule", "enabled") if f in form.changed_data}
            if "reader_groups" in form.changed_data:
                changes["groups"] = groups
            source = source_service.update_source(Source.objects.get(pk=obj.pk), user=request.user, **changes)
        else:
            source = source_service.create_source(name=data["name"], kind=data["kind"], config=data.get("config") or {},
                                            schedule=data.get("schedule", ""), groups=groups,
                                            enabled=data.get("enabled", True), user=request.user)
        for field in Source._meta.concrete_fields:  # the admin goes on with obj (inlines, messages, redirect)
            setattr(obj, field.attname, getattr(source, field.attname))
        obj._state.adding, obj._state.db = False, source._state.db

    def save_related(self, request, form, formsets, change):
        # The reader groups were written by the service (form.save_m2m would write them a second time).
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_model(self, request, obj):
        source_service.delete_source(obj, user=request.user)

    def delete_queryset(self, request, queryset):
        for source in queryset:
            source_service.delete_source(source, user=request.user)

    @admin.action(description="Sync the selected sources now")
    def sync_now(self, request, queryset):
        for source in queryset:
            run, created = request_sync(source, trigger="admin", user=request.user)
            verb = "queued" if created else "already running as"
            self.message_user(request, f"{source.name}: sync {verb} #{run.pk}", messages.SUCCESS)


class FailedFilter(admin.SimpleListFilter):
    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request, model_admin):
        return [("problems", "failed or partial"), ("active", "pending or running")]

    def queryset(self, request, queryset):
        if self.value() == "problems":
            return queryset.filter(status__in=[SyncRun.FAILED, SyncRun.PARTIAL])
        if self.value() == "active":
            return queryset.filter(status__in=SyncRun.ACTIVE)
        return queryset


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "source", "status", "trigger", "created_at", "finished_at", "items_seen", "items_new",
                    "items_updated", "items_unchanged", "items_deleted", "items_failed", "chunks_embedded")
    list_filter = (FailedFilter, "status", "source")
    list_select_related = ("source",)
    readonly_fields = [f.name for f in SyncRun._meta.fields]
    actions = ["cancel"]

    def get_actions(self, request):
        # The read-only base hides actions from users without change permission; cancelling needs run_syncs.
        actions = super().get_actions(request)
        if not request.user.has_perm("accounts.run_syncs"):
            actions.pop("cancel", None)
        return actions

    @admin.action(description="Cancel the selected runs")
    def cancel(self, request, queryset):
        for run in queryset:
            try:
                cancel_sync(run, user=request.user)
                self.message_user(request, f"sync #{run.pk}: {run.status} (a running sync stops within seconds)")
            except CancelError as exc:
                self.message_user(request, str(exc), messages.WARNING)


class DocumentAccessInline(admin.TabularInline):
    model = DocumentAccess
    extra = 0
    can_delete = False
    readonly_fields = ("principal",)

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Document)
class DocumentAdmin(DocumentGrantAdminMixin, ReadOnlyAdmin):
    list_display = ("title", "source", "external_id", "content_type", "size", "modified_at", "updated_at")
    list_filter = ("source", "content_type")
    search_fields = ("title", "external_id")
    list_select_related = ("source",)
    readonly_fields = [f.name for f in Document._meta.fields] + ["who_can_read"]
    inlines = [DocumentAccessInline, *GRANT_INLINES_FOR_DOCUMENT]  # grants saved through apps.ingestion.grants
    show_full_result_count = False


@admin.register(Chunk)
class ChunkAdmin(ReadOnlyAdmin):
    list_display = ("id", "document", "ordinal", "heading", "embedding_model")
    list_select_related = ("document",)
    search_fields = ("text",)
    exclude = ("embedding",)
    readonly_fields = ("id", "document", "ordinal", "heading", "text", "text_hash", "embedding_model",
                       "embedding_dim", "created_at")
    show_full_result_count = False
