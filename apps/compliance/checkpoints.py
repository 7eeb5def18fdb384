"""Signed checkpoints of the audit chain, kept outside the database.

A checkpoint is an RFC 9162-style signed tree head: the tree size (rows 1..N), the Merkle root (RFC 9162 section
2.1.1) over those rows' hashes, and a timestamp, signed with Ed25519 (AUDIT_SIGNING_KEY). The signed bytes are
RFC 9162's TreeHeadDataV2: uint64 timestamp (ms), uint64 tree_size, the root as an opaque<32..255> (one length
byte), and an empty extension list (two zero bytes). Checkpoints are written as JSON files to AUDIT_CHECKPOINT_DIR
and optionally POSTed to AUDIT_CHECKPOINT_URL. Whoever holds only the database cannot re-sign them, so a rewrite
of rows 1..N (even of the unkeyed legacy prefix, with every hash recomputed) or a truncation below N shows.
"""

import base64
import binascii
import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

from .audit import verify_chain
from .merkle import MerkleTree

__all__ = ["CheckpointError", "MerkleTree", "verify_checkpoints", "write_checkpoint"]

logger = logging.getLogger(__name__)
FORMAT = "ragsite-audit-checkpoint/1"


class CheckpointError(Exception):
    """A checkpoint that cannot be written or does not hold, as one readable line (naming rows when it can)."""


def tree_head_bytes(timestamp_ms: int, tree_size: int, root: bytes) -> bytes:
    return struct.pack(">QQB", timestamp_ms, tree_size, len(root)) + root + b"\x00\x00"


def signing_key() -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(settings.AUDIT_SIGNING_KEY.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError("AUDIT_SIGNING_KEY is not an Ed25519 private key")
    return key


def public_key(pem_path=None) -> Ed25519PublicKey:
    """The verifying key: a PEM public key file when given (a verifier need not hold the signing key), else the
    public half of AUDIT_SIGNING_KEY."""
    if pem_path is None:
        return signing_key().public_key()
    key = serialization.load_pem_public_key(Path(pem_path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{pem_path} is not an Ed25519 public key")
    return key


def _key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class Checkpoint:
    path: Path
    tree_size: int
    root_hash: str
    sent: bool


def write_checkpoint() -> Checkpoint:
    """Verify the chain (a broken chain is never signed), sign its current tree head, write it to
    AUDIT_CHECKPOINT_DIR and offer it to AUDIT_CHECKPOINT_URL (a sink that fails is logged, not fatal)."""
    report = verify_chain()
    if not report.ok:
        raise CheckpointError(f"audit chain broken at seq {report.broken_seq}: {report.reason}; not signed")
    size, root = report.checked, bytes.fromhex(report.root)
    key = signing_key()
    timestamp = int(time.time() * 1000)
    doc = {"format": FORMAT, "tree_size": size, "timestamp": timestamp, "root_hash": root.hex(),
           "key_id": _key_id(key.public_key()),
           "signature": base64.b64encode(key.sign(tree_head_bytes(timestamp, size, root))).decode()}
    directory = Path(settings.AUDIT_CHECKPOINT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{size:012d}-{timestamp}.json"
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(staged, path)  # a reader never sees half a file
    return Checkpoint(path, size, root.hex(), _send(doc))


def _send(doc) -> bool:
    url = settings.AUDIT_CHECKPOINT_URL
    if not url:
        return False
    try:
        response = requests.post(url, json=doc, timeout=settings.AUDIT_CHECKPOINT_TIMEOUT)
        response.raise_for_status()
    except requests.RequestException as exc:
        logger.warning("audit checkpoint sink %s refused tree size %s: %s (the file was written)", url,
                       doc["tree_size"], exc)
        return False
    return True


def _load(path: Path, key: Ed25519PublicKey) -> dict:
    try:
        doc = json.loads(path.read_text())
        size, timestamp, root = int(doc["tree_size"]), int(doc["timestamp"]), bytes.fromhex(doc["root_hash"])
        signature = base64.b64decode(doc["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise CheckpointError(f"checkpoint {path.name} is unreadable ({type(exc).__name__}: {exc})") from exc
    try:
        key.verify(signature, tree_head_bytes(timestamp, size, root))
    except (InvalidSignature, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path.name}: signature does not verify (the file was altered or "
                              "signed by another key)") from exc
    return {"name": path.name, "tree_size": size, "root_hash": root.hex()}


@dataclass
class CheckpointReport:
    chain: object  # audit.ChainReport
    checked: int
    largest: int


def verify_checkpoints(directory, key: Ed25519PublicKey) -> CheckpointReport:
    """Every checkpoint in ``directory`` must carry a good signature, and the chain's first tree_size rows must
    still produce its root: a rewrite (even with every hash recomputed) or a truncation fails, naming the rows."""
    directory = Path(directory)
    paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not paths:
        raise CheckpointError(f"no checkpoints in {directory}")
    heads = sorted((_load(p, key) for p in paths), key=lambda h: h["tree_size"])
    chain = verify_chain(roots_at=[h["tree_size"] for h in heads])
    if not chain.ok:
        raise CheckpointError(f"audit chain broken at seq {chain.broken_seq}: {chain.reason}")
    good = 0  # the largest checkpointed size the chain still matches: rows up to it are proven
    for head in heads:
        if head["tree_size"] > chain.checked:
            raise CheckpointError(f"audit chain broken at seq {chain.checked + 1}: checkpoint {head['name']} covers "
                                  f"{head['tree_size']} rows but the chain has {chain.checked} (truncated)")
        if chain.roots[head["tree_size"]] != head["root_hash"]:
            raise CheckpointError(f"audit chain broken at seq {good + 1}..{head['tree_size']}: those rows no longer "
                                  f"produce the root signed in checkpoint {head['name']} (rewritten)")
        good = head["tree_size"]
    return CheckpointReport(chain, len(heads), good)
