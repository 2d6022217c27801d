"""The researchers' HTTP API: aggregate queries and model insights, behind hashed API tokens.

Served by ``oralfed insights serve`` (FastAPI; the OpenAPI description is at
``/openapi.json`` and the interactive page at ``/docs``). Every token is created by the
coordinator with its own ε cap, δ and accountant (``oralfed insights token create``); only
a salted scrypt hash of its secret is stored.

A token is charged the way a clinic's ledger is, because per-query ε values do not add up
to the ε of their composition: the token keeps the history of the mechanisms its answers
released, and its spend is ε of that whole history at the token's δ under the token's
accountant (the clinics' default, PLD), recomputed every time. The event of an answered
query is the clinics' own (:func:`privacy.mechanisms.calibrate`'s ``NoiseCalibration.event``
with the noise multiplier the clinics report); when clinics added different amounts of
noise, the least noisy one is charged, which bounds what the answer says about any patient,
who is at one clinic. Before any clinic is asked, the query's event calibrated at its own δ
with the token's accountant is added to the history; if that would pass the cap the query is
refused with 409 and nothing is spent. A query that no clinic answered released nothing and
spends nothing (409, with every clinic's refusal). The token is debited only when an answer
is about to be returned, and never past its cap: an answer whose clinics released less noise
than the check assumed is withheld rather than overspend. The check, the query and the
charge run under one lock: one API process per coordinator database.

Every bad request (malformed or over-deep JSON, an oversized body, a field of the wrong type,
an unknown column, a group-by on a continuous column, ε or δ out of the range the mechanisms
calibrate, a missing or wrong token, a passed cap) gets a 4xx with a precise message and
spends nothing. Requests and answers are logged, and each answer is recorded in the
coordinator database.

Habit effects are averaged over a synthetic reference population, or over a file the
operator declared public (:mod:`server.model_insights`); a private file is refused when the
app is built.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import JSON, DateTime, Float, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from starlette.concurrency import run_in_threadpool

from oralfed.privacy.accountants import (
    DEFAULT_ACCOUNTANT,
    PldAccountant,
    RdpAccountant,
    UnsupportedEvent,
    get_accountant,
)
from oralfed.privacy.events import PrivacyEvent, event_from_dict, event_to_dict
from oralfed.privacy.mechanisms import NoiseCalibration, NoiseKind, calibrate, releases_for
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.features import Task
from oralfed.schemas.model import RiskModel, load_model
from oralfed.schemas.query import (
    DEFAULT_QUERY_DELTA,
    MAX_QUERY_DELTA,
    MIN_QUERY_DELTA,
    QueryError,
    QuerySpec,
    parse_query,
)
from oralfed.server.coordinator_db import Base, CoordinatorStore, utcnow
from oralfed.server.insights import (
    InsightAnswer,
    QueryBackend,
    SuppressionPolicy,
    UnansweredQuery,
    run_and_record,
    unanswered,
)
from oralfed.server.model_insights import (
    ProfileError,
    ReferencePopulation,
    habit_effects,
    predict_risk,
    profile_record,
    reference_population,
    refuse_private_reference,
)

TOKEN_PREFIX = "ofi"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
# ε comparisons tolerate float noise in the accountant's answer, no more.
_CAP_SLACK = 1e-12
# The accountants a clinic can answer a query with: prv cannot analyse the discrete
# releases (privacy/accountants/prv.py), so a clinic counting with it refuses every query.
_DISCRETE_ACCOUNTANTS = (PldAccountant.name, RdpAccountant.name)
# A query or a habit profile is an object of scalars and short lists: a few hundred bytes,
# depth 2. The limits are far above that and far below what could hurt the parser.
MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 8
# What each kind of OralFedError a request can meet is, as an HTTP status; other kinds are
# the server's own state (a ledger, a model file), not the request: 503.
_STATUS_OF = {
    ExitCode.USAGE: 400,
    ExitCode.INVALID_QUERY: 400,
    ExitCode.BUDGET_EXCEEDED: 409,
    ExitCode.FEDERATION_FAILED: 409,
}
log = logging.getLogger("oralfed.insights.api")


class ApiTokenRow(Base):
    """A researcher's API token: an id in clear, the secret only as a salted scrypt hash,
    and the mechanisms its answers released (ε is recomputed from them, never stored)."""

    __tablename__ = "coordinator_api_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    salt: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(128))
    epsilon_cap: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    accountant: Mapped[str] = mapped_column(String(20))
    # [{"query_id": …, "event": privacy.events.event_to_dict(…)}], one per answered query
    events: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TokenError(OralFedError, ValueError):
    """A token that cannot be created as asked (duplicate name, bad cap, δ or accountant)."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class TokenInfo:
    """A token's budget and history as of one read; ε is a function of the history."""

    token_id: str
    name: str
    epsilon_cap: float
    delta: float
    accountant: str
    events: tuple[PrivacyEvent, ...]

    def epsilon(self, extra: Sequence[PrivacyEvent] = ()) -> float:
        """ε of the whole history (plus ``extra``) at the token's δ, by its accountant."""
        return get_accountant(self.accountant).epsilon([*self.events, *extra], self.delta)

    def status(self) -> dict[str, Any]:
        spent = self.epsilon()
        return {
            "name": self.name,
            "epsilon_cap": self.epsilon_cap,
            "epsilon_spent": spent,
            "epsilon_left": max(0.0, self.epsilon_cap - spent),
            "delta": self.delta,
            "accountant": self.accountant,
            "queries_charged": len(self.events),
        }


