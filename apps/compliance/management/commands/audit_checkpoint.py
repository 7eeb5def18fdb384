from django.core.management.base import BaseCommand, CommandError

from apps.compliance.checkpoints import CheckpointError, write_checkpoint


class Command(BaseCommand):
    help = ("Verify the audit chain and write a signed checkpoint (tree size, Merkle root, timestamp) to "
            "AUDIT_CHECKPOINT_DIR, and to AUDIT_CHECKPOINT_URL when set.")

    def handle(self, *args, **options):
        try:
            checkpoint = write_checkpoint()
        except (CheckpointError, OSError, ValueError) as exc:
            raise CommandError(str(exc).replace("\n", " ")) from exc
        sent = "; sent to AUDIT_CHECKPOINT_URL" if checkpoint.sent else ""
        self.stdout.write(f"checkpoint written: {checkpoint.path} (tree size {checkpoint.tree_size}, root "
                          f"{checkpoint.root_hash}){sent}")
