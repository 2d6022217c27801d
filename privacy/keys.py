"""The Ed25519 key pair that signs an audit log, kept in the node's state directory.

A clinic (or the coordinator) signs every audit entry with its own private key, so that an
auditor holding the public key can tell the log was written by that node and not edited
since. The private key never leaves the state directory and is readable by its owner only
(mode 0600); the public key is what gets handed to auditors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import write_bytes_atomically

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "AuditKeyError",
    "key_fingerprint",
    "load_or_create_signing_key",
    "load_public_key",
    "public_key_from_pem",
    "public_key_pem",
]

PRIVATE_KEY_FILE = "audit_signing_key.pem"
PUBLIC_KEY_FILE = "audit_signing_key.pub.pem"


class AuditKeyError(OralFedError):
    """A key file that is missing, unreadable or not an Ed25519 key; the message names it."""

    exit_code: ClassVar[ExitCode] = ExitCode.AUDIT


def load_or_create_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The node's signing key, created on first use.

    Creation is race-free: the key is written to a private temporary file and hard-linked
    into place, so two processes starting at once end up sharing whichever key landed
    first instead of signing with two different keys.
    """
    path = state_dir / PRIVATE_KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        _create_key_pair(state_dir)
    key = _load_private_key(path)
    public_path = state_dir / PUBLIC_KEY_FILE
    if not public_path.exists():  # restored from a backup holding only the private key
        _write_public_key(state_dir, key.public_key())
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (as written next to the private key)."""
    return public_key_from_pem(_read(path), source=str(path))


def public_key_from_pem(pem: bytes, *, source: str) -> Ed25519PublicKey:
    """Parse ``pem``; :class:`AuditKeyError` naming ``source`` if it is not an Ed25519 key."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise AuditKeyError(f"{source}: not a PEM public key ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{source}: an audit key must be Ed25519, not {type(key).__name__}")
    return key


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: short enough to read aloud, unique per node."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _create_key_pair(state_dir: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        write_bytes_atomically(state_dir / PRIVATE_KEY_FILE, pem, mode=0o600, exclusive=True)
    except FileExistsError:
        return  # another process created the key first; use that one
    _write_public_key(state_dir, key.public_key())


def _write_public_key(state_dir: Path, key: Ed25519PublicKey) -> None:
    """The public half beside the private key, readable by all: it is what auditors get."""
    write_bytes_atomically(
        state_dir / PUBLIC_KEY_FILE, public_key_pem(key), mode=0o644, exclusive=True
    )


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise AuditKeyError(f"{path}: not a readable PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{path}: an audit key must be Ed25519, not {type(key).__name__}")
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise AuditKeyError(f"{path}: cannot read the key file ({error.strerror})") from None
