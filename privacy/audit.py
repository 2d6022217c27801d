"""The tamper-evident audit log: hash-chained entries signed with the node's Ed25519 key.

Each entry commits to the previous entry's hash, so an entry cannot be changed, removed or
moved without breaking the chain after it, and each entry's hash is signed, so the chain
cannot be rebuilt without the node's private key. What the chain alone cannot show is a
cut-off tail: the last entries can be dropped and the rest still verifies. The head hash
(printed by ``oralfed audit verify``) is therefore meant to be written down elsewhere, and a
later ``verify --expect-head`` checks that the log still contains it.

A clinic's log lives in its ledger database, and the ledger appends inside its own
transactions, so a charge and its audit entry commit together or not at all. Verification
(:func:`verify_entries`) is a pure function of the stored entries and a public key.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, create_engine, inspect, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from privacy.audit_models import AuditBase, AuditEntryRow
from privacy.events import event_to_dict
from privacy.keys import key_fingerprint, public_key_from_pem, public_key_pem
from schemas.importer import write_text_atomically

if TYPE_CHECKING:  # the ledger imports this module; only its record types are needed here
    from privacy.ledger import Budget, ChargeRecord

GENESIS_HASH: Final = "0" * 64
EXPORT_FORMAT: Final = "oralfed-audit-log/1"
# Domain separation: an entry hash can never be mistaken for a hash of anything else.
_HASH_PREFIX: Final = b"oralfed-audit-entry/1\n"

# --- entry kinds -----------------------------------------------------------------------------
DATASET_REGISTERED: Final = "dataset.registered"
BUDGET_CHANGED: Final = "budget.changed"
LEDGER_CHARGE: Final = "ledger.charge"
LEDGER_REFUSED: Final = "ledger.refused"
DATA_IMPORTED: Final = "data.imported"
RUN_STARTED: Final = "run.started"
ROUND_COMPLETED: Final = "round.completed"
RUN_FINISHED: Final = "run.finished"

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


class AuditError(Exception):
    """An audit log that cannot be read or written; the message names the file and why."""


@dataclass(frozen=True)
class AuditEntry:
    """One entry as stored: ``payload`` is its canonical JSON text, exactly as hashed."""

    seq: int
    recorded_at: str
    kind: str
    payload: str
    prev_hash: str
    entry_hash: str
    signer: str
    signature: str

    def payload_data(self) -> Any:
        return json.loads(self.payload)

    def to_dict(self) -> dict[str, Any]:
        """The export form: the payload as JSON (verification re-canonicalises it)."""
        try:
            payload: Any = self.payload_data()
        except ValueError:
            payload = self.payload  # unreadable: exported as stored, verification flags it
        return {
            "seq": self.seq,
            "recorded_at": self.recorded_at,
            "kind": self.kind,
            "payload": payload,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
            "signer": self.signer,
            "signature": self.signature,
        }


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, no NaN (hashes must be reproducible)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(
    *, seq: int, recorded_at: str, kind: str, payload: Any, prev_hash: str, signer: str
) -> str:
    """SHA-256 (hex) of the canonical form of everything an entry says, including its
    predecessor's hash: that is what makes the entries a chain."""
    body = canonical_json(
        {
            "seq": seq,
            "recorded_at": recorded_at,
            "kind": kind,
            "payload": payload,
            "prev_hash": prev_hash,
            "signer": signer,
        }
    )
    return hashlib.sha256(_HASH_PREFIX + body.encode("utf-8")).hexdigest()


class AuditLog:
    """Appends signed entries to the audit table of one database."""

    def __init__(self, engine: Engine, signing_key: Ed25519PrivateKey) -> None:
        AuditBase.metadata.create_all(engine)
        self._engine = engine
        self._key = signing_key
        self.public_key = signing_key.public_key()
        self.signer = key_fingerprint(self.public_key)

    def append(
        self, kind: str, payload: Mapping[str, Any], *, session: Session | None = None
    ) -> AuditEntry:
        """Sign and chain one entry; inside ``session``'s transaction when given.

        Passing the caller's session is how the ledger makes an entry commit atomically
        with the change it records. Without one, the entry commits on its own before this
        returns. The table's unique ``seq`` makes two concurrent appenders fail loudly
        instead of forking the chain.
        """
        if not kind:
            raise ValueError("an audit entry needs a kind")
        text = canonical_json(json_safe(dict(payload)))
        with _session_scope(self._engine, session) as active:
            last = active.scalars(
                select(AuditEntryRow).order_by(AuditEntryRow.seq.desc()).limit(1)
            ).one_or_none()
            seq = 1 if last is None else last.seq + 1
            prev_hash = GENESIS_HASH if last is None else last.entry_hash
            recorded_at = datetime.now(UTC).isoformat(timespec="microseconds")
            digest = entry_hash(
                seq=seq,
                recorded_at=recorded_at,
                kind=kind,
                payload=json.loads(text),
                prev_hash=prev_hash,
                signer=self.signer,
            )
            row = AuditEntryRow(
                seq=seq,
                recorded_at=recorded_at,
                kind=kind,
                payload=text,
                prev_hash=prev_hash,
                entry_hash=digest,
                signer=self.signer,
                signature=self._key.sign(bytes.fromhex(digest)).hex(),
            )
            active.add(row)
            active.flush()
            return _entry_of(row)

    def append_once(self, kind: str, payload: Mapping[str, Any]) -> AuditEntry | None:
        """Append unless an entry of ``kind`` with exactly this payload exists; None then.

        For events that are observed repeatedly but happen once, such as a data file's
        import, which the ClientApp sees again in every round.
        """
        text = canonical_json(json_safe(dict(payload)))
        with _session_scope(self._engine, None) as session:
            seen = session.scalar(
                select(AuditEntryRow.id)
                .where(AuditEntryRow.kind == kind, AuditEntryRow.payload == text)
                .limit(1)
            )
            return None if seen is not None else self.append(kind, payload, session=session)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf", "nan"): JSON has no such numbers,
    and an infinite ε (an accountant giving up) must still be recorded."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