def hash_secret(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **_SCRYPT).hex()


def create_token(
    store: CoordinatorStore,
    name: str,
    epsilon_cap: float,
    *,
    delta: float = DEFAULT_QUERY_DELTA,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> str:
    """A new token for ``name`` with its own (ε cap, δ) and accountant; the only time the
    secret is shown. δ defaults to the queries' default δ: at that δ one default query
    costs the token exactly its ε, and many cost less than their sum."""
    if not name.strip():
        raise TokenError("a token name must not be empty")
    if not (math.isfinite(epsilon_cap) and epsilon_cap > 0):
        raise TokenError(f"a token's epsilon cap must be a positive number, got {epsilon_cap}")
    if not MIN_QUERY_DELTA <= delta <= MAX_QUERY_DELTA:  # the δs its ε can be computed at
        raise TokenError(
            f"a token's delta must be in [{MIN_QUERY_DELTA:g}, {MAX_QUERY_DELTA:g}], got {delta:g}"
        )
    try:
        get_accountant(accountant)
    except ValueError as error:
        raise TokenError(f"a token's accountant: {error}") from None
    token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_hex(16)
    with Session(store.engine) as session, session.begin():
        if session.scalar(select(ApiTokenRow).where(ApiTokenRow.name == name)) is not None:
            raise TokenError(f"a token named {name!r} already exists")
        session.add(
            ApiTokenRow(
                token_id=token_id,
                name=name,
                salt=salt,
                secret_hash=hash_secret(secret, salt),
                epsilon_cap=epsilon_cap,
                delta=delta,
                accountant=accountant,
                events=[],
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
        if row is None or not hmac.compare_digest(row.secret_hash, hash_secret(secret, row.salt)):
            return None
        return _token_info(row)


def load_token(store: CoordinatorStore, token_id: str) -> TokenInfo:
    """An already authenticated token as it is now (its history may have grown)."""
    with Session(store.engine) as session:
        row = session.get(ApiTokenRow, token_id)
        if row is None:
            raise LookupError(f"no API token {token_id!r}")
        return _token_info(row)


def _token_info(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(
        row.token_id,
        row.name,
        row.epsilon_cap,
        row.delta,
        row.accountant,
        tuple(event_from_dict(entry["event"]) for entry in row.events),
    )


def expected_event(spec: QuerySpec) -> PrivacyEvent:
    """The least noisy release an honest clinic can make for ``spec``: each calibrates with
    its own accountant at a δ no larger than the query's, and a smaller δ adds more noise,
    never less. Checking the token's cap with this bounds whatever the clinics release."""
    releases = releases_for(spec.statistic)
    multipliers = [
        calibrate(
            spec.mechanism.value, spec.epsilon, spec.delta, releases, accountant
        ).noise_multiplier
        for accountant in _DISCRETE_ACCOUNTANTS
    ]
    return NoiseCalibration(NoiseKind(spec.mechanism.value), min(multipliers), releases).event


def released_event(answer: InsightAnswer) -> PrivacyEvent:
    """The least noisy of the answering clinics' releases (a clinic answered: see
    :func:`server.insights.unanswered`)."""
    return NoiseCalibration(
        NoiseKind(answer.spec.mechanism.value),
        min(float(p["noise_multiplier"]) for p in answer.participants),
        releases_for(answer.spec.statistic),
    ).event


def charge_token(
    store: CoordinatorStore, token_id: str, query_id: str, event: PrivacyEvent
) -> None:
    """Append an answered query's event to the token's history (locking its row where the
    database can)."""
    with Session(store.engine) as session, session.begin():
        row = session.scalars(
            select(ApiTokenRow).where(ApiTokenRow.token_id == token_id).with_for_update()
        ).one()
        row.events = [*row.events, {"query_id": query_id, "event": event_to_dict(event)}]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


_QUERY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": QuerySpec.model_json_schema()}},
    }
}


class CappedQueries:
    """Queries charged to the asking token: check its cap, answer, charge, as one step under
    one lock, so two requests of one token cannot both pass a check that only one of them
    fits. The API's ``/v1/queries`` and the dashboard's query form both go through it."""

    def __init__(
        self,
        store: CoordinatorStore,
        run_query: QueryBackend,
        coordinator_db: str | None,
        policy: SuppressionPolicy,
    ) -> None:
        self.store, self.policy = store, policy
        self._run_query, self._coordinator_db = run_query, coordinator_db
        self._lock = threading.Lock()

    def estimate(self, authenticated: TokenInfo, spec: QuerySpec) -> QueryEstimate:
        """What ``spec`` would bring the token to if the clinics release the least noise an
        honest clinic calibrates for it; nothing is asked or spent."""
        token = load_token(self.store, authenticated.token_id)  # the history may have grown
        try:
            spent, after = token.epsilon(), token.epsilon([expected_event(spec)])
        except UnsupportedEvent as error:
            raise ApiRefusal(400, f"token {token.name!r}: {error}") from None
        return QueryEstimate(token, spent, after)

    def answer(self, authenticated: TokenInfo, spec: QuerySpec) -> tuple[InsightAnswer, TokenInfo]:
        """The answer and the token as charged for it; :class:`ApiRefusal` (nothing spent)
        when the query would pass the cap, :class:`~server.insights.UnansweredQuery` when
        no clinic answered."""
        with self._lock:
            estimate = self.estimate(authenticated, spec)
            token = estimate.token
            if not estimate.fits:
                raise ApiRefusal(
                    409,
                    f"token budget: this query would bring {token.name!r} to ε="
                    f"{estimate.epsilon_after:.4g} > cap {token.epsilon_cap:g} "
                    f"(δ={token.delta:g}, accountant {token.accountant}); spent so far "
                    f"ε={estimate.epsilon_spent:.4g}. Nothing was spent.",
                )
            answer = run_and_record(
                lambda: self._run_query(spec, self.policy, token.name), self._coordinator_db
            )
            refusal = unanswered(answer.to_dict())
            if refusal is not None:
                raise refusal  # nothing was released: nothing is charged
            event = released_event(answer)
            after = token.epsilon([event])
            if after > token.epsilon_cap + _CAP_SLACK:
                raise ApiRefusal(
                    409,
                    "token budget: a clinic released less noise than any honest clinic "
                    f"calibrates for this query, which would bring {token.name!r} to "
                    f"ε={after:.4g} > cap {token.epsilon_cap:g}; the answer is withheld and "
                    "nothing was spent from the token (charged clinics: "
                    f"{', '.join(p['clinic'] for p in answer.participants)}).",
                )
            charge_token(self.store, token.token_id, answer.query_id, event)
            return answer, load_token(self.store, token.token_id)


@dataclass(frozen=True)
class QueryEstimate:
    """A query's cost to a token before it is asked: ε spent now and ε after it."""

    token: TokenInfo
    epsilon_spent: float
    epsilon_after: float

    @property
    def fits(self) -> bool:
        return self.epsilon_after <= self.token.epsilon_cap + _CAP_SLACK


def create_app(
    store: CoordinatorStore,
    run_query: QueryBackend,
    coordinator_db: str | None,
    *,
    policy: SuppressionPolicy | None = None,
    max_cells: int | None = None,
    model_path: Path | None = None,
    reference: Path | None = None,
    reference_is_public: bool = False,
) -> FastAPI:
    """The API over a query back end (e.g. :func:`deploy.local_clinics.answer_in_process`).

    ``reference`` is a file for habit effects that the operator declares public with
    ``reference_is_public``; without the declaration it is refused here, before serving.
    """
    refuse_private_reference(reference, reference_is_public)
    policy = policy or SuppressionPolicy()
    app = FastAPI(
        title="OralFed insights API",
        version="1",
        description=__doc__,
    )
    queries = CappedQueries(store, run_query, coordinator_db, policy)
    app.state.queries = queries
    loaded = load_model(model_path)[:2] if model_path is not None else None

    @functools.cache
    def population() -> ReferencePopulation:
        """Loaded on first use: a server without --model never needs it."""
        return reference_population(reference, declared_public=reference_is_public)

    def require_model() -> tuple[RiskModel, Task]:
        if loaded is None:
            raise ApiRefusal(404, "this server was started without --model")
        return loaded

    async def json_body(request: Request) -> dict[str, Any]:
        return parse_json_object(await read_body(request))

    def holder(request: Request) -> TokenInfo:
        token = authenticate(store, request.headers.get("authorization"))
        if token is None:
            raise ApiRefusal(401, "missing or wrong API token (Authorization: Bearer <token>)")
        return token

    @app.exception_handler(ApiRefusal)
    async def _refused(request: Request, error: ApiRefusal) -> JSONResponse:
        return _error(error.status, error.message)

    @app.exception_handler(UnansweredQuery)
    async def _unanswered(request: Request, error: UnansweredQuery) -> JSONResponse:
        return JSONResponse(error.to_dict(), status_code=409)

    @app.exception_handler(OralFedError)
    async def _oralfed(request: Request, error: OralFedError) -> JSONResponse:
        return _error(_STATUS_OF.get(error.exit_code, 503), str(error))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {type(error).__name__}")

    @app.middleware("http")
    async def _log_requests(request: Request, call_next: Callable[..., Any]) -> Response:
        response: Response = await call_next(request)
        log.info("%s %s -> %s", request.method, request.url.path, response.status_code)
        return response

    @app.get("/v1/token", summary="The calling token's ε cap, δ and spend")
    def token_status(request: Request) -> dict[str, Any]:
        return holder(request).status()

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
            raise ApiRefusal(400, str(error)) from None
        log.info("query from %s: %s", token.name, json.dumps(data, sort_keys=True))
        answer, charged = await run_in_threadpool(queries.answer, token, spec)
        result = answer.to_dict()
        log.info("answer %s to %s: %s", answer.query_id, token.name, json.dumps(result))
        return {**result, "token": charged.status()}

    @app.post("/v1/risk", summary="Predicted risk for a habit profile (no privacy cost)")
    async def risk(request: Request) -> dict[str, Any]:
        holder(request)
        model, task = require_model()
        try:
            record = profile_record(await json_body(request))
        except ProfileError as error:
            raise ApiRefusal(400, str(error)) from None
        return {"task": task.value, "risk": float(predict_risk(model, [record])[0])}

    @app.get(
        "/v1/effects",
        summary="Average effect of each habit on predicted risk, over a synthetic or public "
        "reference population",
    )
    def effects(request: Request) -> dict[str, Any]:
        holder(request)
        model, task = require_model()
        reference_patients = population()
        return {
            "task": task.value,
            "reference": reference_patients.describe(),
            "effects": [e.to_dict() for e in habit_effects(model, reference_patients.records)],
        }

    return app


async def read_body(request: Request) -> bytes:
    """The raw body, refused with 413 as soon as it passes :data:`MAX_BODY_BYTES` (a declared
    length is checked before a byte is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(body)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from a UTF-8 body, refused with 400 (naming why) before the parser ever
    recurses past :data:`MAX_JSON_DEPTH` or meets a number JSON does not have (NaN,
    Infinity) or one Python will not convert (an integer of thousands of digits)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiRefusal(400, f"malformed JSON body: not UTF-8 ({error})") from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ApiRefusal(400, f"malformed JSON body: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(text, parse_constant=_not_json)
    except ValueError as error:  # JSONDecodeError, a non-JSON constant, an enormous integer
        raise ApiRefusal(400, f"malformed JSON body: {error}") from None
    if not isinstance(data, dict):
        raise ApiRefusal(400, "the JSON body must be an object")
    return data


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text``, counted without parsing (brackets
    inside strings do not count), so a hostile body cannot make the parser recurse."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number")


def _too_large() -> ApiRefusal:
    return ApiRefusal(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")


class ApiRefusal(Exception):
    """Raised inside a handler; the middleware turns it into a JSON 4xx response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
