"""The per-clinic privacy ledger: every release is charged here before it leaves the clinic.

A charge is atomic. In one transaction the ledger locks the data set, recomputes ε over the
whole stored history plus the new event with the data set's accountant, refuses with
:class:`BudgetExceeded` (changing nothing) if that would pass the cap, and otherwise
records the event and commits before returning. Two processes charging the same data set
therefore cannot both squeeze under the cap, and an update that is sent has always been
paid for.

ε is never cached or summed per round: composition theorems make the ε of a history smaller
than the sum of its parts, and only a recomputation from the stored mechanisms can be
checked by an auditor.

Every registration, cap change, charge and refused charge is also appended to the clinic's
signed audit log (:mod:`privacy.audit_log`) inside the same transaction, so the ledger and its
audit trail cannot disagree. A refused charge changes no ledger row but does commit its
audit entry: the refusal itself is part of the record. Each entry carries every value of
the rows it records that ε depends on (δ, accountant, cap, the mechanism's parameters), so
that a row edited behind the ledger's back shows against the signed log
(:mod:`privacy.ledger_cross_check`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import URL, Connection, Engine, create_engine, event, select
from sqlalchemy.orm import Session

from oralfed.privacy.accountants import ACCOUNTANTS, DEFAULT_ACCOUNTANT, get_accountant
from oralfed.privacy.audit_log import (
    BUDGET_CHANGED,
    DATASET_REGISTERED,
    LEDGER_CHARGE,
    LEDGER_REFUSED,
    AuditLog,
    read_only_engine,
)
from oralfed.privacy.events import (
    DpSgdEvent,
    PrivacyEvent,
    event_from_dict,
    event_to_dict,
    mechanism_name,
    repetitions,
)
from oralfed.privacy.keys import load_or_create_signing_key
from oralfed.privacy.ledger_models import Base, BudgetChange, LedgerCharge, LedgerDataset
from oralfed.schemas.errors import ExitCode, OralFedError

__all__ = [
    "Budget",
    "BudgetChangeRecord",
    "BudgetExceeded",
    "ChargeRecord",
    "InvalidBudget",
    "LedgerError",
    "PrivacyLedger",
    "UnknownDataset",
]

# Execution option marking connections whose transactions must take the write lock at BEGIN.
_WRITE_LOCK = "oralfed_write_lock"
# How long a charge waits for another process's charge on the same SQLite file.
_SQLITE_BUSY_TIMEOUT_MS = 30_000


class LedgerError(OralFedError):
    """A ledger refusal or misuse, with a message meant for the operator."""

    exit_code: ClassVar[ExitCode] = ExitCode.LEDGER


class UnknownDataset(LedgerError):
    """The data set was never registered with :meth:`PrivacyLedger.ensure_dataset`."""


class InvalidBudget(LedgerError):
    """A budget that cannot be registered, or a change that would invalidate the history."""


class BudgetExceeded(LedgerError):
    """A charge was refused because the composed ε would pass the cap; nothing was charged."""

    exit_code: ClassVar[ExitCode] = ExitCode.BUDGET_EXCEEDED

    def __init__(
        self,
        dataset_id: str,
        *,
        spent: float,
        would_spend: float,
        cap: float,
        delta: float,
        accountant: str,
    ) -> None:
        self.dataset_id = dataset_id
        self.spent = spent
        self.would_spend = would_spend
        self.cap = cap
        self.delta = delta
        self.accountant = accountant
        super().__init__(
            f"dataset {dataset_id!r}: this release would bring ε to {would_spend:.2f} > cap "
            f"{cap:.2f} (δ={delta:g}, accountant {accountant}); spent so far {spent:.2f}. "
            "Nothing was charged."
        )


@dataclass(frozen=True)
class Budget:
    """A data set's budget and what its whole history has spent, as of the call."""

    dataset_id: str
    epsilon_cap: float
    delta: float
    accountant: str
    spent: float
    remaining: float


