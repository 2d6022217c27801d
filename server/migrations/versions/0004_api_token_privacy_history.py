"""API tokens keep a history of privacy events, a δ and an accountant (server/insights_api.py).

A token's spend used to be the sum of the ε of the queries it asked, answered or not. It is
now ε of the composition of the mechanisms its answered queries released, recomputed at the
token's δ by its accountant, so each token gets the queries' default δ (1e-6) and the
clinics' default accountant (PLD), and its history is rebuilt from the answers already
recorded in ``coordinator_queries``: one event per query that some clinic answered, with
the least noise any answering clinic reported. Those answers were released with the
continuous Gaussian or Laplace mechanism the query names (``count`` releases: 1 for a
count, 2 otherwise), so that is the event recorded. A query that no clinic answered
released nothing and is not carried over.

Everything is written out here rather than imported from the application, so that later
code (other mechanisms, other defaults) cannot change what this revision did.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DEFAULT_QUERY_DELTA = 1e-6
DEFAULT_ACCOUNTANT = "pld"

_TOKENS = sa.table(
    "coordinator_api_tokens",
    sa.column("token_id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("events", sa.JSON()),
)
_QUERIES = sa.table(
    "coordinator_queries",
    sa.column("query_id", sa.String()),
    sa.column("asked_at", sa.DateTime(timezone=True)),
    sa.column("requester", sa.String()),
    sa.column("answer", sa.JSON()),
)


def upgrade() -> None:
    with op.batch_alter_table("coordinator_api_tokens") as batch:
        batch.add_column(
            sa.Column("delta", sa.Float(), nullable=False, server_default=repr(DEFAULT_QUERY_DELTA))
        )
        batch.add_column(
            sa.Column(
                "accountant", sa.String(20), nullable=False, server_default=DEFAULT_ACCOUNTANT
            )
        )
        batch.add_column(
            sa.Column("events", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    connection = op.get_bind()
    tokens = connection.execute(sa.select(_TOKENS.c.token_id, _TOKENS.c.name)).all()
    for token_id, name in tokens:
        answers = connection.execute(
            sa.select(_QUERIES.c.query_id, _QUERIES.c.answer)
            .where(_QUERIES.c.requester == name)
            .order_by(_QUERIES.c.asked_at)
        ).all()
        history = [
            {"query_id": query_id, "event": event}
            for query_id, answer in answers
            if (event := _released_event(answer)) is not None
        ]
        if history:
            connection.execute(
                sa.update(_TOKENS).where(_TOKENS.c.token_id == token_id).values(events=history)
            )


def downgrade() -> None:
    with op.batch_alter_table("coordinator_api_tokens") as batch:
        batch.drop_column("events")
        batch.drop_column("accountant")
        batch.drop_column("delta")


def _released_event(answer: dict[str, Any]) -> dict[str, Any] | None:
    """The event (``privacy.events.event_to_dict`` form) a recorded answer released."""
    participants = answer.get("participants") or []
    if not participants:
        return None
    query = answer["query"]
    return {
        "mechanism": query["mechanism"],
        "noise_multiplier": min(float(p["noise_multiplier"]) for p in participants),
        "count": 1 if query["measure"] == "count" else 2,
    }
