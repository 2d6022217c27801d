"""Rotating a node's audit signing key: only on an explicit command, always in its log.

A new key is never made behind the operator's back (see :mod:`privacy.keys`): ``oralfed
clinic rotate-key`` calls :func:`rotate_signing_key`, which records the change as a
:data:`~privacy.audit_log.KEY_ROTATED` entry (:mod:`privacy.key_chain`) signed by the old
key, or by the new key when the old private key was lost, and keeps the old public key
beside the new one for auditors.

The rotation survives a crash at any point. The new key is first staged in
:data:`~privacy.keys.NEXT_KEY_FILE`; while it exists no process signs with either key
(:func:`~privacy.keys.load_or_create_signing_key` refuses). Then the entry commits, and only
then are the key files replaced and the staged key removed. A rotation found half-done is
finished if its entry committed, and otherwise started afresh. Stop the node before
rotating: a process that loaded the old key earlier would still sign with it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import URL, create_engine
from sqlalchemy.exc import SQLAlchemyError

from oralfed.privacy.audit_log import KEY_ROTATED, AuditError, AuditLog, read_database_log
from oralfed.privacy.audit_targets import log_database
from oralfed.privacy.key_chain import KeyRotation, parse_rotation, rotation_payload
from oralfed.privacy.keys import (
    NEXT_KEY_FILE,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    AuditKeyError,
    key_fingerprint,
    load_private_key,
    load_public_key,
    load_signing_key,
    private_key_pem,
    public_key_pem,
    retired_key_path,
    write_public_key,
)
from oralfed.privacy.ledger import LEDGER_FILE, migrate_ledger_file
from oralfed.schemas.files import write_bytes_atomically

__all__ = ["ROTATION_LOCK_FILE", "KeyRotationOutcome", "rotate_signing_key"]

# Serialises rotations of one state dir (a lock file: never backed up or restored).
ROTATION_LOCK_FILE: Final = "audit_signing_key.lock"


@dataclass(frozen=True)
class KeyRotationOutcome:
    """What a rotation did: the keys, its log entry, and where the old public key is kept."""

    previous_signer: str
    new_signer: str
    seq: int
    signed_by_previous: bool  # False: the old private key was lost
    retired_public_key: Path
    public_key: Path
    resumed: bool  # it finished a rotation that had been interrupted


def rotate_signing_key(state_dir: Path, *, reason: str) -> KeyRotationOutcome:
    """Replace ``state_dir``'s signing key by a new one, recorded in its audit log.

    The state dir must hold a log (``ledger.db``, migrated first, or ``coordinator.db``,
    which the coordinator migrates whenever it opens it) and the current public key; its
    private key may be lost, which is the case this exists for.
    :class:`~privacy.audit_log.AuditError` or :class:`~privacy.keys.AuditKeyError` naming
    the file otherwise, with nothing changed.
    """
    database = log_database(state_dir)
    if database.name == LEDGER_FILE:  # a ledger of an older release gets its audit table
        migrate_ledger_file(database)
    key_files = (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, NEXT_KEY_FILE)
    if not any((state_dir / name).exists() for name in key_files):
        raise AuditKeyError(
            f"{state_dir}: holds no audit key, so there is no key to rotate from and none its "
            "log could be verified with; restore the state dir from its backup"
        )
    with _rotation_lock(state_dir):
        try:
            return _rotate(state_dir, database, reason)
        except OSError as error:
            raise AuditKeyError(
                f"{state_dir}: cannot write its key files ({error.strerror or error}); run "
                "`oralfed clinic rotate-key` again once it can, which finishes the rotation"
            ) from None


def _rotate(state_dir: Path, database: Path, reason: str) -> KeyRotationOutcome:
    """The rotation proper, under the state dir's rotation lock."""
    if (state_dir / NEXT_KEY_FILE).exists():
        resumed = _finish_interrupted(state_dir, database)
        if resumed is not None:
            return resumed
    kept = (state_dir / PRIVATE_KEY_FILE).exists()
    previous_key = load_signing_key(state_dir) if kept else None
    previous = (
        previous_key.public_key()
        if previous_key is not None
        else load_public_key(state_dir / PUBLIC_KEY_FILE)
    )
    new_key = Ed25519PrivateKey.generate()
    write_bytes_atomically(
        state_dir / NEXT_KEY_FILE, private_key_pem(new_key), mode=0o600, exclusive=True
    )
    payload = rotation_payload(
        previous, new_key, signed_by_previous=previous_key is not None, reason=reason
    )
    engine = create_engine(
        URL.create("sqlite", database=str(database)), connect_args={"timeout": 30}
    )
    try:
        entry = AuditLog(engine, previous_key or new_key).append(KEY_ROTATED, payload)
    except SQLAlchemyError as error:
        (state_dir / NEXT_KEY_FILE).unlink()
        reason_text = getattr(error, "orig", None) or error
        raise AuditError(
            f"{database}: cannot record the key rotation ({reason_text}); the key is unchanged"
        ) from None
    finally:
        engine.dispose()
    rotation = KeyRotation(previous, new_key.public_key(), previous_key is not None)
    return _install(state_dir, rotation, new_key, seq=entry.seq, resumed=False)


def _finish_interrupted(state_dir: Path, database: Path) -> KeyRotationOutcome | None:
    """Finish a rotation whose entry committed; discard a staged key whose entry did not."""
    staged_path = state_dir / NEXT_KEY_FILE
    staged = load_private_key(staged_path)
    for entry in reversed(read_database_log(database)):
        if entry.kind != KEY_ROTATED:
            continue
        try:
            rotation = parse_rotation(entry)
        except ValueError:
            continue
        if rotation.new_signer == key_fingerprint(staged.public_key()):
            return _install(state_dir, rotation, staged, seq=entry.seq, resumed=True)
        break  # the last rotation is another one: the staged key was never announced
    staged_path.unlink()
    return None


def _install(
    state_dir: Path,
    rotation: KeyRotation,
    new_key: Ed25519PrivateKey,
    *,
    seq: int,
    resumed: bool,
) -> KeyRotationOutcome:
    """Keep the old public key, put the new pair in place, then drop the staged key (each
    step can be repeated, so a crash in between is finished by the next rotation)."""
    retired = retired_key_path(state_dir, rotation.previous)
    write_public_key(retired, rotation.previous)
    write_bytes_atomically(state_dir / PRIVATE_KEY_FILE, private_key_pem(new_key), mode=0o600)
    write_bytes_atomically(
        state_dir / PUBLIC_KEY_FILE, public_key_pem(new_key.public_key()), mode=0o644
    )
    (state_dir / NEXT_KEY_FILE).unlink()
    return KeyRotationOutcome(
        previous_signer=rotation.previous_signer,
        new_signer=rotation.new_signer,
        seq=seq,
        signed_by_previous=rotation.signed_by_previous,
        retired_public_key=retired,
        public_key=state_dir / PUBLIC_KEY_FILE,
        resumed=resumed,
    )


@contextmanager
def _rotation_lock(state_dir: Path) -> Iterator[None]:
    """One rotation of a state dir at a time (another waits, then finds the new key)."""
    try:
        handle = (state_dir / ROTATION_LOCK_FILE).open("a")
    except OSError as error:
        raise AuditKeyError(
            f"{state_dir / ROTATION_LOCK_FILE}: cannot lock the state dir for a key rotation "
            f"({error.strerror})"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
