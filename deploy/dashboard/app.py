"""The dashboard's web application (FastAPI, pages rendered on the server with Jinja2).

Two sites over data OralFed already keeps, through the functions the CLI calls:

* :class:`ClinicSite` (``oralfed dashboard serve --state-dir``), at a clinic, for its
  privacy officer: :mod:`~oralfed.deploy.dashboard.clinic_view`.
* :class:`CoordinatorSite` (``--runs``, with ``--federation-dir`` and the coordinator
  database), for the coordinator and researchers:
  :mod:`~oralfed.deploy.dashboard.coordinator_view`; with queries enabled, the insights API
  is served by the same process under ``/api`` and the query form spends the logged-in
  token's cap through the same :class:`~oralfed.server.insights_api.CappedQueries`.

Security: every page but the login form needs a session, got by logging in with a token
(:mod:`~oralfed.deploy.dashboard.tokens`); sessions are signed cookies, every form carries a
CSRF token and every POST must come from the dashboard's own origin
(:mod:`~oralfed.deploy.dashboard.sessions`). Pages run no script: the Content-Security-Policy
allows none, only the app's own stylesheet and images, and no framing. Every request is
logged with who made it. Views are rebuilt only when the files they read change
(:mod:`~oralfed.deploy.dashboard.snapshots`), so a long history stays fast to look at.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from oralfed.deploy.dashboard.charts import answer_chart, auc_chart, budget_chart
from oralfed.deploy.dashboard.clinic_view import ClinicView, clinic_view
from oralfed.deploy.dashboard.coordinator_view import (
    ClinicStatus,
    RunView,
    clinic_statuses,
    query_records,
    run_folders,
    run_view,
)
from oralfed.deploy.dashboard.sessions import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    LoginThrottle,
    SessionSigner,
)
from oralfed.deploy.dashboard.snapshots import FileSnapshots, Snapshot, database_files
from oralfed.deploy.dashboard.tokens import (
    Holder,
    TokenCheck,
    clinic_token_check,
    coordinator_token_check,
    read_clinic_tokens,
)
from oralfed.deploy.federation_dir import FEDERATION_FILE
from oralfed.privacy.audit_targets import COORDINATOR_DATABASE, LEDGER_DATABASE
from oralfed.privacy.events import mechanism_name
from oralfed.privacy.keys import PUBLIC_KEY_FILE
from oralfed.schemas.errors import OralFedError
from oralfed.schemas.query import (
    COLUMN_KINDS,
    DEFAULT_QUERY_DELTA,
    GROUP_BY_COLUMNS,
    Measure,
    Mechanism,
    QueryError,
    parse_query,
)
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.insights import UnansweredQuery
from oralfed.server.insights_api import ApiRefusal, CappedQueries, load_token, read_body

__all__ = ["ClinicSite", "CoordinatorSite", "create_dashboard", "log"]

log = logging.getLogger("oralfed.dashboard")
CHARGES_PER_PAGE = 100
WATCH_SECONDS = 1.0
TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would send forms with Origin: null
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class ClinicSite:
    """A clinic's dashboard over its state dir."""

    state_dir: Path

    @property
    def title(self) -> str:
        return f"Clinic privacy dashboard: {self.state_dir.name}"


@dataclass(frozen=True)
class CoordinatorSite:
    """The coordinator's dashboard over its run folders; ``queries`` enables the query form
    (None: read-only), ``insights_api`` is then served under ``/api``."""

    runs: Path
    store: CoordinatorStore  # the tokens and the answered queries
    federation_dir: Path | None = None
    queries: CappedQueries | None = None
    insights_api: FastAPI | None = None
    max_cells: int | None = None
    title: str = "Federation dashboard"


