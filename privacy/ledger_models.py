"""Tables of the per-clinic privacy ledger (SQLAlchemy 2 typed models).

The ledger stores mechanisms, never only ε: ε of a history is recomputed from these rows
by an accountant, so the rows must hold every parameter an accountant needs.
``epsilon_after`` is a receipt of what was computed at charge time, not an input.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from oralfed.privacy.events import PrivacyEvent, event_from_dict


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC timestamp on every backend.

    SQLite has no time zones and SQLAlchemy hands back naive datetimes there; storing naive
    UTC and re-attaching UTC on load keeps ledger timestamps unambiguous across backends.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


CHARGE_EVENT_COLUMNS = ("mechanism", "noise_multiplier", "sample_rate", "steps")


def charged_event(columns: Mapping[str, Any]) -> PrivacyEvent:
    """The event a charge row's columns describe (a release count is kept in ``steps``),
    validated like a new event: ValueError for a row no event can be made of (edited)."""
    data: dict[str, Any] = {
        "mechanism": columns.get("mechanism"),
        "noise_multiplier": columns.get("noise_multiplier"),
    }
    if columns.get("mechanism") == "dpsgd":
        data |= {"sample_rate": columns.get("sample_rate"), "steps": columns.get("steps")}
    else:
        data["count"] = columns.get("steps")
    return event_from_dict(data)


class Base(DeclarativeBase):
    pass


class LedgerDataset(Base):
    """One data set under a budget: the (ε cap, δ) it may spend and the accountant that counts."""

    __tablename__ = "ledger_datasets"

    dataset_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    epsilon_cap: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    accountant: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, onupdate=utc_now)


class LedgerCharge(Base):
    """One release of information about a data set through a DP mechanism."""

    __tablename__ = "ledger_charges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("ledger_datasets.dataset_id"), index=True)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    run_id: Mapped[str] = mapped_column(String(200))
    round: Mapped[int | None] = mapped_column(Integer)
    mechanism: Mapped[str] = mapped_column(String(20))  # events.mechanism_name()
    noise_multiplier: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[float | None] = mapped_column(Float)  # DP-SGD only
    steps: Mapped[int] = mapped_column(Integer)  # DP-SGD steps, or release count
    delta: Mapped[float] = mapped_column(Float)
    epsilon_after: Mapped[float] = mapped_column(Float)
    data_fingerprint: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)


class BudgetChange(Base):
    """A change of a data set's ε cap, kept so that an audit can see who moved the goalposts."""

    __tablename__ = "ledger_budget_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("ledger_datasets.dataset_id"), index=True)
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    old_cap: Mapped[float | None] = mapped_column(Float)  # None: the data set was registered
    new_cap: Mapped[float] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
