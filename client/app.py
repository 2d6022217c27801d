"""The clinic's Flower ClientApp: judge the request, charge the ledger, release, reply.

Order matters and is the privacy invariant: the request is checked against the clinic's
policy, then each release's cost is committed to the clinic's ledger *before* it is
computed, so a refused round computes nothing and sends nothing, and nothing leaves the node
without its cost on record. Every value in a reply is a charged DP release (model update,
evaluation histogram), a function of public inputs and charged releases (the public size,
σ, q, steps, ε spent) or declared public by the clinic (its id, cap, δ, accountant); the
full list is in docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from oralfed.client.budget import audit_import, open_budget, record_policy, run_epsilon
from oralfed.client.data import ClinicDataError, load_clinic_data
from oralfed.client.dp_engines import get_dp_engine
from oralfed.client.evaluation import evaluation_event, private_evaluation
from oralfed.client.node import resolve_clinic_node
from oralfed.client.public_size import PublicSize, public_size, size_estimate_event
from oralfed.client.query import handle_query
from oralfed.client.replies import refusal, reply
from oralfed.client.requests import RequestError, TrainRequest, read_evaluate, read_train
from oralfed.client.training import TrainingConfigError, plan_dp_round
from oralfed.privacy.calibration import CalibrationCache
from oralfed.privacy.events import PrivacyEvent
from oralfed.privacy.ledger import BudgetExceeded, LedgerError, PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.clinic_policy import PolicyRefusal
from oralfed.schemas.importer import ContractError
from oralfed.schemas.model import build_model
from oralfed.schemas.node_config import ClinicNode, NodeConfigError

Handler = Callable[[Message, ClinicNode], Message]
CALIBRATION_CACHE_FILE = "calibration-cache.json"


def make_client_app(manifest: list[ClinicNode] | None = None) -> ClientApp:
    """A ClientApp; ``manifest`` maps simulated partition ids to clinics (simulation only)."""
    app = ClientApp()

    def guarded(handler: Handler) -> Callable[[Message, Context], Message]:
        def run(msg: Message, context: Context) -> Message:
            try:
                node = resolve_clinic_node(context, manifest)
            except NodeConfigError as error:
                return refusal(msg, protocol.ERROR_DATA_REFUSED, "unconfigured node", str(error))
            return answer(handler, msg, node)

        return run

    app.train()(guarded(handle_train))
    app.evaluate()(guarded(handle_evaluate))
    app.query()(guarded(handle_query))
    return app


def answer(handler: Handler, msg: Message, node: ClinicNode) -> Message:
    """Run ``handler``; a refusal of any kind becomes a reply naming the clinic and why."""
    try:
        return handler(msg, node)
    except BudgetExceeded as error:  # before LedgerError, of which it is a kind
        return refusal(msg, protocol.ERROR_BUDGET_EXCEEDED, node.clinic_id, str(error))
    except (PolicyRefusal, RequestError) as error:
        return refusal(msg, protocol.ERROR_POLICY_REFUSED, node.clinic_id, str(error))
    except (ContractError, ClinicDataError, TrainingConfigError, LedgerError) as error:
        return refusal(msg, protocol.ERROR_DATA_REFUSED, node.clinic_id, str(error))


def handle_train(msg: Message, node: ClinicNode) -> Message:
    request = read_train(msg.content.config_records["config"])
    node.policy.check_model(request.task, request.hidden_sizes)
    node.policy.check_run(request.total_rounds, request.target_epsilon, request.eval_epsilon)
    data = load_clinic_data(node.clinic_id, node.data_path, request.task)
    engine = get_dp_engine(request.dp_engine)
    run_id = str(msg.metadata.run_id)
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        budget = open_budget(ledger, node)
        record_policy(ledger, node)
        audit_import(ledger, node, data)
        size = public_size(node, ledger, data, run_id)
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
        node.policy.check_run_epsilon(run_epsilon(ledger, budget, run_id, plan.event))
        charge = ledger.charge(
            node.dataset_id,
            plan.event,
            run_id=run_id,
            round=request.server_round,
            data_fingerprint=data.fingerprint,
        )
    model = build_model(request.hidden_sizes)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    # No seed: in production the batches and the noise come from 128 secret bits.
    engine.train(model, data.x_train, data.y_train, plan)
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: size.value,  # public: FedAvg's weight
            protocol.EPSILON_SPENT: charge.epsilon_after,
            protocol.EPSILON_CAP: budget.epsilon_cap,
            protocol.DELTA: budget.delta,
            protocol.NOISE_MULTIPLIER: plan.noise_multiplier,
            protocol.SAMPLE_RATE: plan.sample_rate,
            protocol.DP_STEPS: plan.steps,
        }
    )
    return reply(msg, node, budget, metrics, ArrayRecord(model.state_dict()), size.source)


def handle_evaluate(msg: Message, node: ClinicNode) -> Message:
    request = read_evaluate(msg.content.config_records["config"])
    node.policy.check_model(request.task, request.hidden_sizes)
    node.policy.check_run(request.total_rounds, None, request.eval_epsilon)
    data = load_clinic_data(node.clinic_id, node.data_path, request.task)
    event = evaluation_event(request.eval_epsilon)
    run_id = str(msg.metadata.run_id)
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        budget = open_budget(ledger, node)
        record_policy(ledger, node)
        node.policy.check_run_epsilon(run_epsilon(ledger, budget, run_id, event))
        charge = ledger.charge(
            node.dataset_id,
            event,
            run_id=run_id,
            round=request.server_round,
            data_fingerprint=data.fingerprint,
            note="federated evaluation (noisy score histogram)",
        )
    model = build_model(request.hidden_sizes)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    release = private_evaluation(model, data.x_test, data.y_test, request.eval_epsilon)
    metrics = MetricRecord(
        {
            protocol.EVAL_HISTOGRAM: [float(count) for count in release.histogram.ravel()],
            protocol.EVAL_NOISE_SCALE: release.noise_scale,
            protocol.EPSILON_SPENT: charge.epsilon_after,
            protocol.EPSILON_CAP: budget.epsilon_cap,
            protocol.DELTA: budget.delta,
        }
    )
    return reply(msg, node, budget, metrics)


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
