"""The Ed25519 key pair that signs an audit log, kept in the node's state directory.

A clinic (or the coordinator) signs every audit entry with its own private key, so that an
auditor holding the public key can tell the log was written by that node and not edited
since. The private key never leaves the state directory and is readable by its owner only
(mode 0600); the public key is what gets handed to auditors.

A key pair is made in two situations only: on a state directory's first use (no key file
at all), and by an explicit rotation (:mod:`privacy.key_rotation`, ``oralfed clinic
rotate-key``). Anything else a state directory holds is a refusal naming what to do: a
public key without its private key is a lost key (a new one would sign entries the
auditor's key calls foreign), a private key whose public file shows another key is a mixed
pair, and a staged next key is a rotation that was interrupted. Public keys of rotated-out
keys stay beside the current one (``audit_signing_key.pub.<fingerprint>.pem``), so an
auditor can verify the entries they signed.
"""

from __future__ import annotations

import hashlib
from contextlib import suppress
from pathlib import Path
from typing import ClassVar, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import write_bytes_atomically

__all__ = [
    "NEXT_KEY_FILE",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "AuditKeyError",
    "key_fingerprint",
    "load_or_create_signing_key",
    "load_private_key",
    "load_public_key",
    "load_signing_key",
    "private_key_from_pem",
    "private_key_pem",
    "public_key_from_pem",
    "public_key_pem",
    "retired_key_path",
    "write_public_key",
]

PRIVATE_KEY_FILE: Final = "audit_signing_key.pem"
PUBLIC_KEY_FILE: Final = "audit_signing_key.pub.pem"
# The next private key while a rotation is under way (see privacy.key_rotation).
NEXT_KEY_FILE: Final = "audit_signing_key.next.pem"
_RETIRED_PREFIX: Final = "audit_signing_key.pub."
_RESTORE_HINT: Final = (
    "restore the state dir from its backup (`oralfed clinic restore --from FILE --state-dir "
    "{dir}`), or make a new key explicitly (`oralfed clinic rotate-key --state-dir {dir}`, "
    "recorded in the audit log)"
)


class AuditKeyError(OralFedError):
    """A key file that is missing, unreadable or not an Ed25519 key; the message names it."""

    exit_code: ClassVar[ExitCode] = ExitCode.AUDIT


def load_or_create_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The node's signing key, created on the state directory's first use.

    Creation is safe when many processes first use the directory at once: each writes its
    candidate private key to a temporary file and hard-links it into place, which succeeds
    for exactly one of them; every process then loads the key that won and writes its public
    half, accepting an identical file another process wrote first. The public file is only
    ever written after the private key exists, so no process can see a public key without
    its private key during creation: that state always means a lost key, and is refused.
    """
    private_path = state_dir / PRIVATE_KEY_FILE
    _refuse_interrupted_rotation(state_dir)
    if not private_path.exists():
        if (state_dir / PUBLIC_KEY_FILE).exists() or any(_retired_keys(state_dir)):
            raise AuditKeyError(
                f"{private_path}: the audit signing key is missing, but the state dir holds "
                f"its public key: the key was lost, and a new one would sign entries that the "
                f"public key calls foreign. {_RESTORE_HINT.format(dir=state_dir)}"
            )
        state_dir.mkdir(parents=True, exist_ok=True)
        candidate = Ed25519PrivateKey.generate()
        with suppress(FileExistsError):  # another process created the key first: use it
            write_bytes_atomically(
                private_path, private_key_pem(candidate), mode=0o600, exclusive=True
            )
    return load_signing_key(state_dir)


def load_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The node's existing signing key, its public file checked (and written if missing).

    Never creates a key: a missing private key is :class:`AuditKeyError`, and so is a
    public file that holds another key than the private key's half (a mixed pair would sign
    entries that the auditor's copy of the public key calls foreign).
    """
    private_path = state_dir / PRIVATE_KEY_FILE
    if not private_path.exists():
        raise AuditKeyError(
            f"{private_path}: no audit signing key. {_RESTORE_HINT.format(dir=state_dir)}"
        )
    key = load_private_key(private_path)
    write_public_key(state_dir / PUBLIC_KEY_FILE, key.public_key())
    return key


def write_public_key(path: Path, key: Ed25519PublicKey) -> None:
    """Write the public key ``path`` should hold, readable by all (it is what auditors get).

    An existing file with this very key is kept (another process wrote it first); one with
    any other content is :class:`AuditKeyError`: a key pair is never silently mixed.
    """
    if not path.exists():
        with suppress(FileExistsError):  # written by another process meanwhile: compare it
            write_bytes_atomically(path, public_key_pem(key), mode=0o644, exclusive=True)
    existing = load_public_key(path)
    if key_fingerprint(existing) != key_fingerprint(key):
        raise AuditKeyError(
            f"{path}: holds key {key_fingerprint(existing)[:16]}…, but the private key "
            f"beside it is {key_fingerprint(key)[:16]}…: the pair was mixed up; restore "
            f"the state dir from its backup (`oralfed clinic restore --from FILE "
            f"--state-dir {path.parent}`)"
        )


def retired_key_path(state_dir: Path, key: Ed25519PublicKey) -> Path:
    """Where the public half of a rotated-out key is kept, named by its fingerprint."""
    return state_dir / f"{_RETIRED_PREFIX}{key_fingerprint(key)[:16]}.pem"


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (as written next to the private key)."""
    return public_key_from_pem(_read(path), source=str(path))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from an unencrypted PEM file."""
    return private_key_from_pem(_read(path), source=str(path))


def public_key_from_pem(pem: bytes, *, source: str) -> Ed25519PublicKey:
    """Parse ``pem``; :class:`AuditKeyError` naming ``source`` if it is not an Ed25519 key."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise AuditKeyError(f"{source}: not a PEM public key ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{source}: an audit key must be Ed25519, not {type(key).__name__}")
    return key


def private_key_from_pem(pem: bytes, *, source: str) -> Ed25519PrivateKey:
    """Parse ``pem``; :class:`AuditKeyError` naming ``source`` if it is not an Ed25519 key."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise AuditKeyError(f"{source}: not a readable PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{source}: an audit key must be Ed25519, not {type(key).__name__}")
    return key


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: short enough to read aloud, unique per node."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _refuse_interrupted_rotation(state_dir: Path) -> None:
    """A staged next key means a rotation stopped half-way: neither key may sign until it
    is finished, or entries would be signed by a key the log does not name."""
    if (state_dir / NEXT_KEY_FILE).exists():
        raise AuditKeyError(
            f"{state_dir / NEXT_KEY_FILE}: a key rotation was interrupted; run `oralfed "
            f"clinic rotate-key --state-dir {state_dir}` to finish it"
        )


def _retired_keys(state_dir: Path) -> list[Path]:
    if not state_dir.is_dir():
        return []
    return list(state_dir.glob(f"{_RETIRED_PREFIX}*.pem"))  # not PUBLIC_KEY_FILE itself


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise AuditKeyError(f"{path}: cannot read the key file ({error.strerror})") from None
