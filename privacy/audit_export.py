"""Export files of an audit log, for an auditor who holds no database and no node access.

A JSON export carries every entry and the public key that verifies them, and reads back
into the same :class:`~privacy.audit_log.AuditEntry` values, so an export is verified by
exactly the check a live log gets. A CSV export is for spreadsheets; its public key is
written beside it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from oralfed.privacy.audit_log import AuditEntry, AuditError, canonical_json
from oralfed.privacy.keys import key_fingerprint, public_key_from_pem, public_key_pem
from oralfed.schemas.files import write_text_atomically

__all__ = ["CSV_COLUMNS", "EXPORT_FORMAT", "export_document", "read_export", "write_export"]

EXPORT_FORMAT: Final = "oralfed-audit-log/1"

CSV_COLUMNS: Final = (
    "seq",
    "recorded_at",
    "kind",
    "payload",
    "prev_hash",
    "entry_hash",
    "signer",
    "signature",
)


def export_document(
    entries: Sequence[AuditEntry], public_key: Ed25519PublicKey, *, source: str
) -> dict[str, Any]:
    """The JSON export: every entry plus the public key that verifies them."""
    head = entries[-1] if entries else None
    return {
        "format": EXPORT_FORMAT,
        "source": source,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "public_key_pem": public_key_pem(public_key).decode("ascii"),
        "signer": key_fingerprint(public_key),
        "head": {"seq": head.seq if head else None, "hash": head.entry_hash if head else None},
        "entries": [_exported_entry(entry) for entry in entries],
    }


def write_export(
    path: Path,
    entries: Sequence[AuditEntry],
    public_key: Ed25519PublicKey,
    *,
    fmt: str,
    source: str,
) -> list[Path]:
    """Write a JSON or CSV export; CSV gets the public key beside it (``<path>.pub.pem``).

    Returns the files written. Each is written atomically: an interrupted export leaves
    nothing half-written for an auditor to trust.
    """
    if fmt == "json":
        document = export_document(entries, public_key, source=source)
        write_text_atomically(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return [path]
    if fmt != "csv":
        raise ValueError(f"export format must be json or csv, got {fmt!r}")
    rows = [{column: getattr(entry, column) for column in CSV_COLUMNS} for entry in entries]
    write_text_atomically(path, _csv_text(rows))
    key_path = path.with_name(path.name + ".pub.pem")
    write_text_atomically(key_path, public_key_pem(public_key).decode("ascii"))
    return [path, key_path]


def read_export(path: Path) -> tuple[list[AuditEntry], Ed25519PublicKey]:
    """Entries and embedded public key of a JSON export; :class:`AuditError` if malformed."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise AuditError(f"{path}: cannot read the export ({error.strerror})") from None
    except ValueError as error:
        raise AuditError(f"{path}: not a JSON audit export ({error})") from None
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise AuditError(f"{path}: not an audit export (expected format {EXPORT_FORMAT!r})")
    key = public_key_from_pem(str(document.get("public_key_pem", "")).encode(), source=str(path))
    entries: list[AuditEntry] = []
    for index, item in enumerate(document.get("entries") or [], start=1):
        try:
            entries.append(_imported_entry(item))
        except (KeyError, TypeError, ValueError) as error:
            raise AuditError(f"{path}: entry {index} is malformed ({error!r})") from None
    return entries, key


def _exported_entry(entry: AuditEntry) -> dict[str, Any]:
    """An entry with its payload as JSON, for readers; verification re-canonicalises it."""
    try:
        payload: Any = entry.payload_data()
    except ValueError:
        payload = entry.payload  # unreadable: exported as stored, verification flags it
    return {
        "seq": entry.seq,
        "recorded_at": entry.recorded_at,
        "kind": entry.kind,
        "payload": payload,
        "prev_hash": entry.prev_hash,
        "entry_hash": entry.entry_hash,
        "signer": entry.signer,
        "signature": entry.signature,
    }


def _imported_entry(item: Any) -> AuditEntry:
    """The inverse of :func:`_exported_entry`; KeyError, TypeError or ValueError if malformed."""
    payload = item["payload"]
    return AuditEntry(
        seq=int(item["seq"]),
        recorded_at=str(item["recorded_at"]),
        kind=str(item["kind"]),
        payload=payload if isinstance(payload, str) else canonical_json(payload),
        prev_hash=str(item["prev_hash"]),
        entry_hash=str(item["entry_hash"]),
        signer=str(item["signer"]),
        signature=str(item["signature"]),
    )


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
