import logging

from celery import shared_task

from .checkpoints import CheckpointError, write_checkpoint

logger = logging.getLogger(__name__)


@shared_task(name="maintenance.audit_checkpoint")
def audit_checkpoint():
    """Beat (AUDIT_CHECKPOINT_SECONDS): sign the chain's tree head outside the database. A broken chain is not
    signed; that is logged as an error for the operator (verify_audit names the row), not retried."""
    try:
        return str(write_checkpoint().path)
    except CheckpointError as exc:
        logger.error("audit checkpoint not written: %s", exc)
        return None
