"""The ledger's rows checked against what the signed audit log recorded about them.

A verified chain (:mod:`privacy.audit_verify`) proves the log was not edited; this proves
the *ledger* was not edited around it. The ledger binds every value that ε depends on into
the entry it writes in the same transaction (:mod:`privacy.ledger`): a data set's δ,
accountant and cap at registration and at every change, and each charge's mechanism and
parameters, run, round, δ, the cap it was checked against and its ε before and after. So:

- every ledger row is compared with the entry that recorded it, value by value: a row
  edited, added or deleted (a data set, a cap change, a charge) is named with its entry;
- the log is replayed against itself: each charge must have been made at the δ,
  accountant and cap the log had set, under that cap, and right after the receipt of the
  data set's previous charge; otherwise the ledger had been edited when it charged (and
  may have been put back since);
- ε is recomputed from the *logged* history, at the logged δ with the logged accountant,
  and compared with ε of the ledger's rows as the ledger computes it for its cap check:
  a ledger whose δ was raised to 0.5 gives ε ≈ 0 and would pass any release.

Rows are read raw (:func:`read_ledger_rows`), in the same snapshot as the log: a column
holding NULL or garbage is a finding to report, not an error that stops the check. This
is the one module that knows both sides, so the dependency runs one way: the ledger
writes the audit log, and neither imports this.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, TypeGuard

from sqlalchemy import Connection, column, select, table
from sqlalchemy.exc import SQLAlchemyError

from oralfed.privacy.accountants import get_accountant
from oralfed.privacy.audit_log import (
    BUDGET_CHANGED,
    DATASET_REGISTERED,
    LEDGER_CHARGE,
    LEDGER_REFUSED,
    AuditEntry,
)
from oralfed.privacy.audit_verify import AuditFailure
from oralfed.privacy.budget_report import RECEIPT_TOLERANCE
from oralfed.privacy.events import PrivacyEvent, event_from_dict
from oralfed.privacy.ledger_models import (
    Base,
    BudgetChange,
    LedgerCharge,
    LedgerDataset,
    charged_event,
)

__all__ = ["LedgerRows", "cross_check_ledger", "read_ledger_rows"]

Row: TypeAlias = Mapping[str, Any]

_PROBLEM: Final = "ledger-mismatch"

DATASETS: Final = LedgerDataset.__tablename__
CHARGES: Final = LedgerCharge.__tablename__
BUDGET_CHANGES: Final = BudgetChange.__tablename__

# The values of a data set's budget that ε and the cap check depend on, as the ledger's
# row and the log's entries name them.
_BUDGET_FIELDS: Final = ("delta", "accountant", "epsilon_cap")
# A charge row's columns that its audit entry records (``note`` and the time are not bound).
_CHARGE_COLUMNS: Final = (
    "dataset_id",
    "run_id",
    "round",
    "mechanism",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "delta",
    "epsilon_after",
    "data_fingerprint",
)
_EVENT_KEYS: Final = ("mechanism", "noise_multiplier", "sample_rate", "steps", "count")
# What a budget change entry sets: its key, and the budget field it sets.
_CHANGED_FIELDS: Final = (
    ("new_cap", "epsilon_cap"),
    ("delta", "delta"),
    ("accountant", "accountant"),
)


@dataclass(frozen=True)
class LedgerRows:
    """The ledger's tables as stored, every value unconverted, and why a table could not be
    read (a table dropped or mangled is a finding too)."""

    datasets: tuple[Row, ...] = ()
    charges: tuple[Row, ...] = ()
    budget_changes: tuple[Row, ...] = ()
    unreadable: Mapping[str, str] = field(default_factory=dict)  # table → why


def read_ledger_rows(connection: Connection) -> LedgerRows:
    """Every row of the ledger's tables through ``connection``, in primary-key order.

    The tables are selected without their column types, so nothing is parsed on the way:
    a text in a float column, or a NULL, arrives as it is stored.
    """
    read: dict[str, tuple[Row, ...]] = {}
    unreadable: dict[str, str] = {}
    for name in (DATASETS, CHARGES, BUDGET_CHANGES):
        stored = Base.metadata.tables[name]
        raw = table(name, *(column(c.name) for c in stored.columns))
        query = select(raw).order_by(*(raw.c[c.name] for c in stored.primary_key))
        try:
            read[name] = tuple(dict(row) for row in connection.execute(query).mappings())
        except SQLAlchemyError as error:
            unreadable[name] = str(getattr(error, "orig", None) or error)
    return LedgerRows(
        read.get(DATASETS, ()), read.get(CHARGES, ()), read.get(BUDGET_CHANGES, ()), unreadable
    )


def cross_check_ledger(entries: Sequence[AuditEntry], rows: LedgerRows) -> list[AuditFailure]:
    """Every way the ledger's rows disagree with the log, or the log with itself; each
    failure names the entry (position and seq) and the ledger row it is about."""
    log = _LoggedLedger.replay(entries)
    failures = list(log.failures)
    for name, reason in rows.unreadable.items():
        failures.append(
            AuditFailure(0, None, _PROBLEM, f"the ledger's table {name} cannot be read ({reason})")
        )
    if DATASETS not in rows.unreadable:
        failures += _dataset_failures(log, rows.datasets)
    if BUDGET_CHANGES not in rows.unreadable:
        failures += _budget_change_failures(log, rows.budget_changes)
    if CHARGES not in rows.unreadable:
        failures += _charge_failures(log, rows.charges)
        if DATASETS not in rows.unreadable:
            failures += _epsilon_failures(log, rows)
    return failures


@dataclass(frozen=True)
class _Logged:
    """An entry the check relies on: where it is stored, and its payload."""

    position: int
    seq: int
    kind: str
    payload: dict[str, Any]

    def failure(self, detail: str, row: str | None = None) -> AuditFailure:
        return AuditFailure(self.position, self.seq, _PROBLEM, detail, row)


@dataclass
class _LoggedDataset:
    """A data set's budget as the log sets it, value by value with the entry that set it,
    and its logged charges in order."""

    registered: _Logged
    budget: dict[str, tuple[Any, _Logged]]
    charges: list[_Logged] = field(default_factory=list)


@dataclass
class _LoggedLedger:
    """The ledger as its log says it should be, and what the log contradicts in itself."""

    datasets: dict[str, _LoggedDataset] = field(default_factory=dict)
    charges: dict[Any, _Logged] = field(default_factory=dict)  # by charge id
    budget_changes: dict[Any, tuple[_Logged, dict[str, Any]]] = field(default_factory=dict)
    failures: list[AuditFailure] = field(default_factory=list)

    @classmethod
    def replay(cls, entries: Sequence[AuditEntry]) -> _LoggedLedger:
        """The ledger's entries applied in storage order. Entries verification already
        reports as malformed or unreadable are left out: they bind nothing."""
        log = cls()
        for logged in _ledger_entries(entries):
            dataset_id = logged.payload.get("dataset_id")
            if not isinstance(dataset_id, str):
                log.failures.append(logged.failure(f"it names no data set ({dataset_id!r})"))
            elif logged.kind == DATASET_REGISTERED:
                log._register(dataset_id, logged)
            elif dataset_id not in log.datasets:
                log.failures.append(
                    logged.failure(
                        f"it is a {logged.kind} for data set {dataset_id!r}, which no earlier "
                        "entry registered"
                    )
                )
            elif logged.kind == BUDGET_CHANGED:
                log._change(log.datasets[dataset_id], logged)
            else:
                log._charge(dataset_id, log.datasets[dataset_id], logged)
        return log

    def _register(self, dataset_id: str, logged: _Logged) -> None:
        first = self.datasets.get(dataset_id)
        if first is not None:
            self.failures.append(
                logged.failure(
                    f"it registers data set {dataset_id!r} again (first in entry "
                    f"{first.registered.seq})"
                )
            )
            return
        payload = logged.payload
        self.datasets[dataset_id] = _LoggedDataset(
            logged, {name: (payload.get(name), logged) for name in _BUDGET_FIELDS}
        )
        self._bind_budget_change(
            logged, old_cap=None, new_cap=payload.get("epsilon_cap"), reason=payload.get("reason")
        )

    def _change(self, dataset: _LoggedDataset, logged: _Logged) -> None:
        """A cap change, or a change of δ and accountant before the first charge (which
        writes no cap change row: its ``budget_change_id`` is null)."""
        payload = logged.payload
        for key, name in _CHANGED_FIELDS:
            if key in payload:
                dataset.budget[name] = (payload[key], logged)
        if payload.get("budget_change_id") is not None:
            self._bind_budget_change(
                logged,
                old_cap=payload.get("old_cap"),
                new_cap=payload.get("new_cap"),
                reason=payload.get("reason"),
            )

    def _bind_budget_change(self, logged: _Logged, **values: Any) -> None:
        """Expect the cap change row the entry names, holding ``values``. An entry naming
        none (one written before entries named their rows) leaves its row unaudited."""
        change_id = logged.payload.get("budget_change_id")
        if not _is_id(change_id):
            return
        first = self.budget_changes.get(change_id)
        if first is not None:
            self.failures.append(
                logged.failure(
                    f"it records ledger budget change {change_id} again (first in entry "
                    f"{first[0].seq})"
                )
            )
            return
        self.budget_changes[change_id] = (
            logged,
            values | {"dataset_id": logged.payload["dataset_id"]},
        )

    def _charge(self, dataset_id: str, dataset: _LoggedDataset, logged: _Logged) -> None:
        """Check a charge or refusal against the budget the log had set when it was made."""
        payload = logged.payload
        what = "charge" if logged.kind == LEDGER_CHARGE else "refused charge"
        for name in _BUDGET_FIELDS:
            value, source = dataset.budget[name]
            if not _same(payload.get(name), value):
                self.failures.append(
                    logged.failure(
                        f"this {what} of data set {dataset_id!r} was accounted with {name} "
                        f"{_shown(payload.get(name))}, but the log had set "
                        f"{_shown(value)} (entry {source.seq}): the ledger's budget row had "
                        "been edited when this was accounted"
                    )
                )
        if logged.kind != LEDGER_CHARGE:
            return
        charge_id = payload.get("charge_id")
        after, cap = payload.get("epsilon_after"), dataset.budget["epsilon_cap"]
        if _number(after) and _number(cap[0]) and after > cap[0]:
            self.failures.append(
                logged.failure(
                    f"charge {charge_id} brought ε of data set {dataset_id!r} to {after:.4f}, "
                    f"past the cap {cap[0]:g} the log had set (entry {cap[1].seq})"
                )
            )
        previous = dataset.charges[-1] if dataset.charges else None
        receipt = 0.0 if previous is None else previous.payload.get("epsilon_after")
        if not _same(payload.get("epsilon_before"), receipt):
            logged_before = (
                "none"
                if previous is None
                else f"charge {previous.payload.get('charge_id')} (entry {previous.seq}), "
                f"receipt ε={_shown(receipt)}"
            )
            self.failures.append(
                logged.failure(
                    f"charge {charge_id} was made when the ledger's last receipt was ε="
                    f"{_shown(payload.get('epsilon_before'))}, but the log's previous charge of "
                    f"data set {dataset_id!r} is {logged_before}: the ledger's history had "
                    "been edited when it charged"
                )
            )
        dataset.charges.append(logged)
        if not _is_id(charge_id):
            self.failures.append(logged.failure(f"it binds no ledger charge row ({charge_id!r})"))
        elif charge_id in self.charges:
            self.failures.append(
                logged.failure(
                    f"it records ledger charge {charge_id} again (first in entry "
                    f"{self.charges[charge_id].seq})"
                )
            )
        else:
            self.charges[charge_id] = logged


def _ledger_entries(entries: Sequence[AuditEntry]) -> Iterator[_Logged]:
    """The ledger's own entries that can be read: the rest is verification's to report."""
    kinds = {DATASET_REGISTERED, BUDGET_CHANGED, LEDGER_CHARGE, LEDGER_REFUSED}
    for position, entry in enumerate(entries, start=1):
        seq: object = entry.seq
        if entry.kind not in kinds or not isinstance(seq, int) or isinstance(seq, bool):
            continue
        try:
            payload = entry.payload_data()
        except ValueError:
            continue
        if isinstance(payload, dict):
            yield _Logged(position, seq, entry.kind, payload)


def _dataset_failures(log: _LoggedLedger, rows: Sequence[Row]) -> list[AuditFailure]:
    """Data set rows deleted, added, or holding another δ, accountant or cap than logged."""
    failures: list[AuditFailure] = []
    unlogged = {row.get("dataset_id"): row for row in rows}
    for dataset_id, dataset in log.datasets.items():
        row_name = _row(DATASETS, dataset_id=dataset_id)
        row = unlogged.pop(dataset_id, None)
        if row is None:
            failures.append(
                dataset.registered.failure(
                    f"data set {dataset_id!r}, registered by this entry, is missing from the "
                    "ledger (its row was deleted, and its budget with it)",
                    row_name,
                )
            )
            continue
        for name in _BUDGET_FIELDS:
            value, source = dataset.budget[name]
            if not _same(row.get(name), value):
                failures.append(
                    source.failure(
                        f"ledger data set {dataset_id!r} has {name} {_shown(row.get(name))} "
                        f"where this entry set {_shown(value)}",
                        row_name,
                    )
                )
    for unregistered in unlogged:
        failures.append(
            AuditFailure(
                0,
                None,
                _PROBLEM,
                f"ledger data set {unregistered!r} has no registration in the audit log "
                "(written around the ledger's API)",
                _row(DATASETS, dataset_id=unregistered),
            )
        )
    return failures


def _budget_change_failures(log: _LoggedLedger, rows: Sequence[Row]) -> list[AuditFailure]:
    """Cap change rows deleted, added, or recording another change than the log."""
    failures: list[AuditFailure] = []
    logged = dict(log.budget_changes)
    for row in rows:
        change_id = row.get("id")
        row_name = _row(BUDGET_CHANGES, id=change_id)
        found = logged.pop(change_id, None)
        if found is None:
            failures.append(
                AuditFailure(
                    0,
                    None,
                    _PROBLEM,
                    f"ledger budget change {change_id} (data set {row.get('dataset_id')!r}, cap "
                    f"{_shown(row.get('old_cap'))} → {_shown(row.get('new_cap'))}) has no audit "
                    "entry (written around the ledger's API)",
                    row_name,
                )
            )
            continue
        entry, values = found
        differing = _differing(row, values)
        if differing:
            failures.append(
                entry.failure(
                    f"ledger budget change {change_id} differs from its audit entry in {differing}",
                    row_name,
                )
            )
    for change_id, (entry, _) in logged.items():
        failures.append(
            entry.failure(
                f"ledger budget change {change_id} was audited but is missing from the ledger "
                "(deleted)",
                _row(BUDGET_CHANGES, id=change_id),
            )
        )
    return failures


def _charge_failures(log: _LoggedLedger, rows: Sequence[Row]) -> list[AuditFailure]:
    """Charge rows deleted (budget freed), added, or holding other values than logged."""
    failures: list[AuditFailure] = []
    logged = dict(log.charges)
    for row in rows:
        charge_id = row.get("id")
        row_name = _row(CHARGES, id=charge_id)
        entry = logged.pop(charge_id, None)
        if entry is None:
            failures.append(
                AuditFailure(
                    0,
                    None,
                    _PROBLEM,
                    f"ledger charge {charge_id} has no audit entry (written around the ledger's "
                    "API)",
                    row_name,
                )
            )
            continue
        differing = _differing(row, _logged_charge(entry.payload))
        if differing:
            failures.append(
                entry.failure(
                    f"ledger charge {charge_id} differs from its audit entry in {differing}",
                    row_name,
                )
            )
    for charge_id, entry in logged.items():
        failures.append(
            entry.failure(
                f"ledger charge {charge_id} was audited but is missing from the ledger "
                "(deleted: its budget was freed)",
                _row(CHARGES, id=charge_id),
            )
        )
    return failures


@dataclass(frozen=True)
class _Accounting:
    """What ε of a data set is computed from: its history, δ and accountant."""

    events: tuple[PrivacyEvent, ...]
    delta: Any
    accountant: Any

    def epsilon(self) -> float:
        """ε as the ledger computes it; ValueError, TypeError or ArithmeticError if these
        values cannot be accounted (the ledger would fail on them the same way)."""
        return get_accountant(self.accountant).epsilon(self.events, self.delta)

    def describe(self) -> str:
        return (
            f"δ={_shown(self.delta)}, {_shown(self.accountant)} accountant, "
            f"{len(self.events)} charge(s)"
        )


def _epsilon_failures(log: _LoggedLedger, rows: LedgerRows) -> list[AuditFailure]:
    """ε of each data set recomputed from its logged history, against the receipt of its
    last charge and against ε of the ledger's rows.

    The receipt is what the ledger computed when it made that charge, from the history it
    held then: a history edited for that charge and put back since gives another ε. The
    ledger's rows are accounted only when their inputs differ from the log's: the
    accountants are deterministic, so the same history, δ and accountant give the same ε.
    """
    failures: list[AuditFailure] = []
    by_id = {row.get("dataset_id"): row for row in rows.datasets}
    for dataset_id, dataset in log.datasets.items():
        row = by_id.get(dataset_id)
        if row is None:
            continue  # reported as a deleted data set
        entry, row_name = dataset.registered, _row(DATASETS, dataset_id=dataset_id)
        try:
            logged = _Accounting(
                tuple(_logged_event(charge) for charge in dataset.charges),
                dataset.budget["delta"][0],
                dataset.budget["accountant"][0],
            )
            logged_epsilon = logged.epsilon()
        except (ValueError, TypeError, ArithmeticError) as error:
            failures.append(
                entry.failure(
                    f"data set {dataset_id!r}: its logged history cannot be accounted ({error})",
                    row_name,
                )
            )
            continue
        if dataset.charges:
            last = dataset.charges[-1]
            receipt = last.payload.get("epsilon_after")
            if not (_number(receipt) and _close(receipt, logged_epsilon)):
                failures.append(
                    last.failure(
                        f"charge {last.payload.get('charge_id')} recorded ε={_shown(receipt)}, "
                        f"but the logged history up to it gives ε={logged_epsilon:.4f} "
                        f"({logged.describe()}): the ledger's history was different when it "
                        "charged"
                    )
                )
        try:
            ledger = _Accounting(
                tuple(_ledger_event(c) for c in rows.charges if c.get("dataset_id") == dataset_id),
                row.get("delta"),
                row.get("accountant"),
            )
            ledger_epsilon = logged_epsilon if ledger == logged else ledger.epsilon()
        except (ValueError, TypeError, ArithmeticError) as error:
            failures.append(
                entry.failure(
                    f"data set {dataset_id!r}: the ledger cannot account its rows ({error}), "
                    f"where its logged history gives ε={logged_epsilon:.4f} "
                    f"({logged.describe()})",
                    row_name,
                )
            )
            continue
        if not _close(ledger_epsilon, logged_epsilon):
            consequence = (
                "the ledger would let through releases that its signed budget refuses"
                if ledger_epsilon < logged_epsilon
                else "the ledger counts spending that its signed log does not record"
            )
            failures.append(
                entry.failure(
                    f"data set {dataset_id!r}: the ledger's rows give ε={ledger_epsilon:.4f} "
                    f"({ledger.describe()}) but its logged history gives "
                    f"ε={logged_epsilon:.4f} ({logged.describe()}): {consequence}",
                    row_name,
                )
            )
    return failures


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RECEIPT_TOLERANCE, abs_tol=1e-9)


def _logged_charge(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A charge entry's values under the names of the charge row's columns (the row keeps
    a release count in ``steps``)."""
    values = {name: payload.get(name) for name in _CHARGE_COLUMNS}
    values["steps"] = payload.get("steps", payload.get("count"))
    return values


