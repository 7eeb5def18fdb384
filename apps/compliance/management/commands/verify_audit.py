from django.core.management.base import BaseCommand, CommandError

from apps.compliance.audit import verify_chain


class Command(BaseCommand):
    help = ("Prove the audit chain: exit non-zero and name the first broken row if any row was tampered with. "
            "With --checkpoints DIR, also check every signed checkpoint there against the chain.")

    def add_arguments(self, parser):
        parser.add_argument("--checkpoints", metavar="DIR",
                            help="directory of signed checkpoints (AUDIT_CHECKPOINT_DIR) to verify the chain against")
        parser.add_argument("--public-key", metavar="PEM",
                            help="Ed25519 public key (PEM) the checkpoints were signed with; default: the public "
                                 "half of AUDIT_SIGNING_KEY")

    def handle(self, *args, **options):
        if options["checkpoints"] is None:
            report = verify_chain()
            if not report.ok:
                raise CommandError(f"audit chain broken at seq {report.broken_seq}: {report.reason}")
            self.stdout.write(f"audit chain intact: {report.checked} events verified ({report.schemes()})")
            return
        from apps.compliance.checkpoints import CheckpointError, public_key, verify_checkpoints

        try:
            result = verify_checkpoints(options["checkpoints"], public_key(options["public_key"]))
        except (CheckpointError, OSError, ValueError) as exc:
            raise CommandError(str(exc).replace("\n", " ")) from exc
        report = result.chain
        self.stdout.write(f"audit chain intact: {report.checked} events verified ({report.schemes()}); "
                          f"{result.checked} checkpoint(s) verified, seq 1..{result.largest} signed")
