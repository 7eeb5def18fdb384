"""Admin building blocks every app's admin uses (kept below the apps, so no app's admin imports another's)."""

from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows an operator may look at but never add, change or delete from the admin."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
