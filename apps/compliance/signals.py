from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from .audit import client_ip, record


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs):
    backend = getattr(user, "backend", "") or ""
    record("auth.login", actor=user, object_type="user", object_id=user.pk, ip=client_ip(request),
           data={"backend": backend})


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs):
    if user is not None:
        record("auth.logout", actor=user, object_type="user", object_id=user.pk, ip=client_ip(request))


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs):
    # credentials are already scrubbed of the password by Django; keep only the username.
    # The typed username is what the caller claimed, not who acted.
    record("auth.login_failed", claimed_actor=str(credentials.get("username", "")), ip=client_ip(request),
           data={"username": str(credentials.get("username", ""))[:150]})


def _admin_change(sender, instance, created, **kwargs):
    if not created:
        return
    content_type = instance.content_type
    record(
        f"admin.{ {1: 'add', 2: 'change', 3: 'delete'}.get(instance.action_flag, 'other') }",
        actor=instance.user,
        object_type=f"{content_type.app_label}.{content_type.model}" if content_type else "",
        object_id=instance.object_id or "",
        data={"repr": instance.object_repr, "change": instance.get_change_message()},
    )


def connect_admin_log():
    from django.contrib.admin.models import LogEntry
    from django.db.models.signals import post_save

    post_save.connect(_admin_change, sender=LogEntry, dispatch_uid="compliance.admin_change")
