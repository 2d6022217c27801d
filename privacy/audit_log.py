"""The tamper-evident audit log: hash-chained entries signed with the node's Ed25519 key.

Each entry commits to the previous entry's hash, so an entry cannot be changed, removed or
moved without breaking the chain after it, and each entry's hash is signed, so the chain
cannot be rebuilt without the node's private key. Checking that is
:mod:`privacy.audit_verify`'s job; this module writes and reads the chain.

A clinic's log lives in its ledger database, and the ledger appends inside its own
transactions, so a charge and its audit entry commit together or not at all. The
coordinator keeps its own log of runs and rounds in its database.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Final
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import URL, Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from oralfed.privacy.audit_models import AuditEntryRow
from oralfed.privacy.keys import key_fingerprint
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.json_safe import json_safe

__all__ = [
    "BUDGET_CHANGED",
    "DATASET_REGISTERED",
    "DATA_IMPORTED",
    "GENESIS_HASH",
    "KEY_ROTATED",
    "LEDGER_CHARGE",
    "LEDGER_REFUSED",
    "POLICY_IN_FORCE",
    "ROUND_COMPLETED",
    "RUN_FINISHED",
    "RUN_STARTED",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "canonical_json",
    "database_log",
    "entry_hash",
    "read_database_log",
    "read_entries",
    "read_only_engine",
    "reading_database",
]

# The link of the first entry: no real entry hashes to it.
GENESIS_HASH: Final = "0" * 64
# Domain separation: an entry hash can never be mistaken for a hash of anything else.
_HASH_PREFIX: Final = b"oralfed-audit-entry/1\n"

# --- entry kinds: the ledger's, the ClientApp's and the coordinator's ----------------------
DATASET_REGISTERED: Final = "dataset.registered"
BUDGET_CHANGED: Final = "budget.changed"
LEDGER_CHARGE: Final = "ledger.charge"
LEDGER_REFUSED: Final = "ledger.refused"
DATA_IMPORTED: Final = "data.imported"
POLICY_IN_FORCE: Final = "policy.in-force"  # the clinic policy its ClientApp enforces
RUN_STARTED: Final = "run.started"
ROUND_COMPLETED: Final = "round.completed"
RUN_FINISHED: Final = "run.finished"
KEY_ROTATED: Final = "key.rotated"  # the node's signing key changed (see privacy.key_chain)


class AuditError(OralFedError):
    """An audit log that cannot be read or written; the message names the file and why."""

    exit_code: ClassVar[ExitCode] = ExitCode.AUDIT


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
        """The payload as written; ``ValueError`` if it is not what :func:`canonical_json`
        can have written: not JSON text, or holding NaN or an infinity (``json.loads``
        accepts ``NaN``, ``Infinity`` and ``1e999``, which a reader must not mistake for
        figures)."""
        if not isinstance(self.payload, str):  # a stored row can hold anything
            raise ValueError(f"the payload is {type(self.payload).__name__}, not JSON text")
        try:
            return json.loads(
                self.payload, parse_constant=_refuse_constant, parse_float=_finite_float
            )
        except RecursionError:
            raise ValueError("the payload is nested too deeply to be read") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"the payload holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the payload holds {text}, which is out of a float's range")
    return value


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
    """Appends signed entries to the audit table of one database.

    The table is taken as given: it belongs to the schema of the database's owner, whose
    migrations create and change it (the clinic's ledger, ``privacy/migrations``; the
    coordinator's database, ``server/migrations``), never to this class.
    """

    def __init__(
        self, engine: Engine, signing_key: Ed25519PrivateKey, *, reader: Engine | None = None
    ) -> None:
        """``engine`` appends; ``reader``, if given, is the same database without the write
        lock (the clinic ledger's plain engine), for checks that usually find nothing to do."""
        self._engine = engine
        self._reader = reader or engine
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
        with _session_scope(self._reader, None) as session:  # no lock: usually it exists
            if _has_entry(session, kind, text):
                return None
        with _session_scope(self._engine, None) as session:  # locked: look again, append
            if _has_entry(session, kind, text):
                return None
            return self.append(kind, payload, session=session)


def read_entries(bind: Engine | Connection) -> list[AuditEntry]:
    """Every entry in storage order (not ``seq`` order: a moved row must show as moved).

    Values are passed on as stored, unconverted: a column edited to hold the wrong type
    must reach verification as it is, to be reported there.
    """
    with Session(bind) as session:
        rows = session.scalars(select(AuditEntryRow).order_by(AuditEntryRow.id)).all()
        return [_entry_of(row) for row in rows]


def read_database_log(path: Path) -> list[AuditEntry]:
    """The audit entries of a SQLite database file; :class:`AuditError` if it holds none.

    Opened read-only (:func:`reading_database`), so checking a log can never alter it (or
    create an empty database where a path was mistyped).
    """
    with reading_database(path) as connection:
        return database_log(connection, path)


def database_log(connection: Connection, path: Path) -> list[AuditEntry]:
    """The audit entries read through ``connection`` to ``path``'s database, so that a
    caller can read them in the same snapshot as other tables; :class:`AuditError` if the
    database holds no log."""
    if not inspect(connection).has_table(AuditEntryRow.__tablename__):
        raise AuditError(f"{path}: this database holds no audit log")
    return read_entries(connection)


@contextmanager
def reading_database(path: Path) -> Iterator[Connection]:
    """One read transaction on a SQLite database file that cannot change it in any way.

    Everything read through the connection is one snapshot, so a node charging while it is
    audited cannot make its log and its ledger look inconsistent. :class:`AuditError`
    naming the file if it is missing or not a readable database.
    """
    if not path.is_file():
        raise AuditError(f"{path}: no such database file")
    engine = read_only_engine(path)
    try:
        with engine.connect() as connection, connection.begin():
            yield connection
    except SQLAlchemyError as error:
        reason = getattr(error, "orig", None) or error
        raise AuditError(f"{path}: not a readable audit database ({reason})") from None
    finally:
        engine.dispose()


def read_only_engine(path: Path) -> Engine:
    """An engine on a SQLite database file that cannot write to it, nor beside it.

    ``mode=ro`` alone is not enough: on a database in WAL mode (as the ledger keeps it)
    SQLite then creates ``-wal`` and ``-shm`` files next to it and leaves them there. So a
    database with no journal beside it, which therefore holds every committed transaction
    in its own file, is opened ``immutable`` (no locks, no side files); one whose node is
    running, or crashed, has its journal read with ``mode=ro``. Each transaction begins
    with an explicit ``BEGIN``, so that its reads are one snapshot (pysqlite would
    otherwise read statement by statement).
    """
    journals = (path.with_name(path.name + suffix) for suffix in ("-wal", "-journal"))
    quiescent = not any(journal.exists() for journal in journals)
    engine = create_engine(
        URL.create(
            "sqlite",
            database="file:" + quote(str(path)),
            query={"mode": "ro", "uri": "true", **({"immutable": "1"} if quiescent else {})},
        )
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def _has_entry(session: Session, kind: str, payload_text: str) -> bool:
    seen = session.scalar(
        select(AuditEntryRow.id)
        .where(AuditEntryRow.kind == kind, AuditEntryRow.payload == payload_text)
        .limit(1)
    )
    return seen is not None


@contextmanager
def _session_scope(engine: Engine, session: Session | None) -> Iterator[Session]:
    """The caller's session as is, or a new one whose transaction commits on exit."""
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
