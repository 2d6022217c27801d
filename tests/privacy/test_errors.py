"""The privacy layer's errors share OralFed's root and carry the exit code the CLI reports."""

from __future__ import annotations

import pytest

from oralfed.privacy.accountants import UnsupportedEvent
from oralfed.privacy.audit_log import AuditError
from oralfed.privacy.keys import AuditKeyError
from oralfed.privacy.ledger import BudgetExceeded, InvalidBudget, LedgerError, UnknownDataset
from oralfed.schemas.errors import ExitCode, OralFedError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (LedgerError, ExitCode.LEDGER),
        (UnknownDataset, ExitCode.LEDGER),
        (InvalidBudget, ExitCode.LEDGER),
        (BudgetExceeded, ExitCode.BUDGET_EXCEEDED),
        (AuditError, ExitCode.AUDIT),
        (AuditKeyError, ExitCode.AUDIT),
        (UnsupportedEvent, ExitCode.USAGE),
    ],
)
def test_privacy_errors_carry_their_exit_code(error: type[OralFedError], code: ExitCode) -> None:
    assert issubclass(error, OralFedError)
    assert error.exit_code is code


def test_unsupported_event_is_still_a_value_error() -> None:
    assert issubclass(UnsupportedEvent, ValueError)
