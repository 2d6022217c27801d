"""What an auditor checks: a node's state dir or an exported file, and the key to trust.

A node keeps its signed log in a database in its state dir: a clinic's in its ledger
(``ledger.db``), the coordinator's in ``coordinator.db``. An auditor without node access
holds an export instead. Either way the same chain check runs
(:mod:`privacy.audit_verify`), and a clinic's log is also cross-checked against its ledger
rows (:mod:`privacy.ledger_cross_check`): an intact chain does not prove that nobody
edited the ledger beside it. A database is only ever opened read-only
(:func:`~privacy.audit_log.reading_database`), its log and ledger rows in one snapshot;
checking it creates no table, no key and no journal file.

Which key checks the log decides what "verified" means. The key file an auditor received
from the node proves the node wrote the log; the key embedded in an export only proves the
file agrees with itself (whoever re-signed a copy embedded their own key), so a report
always says which key was used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from oralfed.privacy.audit_export import read_export, write_export
from oralfed.privacy.audit_log import AuditEntry, AuditError, database_log, reading_database
from oralfed.privacy.audit_verify import VerificationResult, verify_entries
from oralfed.privacy.keys import PUBLIC_KEY_FILE, load_public_key
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.privacy.ledger_cross_check import LedgerRows, cross_check_ledger, read_ledger_rows
from oralfed.schemas.settings import SettingsError

__all__ = [
    "COORDINATOR_DATABASE",
    "EMBEDDED_KEY",
    "LEDGER_DATABASE",
    "LOG_DATABASES",
    "AuditTarget",
    "ExportReport",
    "VerificationReport",
    "export_log",
    "log_database",
    "open_target",
    "read_ledger",
    "verify_target",
]

LEDGER_DATABASE: Final = "ledger.db"
COORDINATOR_DATABASE: Final = "coordinator.db"
# Where a state dir's log lives, in the order looked for: a clinic's ledger first.
LOG_DATABASES: Final = (LEDGER_DATABASE, COORDINATOR_DATABASE)
# The key source of a log checked with the key its own export carries.
EMBEDDED_KEY: Final = "embedded"


@dataclass(frozen=True)
class AuditTarget:
    """An opened log: its entries in storage order, where they came from, and its key."""

    entries: tuple[AuditEntry, ...]
    source: Path
    public_key: Ed25519PublicKey
    key_source: str  # the key file, or EMBEDDED_KEY
    ledger_rows: LedgerRows | None = None  # a clinic's, read in the same snapshot as the log


@dataclass(frozen=True)
class VerificationReport:
    """One verification as an auditor records it: what was checked, with which key, and
    every failure of the chain and (for a clinic) of the ledger beside it."""

    source: Path
    key_source: str
    result: VerificationResult
    ledger_checked: bool = False  # a clinic's ledger rows were cross-checked against the log

    @property
    def ok(self) -> bool:
        return self.result.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "public_key": self.key_source,
            "ledger_checked": self.ledger_checked,
            **self.result.to_dict(),
        }


@dataclass(frozen=True)
class ExportReport:
    """The files an export wrote, and whether the exported chain verified with the node's key
    (an export is written either way: a broken log is evidence too)."""

    files: tuple[Path, ...]
    result: VerificationResult


def log_database(state_dir: Path) -> Path:
    """The database holding the node's audit log; :class:`AuditError` if there is none."""
    if not state_dir.is_dir():
        raise AuditError(f"state dir {state_dir}: no such directory")
    for name in LOG_DATABASES:
        if (state_dir / name).is_file():
            return state_dir / name
    raise AuditError(f"state dir {state_dir}: holds neither {' nor '.join(LOG_DATABASES)}")


def open_target(
    *,
    state_dir: Path | None = None,
    export_file: Path | None = None,
    public_key: Path | None = None,
) -> AuditTarget:
    """The log of a state dir or of an export file (exactly one), with the key to check it.

    Without ``public_key`` a state dir's log is checked with the public key kept beside it
    and an export with the key it embeds. Unreadable logs and keys are :class:`AuditError`
    and :class:`~privacy.keys.AuditKeyError`, naming the file.
    """
    if (state_dir is None) == (export_file is None):
        raise SettingsError(("state dir", "export file"), "give exactly one of {0} and {1}")
    if export_file is not None:
        entries, embedded = read_export(export_file)
        if public_key is None:
            return AuditTarget(tuple(entries), export_file, embedded, EMBEDDED_KEY)
        return AuditTarget(
            tuple(entries), export_file, load_public_key(public_key), str(public_key)
        )
    assert state_dir is not None
    database = log_database(state_dir)
    with reading_database(database) as connection:
        entries = database_log(connection, database)
        rows = read_ledger_rows(connection) if database.name == LEDGER_DATABASE else None
    key_path = public_key or state_dir / PUBLIC_KEY_FILE
    return AuditTarget(tuple(entries), database, load_public_key(key_path), str(key_path), rows)


def verify_target(
    *,
    state_dir: Path | None = None,
    export_file: Path | None = None,
    public_key: Path | None = None,
    expect_head: str | None = None,
) -> VerificationReport:
    """Verify the log :func:`open_target` opens; a clinic's ledger is cross-checked too.

    ``expect_head``, a head hash recorded from an earlier verification, must still be in the
    log: that is what catches entries cut from its end. A ledger table that cannot be read
    is a failure as well: a verification must not pass because the evidence was unreadable.
    """
    target = open_target(state_dir=state_dir, export_file=export_file, public_key=public_key)
    result = verify_entries(target.entries, target.public_key, expect_head=expect_head)
    if target.ledger_rows is None:
        return VerificationReport(target.source, target.key_source, result)
    mismatches = cross_check_ledger(target.entries, target.ledger_rows)
    result = replace(result, failures=result.failures + tuple(mismatches))
    return VerificationReport(target.source, target.key_source, result, ledger_checked=True)


def export_log(state_dir: Path, out: Path, *, fmt: str = "json") -> ExportReport:
    """Export a state dir's log to ``out`` (json or csv) with the key that verifies it."""
    target = open_target(state_dir=state_dir)
    try:
        files = write_export(
            out, target.entries, target.public_key, fmt=fmt, source=str(target.source)
        )
    except OSError as error:
        raise AuditError(f"{out}: cannot write the export ({error.strerror or error})") from None
    return ExportReport(tuple(files), verify_entries(target.entries, target.public_key))


def read_ledger(path: Path) -> PrivacyLedger:
    """A clinic's ledger database opened read-only and without its signing key: reading
    it, as reports and audits do, must never change it nor append to its audit log."""
    return PrivacyLedger.read_only(path)
