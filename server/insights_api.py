"""The researchers' HTTP API: aggregate queries and model insights, behind hashed API tokens.

Served by ``oralfed insights serve`` (FastAPI; the OpenAPI description is at
``/openapi.json`` and the interactive page at ``/docs``). Every token is created by the
coordinator with its own ε cap (``oralfed insights token create``); only a salted scrypt
hash of it is stored. The token's spend is the sum of the ε of the queries it asked (basic
composition: an upper bound on what its answers reveal together), and a query that would
pass the cap is refused before any clinic is asked. Every bad request (malformed JSON, an
unknown column, a group-by on a continuous column, ε out of range, a missing or wrong
token, an exhausted cap) gets a 4xx with a precise message and spends nothing. Requests
and answers are logged, and each answer is recorded in the coordinator database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import DateTime, Float, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from starlette.concurrency import run_in_threadpool

from oralfed.schemas.contract import PatientRecord
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.features import Task
from oralfed.schemas.model import RiskModel, load_model
from oralfed.schemas.query import QueryError, QuerySpec, parse_query
from oralfed.server.coordinator_db import Base, CoordinatorStore, QueryRow, utcnow
from oralfed.server.insights import InsightAnswer, QueryBackend, SuppressionPolicy, run_and_record
from oralfed.server.model_insights import (
    ProfileError,
    habit_effects,
    predict_risk,
    profile_record,
    reference_population,
)

TOKEN_PREFIX = "ofi"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
log = logging.getLogger("oralfed.insights.api")


class ApiTokenRow(Base):
    """A researcher's API token: an id in clear, the secret only as a salted scrypt hash."""

    __tablename__ = "coordinator_api_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    salt: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(128))
    epsilon_cap: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TokenError(OralFedError, ValueError):
    """A token that cannot be created as asked (duplicate name, bad cap)."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class TokenInfo:
    name: str
    epsilon_cap: float
    epsilon_spent: float


def _hash_secret(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **_SCRYPT).hex()


def create_token(store: CoordinatorStore, name: str, epsilon_cap: float) -> str:
    """A new token for ``name`` with its own ε cap; the only time the secret is shown."""
    if not name.strip():
        raise TokenError("a token name must not be empty")
    if not epsilon_cap > 0:
        raise TokenError(f"a token's epsilon cap must be positive, got {epsilon_cap}")
    token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_hex(16)
    with Session(store.engine) as session, session.begin():
        if session.scalar(select(ApiTokenRow).where(ApiTokenRow.name == name)) is not None:
            raise TokenError(f"a token named {name!r} already exists")
        session.add(
            ApiTokenRow(
                token_id=token_id,
                name=name,
                salt=salt,
                secret_hash=_hash_secret(secret, salt),
                epsilon_cap=epsilon_cap,
            )
        )
    return f"{TOKEN_PREFIX}_{token_id}.{secret}"


def authenticate(store: CoordinatorStore, authorization: str | None) -> TokenInfo | None:
    """The token's holder for an ``Authorization: Bearer …`` header, or None."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization.removeprefix("Bearer ").strip()
    identifier, _, secret = token.partition(".")
    token_id = identifier.removeprefix(f"{TOKEN_PREFIX}_")
    with Session(store.engine) as session:
        row = session.get(ApiTokenRow, token_id)
        if row is None or not hmac.compare_digest(row.secret_hash, _hash_secret(secret, row.salt)):
            return None
        spent = session.scalar(
            select(func.coalesce(func.sum(QueryRow.epsilon), 0.0)).where(
                QueryRow.requester == row.name
            )
        )
        return TokenInfo(row.name, row.epsilon_cap, float(spent or 0.0))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


_QUERY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": QuerySpec.model_json_schema()}},
    }
}


