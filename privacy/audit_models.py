"""The audit log table (SQLAlchemy 2 typed model), stored beside the ledger's tables.

Every field that an entry's hash covers is stored as text exactly as it was hashed
(timestamp as ISO text, payload as canonical JSON), so that verification recomputes the
hash from the stored bytes and any changed byte shows.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class AuditBase(DeclarativeBase):
    """Its own metadata, so that the coordinator's database can hold an audit log too."""


class AuditEntryRow(AuditBase):
    """One signed, hash-chained audit entry.

    ``id`` is the storage order; ``seq`` is the position the entry claims in the chain and is
    covered by its hash. The two differ only if someone moved rows around, which is how
    verification tells reordering from other tampering.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    recorded_at: Mapped[str] = mapped_column(String(40))  # ISO 8601, UTC
    kind: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    signer: Mapped[str] = mapped_column(String(64))  # fingerprint of the signing public key
    signature: Mapped[str] = mapped_column(String(128))  # Ed25519 over the entry hash, hex
