"""Two capabilities (issue 12): administer_sources (admin: sees every source and sync run) and grant_access (admin
and power_user: grants and restrictions on what the granting user may read)."""

from django.db import migrations

ADDED = {"administer_sources": ("admin",), "grant_access": ("admin", "power_user")}


def add_capabilities(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally made after all migrations; the roles need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for codename, roles in ADDED.items():
        permission = Permission.objects.filter(content_type__app_label="accounts", codename=codename).first()
        for group in Group.objects.filter(name__in=roles):
            group.permissions.add(permission)


def remove_capabilities(apps, schema_editor):
    apps.get_model("auth", "Permission").objects.filter(content_type__app_label="accounts",
                                                        codename__in=ADDED).delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0004_object_permissions")]

    operations = [
        migrations.AlterModelOptions(
            name="capability",
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": [
                    ("query", "Can search and ask questions"),
                    ("upload", "Can upload documents"),
                    ("view_sources", "Can view sources and sync runs"),
                    ("manage_sources", "Can create, change and delete sources"),
                    ("run_syncs", "Can start syncs"),
                    ("view_audit", "Can view the audit trail"),
                    ("handle_subject_requests", "Can handle data subject requests"),
                    ("configure_system", "Can configure the system"),
                    ("administer_sources", "Can see every source and sync run, readable or not"),
                    ("grant_access", "Can grant and restrict access to sources and documents the user may read"),
                ],
            },
        ),
        migrations.RunPython(add_capabilities, remove_capabilities),
    ]
