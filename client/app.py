"""The clinic's Flower ClientApp: judge the request, charge the ledger, release, reply.

Order matters and is the privacy invariant: the request is checked against the clinic's
policy, then each release's cost is committed to the clinic's ledger *before* it is
computed, so a refused round computes nothing and sends nothing, and nothing leaves the node
without its cost on record. A release is stored before it is sent, so a round asked for
again (a resumed coordinator) is answered with the same release or under the same charge,
never paid twice (``oralfed.client.release_store``). Every value in a reply is a charged
DP release (model update, evaluation histogram), a function of public inputs and charged
releases (the public size, σ, q, steps, ε spent) or declared public by the clinic (its id,
cap, δ, accountant); the full list is in docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from oralfed.client.budget import audit_import, open_budget, record_policy, run_epsilon
from oralfed.client.data import ClinicData, load_clinic_data
from oralfed.client.dp_engines import get_dp_engine
from oralfed.client.evaluation import evaluation_event, private_evaluation
from oralfed.client.node import resolve_clinic_node
from oralfed.client.public_size import PublicSize, public_size, size_estimate_event
from oralfed.client.query import handle_query
from oralfed.client.refusals import failed_request, refusal_reason
from oralfed.client.release_store import Release, ReleaseKey, ReleaseStore, charged_before
from oralfed.client.replies import refusal, reply
from oralfed.client.requests import RequestError, TrainRequest, read_evaluate, read_train, run_id_of
from oralfed.client.secure_aggregation import secure_aggregation_mod
from oralfed.client.training import plan_dp_round
from oralfed.privacy.calibration import CalibrationCache
from oralfed.privacy.events import PrivacyEvent
from oralfed.privacy.ledger import Budget, ChargeRecord, PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.clinic_policy import PolicyRefusal
from oralfed.schemas.features import Task
from oralfed.schemas.model import RiskModel, build_model
from oralfed.schemas.model_record import load_model_record, model_record
from oralfed.schemas.node_config import ClinicNode

Handler = Callable[[Message, ClinicNode], Message]
CALIBRATION_CACHE_FILE = "calibration-cache.json"
EVALUATION_NOTE = "federated evaluation (noisy score histogram)"


def make_client_app(
    manifest: list[ClinicNode] | Callable[[], list[ClinicNode]] | None = None,
) -> ClientApp:
    """A ClientApp; ``manifest`` maps simulated partition ids to clinics (simulation only).

    A function giving the list is called where the ClientApp runs: Flower's Ray backend
    pickles the ClientApp with every message, so a large list would travel each time
    (``oralfed.deploy.run_clinics``).
    """
    app = ClientApp()

    def guarded(handler: Handler) -> Callable[[Message, Context], Message]:
        def run(msg: Message, context: Context) -> Message:
            try:
                clinics = manifest() if callable(manifest) else manifest
                node = resolve_clinic_node(context, clinics)
            except Exception as error:  # a node that cannot say who it is still refuses
                code, reason = refusal_reason(error)
                named = context.node_config.get(protocol.NODE_CLINIC_ID)
                return refusal(msg, code, str(named or "unconfigured node"), reason)
            return answer(handler, msg, node)

        return run

    # Under secure aggregation Flower's SecAgg+ mod masks the update (client.secure_aggregation).
    app.train(mods=[secure_aggregation_mod])(guarded(handle_train))
    app.evaluate()(guarded(handle_evaluate))
    app.query()(guarded(handle_query))
    return app


def answer(handler: Handler, msg: Message, node: ClinicNode) -> Message:
    """Run ``handler``; any failure becomes a refusal naming the clinic and why
    (:mod:`client.refusals`), and one that came after a charge says that it was charged."""
    started = datetime.now(UTC)
    try:
        return handler(msg, node)
    except Exception as error:  # Flower would reply with the exception's type alone
        code, reason = failed_request(error, msg, node, started)
        return refusal(msg, code, node.clinic_id, reason)


def handle_train(msg: Message, node: ClinicNode) -> Message:
    request = read_train(msg.content.config_records["config"])
    node.policy.check_model(request.task, request.hidden_sizes)
    node.policy.check_run(request.total_rounds, request.target_epsilon, request.eval_epsilon)
    model = _model_sent(msg, request.hidden_sizes)  # before any charge: a bad one costs nothing
    engine = get_dp_engine(request.dp_engine)
    key = ReleaseKey(node.dataset_id, run_id_of(request, msg), request.server_round, "train")
    data = _clinic_data(node, request.task)

    def charge(ledger: PrivacyLedger, budget: Budget) -> Callable[[], Release]:
        audit_import(ledger, node, data)
        size = public_size(node, ledger, data, key.run_id)
        plan = plan_dp_round(
            public_size=size.value,
            batch_size=request.batch_size,
            local_epochs=request.local_epochs,
            learning_rate=request.learning_rate,
            clip_norm=request.clip_norm,
            total_rounds=request.total_rounds,
            delta=budget.delta,
            target_epsilon=request.target_epsilon,
            noise_multiplier=request.noise_multiplier,
            proximal_mu=request.proximal_mu,
            accountant=budget.accountant,
            other_events=_other_releases_of_the_run(request, size),
            calibration_cache=CalibrationCache(node.state_dir / CALIBRATION_CACHE_FILE),
        )
        node.policy.check_noise(plan.noise_multiplier)
        charged = _charge_once(ledger, node, budget, key, plan.event, data.fingerprint)

        def train() -> Release:
            # No seed: in production the batches and the noise come from 128 secret bits.
            engine.train(model, data.x_train, data.y_train, plan)
            metrics = MetricRecord(
                {
                    protocol.NUM_EXAMPLES: size.value,  # public: FedAvg's weight
                    protocol.EPSILON_SPENT: charged.epsilon_after,
                    protocol.EPSILON_CAP: budget.epsilon_cap,
                    protocol.DELTA: budget.delta,
                    protocol.NOISE_MULTIPLIER: plan.noise_multiplier,
                    protocol.SAMPLE_RATE: plan.sample_rate,
                    protocol.DP_STEPS: plan.steps,
                }
            )
            return Release(charged.id, metrics, model_record(model), size.source)

        return train

    return _release_once(msg, node, key, charge)


def handle_evaluate(msg: Message, node: ClinicNode) -> Message:
    request = read_evaluate(msg.content.config_records["config"])
    node.policy.check_model(request.task, request.hidden_sizes)
    node.policy.check_run(request.total_rounds, None, request.eval_epsilon)
    model = _model_sent(msg, request.hidden_sizes)
    event = evaluation_event(request.eval_epsilon)
    key = ReleaseKey(node.dataset_id, run_id_of(request, msg), request.server_round, "evaluate")
    data = _clinic_data(node, request.task)

    def charge(ledger: PrivacyLedger, budget: Budget) -> Callable[[], Release]:
        charged = _charge_once(ledger, node, budget, key, event, data.fingerprint)

        def evaluate() -> Release:
            noisy = private_evaluation(model, data.x_test, data.y_test, request.eval_epsilon)
            metrics = MetricRecord(
                {
                    protocol.EVAL_HISTOGRAM: [float(count) for count in noisy.histogram.ravel()],
                    protocol.EVAL_NOISE_SCALE: noisy.noise_scale,
                    protocol.EPSILON_SPENT: charged.epsilon_after,
                    protocol.EPSILON_CAP: budget.epsilon_cap,
                    protocol.DELTA: budget.delta,
                }
            )
            return Release(charged.id, metrics)

        return evaluate

    return _release_once(msg, node, key, charge)


def _release_once(
    msg: Message,
    node: ClinicNode,
    key: ReleaseKey,
    charge: Callable[[PrivacyLedger, Budget], Callable[[], Release]],
) -> Message:
    """Reply with ``key``'s release, made at most once (``oralfed.client.release_store``).

    Under the store's lock: a release already stored is sent again as it is. Otherwise
    ``charge`` commits the cost in the open ledger (or finds it already there) and returns
    the computation, which runs once the ledger is closed; its release is stored before it
    is sent.
    """
    releases = ReleaseStore(node.state_dir)
    with releases.claim():
        with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
            budget = open_budget(ledger, node)
            release = releases.load(key)
            if release is None:
                record_policy(ledger, node)
                compute = charge(ledger, budget)
        if release is None:
            release = compute()
            releases.save(key, release)
    return reply(msg, node, budget, release.metrics, release.arrays, release.public_size_source)


def _clinic_data(node: ClinicNode, task: Task) -> ClinicData:
    """The clinic's data, read once the request itself has passed every check: its import
    receipt (``client.import_receipt``) is the first thing the request writes."""
    return load_clinic_data(node.clinic_id, node.data_path, task, state_dir=node.state_dir)


def _model_sent(msg: Message, hidden_sizes: tuple[int, ...]) -> RiskModel:
    """The coordinator's model from the request, read before anything is charged, so that
    arrays that do not fit the requested architecture are refused at no cost."""
    record = msg.content.array_records.get(protocol.REPLY_ARRAYS)
    if record is None:
        raise RequestError(f"no {protocol.REPLY_ARRAYS!r} record (the model); nothing was charged")
    try:
        return load_model_record(build_model(hidden_sizes), record)
    except ValueError as error:
        raise RequestError(
            f"the model sent does not fit hidden-sizes {list(hidden_sizes)}: {error}; nothing "
            "was charged"
        ) from None


def _charge_once(
    ledger: PrivacyLedger,
    node: ClinicNode,
    budget: Budget,
    key: ReleaseKey,
    event: PrivacyEvent,
    fingerprint: str,
) -> ChargeRecord:
    """The charge ``key``'s release is made under: the one already in the ledger (a release
    charged but never stored, so never sent: see ``client.release_store``), else a new one
    within the run's bound. An earlier charge covers only the mechanism it was made for."""
    earlier = charged_before(ledger, key)
    if earlier is not None:
        if earlier.event != event:
            raise PolicyRefusal(
                f"round {key.round} of run {key.run_id} was charged for {earlier.event}; "
                f"a second {key.phase} release under another mechanism ({event}) is refused"
            )
        return earlier
    node.policy.check_run_epsilon(run_epsilon(ledger, budget, key.run_id, event))
    return ledger.charge(
        node.dataset_id,
        event,
        run_id=key.run_id,
        round=key.round,
        data_fingerprint=fingerprint,
        note=EVALUATION_NOTE if key.phase == "evaluate" else None,
    )


def _other_releases_of_the_run(request: TrainRequest, size: PublicSize) -> tuple[PrivacyEvent, ...]:
    """What the run's target ε must also cover: its planned evaluations and, when the size
    is an estimate, that estimate (always, so every round of the run calibrates alike)."""
    events: list[PrivacyEvent] = []
    if request.eval_count > 0:
        events.append(replace(evaluation_event(request.eval_epsilon), count=request.eval_count))
    if size.source == "estimate":
        events.append(size_estimate_event())
    return tuple(events)


app = make_client_app()
