"""The coordinator's side of an aggregate query: ask the clinics, combine, suppress, record.

Clinics reply with noisy per-cell parts and the noise scale of each (client/query.py). The
coordinator adds the parts of the clinics that contribute to a cell, so the noise variances
add, and reports every figure with the standard error and 95 % interval that this noise
implies (the interval is about the DP noise, not about sampling the population: the
target is the exact answer over the clinics' consenting records).

Suppression, as the issue asks: a clinic whose noisy count for a cell is below the clinic
floor (10) contributes nothing to that cell, and a cell whose combined noisy count is below
the CMS floor (11) is shown as suppressed, never as 0. Both floors can be raised; lowering
them needs an explicit flag.

The same :func:`run_query` drives a Flower Grid in the simulation and on a deployment
(:func:`make_query_server_app`); ``oralfed.deploy.local_clinics`` runs the very same clinic code
for clinics whose files and ledgers are on this host, without Flower (single-host pilots,
the HTTP API's local back end, the accuracy benchmark).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp

from oralfed.privacy.events import MIN_NOISE_MULTIPLIER
from oralfed.privacy.mechanisms import (
    CLINIC_MIN_RECORDS,
    Estimate,
    NoiseKind,
    combine_sums,
    quantile_estimate,
    ratio,
)
from oralfed.schemas import protocol
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import write_json_atomically
from oralfed.schemas.json_safe import json_safe
from oralfed.schemas.query import Measure, QuerySpec, parse_query
from oralfed.schemas.query_messages import ClinicAnswer, ClinicRefusal, query_content
from oralfed.schemas.settings import setting_key
from oralfed.schemas.state import coordinator_state_dir
from oralfed.server.coordinator_db import CoordinatorStore

ANSWER_FILE = "answer.json"

CMS_CELL_FLOOR = 11  # CMS cell-size suppression policy for health statistics
NODE_WAIT_POLL_SECONDS = 1.0


class InsightError(OralFedError, ValueError):
    """A query the coordinator will not run as configured; the message names the option."""

    exit_code = ExitCode.INVALID_QUERY


class UnansweredQuery(OralFedError):
    """A query no clinic answered: nothing was released, so the asker owes nothing.

    Carries every refusal (clinic, code, reason) and the clinics that were charged all the
    same (they failed after paying), so a caller can show both; :func:`unanswered` builds it.
    """

    exit_code = ExitCode.FEDERATION_FAILED

    def __init__(self, refusals: Sequence[Mapping[str, Any]]) -> None:
        self.refusals = [dict(refusal) for refusal in refusals]
        self.charged = [str(r["clinic"]) for r in self.refusals if r.get("charged")]
        reasons = "; ".join(f"{r['clinic']}: {r['reason']}" for r in self.refusals)
        message = f"no clinic answered (nothing was released): {reasons or 'no clinic connected'}"
        if self.charged:
            message += f". Charged without an answer: {', '.join(self.charged)}"
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        return {"error": str(self), "refusals": self.refusals, "charged_clinics": self.charged}


class BudgetsExhausted(UnansweredQuery):
    """Every clinic refused because the query would pass its privacy budget cap."""

    exit_code = ExitCode.BUDGET_EXCEEDED


def unanswered(answer: Mapping[str, Any]) -> UnansweredQuery | None:
    """The refusal of an answer (:meth:`InsightAnswer.to_dict`) no clinic took part in, else
    None; every clinic out of budget is a :class:`BudgetsExhausted`."""
    if answer["participants"]:
        return None
    refusals = answer["refusals"]
    budgets = bool(refusals) and all(r["code"] == protocol.ERROR_BUDGET_EXCEEDED for r in refusals)
    return (BudgetsExhausted if budgets else UnansweredQuery)(refusals)


@dataclass(frozen=True)
class SuppressionPolicy:
    """The two floors; values below the defaults need ``allow_below_defaults``."""

    cell_floor: int = CMS_CELL_FLOOR
    clinic_min_records: int = CLINIC_MIN_RECORDS
    allow_below_defaults: bool = False

    def __post_init__(self) -> None:
        for name, value, default in (
            ("cell floor", self.cell_floor, CMS_CELL_FLOOR),
            ("clinic minimum of records", self.clinic_min_records, CLINIC_MIN_RECORDS),
        ):
            if value < 0:
                raise InsightError(f"{name} must not be negative, got {value}")
            if value < default and not self.allow_below_defaults:
                raise InsightError(
                    f"{name} {value} is below the default {default}; lowering a suppression "
                    "floor needs the explicit allow_below_defaults flag"
                )


@dataclass(frozen=True)
class CellAnswer:
    """One group's answer. ``value`` is None when suppressed (never reported as 0)."""

    group: dict[str, str]
    suppressed: bool
    clinics: list[str]
    count: Estimate | None = None
    value: Estimate | None = None
    bins: list[Estimate | None] | None = None  # histogram; a suppressed bin is None
    quantiles: dict[str, Estimate] | None = None


