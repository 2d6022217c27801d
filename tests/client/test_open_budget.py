"""Opening a clinic's budget registers it once, writes nothing while the node's cap, δ and
accountant stay as registered, and records a changed cap as a change."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from oralfed.client.budget import open_budget
from oralfed.privacy.audit_log import BUDGET_CHANGED, DATASET_REGISTERED, read_database_log
from oralfed.privacy.ledger import LEDGER_FILE, PrivacyLedger
from oralfed.schemas.node_config import ClinicNode


def opened(node: ClinicNode) -> list[str]:
    """Open the node's budget; the kinds of its audit log afterwards."""
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        budget = open_budget(ledger, node)
        assert budget == ledger.budget(node.dataset_id)
        assert (budget.epsilon_cap, budget.accountant) == (node.epsilon_cap, node.accountant)
    return [entry.kind for entry in read_database_log(node.state_dir / LEDGER_FILE)]


def test_an_unchanged_budget_writes_nothing_and_a_new_cap_is_recorded(tmp_path: Path) -> None:
    node = ClinicNode("c1", tmp_path / "c1.csv", tmp_path / "state", "c1", epsilon_cap=10.0)
    assert opened(node) == [DATASET_REGISTERED]
    ledger_bytes = (node.state_dir / LEDGER_FILE).read_bytes()
    assert opened(node) == [DATASET_REGISTERED]
    assert opened(node) == [DATASET_REGISTERED]
    assert (node.state_dir / LEDGER_FILE).read_bytes() == ledger_bytes
    assert opened(replace(node, epsilon_cap=12.0)) == [DATASET_REGISTERED, BUDGET_CHANGED]