@dataclass(frozen=True)
class ChargeRecord:
    """One recorded release; ``epsilon_after`` is ε of the history up to and including it."""

    id: int
    dataset_id: str
    recorded_at: datetime
    run_id: str
    round: int | None
    event: PrivacyEvent
    delta: float
    epsilon_after: float
    data_fingerprint: str | None
    note: str | None


@dataclass(frozen=True)
class BudgetChangeRecord:
    """A cap as set at registration (``old_cap`` None) or changed later."""

    id: int
    dataset_id: str
    changed_at: datetime
    old_cap: float | None
    new_cap: float
    reason: str | None


class PrivacyLedger:
    """Budgets and charge history of a clinic's data sets, in any SQLAlchemy database.

    Usable as a context manager; :meth:`close` releases the database connections.
    With ``signing_key`` (always, via :meth:`in_state_dir`) every change is also appended to
    the audit log in the same database; without one (planning tools, tests of the ledger
    alone) nothing is audited.
    """

    def __init__(self, url: str | URL, signing_key: Ed25519PrivateKey | None = None) -> None:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine)
        self._engine = engine
        # Same pool, but its transactions take the write lock up front on SQLite (see
        # _configure_sqlite); PostgreSQL gets the equivalent from SELECT ... FOR UPDATE.
        self._locking_engine = engine.execution_options(**{_WRITE_LOCK: True})
        Base.metadata.create_all(self._locking_engine)
        self.audit = None if signing_key is None else AuditLog(self._locking_engine, signing_key)

    @classmethod
    def read_only(cls, path: Path) -> Self:
        """A SQLite ledger file opened for reading only, as reports and audits open it.

        Nothing can be written through it, not even by accident: the file is opened
        read-only (:func:`~privacy.audit_log.read_only_engine`), no table is created, no
        pragma changes its journal, no key is needed or made, and nothing is audited. A
        charge through it fails in SQLite.
        """
        ledger = cls.__new__(cls)
        ledger._engine = read_only_engine(path)
        ledger._locking_engine = ledger._engine.execution_options()  # no write lock to take
        ledger.audit = None
        return ledger

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> Self:
        """The ledger of a clinic node: ``<state_dir>/ledger.db``, created if missing, audited
        with the node's signing key (created on first use, see :mod:`privacy.keys`)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            URL.create("sqlite", database=str(state_dir / "ledger.db")),
            signing_key=load_or_create_signing_key(state_dir),
        )

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- budgets ------------------------------------------------------------------------------

    def ensure_dataset(
        self,
        dataset_id: str,
        epsilon_cap: float,
        delta: float,
        accountant: str = DEFAULT_ACCOUNTANT,
        *,
        reason: str | None = None,
    ) -> Budget:
        """Register a data set's budget, or confirm it; a new cap is recorded as a change.

        Safe to call at every start-up with the node's configuration. Once anything has
        been charged, δ and the accountant are fixed: ε of the stored history was checked
        against the cap at that δ with that accountant, and switching either would
        re-interpret the history (RDP, for one, reports a larger ε for the same events).
        ``reason`` is kept with a cap change for the audit trail.
        """
        _validate_budget(dataset_id, epsilon_cap, delta, accountant)
        with self._transaction(lock=True) as session:
            row = _lock_dataset(session, dataset_id)
            if row is None:
                row = LedgerDataset(
                    dataset_id=dataset_id,
                    epsilon_cap=epsilon_cap,
                    delta=delta,
                    accountant=accountant,
                )
                session.add(row)
                session.flush()  # no ORM relationship orders the inserts; the FK needs the row
                registered = BudgetChange(
                    dataset_id=dataset_id,
                    old_cap=None,
                    new_cap=epsilon_cap,
                    reason=reason or "registered",
                )
                session.add(registered)
                session.flush()  # its id binds the row to the audit entry
                self._audit(
                    session,
                    DATASET_REGISTERED,
                    {
                        "dataset_id": dataset_id,
                        "epsilon_cap": epsilon_cap,
                        "delta": delta,
                        "accountant": accountant,
                        "reason": reason or "registered",
                        "budget_change_id": registered.id,
                    },
                )
                return _budget(row, [])
            history = _history_events(session, dataset_id)
            if history and (row.delta, row.accountant) != (delta, accountant):
                raise InvalidBudget(
                    f"dataset {dataset_id!r} already has {len(history)} charge(s) accounted at "
                    f"δ={row.delta:g} with the {row.accountant} accountant; changing to "
                    f"δ={delta:g} / {accountant} would re-interpret that history under a "
                    "different guarantee. Register the data under a new dataset id instead."
                )
            # Every value ε depends on is in the audit entry, so that an edit of the row
            # shows against the log; δ and the accountant can only change here before the
            # first charge, and are logged then too, although no cap change row records it.
            change: BudgetChange | None = None
            if row.epsilon_cap != epsilon_cap:
                change = BudgetChange(
                    dataset_id=dataset_id,
                    old_cap=row.epsilon_cap,
                    new_cap=epsilon_cap,
                    reason=reason,
                )
                session.add(change)
                session.flush()  # its id binds the row to the audit entry
            if change is not None or (row.delta, row.accountant) != (delta, accountant):
                self._audit(
                    session,
                    BUDGET_CHANGED,
                    {
                        "dataset_id": dataset_id,
                        "old_cap": row.epsilon_cap,
                        "new_cap": epsilon_cap,
                        "old_delta": row.delta,
                        "delta": delta,
                        "old_accountant": row.accountant,
                        "accountant": accountant,
                        "reason": reason,
                        "budget_change_id": None if change is None else change.id,
                    },
                )
            row.delta, row.accountant, row.epsilon_cap = delta, accountant, epsilon_cap
        return _budget(row, history)

    def budget(self, dataset_id: str) -> Budget:
        """The data set's cap and what its history has spent; :class:`UnknownDataset` if none."""
        with self._transaction() as session:
            row = _get_dataset(session, dataset_id)
            history = _history_events(session, dataset_id)
        return _budget(row, history)

    def datasets(self) -> list[Budget]:
        """Every registered data set's budget, by dataset id."""
        with self._transaction() as session:
            rows = session.scalars(select(LedgerDataset).order_by(LedgerDataset.dataset_id)).all()
            loaded = [(row, _history_events(session, row.dataset_id)) for row in rows]
        return [_budget(row, history) for row, history in loaded]

    def budget_changes(self, dataset_id: str) -> list[BudgetChangeRecord]:
        """How the data set's cap was set and changed, oldest first."""
        with self._transaction() as session:
            _get_dataset(session, dataset_id)
            rows = session.scalars(
                select(BudgetChange)
                .where(BudgetChange.dataset_id == dataset_id)
                .order_by(BudgetChange.id)
            )
            return [
                BudgetChangeRecord(
                    id=row.id,
                    dataset_id=row.dataset_id,
                    changed_at=row.changed_at,
                    old_cap=row.old_cap,
                    new_cap=row.new_cap,
                    reason=row.reason,
                )
                for row in rows
            ]

    # --- charges ------------------------------------------------------------------------------

    def preview(self, dataset_id: str, event: PrivacyEvent) -> float:
        """ε the data set would reach after ``event``; writes nothing and reserves nothing."""
        with self._transaction() as session:
            row = _get_dataset(session, dataset_id)
            history = _history_events(session, dataset_id)
        return get_accountant(row.accountant).epsilon([*history, event], row.delta)

    def charge(
        self,
        dataset_id: str,
        event: PrivacyEvent,
        *,
        run_id: str,
        round: int | None = None,
        data_fingerprint: str | None = None,
        note: str | None = None,
    ) -> ChargeRecord:
        """Record ``event`` against the data set's budget, or raise :class:`BudgetExceeded`.

        Call this before the update or statistic leaves the clinic; when it returns, the
        charge is committed. The lock is held while ε is recomputed, so a concurrent
        charge waits and then sees this one in the history.
        """
        with self._transaction(lock=True) as session:
            row = _lock_dataset(session, dataset_id)
            if row is None:
                raise _unknown(session, dataset_id)
            history = _history_events(session, dataset_id)
            accountant = get_accountant(row.accountant)
            epsilon_after = accountant.epsilon([*history, event], row.delta)
            audited = {
                "dataset_id": dataset_id,
                "run_id": run_id,
                "round": round,
                **event_to_dict(event),
                "delta": row.delta,
                "accountant": row.accountant,
                "epsilon_cap": row.epsilon_cap,
            }
            refused: BudgetExceeded | None = None
            if epsilon_after > row.epsilon_cap:
                refused = BudgetExceeded(
                    dataset_id,
                    spent=accountant.epsilon(history, row.delta),
                    would_spend=epsilon_after,
                    cap=row.epsilon_cap,
                    delta=row.delta,
                    accountant=row.accountant,
                )
                self._audit(
                    session,
                    LEDGER_REFUSED,
                    audited | {"epsilon_before": refused.spent, "epsilon_would_be": epsilon_after},
                )
            else:
                epsilon_before = _last_receipt(session, dataset_id)
                charge = LedgerCharge(
                    dataset_id=dataset_id,
                    run_id=run_id,
                    round=round,
                    mechanism=mechanism_name(event),
                    noise_multiplier=event.noise_multiplier,
                    sample_rate=event.sample_rate if isinstance(event, DpSgdEvent) else None,
                    steps=repetitions(event),
                    delta=row.delta,
                    epsilon_after=epsilon_after,
                    data_fingerprint=data_fingerprint,
                    note=note,
                )
                session.add(charge)
                session.flush()  # assigns id and defaults before the record is built
                record = _charge_record(charge)
                self._audit(
                    session,
                    LEDGER_CHARGE,
                    audited
                    | {
                        "charge_id": record.id,
                        "epsilon_before": epsilon_before,
                        "epsilon_after": epsilon_after,
                        "data_fingerprint": data_fingerprint,
                    },
                )
        # Raised only now, after the transaction has committed the refusal's audit entry
        # (and no ledger row): the refusal itself is part of the record.
        if refused is not None:
            raise refused
        return record

    def _audit(self, session: Session, kind: str, payload: dict[str, Any]) -> None:
        """Append to the audit log inside ``session``'s transaction (if this ledger audits)."""
        if self.audit is not None:
            self.audit.append(kind, payload, session=session)

    def spent(self, dataset_id: str, accountant: str | None = None) -> float:
        """ε of the data set's whole history, recomputed now.

        By default with the data set's own accountant; naming another one (e.g. ``"rdp"``
        for a cross-check) recomputes the same history with it at the same δ.
        """
        with self._transaction() as session:
            row = _get_dataset(session, dataset_id)
            history = _history_events(session, dataset_id)
        return get_accountant(accountant or row.accountant).epsilon(history, row.delta)

    def history(self, dataset_id: str) -> list[ChargeRecord]:
        """The data set's charges, oldest first."""
        with self._transaction() as session:
            _get_dataset(session, dataset_id)
            return [_charge_record(row) for row in _history_rows(session, dataset_id)]

    @contextmanager
    def _transaction(self, *, lock: bool = False) -> Iterator[Session]:
        """A session inside one transaction, committed on success and rolled back on error."""
        with (
            Session(
                self._locking_engine if lock else self._engine, expire_on_commit=False
            ) as session,
            session.begin(),
        ):
            yield session