def _logged_event(charge: _Logged) -> PrivacyEvent:
    fields: dict[str, Any] = {k: charge.payload[k] for k in _EVENT_KEYS if k in charge.payload}
    try:
        return event_from_dict(fields)
    except ValueError as error:
        raise ValueError(
            f"its charge in entry {charge.seq} cannot be accounted ({error})"
        ) from None


def _ledger_event(row: Row) -> PrivacyEvent:
    """The event the ledger reads from a charge row (as ``ledger._event_of`` does): the
    row keeps a release count in ``steps``."""
    try:
        return charged_event(row)
    except ValueError as error:
        raise ValueError(f"ledger charge {row.get('id')}: {error}") from None


def _differing(row: Row, logged: Mapping[str, Any]) -> str:
    """The columns where the row and the logged values differ, each with both values."""
    return ", ".join(
        f"{name} ({_shown(row.get(name))} in the ledger, {_shown(value)} in the log)"
        for name, value in logged.items()
        if not _same(row.get(name), value)
    )


def _same(stored: Any, logged: Any) -> bool:
    """Equal as stored values: 2 and 2.0 are one number, but True is not 1, nor "1" 1."""
    if isinstance(stored, bool) or isinstance(logged, bool):
        return stored is logged
    if _number(stored) and _number(logged):
        return bool(stored == logged)
    return type(stored) is type(logged) and bool(stored == logged)


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _row(name: str, **key: Any) -> str:
    """A ledger row's name, as a failure reports it: ``ledger_charges[id=2]``."""
    return f"{name}[{', '.join(f'{column}={value!r}' for column, value in key.items())}]"


def _shown(value: Any) -> str:
    """A stored value as a report shows it: NULL for None, short, unambiguous."""
    if value is None:
        return "NULL"
    text = f"{value:g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