@contextmanager
def _session_scope(engine: Engine, session: Session | None) -> Iterator[Session]:
    if session is not None:
        yield session
        return
    with Session(engine) as own, own.begin():
        yield own


def _entry_of(row: AuditEntryRow) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        recorded_at=row.recorded_at,
        kind=row.kind,
        payload=row.payload,
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
        signer=row.signer,
        signature=row.signature,
    )


# --- reading ---------------------------------------------------------------------------------


def read_entries(engine: Engine) -> list[AuditEntry]:
    """Every entry in storage order (not ``seq`` order: a moved row must show as moved)."""
    with Session(engine) as session:
        rows = session.scalars(select(AuditEntryRow).order_by(AuditEntryRow.id)).all()
        return [_entry_of(row) for row in rows]


def read_database_log(path: Path) -> list[AuditEntry]:
    """The audit entries of a SQLite database file; :class:`AuditError` if it holds none.

    Opened read-only, so checking a log can never alter it (or create an empty database
    where a path was mistyped).
    """
    if not path.is_file():
        raise AuditError(f"{path}: no such database file")
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        if not inspect(engine).has_table(AuditEntryRow.__tablename__):
            raise AuditError(f"{path}: this database holds no audit log")
        return read_entries(engine)
    except SQLAlchemyError as error:
        reason = getattr(error, "orig", None) or error
        raise AuditError(f"{path}: not a readable audit database ({reason})") from None
    finally:
        engine.dispose()


# --- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFailure:
    """Why one entry fails: ``position`` is its place in storage (1 = first), ``problem``
    one of changed, forged-signature, foreign-key, deleted, reordered, truncated,
    ledger-mismatch."""

    position: int  # 0: not tied to one entry (a ledger row, or the log as a whole)
    seq: int | None
    problem: str
    detail: str

    def __str__(self) -> str:
        if self.seq is None:
            return f"{self.problem}: {self.detail}"
        return f"entry {self.seq} (position {self.position}): {self.problem}: {self.detail}"


