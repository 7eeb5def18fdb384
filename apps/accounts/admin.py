from django.contrib import admin, messages
from django.utils import timezone

from .models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("key_prefix", "user", "name", "scope", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("user__username", "name", "key_prefix")
    list_select_related = ("user",)
    readonly_fields = ("key_prefix", "created_at", "last_used_at", "revoked_at")
    fields = ("user", "name", "scope", "expires_at", "key_prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        token, key = ApiToken.issue(obj.user, name=obj.name, expires_at=obj.expires_at, scope=obj.scope)
        obj.pk = token.pk
        self.message_user(request, f"Token for {obj.user}: {key} (shown once; copy it now)", messages.WARNING)

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)
