"""Verification of an audit chain: which entry fails, and the tampering that explains it.

:func:`verify_entries` is a pure function of the stored entries and a public key, so the
same check runs on a live database, a read-only copy or an export, and cannot alter what it
checks. What the chain alone cannot show is a cut-off tail: the last entries can be dropped
and the rest still verifies. The head hash of a verified log is therefore meant to be
written down elsewhere, and a later check with ``expect_head`` confirms the log still
contains it.

A log whose node rotated its key is signed by a chain of keys (:mod:`privacy.key_chain`):
each entry must be signed by the key in force at its place, every key in force must be one
that trust reaches from the key the auditor gave, and each rotation must hand over from the
key in force. An entry signed by any other key is foreign, rotated or not.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from oralfed.privacy.audit_log import (
    GENESIS_HASH,
    KEY_ROTATED,
    AuditEntry,
    canonical_json,
    entry_hash,
)
from oralfed.privacy.key_chain import KeyRotation, parse_rotation, trusted_keys
from oralfed.privacy.keys import key_fingerprint

__all__ = ["AuditFailure", "VerificationResult", "verify_entries"]

# The type of every stored field of an entry, as the log writes it.
_FIELD_TYPES: Final[dict[str, type]] = {
    "seq": int,
    "recorded_at": str,
    "kind": str,
    "payload": str,
    "prev_hash": str,
    "entry_hash": str,
    "signer": str,
    "signature": str,
}


@dataclass(frozen=True)
class AuditFailure:
    """Why one entry fails: ``position`` is its place in storage (1 = first), ``problem``
    one of malformed, changed, forged-signature, foreign-key, key-chain, deleted, reordered,
    truncated, ledger-mismatch; ``ledger_row`` the ledger row a ledger-mismatch is about, if one."""

    position: int  # 0: not tied to one entry (a ledger row, or the log as a whole)
    seq: int | None
    problem: str
    detail: str
    ledger_row: str | None = None

    def __str__(self) -> str:
        if self.seq is None:
            return f"{self.problem}: {self.detail}"
        return f"entry {self.seq} (position {self.position}): {self.problem}: {self.detail}"


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of one check: the head to anchor, and every failure found."""

    entries: int
    head_seq: int | None
    head_hash: str
    signer: str
    failures: tuple[AuditFailure, ...]
    key_chain: tuple[str, ...] = ()  # the keys in force, oldest first (fingerprints)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "verified": self.ok,
            "entries": self.entries,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "signer": self.signer,
            "key_chain": list(self.key_chain),
            "failures": [
                {
                    "position": f.position,
                    "seq": f.seq,
                    "problem": f.problem,
                    "detail": f.detail,
                    "ledger_row": f.ledger_row,
                }
                for f in self.failures
            ],
        }


def verify_entries(
    entries: Sequence[AuditEntry],
    public_key: Ed25519PublicKey,
    *,
    expect_head: str | None = None,
) -> VerificationResult:
    """Check every entry's content hash, signature, signer and chain link, in storage order.

    Each failure names the entry and the kind of tampering that explains it: a malformed
    row (a field NULL or of the wrong type: it was edited outside the log), a changed
    byte (hash does not match content), a forged signature (content and hash agree but
    the key did not sign them), a foreign key (another node's log, or the wrong key), a
    deleted entry (a gap in the chain), reordered entries (an authentic entry out of
    place), a broken key chain (a rotation that does not hold or does not hand over from
    the key in force) and, with ``expect_head``, a truncated tail (the anchored head is
    gone). Whatever a stored row holds, the answer is a failure naming it, never an exception.
    """
    signer = key_fingerprint(public_key)
    rotations, chain_problems = _rotations(entries)
    trusted = trusted_keys(public_key, rotations.values())
    followed = {p: r for p, r in rotations.items() if r.new_signer in trusted}
    in_force = next(iter(followed.values())).previous if followed else public_key
    chain = [key_fingerprint(in_force)]
    failures: list[AuditFailure] = []
    seqs = {entry.seq for entry in entries}
    previous_hash = GENESIS_HASH
    for position, entry in enumerate(entries, start=1):
        malformed = _malformed_fields(entry)
        if malformed:
            # Nothing else about it can be judged; the next entry's link still is.
            failures.append(
                AuditFailure(
                    position,
                    _seq(entry),
                    "malformed",
                    f"the entry stored at position {position} has {', '.join(malformed)}: "
                    "its row was edited outside the log",
                )
            )
        else:
            if position in followed:
                broken = _rotation_failures(position, entry, followed[position], in_force)
                failures += broken
                if not broken:  # a rotation that does not hand over changes no key
                    in_force = followed[position].new
                    chain.append(key_fingerprint(in_force))
            else:
                problems = _entry_failures(position, entry, in_force, chain[-1])
                if not problems and position in chain_problems:
                    # An authentic rotation entry that does not hold: the chain breaks here.
                    problems = [
                        AuditFailure(position, entry.seq, "key-chain", chain_problems[position])
                    ]
                failures += problems
            if entry.prev_hash != previous_hash:
                failures.append(_chain_failure(position, entry, seqs))
        previous_hash = entry.entry_hash
    head = entries[-1] if entries else None
    head_hash = str(head.entry_hash) if head else GENESIS_HASH
    if expect_head is not None and expect_head.lower() not in {e.entry_hash for e in entries}:
        failures.append(
            AuditFailure(
                position=len(entries),
                seq=None,
                problem="truncated",
                detail=(
                    f"the head recorded earlier ({expect_head}) is not in this log, whose last "
                    f"entry is {_seq(head) if head else 'none'} with hash {head_hash}: entries "
                    "were removed from its end, or this is a different log"
                ),
            )
        )
    return VerificationResult(
        entries=len(entries),
        head_seq=_seq(head) if head else None,
        head_hash=head_hash,
        signer=signer,
        failures=tuple(failures),
        key_chain=tuple(chain),
    )


