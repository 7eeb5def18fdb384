"""Grant inlines for the source and document admin pages; every change goes through apps.ingestion.grants."""

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from apps.accounts.models import (
    DocumentGroupObjectPermission,
    DocumentRestriction,
    DocumentUserObjectPermission,
    SourceGroupObjectPermission,
    SourceUserObjectPermission,
)

from . import grants


class _GrantInline(admin.TabularInline):
    fk_name = "content_object"
    extra = 0
    readonly_fields = ("granted_by", "granted_at")

    def _may_manage(self, request):
        return request.user.has_perm("accounts.manage_sources")

    def has_view_permission(self, request, obj=None):
        return self._may_manage(request) or request.user.has_perm("accounts.view_sources")

    def has_add_permission(self, request, obj=None):
        return self._may_manage(request)

    def has_change_permission(self, request, obj=None):
        return self._may_manage(request)

    def has_delete_permission(self, request, obj=None):
        return self._may_manage(request)


class SourceUserGrantInline(_GrantInline):
    model = SourceUserObjectPermission
    fields = ("user", "granted_by", "granted_at")
    raw_id_fields = ("user",)
    verbose_name_plural = "users granted read access (beside the reader groups)"


class SourceGroupGrantInline(_GrantInline):
    model = SourceGroupObjectPermission
    fields = ("group", "granted_by", "granted_at")
    verbose_name_plural = "groups granted read access (as object permissions)"


class DocumentUserGrantInline(_GrantInline):
    model = DocumentUserObjectPermission
    fields = ("user", "granted_by", "granted_at")
    raw_id_fields = ("user",)
    verbose_name_plural = "users granted read access to this document"


class DocumentGroupGrantInline(_GrantInline):
    model = DocumentGroupObjectPermission
    fields = ("group", "granted_by", "granted_at")
    verbose_name_plural = "groups granted read access to this document"


class DocumentRestrictionInline(_GrantInline):
    model = DocumentRestriction
    fk_name = "document"
    fields = ("reason", "created_by", "created_at")
    readonly_fields = ("created_by", "created_at")
    max_num = 1
    verbose_name_plural = "restriction (only this document's own grants read it)"


GRANT_INLINES_FOR_SOURCE = [SourceUserGrantInline, SourceGroupGrantInline]
GRANT_INLINES_FOR_DOCUMENT = [DocumentRestrictionInline, DocumentUserGrantInline, DocumentGroupGrantInline]
_GRANT_MODELS = (SourceUserObjectPermission, SourceGroupObjectPermission, DocumentUserObjectPermission,
                 DocumentGroupObjectPermission)


def _holder(row):
    return {"user": row.user} if hasattr(row, "user_id") else {"group": row.group}


class GrantAdminMixin:
    """Saves the grant inlines through apps.ingestion.grants (readers rewritten, index told, audited) rather than
    writing the rows directly."""

    def save_formset(self, request, form, formset, change):
        target = form.instance
        if formset.model in _GRANT_MODELS:
            formset.save(commit=False)
            for row in formset.deleted_objects:
                try:
                    grants.revoke(target, actor=request.user, **_holder(row))
                except grants.GrantNotFound:
                    pass  # revoked meanwhile
            for row, _ in formset.changed_objects:
                old = formset.model.objects.get(pk=row.pk)
                grants.revoke(target, actor=request.user, **_holder(old))
                grants.grant(target, actor=request.user, **_holder(row))
            for row in formset.new_objects:
                grants.grant(target, actor=request.user, **_holder(row))
        elif formset.model is DocumentRestriction:
            formset.save(commit=False)
            for _ in formset.deleted_objects:
                try:
                    grants.unrestrict(target, actor=request.user)
                except grants.GrantNotFound:
                    pass
            for row, _ in formset.changed_objects:
                DocumentRestriction.objects.filter(pk=row.pk).update(reason=row.reason)
            for row in formset.new_objects:
                grants.restrict(target, reason=row.reason, actor=request.user)
        else:
            super().save_formset(request, form, formset, change)


class DocumentGrantAdminMixin(GrantAdminMixin):
    """For the read-only document admin: grant inlines editable by managers, the document itself never saved, and
    a "who can read this document, and why" panel."""

    def has_change_permission(self, request, obj=None):
        return obj is not None and request.user.has_perm("accounts.manage_sources")

    def save_model(self, request, obj, form, change):
        pass  # every field is read-only; only the grant inlines change

    @admin.display(description="Who can read this document, and why")
    def who_can_read(self, document):
        if document is None or document.pk is None:
            return "-"
        report = grants.explain_readers(document)
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td></tr>",
            ((user.get_username(), "; ".join(routes)) for user, routes in report["readers"]),
        )
        notes = []
        if report["notes"]:
            notes.append(format_html("<p>{}</p>", "; ".join(report["notes"])))
        if report["pending"]:
            notes.append(format_html("<p>Not yet applied (a sync or rewrite in flight): {}</p>",
                                     ", ".join(report["pending"])))
        if report["truncated"]:
            notes.append(format_html("<p>Only the first {} readers are listed.</p>", grants.MAX_LISTED_READERS))
        if not report["readers"]:
            rows = format_html("<tr><td colspan='2'>{}</td></tr>", "nobody")
        return format_html("<table><tr><th>user</th><th>route</th></tr>{}</table>{}", rows,
                           format_html_join("", "{}", ((n,) for n in notes)))
