"""The clinic's budget in its ledger: registered on first use, and imports put on record.

Shared by every handler that charges (training, queries): each opens the data set's budget
the same way, so δ and the cap cannot differ between a training round and a statistic.
"""

from __future__ import annotations

from oralfed.client.data import ClinicData
from oralfed.privacy.audit_log import DATA_IMPORTED
from oralfed.privacy.calibration import default_delta
from oralfed.privacy.ledger import Budget, PrivacyLedger
from oralfed.schemas.importer import ImportResult
from oralfed.schemas.node_config import ClinicNode

__all__ = ["audit_import", "open_budget"]


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