@dataclass
class InsightAnswer:
    """A whole answer: cells, who took part, who refused and why, and the privacy terms."""

    query_id: str
    spec: QuerySpec
    policy: SuppressionPolicy
    cells: list[CellAnswer]
    participants: list[dict[str, Any]]
    refusals: list[dict[str, Any]]
    asked_at: datetime
    seconds: float
    requester: str | None = None
    bin_edges: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "query_id": self.query_id,
                "query": self.spec.model_dump(mode="json"),
                "description": self.spec.describe(),
                "asked_at": self.asked_at.isoformat(),
                "seconds": self.seconds,
                "requester": self.requester,
                "privacy": {
                    "epsilon": self.spec.epsilon,
                    "delta": self.spec.delta,
                    "mechanism": self.spec.mechanism.value,
                    "per_clinic": "each taking clinic charged this (ε, δ) to its own ledger",
                },
                "suppression": asdict(self.policy),
                "error_model": (
                    "standard errors and 95% intervals account for the DP noise added by the "
                    "clinics (not for sampling of patients)"
                ),
                "bin_edges": self.bin_edges,
                "cells": [_cell_dict(cell) for cell in self.cells],
                "participants": self.participants,
                "refusals": self.refusals,
            }
        )


QueryBackend = Callable[[QuerySpec, SuppressionPolicy, str | None], InsightAnswer]


def combine(
    spec: QuerySpec,
    answers: Sequence[ClinicAnswer],
    policy: SuppressionPolicy,
    rng: np.random.Generator | None = None,
) -> list[CellAnswer]:
    """Combine the clinics' noisy parts cell by cell, applying both suppression floors.

    With no answers (every clinic refused, or none replied) every cell is suppressed: there
    is nothing to combine, and the parts' shapes cannot even be inferred.
    """
    if not answers:
        return [CellAnswer(group, True, []) for group in spec.cells()]
    rng = rng or np.random.default_rng()
    edges = spec.edges()
    n_bins = 0 if edges is None else len(edges) - 1
    counts = np.array([a.counts for a in answers]).reshape(len(answers), spec.n_cells)
    statistic = (
        np.array([a.statistic for a in answers]).reshape(len(answers), spec.n_cells, -1)
        if spec.statistic is not None
        else None
    )
    cells = []
    for c, group in enumerate(spec.cells()):
        taking = [i for i in range(len(answers)) if counts[i, c] >= policy.clinic_min_records]
        names = [answers[i].clinic_id for i in taking]
        count = combine_sums(counts[taking, c], [answers[i].count_noise_sd for i in taking])
        if not taking or count.value < policy.cell_floor:
            cells.append(CellAnswer(group, True, names))
            continue
        sds = [answers[i].statistic_noise_sd for i in taking]
        if statistic is None:
            cells.append(CellAnswer(group, False, names, count, count))
        elif spec.measure in (Measure.SUM, Measure.MEAN, Measure.PROPORTION):
            total = combine_sums(statistic[taking, c, 0], sds)
            value = total if spec.measure is Measure.SUM else ratio(total, count)
            cells.append(CellAnswer(group, False, names, count, value))
        else:
            assert edges is not None
            summed = statistic[taking, c, :].sum(axis=0)
            noise_sd = math.sqrt(sum(sd**2 for sd in sds))
            if spec.measure is Measure.HISTOGRAM:
                bins: list[Estimate | None] = []
                for b in range(n_bins):
                    estimate = Estimate.normal(float(summed[b]), noise_sd)
                    bins.append(None if estimate.value < policy.cell_floor else estimate)
                cells.append(CellAnswer(group, False, names, count, bins=bins))
            else:
                kind = NoiseKind(spec.mechanism.value)
                quantiles = {
                    f"{q:g}": quantile_estimate(summed, noise_sd, edges, q, rng, kind)
                    for q in spec.quantiles
                }
                cells.append(CellAnswer(group, False, names, count, quantiles=quantiles))
    return cells


def usable_answers(
    spec: QuerySpec, replies: Sequence[ClinicAnswer | ClinicRefusal]
) -> tuple[list[ClinicAnswer], list[ClinicRefusal]]:
    """The answers that can be combined, and the refusals, including every answer that cannot:
    one of another shape or with a number that is not finite (:meth:`ClinicAnswer.problem`),
    or a second answer under a clinic's name. Such an answer's clinic was charged."""
    answers: list[ClinicAnswer] = []
    refusals: list[ClinicRefusal] = []
    for reply in replies:
        if isinstance(reply, ClinicRefusal):
            refusals.append(reply)
            continue
        problem = reply.problem(spec)
        if problem is None and reply.noise_multiplier < MIN_NOISE_MULTIPLIER:
            problem = (
                f"noise multiplier {reply.noise_multiplier:g}, below the least any release "
                f"carries ({MIN_NOISE_MULTIPLIER:g})"
            )
        if problem is None and any(a.clinic_id == reply.clinic_id for a in answers):
            problem = "a second answer under this clinic's name"
        if problem is None:
            answers.append(reply)
            continue
        reason = f"answer not used: {problem}"
        refusals.append(ClinicRefusal(reply.clinic_id, protocol.ERROR_DATA_REFUSED, reason, True))
    return answers, refusals


