"""The per-clinic privacy ledger: every release is charged here before it leaves the clinic.

A charge is atomic. In one transaction the ledger locks the data set, recomputes ε over the
whole stored history plus the new event with the data set's accountant, refuses with
:class:`BudgetExceeded` (changing nothing) if that would pass the cap, and otherwise
records the event and commits before returning. Two processes charging the same data set
therefore cannot both squeeze under the cap, and an update that is sent has always been
paid for.

ε is never cached or summed per round: composition theorems make the ε of a history smaller
than the sum of its parts, and only a recomputation from the stored mechanisms can be
checked by an auditor. The recomputation is the expensive part of a charge, so it is done
first on a snapshot of the history, outside the lock; under the lock the history is read
again and the result is used only if that history is exactly the snapshot (otherwise the
charge is quoted again, and its last attempt recomputes under the lock). The decision is
therefore always made on the locked history, and the lock is mostly held only for the time
it takes to read and write a few rows.

A busy ledger is a refusal, not a crash: the write lock is waited for in bounded attempts,
and past :data:`DEFAULT_LOCK_WAIT` the call raises :class:`LedgerBusy`, which says that
nothing was charged and that the call can be retried.

The schema is migrated, never made by ``create_all``: opening a ledger brings its database
to the newest revision of ``privacy/migrations`` under the write lock (one opener migrates,
the others wait and find it done), adopts a ledger made before migrations existed, and
refuses one written by a newer release (:mod:`privacy.schema_migrations`).

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
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache, partial
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Self, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import URL, Connection, Engine, Row, create_engine, event, make_url, select
from sqlalchemy.exc import DBAPIError
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
    event_to_dict,
    mechanism_name,
    repetitions,
)
from oralfed.privacy.keys import load_or_create_signing_key
from oralfed.privacy.ledger_models import (
    CHARGE_EVENT_COLUMNS,
    BudgetChange,
    LedgerCharge,
    LedgerDataset,
    charged_event,
)
from oralfed.privacy.schema_migrations import SchemaError, SchemaMigrations
from oralfed.schemas.errors import ExitCode, OralFedError

__all__ = [
    "DEFAULT_LOCK_WAIT",
    "LEDGER_FILE",
    "LEDGER_SCHEMA",
    "Budget",
    "BudgetChangeRecord",
    "BudgetExceeded",
    "ChargeRecord",
    "InvalidBudget",
    "LedgerBusy",
    "LedgerError",
    "PrivacyLedger",
    "UnaccountableCharge",
    "UnknownDataset",
    "migrate_ledger_file",
]

# The clinic ledger's migrations (its ledger and audit log tables).
LEDGER_SCHEMA: Final = SchemaMigrations("clinic ledger", Path(__file__).with_name("migrations"))
# How long, in seconds, a write waits in all for the lock before it is refused as busy.
DEFAULT_LOCK_WAIT: Final = 60.0
# Charges quoted outside the lock before the last attempt recomputes under it (_Quote).
_QUOTE_ATTEMPTS: Final = 3
# One attempt's wait for the lock (SQLite's busy timeout); attempts repeat until the bound.
_LOCK_ATTEMPT_S: Final = 5.0
# Execution option marking connections whose transactions must take the write lock at BEGIN.
_WRITE_LOCK = "oralfed_write_lock"
_T = TypeVar("_T")
# The ledger's file in a clinic's state directory.
LEDGER_FILE: Final = "ledger.db"
# SQLite's primary result codes for a lock held by another connection.
_BUSY_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class LedgerError(OralFedError):
    """A ledger refusal or misuse, with a message meant for the operator."""

    exit_code: ClassVar[ExitCode] = ExitCode.LEDGER


class UnaccountableCharge(LedgerError):
    """A stored charge no event can be made of: a row edited outside the ledger."""


class UnknownDataset(LedgerError):
    """The data set was never registered with :meth:`PrivacyLedger.ensure_dataset`."""


class InvalidBudget(LedgerError):
    """A budget that cannot be registered, or a change that would invalidate the history."""


class LedgerBusy(LedgerError):
    """Another process held the ledger's write lock past the bound; nothing was charged
    or changed, and the same call can simply be retried."""

    def __init__(self, where: str, waited: float) -> None:
        self.where = where
        self.waited = waited
        super().__init__(
            f"{where}: the privacy ledger is busy (other processes held its write lock for "
            f"{waited:.1f} s); nothing was charged or changed. Retry the request."
        )


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
    alone) nothing is audited. Opening migrates the database to the newest schema
    (:attr:`migrated_from` is the revision it was at, None if it was new or pre-migration).
    Any failure of the database, opening or later, is a :class:`LedgerError` naming it;
    ``lock_wait`` bounds how long a write waits for the lock before :class:`LedgerBusy`.
    """

    def __init__(
        self,
        url: str | URL,
        signing_key: Ed25519PrivateKey | None = None,
        *,
        lock_wait: float = DEFAULT_LOCK_WAIT,
    ) -> None:
        parsed = make_url(url)
        self._where = _describe(parsed)
        self._lock_wait = lock_wait
        engine = create_engine(parsed)
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine, busy_timeout=min(lock_wait, _LOCK_ATTEMPT_S))
        self._engine = engine
        # Same pool, but its transactions take the write lock up front on SQLite (see
        # _configure_sqlite); PostgreSQL gets the equivalent from SELECT ... FOR UPDATE.
        self._locking_engine = engine.execution_options(**{_WRITE_LOCK: True})
        try:
            self.migrated_from = self._migrate()
        except BaseException:
            engine.dispose()
            raise
        self.audit = (
            None
            if signing_key is None
            else AuditLog(self._locking_engine, signing_key, reader=engine)
        )

    @classmethod
    def read_only(cls, path: Path) -> Self:
        """A SQLite ledger file opened for reading only, as reports and audits open it.

        Nothing can be written through it, not even by accident: the file is opened
        read-only (:func:`~privacy.audit_log.read_only_engine`), no table is created, no
        pragma changes its journal, no key is needed or made, and nothing is audited. A
        charge through it fails in SQLite.
        """
        ledger = cls.__new__(cls)
        ledger._where = str(path)
        ledger._lock_wait = 0.0  # nothing is written, so no lock is waited for
        ledger._engine = read_only_engine(path)
        ledger._locking_engine = ledger._engine.execution_options()  # no write lock to take
        ledger.migrated_from = None
        ledger.audit = None
        return ledger

    @classmethod
    def in_state_dir(cls, state_dir: Path, *, lock_wait: float = DEFAULT_LOCK_WAIT) -> Self:
        """The ledger of a clinic node: ``<state_dir>/ledger.db``, created if missing, audited
        with the node's signing key (created on first use, see :mod:`privacy.keys`)."""
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LedgerError(
                f"{state_dir}: the clinic's state directory cannot be created "
                f"({error.strerror or error}); nothing was changed"
            ) from None
        return cls(
            _ledger_url(state_dir / LEDGER_FILE),
            signing_key=load_or_create_signing_key(state_dir),
            lock_wait=lock_wait,
        )

    def _migrate(self) -> str | None:
        """Bring the database to the newest schema; the revision it was at.

        Checked first without the lock (the common case: nothing to do, and no process waits
        for another just to open the ledger), then migrated under it, where the revision is
        read again: a concurrent opener that migrated first leaves nothing to do. A check
        that finds the database busy (an opener migrating it holds the lock) waits for the
        lock like any write, instead of refusing at once.
        """
        try:
            with self._transaction() as session:
                current = LEDGER_SCHEMA.current(session.connection())
        except LedgerBusy:  # another opener is migrating it: wait for that under the lock
            current = None
        if current == LEDGER_SCHEMA.head:
            return current
        return self._write(lambda session: LEDGER_SCHEMA.upgrade(session.connection()))

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
        row, history = self._write(
            lambda session: self._register(
                session, dataset_id, epsilon_cap, delta, accountant, reason
            )
        )
        return _budget(row, history)

    def _register(
        self,
        session: Session,
        dataset_id: str,
        epsilon_cap: float,
        delta: float,
        accountant: str,
        reason: str | None,
    ) -> tuple[LedgerDataset, list[PrivacyEvent]]:
        """:meth:`ensure_dataset`'s work under the lock: the row and its history."""
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
            return row, []
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
        return row, history

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
        charge is committed. The decision is made under the lock on the locked history, so
        a concurrent charge waits and then sees this one in the history. The accountant's
        work is done beforehand on a snapshot (:class:`_Quote`) and used under the lock only
        if the locked history is that snapshot; if another charge came in between, the lock
        is released unused and the charge quoted again, and the last of
        :data:`_QUOTE_ATTEMPTS` attempts recomputes under the lock, as a charge always may.
        Many processes charging at once thus compute side by side and hold the lock only to
        check and write. :class:`LedgerBusy` if the lock cannot be had within the bound:
        nothing was charged.
        """
        started = time.monotonic()
        attempt = 0
        outcome: ChargeRecord | BudgetExceeded | None = None
        while outcome is None:
            attempt += 1
            with self._transaction() as session:
                row = _get_dataset(session, dataset_id)
                quote = _Quote.of(row, _history_events(session, dataset_id), event)
            work = partial(
                self._charge_locked,
                quote=quote,
                event=event,
                run_id=run_id,
                round=round,
                data_fingerprint=data_fingerprint,
                note=note,
                recompute=attempt >= _QUOTE_ATTEMPTS,
            )
            outcome = self._write(work, started=started)
        # Raised only now, after the transaction has committed the refusal's audit entry
        # (and no ledger row): the refusal itself is part of the record.
        if isinstance(outcome, BudgetExceeded):
            raise outcome
        return outcome

    def _charge_locked(
        self,
        session: Session,
        *,
        quote: _Quote,
        event: PrivacyEvent,
        run_id: str,
        round: int | None,
        data_fingerprint: str | None,
        note: str | None,
        recompute: bool,
    ) -> ChargeRecord | BudgetExceeded | None:
        """:meth:`charge`'s work under the lock: the record, or the refusal it committed;
        None, having written nothing, if ``quote`` is not of the locked history and
        ``recompute`` is false."""
        dataset_id = quote.dataset_id
        row = _lock_dataset(session, dataset_id)
        if row is None:
            raise _unknown(session, dataset_id)
        history = _history_events(session, dataset_id)
        if not quote.is_for(row, history):
            if not recompute:
                return None
            quote = _Quote.of(row, history, event)
        epsilon_after = quote.epsilon_after
        audited = {
            "dataset_id": dataset_id,
            "run_id": run_id,
            "round": round,
            **event_to_dict(event),
            "delta": row.delta,
            "accountant": row.accountant,
            "epsilon_cap": row.epsilon_cap,
        }
        if epsilon_after > row.epsilon_cap:
            refused = BudgetExceeded(
                dataset_id,
                spent=quote.spent(),
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
            return refused
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

    def _write(self, work: Callable[[Session], _T], *, started: float | None = None) -> _T:
        """``work`` in one transaction that holds the write lock, committed on success.

        The lock is waited for in attempts of at most :data:`_LOCK_ATTEMPT_S` (SQLite's busy
        timeout), with a short random pause between them so that waiting processes do not
        retry in step, until ``lock_wait`` seconds have passed: then :class:`LedgerBusy`.
        A busy attempt was rolled back whole, so repeating ``work`` cannot charge twice.
        ``started`` is when the caller began waiting, if earlier than this call.
        """
        started = time.monotonic() if started is None else started
        attempt = 0
        while True:
            try:
                with self._transaction(lock=True) as session:
                    return work(session)
            except LedgerBusy:
                waited = time.monotonic() - started
                if waited >= self._lock_wait:
                    raise LedgerBusy(self._where, waited) from None
                attempt += 1
                pause = random.uniform(0.0, min(1.0, 0.05 * 2**attempt))
                time.sleep(min(pause, max(0.0, self._lock_wait - waited)))

    @contextmanager
    def _transaction(self, *, lock: bool = False) -> Iterator[Session]:
        """A session inside one transaction, committed on success and rolled back on error.

        A failure of the database itself is a :class:`LedgerError` naming it and why (a
        busy database a :class:`LedgerBusy`); the transaction was rolled back, so nothing
        was changed.
        """
        started = time.monotonic()
        try:
            with (
                Session(
                    self._locking_engine if lock else self._engine, expire_on_commit=False
                ) as session,
                session.begin(),
            ):
                yield session
        except DBAPIError as error:
            if _sqlite_code(error) in _BUSY_CODES:
                raise LedgerBusy(self._where, time.monotonic() - started) from None
            raise _database_error(self._where, self._engine, error) from None
        except SchemaError as error:
            raise LedgerError(f"{self._where}: {error}") from None


def migrate_ledger_file(path: Path) -> tuple[str | None, str]:
    """Migrate an existing ledger file on an operator's command (``oralfed clinic migrate``):
    the revision it was at (None: made before migrations) and the one it is at now.

    The same migration every opening runs; :class:`LedgerError` if there is no such file, so
    that a mistyped path does not create an empty ledger.
    """
    if not path.is_file():
        raise LedgerError(f"{path}: no ledger database file here; nothing was changed")
    with PrivacyLedger(_ledger_url(path)) as ledger:
        return ledger.migrated_from, LEDGER_SCHEMA.head


@dataclass(frozen=True)
class _Quote:
    """ε a charge would bring a data set to, computed on a snapshot of its history before
    the lock is taken.

    Under the lock it stands only for exactly the history it was computed on, at the same
    δ with the same accountant (:meth:`is_for`); otherwise it is quoted again. The
    accountants are deterministic, so an equal history means an equal ε: reusing the quote
    changes when the work is done, never what is decided.
    """

    dataset_id: str
    accountant: str
    delta: float
    history: tuple[PrivacyEvent, ...]
    epsilon_after: float
    # ε of the history alone, for a refusal: computed with the quote when it already passes
    # the cap, else only if a refusal needs it.
    epsilon_before: float | None

    @classmethod
    def of(cls, row: LedgerDataset, history: Sequence[PrivacyEvent], event: PrivacyEvent) -> Self:
        accountant = get_accountant(row.accountant)
        after = accountant.epsilon([*history, event], row.delta)
        before = accountant.epsilon(history, row.delta) if after > row.epsilon_cap else None
        return cls(row.dataset_id, row.accountant, row.delta, tuple(history), after, before)

    def is_for(self, row: LedgerDataset, history: Sequence[PrivacyEvent]) -> bool:
        """Whether the locked ``row`` and ``history`` are what the quote was computed on."""
        return (row.accountant, row.delta, tuple(history)) == (
            self.accountant,
            self.delta,
            self.history,
        )

    def spent(self) -> float:
        """ε of the history the quote was computed on."""
        if self.epsilon_before is not None:
            return self.epsilon_before
        return get_accountant(self.accountant).epsilon(self.history, self.delta)


def _ledger_url(path: Path) -> URL:
    return URL.create("sqlite", database=str(path))


def _sqlite_file(engine: Engine) -> Path | None:
    """The file of a SQLite engine (None: another database, or in memory)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