class _Refused(Exception):
    """A request refused with a status and a message shown on the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def create_dashboard(site: ClinicSite | CoordinatorSite) -> FastAPI:
    """The dashboard application for ``site``."""
    watching = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """While serving, a watcher asks for the views every second, so a change is verified
        in the background before anyone looks (and the first page finds its view built)."""
        watcher = threading.Thread(target=watch, daemon=True, name="dashboard watcher")
        watcher.start()
        try:
            yield
        finally:
            watching.set()
            watcher.join(timeout=5)

    def watch() -> None:
        while not watching.is_set():
            try:
                refresh()
            except Exception:  # a view that cannot be built now: logged, tried again
                log.exception("the dashboard's watcher could not refresh its views")
            watching.wait(WATCH_SECONDS)

    app = FastAPI(
        title=site.title, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    signer = SessionSigner.fresh()
    throttle = LoginThrottle()
    templates = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"])
    )
    templates.filters["eps"] = _format_epsilon
    templates.filters["mechanism"] = mechanism_name
    templates.filters["clock"] = _clock
    check: TokenCheck = (
        clinic_token_check(site.state_dir)
        if isinstance(site, ClinicSite)
        else coordinator_token_check(site.store)
    )
    views: FileSnapshots[Any] = FileSnapshots()
    refresh: Callable[[], object]
    charts: FileSnapshots[bytes] = FileSnapshots()

    def holder_of(request: Request) -> Holder | None:
        token_id = signer.session_token_id(request.cookies.get(SESSION_COOKIE))
        if token_id is None:
            return None
        try:
            return _still_valid(site, token_id)
        except OralFedError:  # an unreadable token store lets no session in
            return None

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        holder: Holder | None = request.state.holder
        session = request.cookies.get(SESSION_COOKIE, "")
        body = templates.get_template(name).render(
            site=site,
            clinic_mode=isinstance(site, ClinicSite),
            holder=holder,
            csrf=signer.csrf_token(session) if holder else "",
            queries_enabled=isinstance(site, CoordinatorSite) and site.queries is not None,
            **context,
        )
        return HTMLResponse(body, status_code=status)

    def require(request: Request) -> Holder:
        holder: Holder | None = request.state.holder
        if holder is None:
            raise _Refused(401, "log in with your dashboard token first")
        return holder

    async def form(request: Request) -> dict[str, list[str]]:
        """A POSTed form after its origin and CSRF token are checked."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            raise _Refused(403, "the form was not sent from this dashboard")
        try:
            raw = await read_body(request)
        except ApiRefusal as error:
            raise _Refused(error.status, error.message) from None
        try:
            fields = parse_qs(raw.decode("utf-8"), strict_parsing=bool(raw), max_num_fields=64)
        except (UnicodeDecodeError, ValueError) as error:
            raise _Refused(400, f"malformed form ({error})") from None
        bound = (
            request.cookies.get(SESSION_COOKIE)
            if request.state.holder
            else request.cookies.get(LOGIN_COOKIE)
        )
        if not signer.csrf_ok(bound, _one(fields, "csrf")):
            raise _Refused(403, "the form's CSRF token is missing or wrong: reload the page")
        return fields

    @app.middleware("http")
    async def _secure_and_log(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.holder = await run_in_threadpool(holder_of, request)
        try:
            response = await call_next(request)
        except Exception:  # a view that failed: logged, shown without its traceback
            log.exception("%s %s failed", request.method, request.url.path)
            response = HTMLResponse("internal error; see the dashboard's log", 500)
        if not request.url.path.startswith("/api/"):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        who = request.state.holder.name if request.state.holder else "-"
        log.info("%s %s %s -> %s", who, request.method, request.url.path, response.status_code)
        return response

    @app.exception_handler(_Refused)
    async def _refused(request: Request, error: _Refused) -> Response:
        if error.status == 401 and request.method == "GET" and not _is_chart(request):
            return RedirectResponse("/login", status_code=303)
        return page(request, "error.html", error.status, message=error.message)

    @app.get("/static/dashboard.css", include_in_schema=False)
    def stylesheet() -> FileResponse:
        return FileResponse(STATIC / "dashboard.css", media_type="text/css")

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        response = page(request, "login.html", login_csrf=signer.csrf_token(nonce))
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", max_age=3600)
        return response

    @app.post("/login")
    async def login(request: Request) -> Response:
        request.state.holder = None  # a login form is bound to its nonce, not to a session
        fields = await form(request)
        address = request.client.host if request.client else "-"
        if (wait := throttle.wait(address)) > 0:
            raise _Refused(429, f"too many failed logins from {address}: try again in {wait:.0f} s")
        try:
            holder = await run_in_threadpool(check, _one(fields, "token") or "")
            problem = "unknown or wrong token"
        except OralFedError as error:  # the token store itself cannot be read: say so
            holder, problem = None, str(error)
        if holder is None:
            throttle.failed(address)
            return page(
                request, "login.html", 401, login_csrf=_one(fields, "csrf"), problem=problem
            )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            signer.session_cookie(holder.token_id),
            httponly=True,
            samesite="strict",
            max_age=SESSION_SECONDS,
        )
        response.delete_cookie(LOGIN_COOKIE)
        log.info("%s logged in", holder.name)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        require(request)
        await form(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    if isinstance(site, ClinicSite):
        ledger_files = (
            *database_files(site.state_dir / LEDGER_DATABASE),
            site.state_dir / PUBLIC_KEY_FILE,  # what the log is verified with
        )

        def build_clinic() -> ClinicView | str:
            try:
                return clinic_view(site.state_dir)
            except OralFedError as error:  # shown as the page's problem, never raised
                return str(error)

        def current_clinic() -> Snapshot[ClinicView | str]:
            return views.latest("clinic", ledger_files, build_clinic)

        refresh = current_clinic

        @app.get("/", response_class=HTMLResponse)
        async def clinic_page(request: Request, page_number: int = 1) -> HTMLResponse:
            require(request)
            snapshot = await run_in_threadpool(current_clinic)
            view = snapshot.view
            if isinstance(view, str):
                return page(request, "error.html", message=view)
            newest_first = list(reversed(view.charges))
            pages = max(1, math.ceil(len(newest_first) / CHARGES_PER_PAGE))
            number = min(max(page_number, 1), pages)
            start = (number - 1) * CHARGES_PER_PAGE
            return page(
                request,
                "clinic.html",
                view=view,
                snapshots=[snapshot],
                charges=newest_first[start : start + CHARGES_PER_PAGE],
                page_number=number,
                pages=pages,
            )

        @app.get("/charts/budget/{dataset_id}.svg")
        async def budget_svg(request: Request, dataset_id: str) -> Response:
            require(request)
            snapshot = await run_in_threadpool(current_clinic)
            view = snapshot.view
            if isinstance(view, str):
                raise _Refused(404, view)
            report = next((r for r in view.budgets.reports if r.dataset_id == dataset_id), None)
            if report is None:
                raise _Refused(404, f"no data set {dataset_id!r} in this ledger")
            svg = await run_in_threadpool(
                charts.get,
                f"budget/{dataset_id}@{snapshot.built_at}",  # the chart of the page's view
                (),
                lambda: budget_chart(report, view.charges_of(dataset_id)),
            )
            return Response(svg, media_type="image/svg+xml")

    else:
        coordinator = site

        def run_snapshots() -> list[Snapshot[RunView]]:
            return [
                views.latest(
                    f"run/{folder}",
                    (*database_files(folder / COORDINATOR_DATABASE), folder / PUBLIC_KEY_FILE),
                    functools.partial(run_view, folder),
                )
                for folder in run_folders(coordinator.runs)
            ]

        refresh = run_snapshots

        def find_run(name: str) -> Snapshot[RunView]:
            for snapshot in run_snapshots():
                if snapshot.view.name == name:
                    return snapshot
            raise _Refused(404, f"no run folder {name!r} under {coordinator.runs}")

        def clinics(all_runs: list[RunView]) -> list[ClinicStatus] | str | None:
            if coordinator.federation_dir is None:
                return None
            try:
                return clinic_statuses(coordinator.federation_dir, all_runs)
            except (OralFedError, ValueError, TypeError) as error:
                return f"{coordinator.federation_dir / FEDERATION_FILE}: {error}"

        @app.get("/", response_class=HTMLResponse)
        async def coordinator_page(request: Request) -> HTMLResponse:
            require(request)
            snapshots = await run_in_threadpool(run_snapshots)
            all_runs = [snapshot.view for snapshot in snapshots]
            answered = await run_in_threadpool(query_records, coordinator.store)
            reported: dict[str, tuple[RunView, Any]] = {}
            for run in sorted(all_runs, key=lambda r: r.age):
                for budget in run.budgets.budgets if run.budgets else ():
                    reported[budget.clinic_id] = (run, budget)
            return page(
                request,
                "coordinator.html",
                snapshots=snapshots,
                runs=sorted(all_runs, key=lambda r: r.age, reverse=True),
                clinics=await run_in_threadpool(clinics, all_runs),
                reported=sorted(reported.items()),
                queries=answered[:50],
                token=load_token(coordinator.store, request.state.holder.token_id).status(),
            )

        @app.get("/runs/{name}", response_class=HTMLResponse)
        async def run_page(request: Request, name: str) -> HTMLResponse:
            require(request)
            snapshot = await run_in_threadpool(find_run, name)
            return page(request, "run.html", run=snapshot.view, snapshots=[snapshot])

        @app.get("/charts/auc/{name}.svg")
        async def auc_svg(request: Request, name: str) -> Response:
            require(request)
            snapshot = await run_in_threadpool(find_run, name)
            svg = await run_in_threadpool(
                charts.get,
                f"auc/{snapshot.view.folder}@{snapshot.built_at}",  # the chart of the page's view
                (),
                lambda: auc_chart(snapshot.view.rounds),
            )
            return Response(svg, media_type="image/svg+xml")

        @app.get("/charts/answer/{query_id}.svg")
        async def answer_svg(request: Request, query_id: str) -> Response:
            require(request)
            records = await run_in_threadpool(query_records, coordinator.store)
            record = next((r for r in records if r.query_id == query_id), None)
            if record is None:
                raise _Refused(404, f"no answered query {query_id!r}")
            return Response(answer_chart(record.answer), media_type="image/svg+xml")

        @app.get("/query", response_class=HTMLResponse)
        def query_form(request: Request) -> HTMLResponse:
            holder = require(request)
            queries = _queries_enabled(coordinator)
            token = load_token(queries.store, holder.token_id)
            return page(request, "query.html", token=token.status(), fields={}, **_choices())

        @app.post("/query", response_class=HTMLResponse)
        async def ask(request: Request) -> HTMLResponse:
            holder = require(request)
            queries = _queries_enabled(coordinator)
            fields = await form(request)
            values = _query_fields(fields)
            token = load_token(queries.store, holder.token_id)
            context: dict[str, Any] = {"fields": values, **_choices()}
            try:
                spec = parse_query(values, coordinator.max_cells)
            except QueryError as error:
                return page(
                    request, "query.html", 400, token=token.status(), problem=str(error), **context
                )
            estimate = await run_in_threadpool(queries.estimate, token, spec)
            context["estimate"] = estimate
            if _one(fields, "action") != "send":
                return page(request, "query.html", token=token.status(), **context)
            try:
                answer, charged = await run_in_threadpool(queries.answer, token, spec)
            except ApiRefusal as error:
                return page(
                    request,
                    "query.html",
                    error.status,
                    token=token.status(),
                    problem=error.message,
                    **context,
                )
            except UnansweredQuery as error:
                return page(
                    request, "query.html", 409, token=token.status(), problem=str(error), **context
                )
            return page(
                request, "query.html", token=charged.status(), answer=answer.to_dict(), **context
            )

        if coordinator.insights_api is not None:
            app.mount("/api", coordinator.insights_api)

    return app


def _still_valid(site: ClinicSite | CoordinatorSite, token_id: str) -> Holder | None:
    """The session's token as it is now: a token removed since the login ends its sessions."""
    if isinstance(site, CoordinatorSite):
        try:
            token = load_token(site.store, token_id)
        except LookupError:
            return None
        return Holder(token.token_id, token.name)
    entry = read_clinic_tokens(site.state_dir).get(token_id)
    return None if entry is None else Holder(token_id, entry["name"])


def _queries_enabled(site: CoordinatorSite) -> CappedQueries:
    if site.queries is None:
        raise _Refused(
            403, "this dashboard is read-only: start it with --allow-queries to ask queries"
        )
    return site.queries


def _query_fields(fields: dict[str, list[str]]) -> dict[str, Any]:
    """The query's JSON fields from the form: numbers where the form holds them (the
    query's own validation names any field that is wrong)."""
    values: dict[str, Any] = {
        name: _one(fields, name)
        for name in ("measure", "column", "value", "mechanism")
        if _one(fields, name)
    }
    values["group_by"] = [g for g in fields.get("group_by", []) if g]
    for name in ("epsilon", "delta"):
        if (text := _one(fields, name)) is not None and text != "":
            values[name] = _number(text)
    if bins := _one(fields, "bins"):
        values["bins"] = int(bins) if bins.isdigit() else bins
    if quantiles := [q for q in fields.get("quantiles", []) if q]:
        values["quantiles"] = [_number(q) for q in quantiles]
    return values


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _choices() -> dict[str, Any]:
    return {
        "measures": [m.value for m in Measure],
        "mechanisms": [m.value for m in Mechanism],
        "columns": tuple(COLUMN_KINDS),
        "group_columns": GROUP_BY_COLUMNS,
        "default_delta": DEFAULT_QUERY_DELTA,
    }


def _one(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def _is_chart(request: Request) -> bool:
    return request.url.path.startswith("/charts/")


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_epsilon(value: object) -> str:
    """ε as a page shows it: four significant digits; an unknown or unbounded one in words."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    if math.isnan(value):
        return "not reported"
    if math.isinf(value):
        return "unbounded"
    return f"{value:.4g}"
