"""Alembic environment: migrate the connection CoordinatorStore hands over, or ``-x url=…``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from oralfed.server.coordinator_db import Base

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database as: alembic -x url=SQLALCHEMY_URL upgrade head")
    engine = create_engine(url)
    with engine.begin() as connection:
        _migrate(connection)
    engine.dispose()


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite can only alter tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