def create_app(
    store: CoordinatorStore,
    run_query: QueryBackend,
    coordinator_db: str | None,
    *,
    policy: SuppressionPolicy | None = None,
    max_cells: int | None = None,
    model_path: Path | None = None,
    reference: Path | None = None,
) -> FastAPI:
    """The API over a query back end (e.g. :func:`server.insights.answer_in_process`)."""
    policy = policy or SuppressionPolicy()
    app = FastAPI(
        title="OralFed insights API",
        version="1",
        description=__doc__,
    )
    budget_lock = threading.Lock()
    loaded = load_model(model_path)[:2] if model_path is not None else None
    population: list[PatientRecord] = []  # the reference, loaded on first use

    def require_model() -> tuple[RiskModel, Task]:
        if loaded is None:
            raise _BadRequest(404, "this server was started without --model")
        return loaded  # check the token's cap, answer and record as one step

    async def json_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _BadRequest(400, f"malformed JSON body: {error}") from None
        if not isinstance(data, dict):
            raise _BadRequest(400, "the JSON body must be an object")
        return data

    def holder(request: Request) -> TokenInfo:
        token = authenticate(store, request.headers.get("authorization"))
        if token is None:
            raise _BadRequest(401, "missing or wrong API token (Authorization: Bearer <token>)")
        return token

    @app.exception_handler(_BadRequest)
    async def _refused(request: Request, error: _BadRequest) -> JSONResponse:
        return _error(error.status, error.message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {type(error).__name__}")

    @app.middleware("http")
    async def _log_requests(request: Request, call_next: Callable[..., Any]) -> Response:
        response: Response = await call_next(request)
        log.info("%s %s -> %s", request.method, request.url.path, response.status_code)
        return response

    def answer_within_cap(request: Request, spec: QuerySpec) -> InsightAnswer:
        with budget_lock:
            token = holder(request)  # re-read under the lock: the spend may have moved
            if token.epsilon_spent + spec.epsilon > token.epsilon_cap + 1e-12:
                raise _BadRequest(
                    403,
                    f"token budget exhausted: {token.name!r} has spent ε={token.epsilon_spent:g}"
                    f" of its cap {token.epsilon_cap:g}; this query asks for ε={spec.epsilon:g}",
                )
            return run_and_record(lambda: run_query(spec, policy, token.name), coordinator_db)

    @app.get("/v1/token", summary="The calling token's ε cap and spend")
    def token_status(request: Request) -> dict[str, Any]:
        token = holder(request)
        return {
            "name": token.name,
            "epsilon_cap": token.epsilon_cap,
            "epsilon_spent": token.epsilon_spent,
            "epsilon_left": max(0.0, token.epsilon_cap - token.epsilon_spent),
        }

    @app.post(
        "/v1/queries",
        summary="Run a differentially private aggregate query across the clinics",
        openapi_extra=_QUERY_BODY,
    )
    async def query(request: Request) -> dict[str, Any]:
        token = holder(request)
        data = await json_body(request)
        try:
            spec = parse_query(data, max_cells)
        except QueryError as error:
            raise _BadRequest(400, str(error)) from None
        log.info("query from %s: %s", token.name, json.dumps(data, sort_keys=True))
        answer = await run_in_threadpool(answer_within_cap, request, spec)
        if not answer.participants:
            reasons = "; ".join(r["reason"] for r in answer.refusals) or "no clinic connected"
            raise _BadRequest(409, f"no clinic answered: {reasons}")
        result = answer.to_dict()
        log.info("answer %s to %s: %s", answer.query_id, token.name, json.dumps(result))
        return result

    @app.post("/v1/risk", summary="Predicted risk for a habit profile (no privacy cost)")
    async def risk(request: Request) -> dict[str, Any]:
        holder(request)
        model, task = require_model()
        try:
            record = profile_record(await json_body(request))
        except ProfileError as error:
            raise _BadRequest(400, str(error)) from None
        return {"task": task.value, "risk": float(predict_risk(model, [record])[0])}

    @app.get("/v1/effects", summary="Average effect of each habit on predicted risk")
    def effects(request: Request) -> dict[str, Any]:
        holder(request)
        model, task = require_model()
        if not population:
            population.extend(reference_population(reference))
        return {
            "task": task.value,
            "reference_patients": len(population),
            "effects": [e.to_dict() for e in habit_effects(model, population)],
        }

    return app


class _BadRequest(Exception):
    """Raised inside a handler; the middleware turns it into a JSON 4xx response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
