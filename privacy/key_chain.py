"""The key chain of an audit log: which keys signed it, and why each one is trusted.

A node's log outlives any one key: a key is rotated (``oralfed clinic rotate-key``), or
lost and replaced. Each change is a :data:`~privacy.audit_log.KEY_ROTATED` entry in the
log itself, naming the previous and the new key (raw public keys, so the log alone holds
every key that signed it) and carrying an *endorsement*: the new key's signature over the
pair, which says "my predecessor is this key". The entry is signed by the previous key
where it still exists (it hands over), and by the new key when the previous one was lost.

Trust starts at the one key the auditor holds (the anchor) and passes along a rotation
only where a key that is already trusted vouches for the other: forwards when the trusted
previous key signed the hand-over, backwards when the trusted new key endorsed its
predecessor. So the current public key verifies a whole history through every rotation, an
older key the auditor received earlier verifies forwards through hand-overs, and a key that
nobody trusted vouched for (a rotation forged by someone without the keys) stays foreign.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from oralfed.privacy.audit_log import KEY_ROTATED, AuditEntry
from oralfed.privacy.keys import key_fingerprint

__all__ = ["KeyRotation", "parse_rotation", "rotation_payload", "trusted_keys"]

# Domain separation: an endorsement is never mistaken for a signature of an entry hash.
_ENDORSEMENT_PREFIX: Final = b"oralfed-key-rotation/1\n"
_SIGNED_BY: Final = ("previous", "new")


@dataclass(frozen=True)
class KeyRotation:
    """One rotation as its log entry states it (endorsement already checked)."""

    previous: Ed25519PublicKey
    new: Ed25519PublicKey
    signed_by_previous: bool  # False: the previous key was lost, the new one signed

    @property
    def previous_signer(self) -> str:
        return key_fingerprint(self.previous)

    @property
    def new_signer(self) -> str:
        return key_fingerprint(self.new)

    @property
    def entry_signer(self) -> Ed25519PublicKey:
        """The key that must have signed the rotation's own entry."""
        return self.previous if self.signed_by_previous else self.new


def rotation_payload(
    previous: Ed25519PublicKey,
    new_key: Ed25519PrivateKey,
    *,
    signed_by_previous: bool,
    reason: str,
) -> dict[str, Any]:
    """The payload of a :data:`KEY_ROTATED` entry, endorsed by ``new_key``."""
    previous_signer = key_fingerprint(previous)
    new_signer = key_fingerprint(new_key.public_key())
    return {
        "previous_signer": previous_signer,
        "previous_public_key": _raw_hex(previous),
        "new_signer": new_signer,
        "new_public_key": _raw_hex(new_key.public_key()),
        "signed_by": _SIGNED_BY[0] if signed_by_previous else _SIGNED_BY[1],
        "endorsement": new_key.sign(_endorsed(previous_signer, new_signer)).hex(),
        "reason": reason,
    }


def parse_rotation(entry: AuditEntry) -> KeyRotation:
    """The rotation ``entry`` states; ``ValueError`` saying why if it is not a well-formed
    rotation whose new key endorses its previous key. (Whether the entry itself is
    authentic, signed by :attr:`KeyRotation.entry_signer`, is the verifier's check.)"""
    if entry.kind != KEY_ROTATED:
        raise ValueError(f"it is a {entry.kind} entry, not a key rotation")
    payload = entry.payload_data()
    if not isinstance(payload, Mapping):
        raise ValueError("its payload is not an object")
    previous = _stated_key(payload, "previous")
    new = _stated_key(payload, "new")
    if payload.get("signed_by") not in _SIGNED_BY:
        raise ValueError(f"its signed_by must be one of {', '.join(_SIGNED_BY)}")
    endorsement = payload.get("endorsement")
    try:
        new.verify(
            bytes.fromhex(str(endorsement)),
            _endorsed(key_fingerprint(previous), key_fingerprint(new)),
        )
    except (InvalidSignature, ValueError):
        raise ValueError(
            "its endorsement is not the new key's signature of the previous key"
        ) from None
    return KeyRotation(previous, new, signed_by_previous=payload["signed_by"] == _SIGNED_BY[0])


def trusted_keys(
    anchor: Ed25519PublicKey, rotations: Iterable[KeyRotation]
) -> dict[str, Ed25519PublicKey]:
    """Every key trust reaches from ``anchor`` through ``rotations`` (authentic entries
    only), by fingerprint: forwards through a hand-over the trusted previous key signed,
    backwards through an endorsement by the trusted new key."""
    links = list(rotations)
    trusted = {key_fingerprint(anchor): anchor}
    grown = True
    while grown:
        grown = False
        for link in links:
            for source, target, passes in (
                (link.previous_signer, link.new, link.signed_by_previous),
                (link.new_signer, link.previous, True),
            ):
                fingerprint = key_fingerprint(target)
                if passes and source in trusted and fingerprint not in trusted:
                    trusted[fingerprint] = target
                    grown = True
    return trusted


def _stated_key(payload: Mapping[str, Any], role: str) -> Ed25519PublicKey:
    """The ``role`` key of a rotation payload, its raw bytes matching its fingerprint."""
    try:
        key = Ed25519PublicKey.from_public_bytes(
            bytes.fromhex(str(payload.get(f"{role}_public_key")))
        )
    except ValueError:
        raise ValueError(f"its {role}_public_key is not a raw Ed25519 public key") from None
    if payload.get(f"{role}_signer") != key_fingerprint(key):
        raise ValueError(f"its {role}_signer is not the fingerprint of its {role}_public_key")
    return key


def _endorsed(previous_signer: str, new_signer: str) -> bytes:
    return _ENDORSEMENT_PREFIX + f"{previous_signer}\n{new_signer}".encode("ascii")


def _raw_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
