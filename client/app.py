"""The clinic's Flower ClientApp: validate locally, charge the ledger, train with DP, reply.

Order matters and is the privacy invariant: the round's cost is committed to the clinic's
ledger *before* any training, so a refused round trains nothing and sends nothing, and an
update can never leave the node without its cost on record.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.data import ClinicData, ClinicDataError, load_clinic_data
from client.dp_engines import get_dp_engine
from client.model import DEFAULT_HIDDEN_SIZES, build_model
from client.node import ClinicNode, NodeConfigError, resolve_clinic_node
from client.query import handle_query
from client.training import TrainingConfigError, evaluate, plan_dp_round
from privacy.audit import DATA_IMPORTED
from privacy.calibration import CalibrationCache, default_delta
from privacy.ledger import Budget, BudgetExceeded, LedgerError, PrivacyLedger
from schemas import protocol
from schemas.features import Task
from schemas.importer import ContractError, ImportResult

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
    engine = get_dp_engine(str(config.get(protocol.CFG_DP_ENGINE, protocol.DEFAULT_DP_ENGINE)))
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
    return _reply(msg, node, budget, metrics, ArrayRecord(model.state_dict()))


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
    return _reply(msg, node, budget, metrics)


def open_budget(ledger: PrivacyLedger, node: ClinicNode, data: ClinicData | ImportResult) -> Budget:
    """Register the data set on first use; afterwards keep its δ unless the clinic sets one."""
    registered = {budget.dataset_id: budget for budget in ledger.datasets()}.get(node.dataset_id)
    if node.delta is not None:
        delta = node.delta
    elif registered is not None:
        delta = registered.delta
    else:
        delta = default_delta(data.rows_read)
    return ledger.ensure_dataset(node.dataset_id, node.epsilon_cap, delta, node.accountant)


def audit_import(ledger: PrivacyLedger, node: ClinicNode, data: ClinicData) -> None:
    """Log the training file's import once per file fingerprint: counts only, never rows."""
    if ledger.audit is not None:
        ledger.audit.append_once(
            DATA_IMPORTED,
            {
                "clinic_id": node.clinic_id,
                "dataset_id": node.dataset_id,
                "file_sha256": data.fingerprint,
                "task": data.task.value,
                "rows_read": data.rows_read,
                "rows_rejected": data.rows_rejected,
                "rows_train": data.n_train,
                "rows_test": data.n_test,
            },
        )


def refusal(msg: Message, code: int, clinic_id: str, reason: str) -> Message:
    """A reply that names the clinic and why it did not do the work."""
    return Message(Error(code=code, reason=f"[{clinic_id}] {reason}"), reply_to=msg)


def _reply(
    msg: Message,
    node: ClinicNode,
    budget: Budget,
    metrics: MetricRecord,
    arrays: ArrayRecord | None = None,
) -> Message:
    content = RecordDict(
        {
            protocol.REPLY_METRICS: metrics,
            protocol.REPLY_CLINIC: ConfigRecord(
                {protocol.CLINIC_ID: node.clinic_id, protocol.ACCOUNTANT: budget.accountant}
            ),
        }
    )
    if arrays is not None:
        content[protocol.REPLY_ARRAYS] = arrays
    return Message(content=content, reply_to=msg)


def _hidden_sizes(config: ConfigRecord) -> tuple[int, ...]:
    sizes = config.get(protocol.CFG_HIDDEN_SIZES)
    return tuple(int(s) for s in sizes) if sizes else DEFAULT_HIDDEN_SIZES


app = make_client_app()
