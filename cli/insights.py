"""``oralfed insights``: DP aggregate queries across clinics, model insights, the HTTP API.

Only the group lives here; each concern is a module of its own: aggregate queries
(:mod:`oralfed.cli.insights_query`), what a model says (:mod:`oralfed.cli.insights_model`)
and the researchers' API, its tokens and server (:mod:`oralfed.cli.insights_api`).
"""

from __future__ import annotations

import typer

from oralfed.cli import insights_api, insights_model, insights_query

__all__ = ["app"]

app = typer.Typer(help="Ask the clinics for DP statistics; read insights from a model.")
app.command()(insights_query.query)
app.command()(insights_model.risk)
app.command()(insights_model.effects)
app.add_typer(insights_api.token_app, name="token")
app.command()(insights_api.serve)