def build_answer(
    spec: QuerySpec,
    policy: SuppressionPolicy,
    replies: Sequence[ClinicAnswer | ClinicRefusal],
    started: float,
    requester: str | None = None,
) -> InsightAnswer:
    answers, refusals = usable_answers(spec, replies)
    edges = spec.edges()
    return InsightAnswer(
        query_id=uuid.uuid4().hex,
        spec=spec,
        policy=policy,
        cells=combine(spec, answers, policy),
        participants=[
            {
                "clinic": a.clinic_id,
                "epsilon_spent": a.epsilon_spent,
                "epsilon_cap": a.epsilon_cap,
                "delta": a.delta,
                "accountant": a.accountant,
                "noise_multiplier": a.noise_multiplier,
            }
            for a in answers
        ],
        refusals=[
            {"clinic": r.clinic_id, "code": r.code, "reason": r.reason, "charged": r.charged}
            for r in refusals
        ],
        asked_at=datetime.now(UTC),
        seconds=time.perf_counter() - started,
        requester=requester,
        bin_edges=None if edges is None else [float(e) for e in edges],
    )


# --- transports -------------------------------------------------------------------------------


def run_query(
    grid: Grid,
    spec: QuerySpec,
    policy: SuppressionPolicy,
    *,
    expected_clinics: int | None = None,
    timeout: float = 300.0,
    requester: str | None = None,
) -> InsightAnswer:
    """Send ``spec`` to every connected clinic node through ``grid`` and combine the replies.

    Waits (up to ``timeout``) for ``expected_clinics`` nodes when given; a clinic that does
    not reply in time is listed as a refusal with that reason.
    """
    started = time.perf_counter()
    deadline = started + timeout
    node_ids = list(grid.get_node_ids())
    while expected_clinics and len(node_ids) < expected_clinics and time.perf_counter() < deadline:
        time.sleep(NODE_WAIT_POLL_SECONDS)
        node_ids = list(grid.get_node_ids())
    messages = [
        Message(
            content=query_content(spec, policy.clinic_min_records),
            message_type=MessageType.QUERY,
            dst_node_id=node_id,
        )
        for node_id in node_ids
    ]
    replies: list[ClinicAnswer | ClinicRefusal] = []
    answered: set[int] = set()
    remaining = max(1.0, deadline - time.perf_counter())
    for reply in grid.send_and_receive(messages, timeout=remaining):
        node_id = reply.metadata.src_node_id
        answered.add(node_id)
        if reply.has_error():
            reason = reply.error.reason or "no reason given"
            named, closed, _ = reason.removeprefix("[").partition("]")
            clinic = named if reason.startswith("[") and closed else str(node_id)
            replies.append(ClinicRefusal(clinic, int(reply.error.code), reason))
        else:
            replies.append(_read_answer(reply, node_id))
    for node_id in node_ids:
        if node_id not in answered:
            replies.append(ClinicRefusal(f"node {node_id}", 0, "no reply before the timeout"))
    return build_answer(spec, policy, replies, started, requester)


def _read_answer(reply: Message, node_id: int) -> ClinicAnswer | ClinicRefusal:
    """A reply's answer, or a refusal naming the node if its content is not an answer."""
    try:
        return ClinicAnswer.from_content(reply.content)
    except (KeyError, TypeError, ValueError) as error:
        return ClinicRefusal(
            f"node {node_id}", protocol.ERROR_DATA_REFUSED, f"unreadable answer: {error}", None
        )


# --- the query ServerApp ----------------------------------------------------------------------