def _describe(url: URL) -> str:
    """How messages name the ledger: its file, or its URL without a password."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def _sqlite_code(error: DBAPIError) -> int | None:
    """SQLite's primary result code of a driver error (None on other databases)."""
    code = getattr(error.orig, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _database_error(where: str, engine: Engine, error: DBAPIError) -> LedgerError:
    """The operator's words for a database that failed: which file, what is wrong."""
    reason = str(error.orig)
    code = _sqlite_code(error)
    path = _sqlite_file(engine)
    unreadable = "not a readable ledger database:"
    restore = "restore the clinic's state from its backup, or move the file aside"
    if path is not None and path.is_dir():
        what = f"{unreadable} it is a directory, not a file"
    elif code == sqlite3.SQLITE_NOTADB:
        what = f"{unreadable} it is not an SQLite database (damaged, or another file); {restore}"
    elif code == sqlite3.SQLITE_CORRUPT:
        what = f"{unreadable} it is damaged ({reason}); {restore}"
    elif code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
        folder = "its folder" if path is None else str(path.parent)
        what = (
            f"cannot be opened for writing ({reason}): the ledger writes the file and its "
            f"-wal and -shm journals beside it, so {folder} must be writable by this process"
        )
    elif code == sqlite3.SQLITE_FULL:
        what = "cannot be written: the disk is full"
    else:
        what = f"the ledger database failed ({reason})"
    return LedgerError(f"{where}: {what}; nothing was changed")


def _configure_sqlite(engine: Engine, *, busy_timeout: float) -> None:
    """Make SQLite a safe home for a budget: durable, consistent and serialised charges.

    - ``busy_timeout`` (seconds) is how long one attempt waits for another process's lock.
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
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
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


def _history_rows(session: Session, dataset_id: str) -> Sequence[Row[Any]]:
    """The data set's charge rows, oldest first, as plain rows (not ORM objects, which cost
    more to build than the rest of a report of a long history)."""
    charges = LedgerCharge.__table__
    return session.execute(
        select(charges).where(charges.c.dataset_id == dataset_id).order_by(charges.c.id)
    ).all()


def _history_events(session: Session, dataset_id: str) -> list[PrivacyEvent]:
    """The data set's events, oldest first, read as plain columns: every charge reads the
    whole history twice, and building ORM objects for thousands of rows was most of a
    charge's time on a long-lived ledger."""
    columns = [getattr(LedgerCharge, name) for name in CHARGE_EVENT_COLUMNS]
    rows = session.execute(
        select(LedgerCharge.id, *columns)
        .where(LedgerCharge.dataset_id == dataset_id)
        .order_by(LedgerCharge.id)
    )
    return [_event_from_columns(row[0], tuple(row[1:])) for row in rows]


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


def _event_of(row: LedgerCharge | Row[Any]) -> PrivacyEvent:
    """The stored mechanism as an event, re-validated so a corrupted row cannot pass silently."""
    return _event_from_columns(row.id, tuple(getattr(row, name) for name in CHARGE_EVENT_COLUMNS))


def _event_from_columns(charge_id: int, values: tuple[Any, ...]) -> PrivacyEvent:
    try:
        return _validated_event(values)
    except ValueError as error:
        raise UnaccountableCharge(
            f"ledger charge {charge_id} cannot be accounted ({error}): the ledger never "
            "charges such a release, so the row was edited; `oralfed audit verify` shows what "
            "changed"
        ) from None


@lru_cache(maxsize=1024)
def _validated_event(values: tuple[Any, ...]) -> PrivacyEvent:
    """The event of one row's columns (a history repeats a few distinct ones: validating each
    once is enough, events are immutable). A row that fails validation is never cached."""
    return charged_event(dict(zip(CHARGE_EVENT_COLUMNS, values, strict=True)))


def _charge_record(row: LedgerCharge | Row[Any]) -> ChargeRecord:
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
