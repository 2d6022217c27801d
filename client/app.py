"""The clinic's Flower ClientApp: validate locally, charge the ledger, train with DP, reply.

Order matters and is the privacy invariant: the round's cost is committed to the clinic's
ledger *before* any training, so a refused round trains nothing and sends nothing, and an
update can never leave the node without its cost on record.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from oralfed.client.budget import audit_import, open_budget
from oralfed.client.data import ClinicDataError, load_clinic_data
from oralfed.client.dp_engines import get_dp_engine
from oralfed.client.node import resolve_clinic_node
from oralfed.client.query import handle_query
from oralfed.client.replies import refusal, reply
from oralfed.client.training import TrainingConfigError, evaluate, plan_dp_round
from oralfed.privacy.calibration import CalibrationCache
from oralfed.privacy.ledger import BudgetExceeded, LedgerError, PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.features import Task
from oralfed.schemas.importer import ContractError
from oralfed.schemas.model import build_model
from oralfed.schemas.node_config import ClinicNode, NodeConfigError
from oralfed.schemas.settings import DEFAULT_HIDDEN_SIZES, DpEngineName

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
            try:
                return handler(msg, node)
            except (ContractError, ClinicDataError, TrainingConfigError, LedgerError) as error:
                return refusal(msg, protocol.ERROR_DATA_REFUSED, node.clinic_id, str(error))

        return run

    app.train()(guarded(handle_train))
    app.evaluate()(guarded(handle_evaluate))
    app.query()(guarded(handle_query))
    return app


def handle_train(msg: Message, node: ClinicNode) -> Message:
    config = msg.content["config"]
    data = load_clinic_data(
        node.clinic_id,
        node.data_path,
        Task(str(config.get(protocol.CFG_TASK, Task.UNTREATED_CARIES))),
    )
    server_round = int(config[protocol.CFG_ROUND])
    engine = get_dp_engine(str(config.get(protocol.CFG_DP_ENGINE, DpEngineName.FAST)))
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        budget = open_budget(ledger, node, data)
        audit_import(ledger, node, data)
        target = float(config.get(protocol.CFG_TARGET_EPSILON, 0.0))
        sigma = float(config.get(protocol.CFG_NOISE_MULTIPLIER, 0.0))
        plan = plan_dp_round(
            n_train=data.n_train,
            batch_size=int(config[protocol.CFG_BATCH_SIZE]),
            local_epochs=int(config[protocol.CFG_LOCAL_EPOCHS]),
            learning_rate=float(config[protocol.CFG_LEARNING_RATE]),
            clip_norm=float(config[protocol.CFG_CLIP_NORM]),
            total_rounds=int(config[protocol.CFG_TOTAL_ROUNDS]),
            delta=budget.delta,
            target_epsilon=target if target > 0 else None,
            noise_multiplier=sigma if sigma > 0 else None,
            proximal_mu=float(config.get(protocol.CFG_PROXIMAL_MU, 0.0)),
            calibration_cache=CalibrationCache(node.state_dir / CALIBRATION_CACHE_FILE),
        )
        try:
            charge = ledger.charge(
                node.dataset_id,
                plan.event,
                run_id=str(msg.metadata.run_id),
                round=server_round,
                data_fingerprint=data.fingerprint,
            )
        except BudgetExceeded as error:
            return refusal(msg, protocol.ERROR_BUDGET_EXCEEDED, node.clinic_id, str(error))
    model = build_model(_hidden_sizes(config))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    # No seed: in production the batches and the noise come from a secret random seed.
    trained = engine.train(model, data.x_train, data.y_train, plan)
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: data.n_train,
            protocol.TRAIN_LOSS: trained.mean_loss,
            protocol.EPSILON_SPENT: charge.epsilon_after,
            protocol.EPSILON_CAP: budget.epsilon_cap,
            protocol.DELTA: budget.delta,
            protocol.NOISE_MULTIPLIER: plan.noise_multiplier,
            protocol.SAMPLE_RATE: plan.sample_rate,
            protocol.DP_STEPS: plan.steps,
        }
    )
    return reply(msg, node, budget, metrics, ArrayRecord(model.state_dict()))


def handle_evaluate(msg: Message, node: ClinicNode) -> Message:
    config = msg.content["config"]
    data = load_clinic_data(
        node.clinic_id,
        node.data_path,
        Task(str(config.get(protocol.CFG_TASK, Task.UNTREATED_CARIES))),
    )
    model = build_model(_hidden_sizes(config))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    result = evaluate(model, data.x_test, data.y_test)
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        budget = open_budget(ledger, node, data)
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: result.num_examples,
            protocol.EVAL_LOSS: result.loss,
            protocol.EVAL_ACCURACY: result.accuracy,
            protocol.EVAL_AUC: float("nan") if result.auc is None else result.auc,
            protocol.EPSILON_SPENT: budget.spent,
            protocol.EPSILON_CAP: budget.epsilon_cap,
            protocol.DELTA: budget.delta,
        }
    )
    return reply(msg, node, budget, metrics)










def _hidden_sizes(config: ConfigRecord) -> tuple[int, ...]:
    sizes = config.get(protocol.CFG_HIDDEN_SIZES)
    return tuple(int(s) for s in sizes) if sizes else DEFAULT_HIDDEN_SIZES


app = make_client_app()