@dataclass(frozen=True)
class QuerySettings:
    """Everything the query ServerApp needs, JSON-friendly (simulation spec, run config)."""

    query: dict[str, Any]
    cell_floor: int = CMS_CELL_FLOOR
    clinic_min_records: int = CLINIC_MIN_RECORDS
    allow_below_defaults: bool = False
    coordinator_db: str | None = None  # a SQLAlchemy URL; None: under the state root
    expected_clinics: int | None = None
    timeout: float = 300.0
    requester: str | None = None
    out_dir: str | None = None  # deployed runs: where the ServerApp writes answer.json

    @property
    def spec(self) -> QuerySpec:
        return parse_query(self.query)

    @property
    def policy(self) -> SuppressionPolicy:
        return SuppressionPolicy(
            self.cell_floor, self.clinic_min_records, self.allow_below_defaults
        )

    def public_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> QuerySettings:
        """``flwr run . --run-config 'query-json="{...}"'`` on a deployment."""
        return cls(
            query=json.loads(str(run_config[protocol.RUN_QUERY_JSON])),
            cell_floor=int(run_config.get(protocol.RUN_CELL_FLOOR, CMS_CELL_FLOOR)),
            clinic_min_records=int(
                run_config.get(protocol.RUN_CLINIC_MIN_RECORDS, CLINIC_MIN_RECORDS)
            ),
            allow_below_defaults=bool(run_config.get(protocol.RUN_ALLOW_SMALL_FLOORS, False)),
            coordinator_db=str(run_config.get(setting_key("coordinator_url")) or "") or None,
            out_dir=str(run_config.get(setting_key("out_dir")) or "") or None,
        )

    def run_config(self) -> dict[str, Any]:
        """The ``--run-config`` values of a deployed query (inverse of ``from_run_config``)."""
        return {
            protocol.RUN_QUERY_JSON: json.dumps(self.query),
            protocol.RUN_CELL_FLOOR: self.cell_floor,
            protocol.RUN_CLINIC_MIN_RECORDS: self.clinic_min_records,
            protocol.RUN_ALLOW_SMALL_FLOORS: self.allow_below_defaults,
            setting_key("coordinator_url"): self.coordinator_db or "",
            setting_key("out_dir"): self.out_dir or "",
        }


@dataclass
class QueryOutcome:
    """What the query ServerApp leaves for its launcher (the simulation runner reads it)."""

    run_id: str
    status: str = "running"
    message: str | None = None
    answer: InsightAnswer | None = None


def open_coordinator_store(url: str | None) -> CoordinatorStore:
    return (
        CoordinatorStore(url)
        if url
        else CoordinatorStore.sqlite_file(coordinator_state_dir() / "coordinator.db")
    )


def run_and_record(
    backend: Callable[[], InsightAnswer], coordinator_db: str | None
) -> InsightAnswer:
    """Answer, then log the query and its answer in the coordinator database."""
    answer = backend()
    store = open_coordinator_store(coordinator_db)
    try:
        store.record_query(answer.query_id, answer.requester, answer.to_dict())
    finally:
        store.close()
    return answer


def answer_one_query(
    grid: Grid,
    settings: QuerySettings,
    outcome_sink: list[QueryOutcome] | None = None,
    on_answer: Callable[[InsightAnswer], None] | None = None,
) -> InsightAnswer:
    """Ask the clinics on ``grid``, record the answer, and leave it where the launcher looks:
    ``outcome_sink``/``on_answer`` in a simulation, ``<out-dir>/answer.json`` on a deployment."""
    outcome = QueryOutcome(run_id=uuid.uuid4().hex)
    if outcome_sink is not None:
        outcome_sink.append(outcome)
    spec, policy = settings.spec, settings.policy
    try:
        answer = run_and_record(
            lambda: run_query(
                grid,
                spec,
                policy,
                expected_clinics=settings.expected_clinics,
                timeout=settings.timeout,
                requester=settings.requester,
            ),
            settings.coordinator_db,
        )
    except BaseException as error:
        outcome.status, outcome.message = "failed", str(error) or type(error).__name__
        raise
    outcome.answer, outcome.status = answer, "completed"
    if settings.out_dir:
        write_json_atomically(Path(settings.out_dir) / ANSWER_FILE, answer.to_dict())
    if on_answer is not None:
        on_answer(answer)
    return answer


def make_query_server_app(
    settings: QuerySettings | None = None,
    outcome_sink: list[QueryOutcome] | None = None,
    on_answer: Callable[[InsightAnswer], None] | None = None,
) -> ServerApp:
    """A ServerApp that answers one query; without ``settings`` it reads the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        effective = settings or QuerySettings.from_run_config(dict(context.run_config))
        answer_one_query(grid, effective, outcome_sink, on_answer)

    return app


def _cell_dict(cell: CellAnswer) -> dict[str, Any]:
    def estimate(value: Estimate | None) -> dict[str, float] | None:
        return None if value is None else asdict(value)

    result: dict[str, Any] = {
        "group": cell.group,
        "suppressed": cell.suppressed,
        "clinics": cell.clinics,
        "count": estimate(cell.count),
        "value": estimate(cell.value),
    }
    if cell.bins is not None:
        result["bins"] = [estimate(b) for b in cell.bins]
    if cell.quantiles is not None:
        result["quantiles"] = {q: estimate(e) for q, e in cell.quantiles.items()}
    return result


# On a deployment the app's own ServerApp (server.app:app) answers a query when its run
# config holds ``query-json`` (see ``oralfed insights query --federation-dir``).
