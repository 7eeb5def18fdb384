"""The five roles as Django groups, each with its capabilities (apps/accounts/roles.py, frozen here)."""

from django.db import migrations

ROLE_CAPABILITIES = {
    "admin": ("query", "upload", "view_sources", "manage_sources", "run_syncs", "view_audit",
              "handle_subject_requests", "configure_system"),
    "power_user": ("query", "upload", "view_sources", "manage_sources", "run_syncs"),
    "user": ("query", "upload", "view_sources"),
    "readonly": ("query", "view_sources"),
    "compliance_officer": ("query", "view_sources", "view_audit", "handle_subject_requests"),
}


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally made after all migrations; the roles need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, capabilities in ROLE_CAPABILITIES.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.add(
            *Permission.objects.filter(content_type__app_label="accounts", codename__in=capabilities)
        )


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLE_CAPABILITIES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
