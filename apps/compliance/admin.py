from django.contrib import admin

from ragsite.admin_base import ReadOnlyAdmin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("seq", "created_at", "action", "actor_name", "object_type", "object_id", "ip")
    list_filter = ("action", "object_type")
    search_fields = ("actor_name", "object_id", "action")
    readonly_fields = [f.name for f in AuditEvent._meta.fields]
    show_full_result_count = False
    date_hierarchy = "created_at"