def _configure_sqlite(engine: Engine) -> None:
    """Make SQLite a safe home for a budget: durable, consistent and serialised charges.

    - WAL lets readers (reports, ``spent``) proceed while a charge holds the write lock.
    - ``synchronous=FULL`` fsyncs every commit, so a charge that returned survives power loss
      (WAL's usual NORMAL may lose the last commits).
    - Foreign keys are off by default in SQLite; charges must belong to a data set.
    - pysqlite's own transaction handling is disabled so SQLAlchemy emits BEGIN itself, and
      locking transactions start with BEGIN IMMEDIATE: the write lock is taken before the
      history is read, so two charges cannot both read the same history and both pass.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        locking = connection.get_execution_options().get(_WRITE_LOCK, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if locking else "BEGIN")


def _validate_budget(dataset_id: str, epsilon_cap: float, delta: float, accountant: str) -> None:
    if not dataset_id or not dataset_id.strip():
        raise InvalidBudget("dataset_id must be a non-empty string")
    if not (math.isfinite(epsilon_cap) and epsilon_cap > 0):
        raise InvalidBudget(f"epsilon_cap must be a finite number > 0, got {epsilon_cap!r}")
    if not (0 < delta < 1):
        raise InvalidBudget(f"delta must be in (0, 1), got {delta!r}")
    if accountant not in ACCOUNTANTS:
        raise InvalidBudget(
            f"unknown accountant {accountant!r}; choose one of {', '.join(sorted(ACCOUNTANTS))}"
        )


def _lock_dataset(session: Session, dataset_id: str) -> LedgerDataset | None:
    """The data set row, locked until commit (FOR UPDATE; SQLite already holds the lock)."""
    return session.scalars(
        select(LedgerDataset).where(LedgerDataset.dataset_id == dataset_id).with_for_update()
    ).one_or_none()


def _get_dataset(session: Session, dataset_id: str) -> LedgerDataset:
    row = session.get(LedgerDataset, dataset_id)
    if row is None:
        raise _unknown(session, dataset_id)
    return row


def _unknown(session: Session, dataset_id: str) -> UnknownDataset:
    known = session.scalars(select(LedgerDataset.dataset_id).order_by(LedgerDataset.dataset_id))
    return UnknownDataset(
        f"dataset {dataset_id!r} is not registered in the privacy ledger "
        f"(registered: {', '.join(known) or 'none'}); register it with ensure_dataset first"
    )


def _history_rows(session: Session, dataset_id: str) -> Sequence[LedgerCharge]:
    return session.scalars(
        select(LedgerCharge).where(LedgerCharge.dataset_id == dataset_id).order_by(LedgerCharge.id)
    ).all()


def _history_events(session: Session, dataset_id: str) -> list[PrivacyEvent]:
    return [_event_of(row) for row in _history_rows(session, dataset_id)]


def _last_receipt(session: Session, dataset_id: str) -> float:
    """ε recorded by the data set's latest charge (0 if none): the audit's "ε before".

    A receipt, not an input to any decision: the cap check always recomputes.
    """
    receipt = session.scalar(
        select(LedgerCharge.epsilon_after)
        .where(LedgerCharge.dataset_id == dataset_id)
        .order_by(LedgerCharge.id.desc())
        .limit(1)
    )
    return 0.0 if receipt is None else float(receipt)


def _event_of(row: LedgerCharge) -> PrivacyEvent:
    """The stored mechanism as an event, re-validated so a corrupted row cannot pass silently."""
    data: dict[str, Any] = {"mechanism": row.mechanism, "noise_multiplier": row.noise_multiplier}
    if row.mechanism == "dpsgd":
        data |= {"sample_rate": row.sample_rate, "steps": row.steps}
    else:
        data["count"] = row.steps
    return event_from_dict(data)


def _charge_record(row: LedgerCharge) -> ChargeRecord:
    return ChargeRecord(
        id=row.id,
        dataset_id=row.dataset_id,
        recorded_at=row.recorded_at,
        run_id=row.run_id,
        round=row.round,
        event=_event_of(row),
        delta=row.delta,
        epsilon_after=row.epsilon_after,
        data_fingerprint=row.data_fingerprint,
        note=row.note,
    )


def _budget(row: LedgerDataset, history: Sequence[PrivacyEvent]) -> Budget:
    spent = get_accountant(row.accountant).epsilon(history, row.delta)
    return Budget(
        dataset_id=row.dataset_id,
        epsilon_cap=row.epsilon_cap,
        delta=row.delta,
        accountant=row.accountant,
        spent=spent,
        remaining=max(0.0, row.epsilon_cap - spent),
    )