@dataclass(frozen=True)
class VerificationResult:
    entries: int
    head_seq: int | None
    head_hash: str
    signer: str
    failures: tuple[AuditFailure, ...]

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
            "failures": [
                {"position": f.position, "seq": f.seq, "problem": f.problem, "detail": f.detail}
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

    Each failure names the entry and the kind of tampering that explains it: a changed
    byte (hash does not match content), a forged signature (content and hash agree but
    the key did not sign them), a foreign key (another node's log, or the wrong key), a
    deleted entry (a gap in the chain), reordered entries (an authentic entry out of
    place) and, with ``expect_head``, a truncated tail (the anchored head is gone).
    """
    signer = key_fingerprint(public_key)
    failures: list[AuditFailure] = []
    seqs = {entry.seq for entry in entries}
    previous_hash = GENESIS_HASH
    for position, entry in enumerate(entries, start=1):
        failures += _entry_failures(position, entry, public_key, signer)
        if entry.prev_hash != previous_hash:
            failures.append(_chain_failure(position, entry, seqs))
        previous_hash = entry.entry_hash
    head = entries[-1] if entries else None
    head_hash = head.entry_hash if head else GENESIS_HASH
    if expect_head is not None and expect_head.lower() not in {e.entry_hash for e in entries}:
        failures.append(
            AuditFailure(
                position=len(entries),
                seq=None,
                problem="truncated",
                detail=(
                    f"the head recorded earlier ({expect_head}) is not in this log, whose last "
                    f"entry is {head.seq if head else 'none'} with hash {head_hash}: entries "
                    "were removed from its end, or this is a different log"
                ),
            )
        )
    return VerificationResult(
        entries=len(entries),
        head_seq=head.seq if head else None,
        head_hash=head_hash,
        signer=signer,
        failures=tuple(failures),
    )


def _entry_failures(
    position: int, entry: AuditEntry, public_key: Ed25519PublicKey, signer: str
) -> list[AuditFailure]:
    def failure(problem: str, detail: str) -> list[AuditFailure]:
        return [AuditFailure(position, entry.seq, problem, detail)]

    try:
        payload = entry.payload_data()
    except ValueError:
        return failure("changed", "its payload is no longer valid JSON")
    if canonical_json(payload) != entry.payload:
        return failure("changed", "its payload text differs from what was written")
    if entry.signer != signer:
        return failure(
            "foreign-key",
            f"it was signed by key {entry.signer[:16]}…, not by the expected key "
            f"{signer[:16]}…: a log from another node, or the wrong public key",
        )
    recomputed = entry_hash(
        seq=entry.seq,
        recorded_at=entry.recorded_at,
        kind=entry.kind,
        payload=payload,
        prev_hash=entry.prev_hash,
        signer=entry.signer,
    )
    if recomputed != entry.entry_hash:
        return failure(
            "changed",
            "its content no longer matches its hash (a byte of its time, kind, payload, "
            "sequence number or link was changed after it was signed)",
        )
    try:
        public_key.verify(bytes.fromhex(entry.signature), bytes.fromhex(entry.entry_hash))
    except (InvalidSignature, ValueError):
        return failure(
            "forged-signature",
            "its hash matches its content but the signature is not the node's: the entry "
            "was rewritten and re-hashed by someone without the signing key",
        )
    return []


def _chain_failure(position: int, entry: AuditEntry, seqs: set[int]) -> AuditFailure:
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


def cross_check_ledger(
    entries: Sequence[AuditEntry], charges: Sequence[ChargeRecord], budgets: Sequence[Budget]
) -> list[AuditFailure]:
    """Failures where the ledger's rows disagree with what the audit log recorded.

    A verified chain proves the log was not edited; this proves the *ledger* was not edited
    around it: a charge row deleted to free budget, a row added or altered outside the
    ledger's API, or a cap changed without an audit entry.
    """
    audited: dict[int, tuple[int, AuditEntry, dict[str, Any]]] = {}
    caps: dict[str, Any] = {}
    for position, entry in enumerate(entries, start=1):
        try:
            payload = entry.payload_data()
        except ValueError:
            continue  # already reported as changed by verify_entries
        if not isinstance(payload, dict):
            continue
        if entry.kind == LEDGER_CHARGE and isinstance(payload.get("charge_id"), int):
            audited[payload["charge_id"]] = (position, entry, payload)
        elif entry.kind == DATASET_REGISTERED:
            caps[str(payload.get("dataset_id"))] = payload.get("epsilon_cap")
        elif entry.kind == BUDGET_CHANGED:
            caps[str(payload.get("dataset_id"))] = payload.get("new_cap")
    failures: list[AuditFailure] = []

    def mismatch(position: int, seq: int | None, detail: str) -> None:
        failures.append(AuditFailure(position, seq, "ledger-mismatch", detail))

    for charge in charges:
        found = audited.pop(charge.id, None)
        if found is None:
            mismatch(
                0,
                None,
                f"ledger charge {charge.id} has no audit entry (written around the ledger's API)",
            )
            continue
        position, entry, payload = found
        stored = {
            "dataset_id": charge.dataset_id,
            "run_id": charge.run_id,
            "round": charge.round,
            **event_to_dict(charge.event),
            "epsilon_after": charge.epsilon_after,
        }
        differing = sorted(key for key, value in stored.items() if payload.get(key) != value)
        if differing:
            mismatch(
                position,
                entry.seq,
                f"ledger charge {charge.id} differs from its audit entry in {', '.join(differing)}",
            )
    for charge_id, (position, entry, _) in sorted(audited.items()):
        mismatch(
            position,
            entry.seq,
            f"ledger charge {charge_id} was audited but is missing "
            "from the ledger (deleted: its budget was freed)",
        )
    for budget in budgets:
        if caps.get(budget.dataset_id) != budget.epsilon_cap:
            mismatch(
                0,
                None,
                f"data set {budget.dataset_id!r} has cap {budget.epsilon_cap:g} "
                f"in the ledger but {caps.get(budget.dataset_id)} in the audit log",
            )
    return failures


# --- export ----------------------------------------------------------------------------------


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
        "entries": [entry.to_dict() for entry in entries],
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
            payload = item["payload"]
            entries.append(
                AuditEntry(
                    seq=int(item["seq"]),
                    recorded_at=str(item["recorded_at"]),
                    kind=str(item["kind"]),
                    payload=payload if isinstance(payload, str) else canonical_json(payload),
                    prev_hash=str(item["prev_hash"]),
                    entry_hash=str(item["entry_hash"]),
                    signer=str(item["signer"]),
                    signature=str(item["signature"]),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise AuditError(f"{path}: entry {index} is malformed ({error!r})") from None
    return entries, key


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