def _rotations(
    entries: Sequence[AuditEntry],
) -> tuple[dict[int, KeyRotation], dict[int, str]]:
    """The authentic key rotations by storage position, and why each other rotation entry
    cannot be one (one signed by a key nobody vouches for is neither: it is foreign)."""
    rotations: dict[int, KeyRotation] = {}
    problems: dict[int, str] = {}
    for position, entry in enumerate(entries, start=1):
        if entry.kind != KEY_ROTATED or _malformed_fields(entry):
            continue
        try:
            rotation = parse_rotation(entry)
        except ValueError as error:
            problems[position] = f"a key rotation that does not hold: {error}"
            continue
        signer = rotation.entry_signer
        if not _entry_failures(position, entry, signer, key_fingerprint(signer)):
            rotations[position] = rotation
    return rotations, problems


def _rotation_failures(
    position: int, entry: AuditEntry, rotation: KeyRotation, in_force: Ed25519PublicKey
) -> list[AuditFailure]:
    """A trusted rotation must hand over from the key in force at its place."""
    if rotation.previous_signer != key_fingerprint(in_force):
        return [
            AuditFailure(
                position,
                entry.seq,
                "key-chain",
                f"it rotates from key {rotation.previous_signer[:16]}…, but the key in force "
                f"at its place is {key_fingerprint(in_force)[:16]}…",
            )
        ]
    return []


def _seq(entry: AuditEntry) -> int | None:
    """The entry's sequence number, None if its row holds something else there."""
    seq: object = entry.seq
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _malformed_fields(entry: AuditEntry) -> list[str]:
    """The fields of a stored entry that hold what no writer stores: NULL, or the wrong
    type (a database column, or an export's field, can be made to hold anything)."""
    problems = []
    for name, expected in _FIELD_TYPES.items():
        value: object = getattr(entry, name)
        if isinstance(value, expected) and not isinstance(value, bool):
            continue
        shown = "NULL" if value is None else f"{type(value).__name__} {_shown(value)}"
        problems.append(f"{name} {shown}, not {expected.__name__}")
    return problems


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _entry_failures(
    position: int, entry: AuditEntry, public_key: Ed25519PublicKey, signer: str
) -> list[AuditFailure]:
    """What is wrong with the entry on its own (its link is checked by the caller)."""

    def failure(problem: str, detail: str) -> list[AuditFailure]:
        return [AuditFailure(position, entry.seq, problem, detail)]

    try:
        payload = entry.payload_data()
    except ValueError as error:
        return failure("changed", f"its payload is not the JSON the node wrote ({error})")
    if canonical_json(payload) != entry.payload:
        return failure("changed", "its payload text differs from what was written")
    if entry.signer != signer:
        return failure(
            "foreign-key",
            f"it was signed by key {entry.signer[:16]}…, not by the expected key "
            f"{signer[:16]}…: a log from another node, or the wrong public key",
        )
    try:
        recomputed = entry_hash(
            seq=entry.seq,
            recorded_at=entry.recorded_at,
            kind=entry.kind,
            payload=payload,
            prev_hash=entry.prev_hash,
            signer=entry.signer,
        )
    except ValueError:  # text no writer produces, such as a lone surrogate
        return failure("changed", "its content holds text that no node writes")
    if recomputed != entry.entry_hash:
        return failure(
            "changed",
            "its content no longer matches its hash (a byte of its time, kind, payload, "
            "sequence number or link was changed after it was signed)",
        )
    if not _signature_holds(_raw(public_key), entry.signature, entry.entry_hash):
        return failure(
            "forged-signature",
            "its hash matches its content but the signature is not the node's: the entry "
            "was rewritten and re-hashed by someone without the signing key",
        )
    return []


def _chain_failure(position: int, entry: AuditEntry, seqs: set[int]) -> AuditFailure:
    """Why the entry does not link to its predecessor: moved, or entries before it gone."""
    expected_seq = position
    if entry.seq != expected_seq and expected_seq in seqs:
        return AuditFailure(
            position,
            entry.seq,
            "reordered",
            f"entry {entry.seq} is stored where entry {expected_seq} belongs",
        )
    if entry.seq > expected_seq:
        missing = ", ".join(str(s) for s in range(expected_seq, entry.seq) if s not in seqs)
        return AuditFailure(
            position, entry.seq, "deleted", f"entries before it are missing ({missing})"
        )
    return AuditFailure(
        position,
        entry.seq,
        "deleted" if position == 1 else "reordered",
        "it does not link to the entry stored before it",
    )


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@functools.lru_cache(maxsize=1 << 17)
def _signature_holds(public_key: bytes, signature: str, entry_hash: str) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``entry_hash``.

    A pure function of its three arguments, remembered by the process: verifying a long log
    again (a dashboard after each new charge, an auditor re-running a check) only verifies
    the signatures it has not seen. An edited entry has another hash, so it is verified
    afresh; a failed verification is remembered as failed.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            bytes.fromhex(signature), bytes.fromhex(entry_hash)
        )
    except (InvalidSignature, ValueError):
        return False
    return True
