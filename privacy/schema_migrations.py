"""Alembic migrations run by the program that owns a database, each time it opens it.

Two databases outlive releases: a clinic's ledger (budgets, charges, its signed audit log;
``privacy/migrations``) and the coordinator's (``server/migrations``). Both are brought to the
newest schema by their owner on open, never by ``create_all``, so a schema change upgrades a
clinic's lifetime history in place instead of stranding it. What they share is here:

- the upgrade runs in the caller's transaction, which holds the database's write lock
  (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock taken here), so two processes
  opening one database at once cannot both migrate it;
- a database at a revision this release does not know was written by a newer release, and
  is refused by name rather than half-understood;
- a database made before migrations existed is adopted: stamped at the first revision
  (identified by a table it must hold), or, in revisions written for it, its tables are
  kept after checking they are the ones the revision would create
  (:func:`create_table_unless_present`).

No ini file is read: Flower's app bundles carry only ``.py``/``.toml`` files, so the
configuration is built here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar

import sqlalchemy as sa
from alembic import command, op
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from oralfed.schemas.errors import ExitCode, OralFedError

__all__ = ["SchemaError", "SchemaMigrations", "create_table_unless_present"]

# The table Alembic keeps its revision in.
VERSION_TABLE = "alembic_version"


class SchemaError(OralFedError):
    """A database whose schema this release cannot use: newer than it, or not its own."""

    exit_code: ClassVar[ExitCode] = ExitCode.DEPLOYMENT


@dataclass(frozen=True)
class SchemaMigrations:
    """One database's migrations: where they are, and how to adopt a pre-migration copy."""

    name: str  # for messages: "clinic ledger", "coordinator database"
    script_location: Path
    # A table every database made by create_all before migrations holds: such a database is
    # stamped at ``first_revision`` (None: its first revision adopts existing tables itself).
    legacy_table: str | None = None
    first_revision: str = "0001"

    @property
    def head(self) -> str:
        """The newest revision this release knows."""
        return _revisions(self.script_location)[0]

    def current(self, connection: sa.Connection) -> str | None:
        """The database's revision (None: never migrated, or empty)."""
        return MigrationContext.configure(connection).get_current_revision()

    def upgrade(self, connection: sa.Connection) -> str | None:
        """Bring the database to :attr:`head` in ``connection``'s transaction; returns the
        revision it was at. The caller's transaction must hold the write lock on SQLite;
        nothing is committed here."""
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._key})
        before = self.current(connection)
        if before is None and self.legacy_table is not None:
            tables = set(sa.inspect(connection).get_table_names())
            if self.legacy_table in tables and VERSION_TABLE not in tables:
                command.stamp(self.config(connection), self.first_revision)
        elif before is not None and before not in _revisions(self.script_location)[1]:
            raise SchemaError(
                f"the {self.name} is at schema revision {before!r}, which this release of "
                f"OralFed does not know (its newest is {self.head!r}): it was written by a "
                "newer release. Run that release (or newer) on it; never downgrade it by hand."
            )
        if before != self.head:
            command.upgrade(self.config(connection), "head")
        return before

    @property
    def _key(self) -> int:
        """A stable 32-bit advisory-lock key per kind of database."""
        return zlib.crc32(f"oralfed-migrate:{self.name}".encode())

    def config(self, connection: sa.Connection) -> Config:
        """Alembic's configuration for running these migrations on ``connection``."""
        config = Config()
        config.set_main_option("script_location", str(self.script_location))
        config.attributes["connection"] = connection
        return config


@cache
def _revisions(script_location: Path) -> tuple[str, frozenset[str]]:
    """The head and every revision of a script directory (read once per process)."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    if head is None:  # a packaging error, not an operator's
        raise RuntimeError(f"{script_location}: no migrations found")
    return head, frozenset(revision.revision for revision in script.walk_revisions())


def create_table_unless_present(table: sa.Table) -> None:
    """In a migration: create ``table``, or keep the one an earlier release made with
    ``create_all`` once its columns are checked to be exactly the table's.

    For revisions that take over tables made before migrations existed; a table of the
    same name with other columns is not this release's and is refused, not altered.
    """
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if not inspector.has_table(table.name):
        table.create(bind)
        return
    found = sorted(column["name"] for column in inspector.get_columns(table.name))
    expected = sorted(column.name for column in table.columns)
    if found != expected:
        raise SchemaError(
            f"table {table.name!r} exists with columns {', '.join(found)}, not the "
            f"{', '.join(expected)} this release made it with: it is not an OralFed table, "
            "or was edited; it is left as it is"
        )
