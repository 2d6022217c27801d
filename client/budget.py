"""The clinic's budget in its ledger: registered on first use, and imports put on record.

Shared by every handler that charges (training, queries): each opens the data set's budget
the same way, so δ and the cap cannot differ between a training round and a statistic.
"""

from __future__ import annotations

from oralfed.client.data import ClinicData
from oralfed.privacy.accountants import get_accountant
from oralfed.privacy.audit_log import DATA_IMPORTED, POLICY_IN_FORCE
from oralfed.privacy.calibration import UNKNOWN_SIZE_DELTA, default_delta
from oralfed.privacy.events import PrivacyEvent
from oralfed.privacy.ledger import Budget, PrivacyLedger, UnknownDataset
from oralfed.schemas.node_config import ClinicNode

__all__ = ["audit_import", "open_budget", "record_policy", "run_epsilon"]


def open_budget(ledger: PrivacyLedger, node: ClinicNode) -> Budget:
    """Register the data set on first use; afterwards keep its δ unless the clinic sets one.

    A default δ comes from public values only: the size the clinic declares public, else
    :data:`~oralfed.privacy.calibration.UNKNOWN_SIZE_DELTA` (never the file's row count,
    which would make δ itself a function of the private data).
    """
    try:  # read first: a budget already as the node configures it needs no write
        registered: Budget | None = ledger.budget(node.dataset_id)
    except UnknownDataset:
        registered = None
    if node.delta is not None:
        delta = node.delta
    elif registered is not None:
        delta = registered.delta
    elif node.public_size is not None:
        delta = default_delta(node.public_size)
    else:
        delta = UNKNOWN_SIZE_DELTA
    wanted = (node.epsilon_cap, delta, node.accountant)
    if registered is not None and (
        (registered.epsilon_cap, registered.delta, registered.accountant) == wanted
    ):
        return registered  # as registered: nothing to change, so no write and no lock
    return ledger.ensure_dataset(node.dataset_id, *wanted)


def record_policy(ledger: PrivacyLedger, node: ClinicNode) -> None:
    """Put the policy this ClientApp enforces in the clinic's signed log (once per policy)."""
    if ledger.audit is not None:
        ledger.audit.append_once(
            POLICY_IN_FORCE,
            {
                "clinic_id": node.clinic_id,
                "dataset_id": node.dataset_id,
                **node.policy.public_dict(),
            },
        )


def run_epsilon(ledger: PrivacyLedger, budget: Budget, run_id: str, event: PrivacyEvent) -> float:
    """ε of this run's releases on the data set, with ``event`` added (its own accountant, δ)."""
    events = [c.event for c in ledger.history(budget.dataset_id) if c.run_id == run_id]
    return get_accountant(budget.accountant).epsilon([*events, event], budget.delta)


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
