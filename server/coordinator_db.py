"""The coordinator's own state: runs, rounds and what each clinic answered.

SQLite by default (a file next to the run); any SQLAlchemy URL works, PostgreSQL included.
It holds only what clinics chose to send: aggregates and refusals, never a record.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from oralfed.privacy.audit_models import AuditBase, AuditEntryRow
from oralfed.privacy.schema_migrations import SchemaMigrations
from oralfed.schemas.files import dumps
from oralfed.server.history import RoundRecord


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "coordinator_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    message: Mapped[str | None] = mapped_column(Text)


class RoundRow(Base):
    __tablename__ = "coordinator_rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("coordinator_runs.run_id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)


class ClinicResultRow(Base):
    __tablename__ = "coordinator_clinic_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("coordinator_runs.run_id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    clinic_id: Mapped[str] = mapped_column(String(128), index=True)
    phase: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)


# The coordinator's signed audit log (oralfed.privacy.audit_log) lives in this database too,
# created by its migrations (0005); it is part of the schema they must match.
AuditBase.metadata.tables[AuditEntryRow.__tablename__].to_metadata(Base.metadata)


class QueryRow(Base):
    """An aggregate-insight query and the answer given (server/insights.py)."""

    __tablename__ = "coordinator_queries"

    query_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    asked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    requester: Mapped[str | None] = mapped_column(String(128), index=True)
    epsilon: Mapped[float] = mapped_column(Float)
    answer: Mapped[dict[str, Any]] = mapped_column(JSON)


class CoordinatorStore:
    """Durable run records; every method commits before it returns."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        upgrade_schema(self.engine)

    @classmethod
    def sqlite_file(cls, path: Path) -> CoordinatorStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{path}")

    def start_run(self, run_id: str, settings: dict[str, Any]) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(RunRow(run_id=run_id, settings=settings))

    def record_round(self, run_id: str, record: RoundRecord) -> None:
        summary = json.loads(_json_text(record.summary()))
        with Session(self.engine) as session, session.begin():
            session.add(RoundRow(run_id=run_id, round=record.round, summary=summary))
            for result in record.results:
                session.add(
                    ClinicResultRow(
                        run_id=run_id,
                        round=record.round,
                        clinic_id=result.clinic_id,
                        phase=result.phase,
                        status=result.status,
                        metrics=json.loads(_json_text(result.metrics)),
                        reason=result.reason,
                    )
                )

    def continue_run(self, run_id: str, settings: dict[str, Any], message: str) -> None:
        """A resumed run is the same run: its row is running again (made if this database
        never saw the run, e.g. a coordinator restored onto a new database)."""
        with Session(self.engine) as session, session.begin():
            row = session.get(RunRow, run_id)
            if row is None:
                row = RunRow(run_id=run_id, settings=settings)
                session.add(row)
            row.status, row.message, row.finished_at = "running", message, None

    def finish_run(self, run_id: str, status: str, message: str | None = None) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(RunRow, run_id)
            if row is not None:
                row.status, row.message, row.finished_at = status, message, utcnow()

    def runs(self) -> list[RunRow]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(RunRow).order_by(RunRow.started_at)))

    def rounds(self, run_id: str) -> list[RoundRow]:
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.round)
            return list(session.scalars(query))

    def record_query(self, query_id: str, requester: str | None, answer: dict[str, Any]) -> None:
        epsilon = float(answer["query"]["epsilon"])
        with Session(self.engine) as session, session.begin():
            session.add(
                QueryRow(
                    query_id=query_id,
                    requester=requester,
                    epsilon=epsilon,
                    answer=json.loads(_json_text(answer)),
                )
            )

    def queries(self, requester: str | None = None) -> list[QueryRow]:
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(QueryRow).order_by(QueryRow.asked_at)
            if requester is not None:
                query = query.where(QueryRow.requester == requester)
            return list(session.scalars(query))

    def close(self) -> None:
        self.engine.dispose()


MIGRATIONS = Path(__file__).with_name("migrations")
SCHEMA = SchemaMigrations("coordinator database", MIGRATIONS, legacy_table=RunRow.__tablename__)


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to the newest schema with the Alembic migrations in
    ``server/migrations`` (never ``create_all``: a coordinator database outlives releases).

    A database made by ``create_all`` before migrations existed is stamped at the first
    revision and upgraded from there; one written by a newer release is refused
    (:class:`~oralfed.privacy.schema_migrations.SchemaError`). ``alembic.ini`` beside the
    migrations is for operators.
    """
    with engine.begin() as connection:
        SCHEMA.upgrade(connection)


def _json_text(value: Any) -> str:
    """JSON text with NaN/inf as null (``oralfed.schemas.files.dumps``): databases' JSON
    types refuse them."""
    return dumps(value)
