"""The insider with write access to a clinic's ledger database, and an intact signed log.

Each test edits one ledger value that ε depends on with raw SQL, the way someone holding the
file (but not the node's signing key) can, and shows that ``oralfed audit verify`` and
``oralfed audit budget`` then fail, naming the log entry and the ledger row the edit breaks.
The first test is the attack that used to pass: δ raised to 0.5 and the accountant swapped
bring the recomputed ε to 0, a release the cap refused goes through, and verification said
VERIFIED.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from oralfed.cli.main import main
from oralfed.privacy.audit_targets import verify_target
from oralfed.privacy.events import DpSgdEvent, GaussianEvent
from oralfed.privacy.ledger import BudgetExceeded, PrivacyLedger
from oralfed.schemas.errors import ExitCode

DATASET = "clinic-01"
CAP = 2.5
DELTA = 1e-5
ROUND = DpSgdEvent(noise_multiplier=1.9, sample_rate=0.05, steps=100)
RELEASE = GaussianEvent(noise_multiplier=20.0, count=2)
DATASET_ROW = f"ledger_datasets[dataset_id={DATASET!r}]"


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clinic's state dir. Its log: 1 registration, 2-5 charges 1-4 (DP-SGD rounds 1 and 2,
    a Gaussian release of two statistics, DP-SGD round 3), 6 the refused round 4."""
    state_dir = tmp_path_factory.mktemp("clinic")
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset(DATASET, epsilon_cap=CAP, delta=DELTA, accountant="rdp")
        ledger.charge(DATASET, ROUND, run_id="run-1", round=1)
        ledger.charge(DATASET, ROUND, run_id="run-1", round=2)
        ledger.charge(DATASET, RELEASE, run_id="query-1")
        ledger.charge(DATASET, ROUND, run_id="run-1", round=3)
        with pytest.raises(BudgetExceeded):
            ledger.charge(DATASET, ROUND, run_id="run-1", round=4)
    assert verify_target(state_dir=state_dir).ok
    return state_dir


@pytest.fixture
def insider(clinic: Path, tmp_path: Path) -> Path:
    """A copy of the clinic's state dir for one insider to edit."""
    return Path(shutil.copytree(clinic, tmp_path / "clinic"))


def edit(state_dir: Path, *statements: str) -> None:
    connection = sqlite3.connect(state_dir / "ledger.db")
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()


def oralfed_audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", *args])
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def spent(state_dir: Path) -> float:
    """ε as the node's own ledger recomputes it for its cap check."""
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        return ledger.budget(DATASET).spent


def test_raising_delta_and_swapping_the_accountant_no_longer_verifies(
    capsys: pytest.CaptureFixture[str], insider: Path
) -> None:
    before = spent(insider)
    assert before == pytest.approx(2.29, abs=0.01)
    edit(insider, "UPDATE ledger_datasets SET delta = 0.5, accountant = 'pld'")
    assert spent(insider) == 0.0  # the ledger's own figure: everything looks unspent
    with PrivacyLedger.in_state_dir(insider) as ledger:  # and the refused round now passes
        assert ledger.charge(DATASET, ROUND, run_id="run-1", round=4).epsilon_after == 0.0

    code, out, err = oralfed_audit(capsys, "verify", "--state-dir", str(insider))
    assert code == ExitCode.VERIFICATION_FAILED and "VERIFIED:" not in out
    assert "entry 1 (position 1): ledger-mismatch: ledger data set 'clinic-01' has delta" in err
    assert "entry 7 (position 7): ledger-mismatch: this charge" in err
    code, out, err = oralfed_audit(capsys, "budget", "--state-dir", str(insider))
    assert code == ExitCode.VERIFICATION_FAILED and "NOT VERIFIED" in err

    failures = verify_target(state_dir=insider).result.failures
    found = {(f.seq, f.ledger_row, f.detail) for f in failures}
    assert (
        1,
        DATASET_ROW,
        f"ledger data set {DATASET!r} has delta 0.5 where this entry set 1e-05",
    ) in found
    assert (
        1,
        DATASET_ROW,
        f"ledger data set {DATASET!r} has accountant 'pld' where this entry set 'rdp'",
    ) in found
    (epsilon,) = [f for f in failures if "the ledger's rows give" in f.detail]
    assert epsilon.seq == 1
    assert "ε=0.0000 (δ=0.5, 'pld' accountant, 5 charge(s)) but its logged history gives " in (
        epsilon.detail
    )
    assert "(δ=1e-05, 'rdp' accountant, 5 charge(s)): the ledger would let through releases" in (
        epsilon.detail
    )
    charged_on_the_edit = {f.detail.split(",")[0] for f in failures if f.seq == 7}
    assert charged_on_the_edit >= {
        f"this charge of data set {DATASET!r} was accounted with delta 0.5",
        f"this charge of data set {DATASET!r} was accounted with accountant 'pld'",
    }


# (statement, the entry it breaks, the ledger row, what the failure says)
EDITS = {
    "delta": (
        "UPDATE ledger_datasets SET delta = 0.001",
        1,
        DATASET_ROW,
        "ledger data set 'clinic-01' has delta 0.001 where this entry set 1e-05",
    ),
    "accountant": (
        "UPDATE ledger_datasets SET accountant = 'pld'",
        1,
        DATASET_ROW,
        "ledger data set 'clinic-01' has accountant 'pld' where this entry set 'rdp'",
    ),
    "cap": (
        "UPDATE ledger_datasets SET epsilon_cap = 100.0",
        1,
        DATASET_ROW,
        "ledger data set 'clinic-01' has epsilon_cap 100 where this entry set 2.5",
    ),
    "cap change row": (
        "UPDATE ledger_budget_changes SET new_cap = 100.0 WHERE id = 1",
        1,
        "ledger_budget_changes[id=1]",
        "ledger budget change 1 differs from its audit entry in new_cap (100 in the ledger, "
        "2.5 in the log)",
    ),
    "mechanism": (
        "UPDATE ledger_charges SET mechanism = 'laplace' WHERE id = 3",
        4,
        "ledger_charges[id=3]",
        "ledger charge 3 differs from its audit entry in mechanism ('laplace' in the ledger, "
        "'gaussian' in the log)",
    ),
    "noise multiplier": (
        "UPDATE ledger_charges SET noise_multiplier = 8.0 WHERE id = 1",
        2,
        "ledger_charges[id=1]",
        "ledger charge 1 differs from its audit entry in noise_multiplier (8 in the ledger, "
        "1.9 in the log)",
    ),
    "sample rate": (
        "UPDATE ledger_charges SET sample_rate = 0.001 WHERE id = 2",
        3,
        "ledger_charges[id=2]",
        "ledger charge 2 differs from its audit entry in sample_rate (0.001 in the ledger, "
        "0.05 in the log)",
    ),
    "steps": (
        "UPDATE ledger_charges SET steps = 1 WHERE id = 4",
        5,
        "ledger_charges[id=4]",
        "ledger charge 4 differs from its audit entry in steps (1 in the ledger, 100 in the log)",
    ),
    "release count": (
        "UPDATE ledger_charges SET steps = 1 WHERE id = 3",
        4,
        "ledger_charges[id=3]",
        "ledger charge 3 differs from its audit entry in steps (1 in the ledger, 2 in the log)",
    ),
    "charge delta": (
        "UPDATE ledger_charges SET delta = 0.5 WHERE id = 1",
        2,
        "ledger_charges[id=1]",
        "ledger charge 1 differs from its audit entry in delta (0.5 in the ledger, 1e-05 in "
        "the log)",
    ),
    "receipt": (
        "UPDATE ledger_charges SET epsilon_after = 0.1 WHERE id = 4",
        5,
        "ledger_charges[id=4]",
        "ledger charge 4 differs from its audit entry in epsilon_after",
    ),
    "deleted charge": (
        "DELETE FROM ledger_charges WHERE id = 2",
        3,
        "ledger_charges[id=2]",
        "ledger charge 2 was audited but is missing from the ledger (deleted: its budget was "
        "freed)",
    ),
    "inserted charge": (
        "INSERT INTO ledger_charges (dataset_id, recorded_at, run_id, round, mechanism, "
        "noise_multiplier, sample_rate, steps, delta, epsilon_after) VALUES "
        "('clinic-01', '2026-01-01 00:00:00', 'run-1', 4, 'dpsgd', 1.9, 0.05, 100, 1e-5, 2.6)",
        None,
        "ledger_charges[id=5]",
        "ledger charge 5 has no audit entry (written around the ledger's API)",
    ),
    "deleted data set": (
        "DELETE FROM ledger_datasets",
        1,
        DATASET_ROW,
        "data set 'clinic-01', registered by this entry, is missing from the ledger (its row "
        "was deleted, and its budget with it)",
    ),
}
# Edits that change what the ledger's rows account: ε of the rows no longer matches the log.
CHANGES_EPSILON = {
    "delta",
    "accountant",
    "mechanism",
    "noise multiplier",
    "sample rate",
    "steps",
    "release count",
    "deleted charge",
    "inserted charge",
}


@pytest.mark.parametrize("column", list(EDITS))
def test_every_edit_that_moves_epsilon_fails_verify_and_budget(
    capsys: pytest.CaptureFixture[str], insider: Path, column: str
) -> None:
    statement, seq, row, detail = EDITS[column]
    edit(insider, statement)
    verify_code, verify_out, verify_err = oralfed_audit(
        capsys, "verify", "--state-dir", str(insider)
    )
    budget_code, _, budget_err = oralfed_audit(capsys, "budget", "--state-dir", str(insider))
    assert verify_code == ExitCode.VERIFICATION_FAILED and "VERIFIED:" not in verify_out
    # Nothing is left to report of a deleted data set: that is the ledger's own refusal.
    assert budget_code == (ExitCode.LEDGER if column == "deleted data set" else verify_code)

    report = verify_target(state_dir=insider)
    assert not report.ok and report.ledger_checked
    named = [f for f in report.result.failures if f.seq == seq and f.ledger_row == row]
    assert named and named[0].detail.startswith(detail), report.result.failures
    assert named[0].problem == "ledger-mismatch"
    moved = any("the ledger's rows give ε=" in f.detail for f in report.result.failures)
    assert moved == (column in CHANGES_EPSILON)
    where = "" if seq is None else f"entry {seq} (position {seq}): "
    assert f"{where}ledger-mismatch: {detail}" in verify_err
    if column == "deleted data set":
        assert "no data set is registered" in budget_err
    else:
        assert f"{where}ledger-mismatch: {detail}" in budget_err


def test_an_edit_put_back_after_the_charge_it_allowed_still_shows(
    capsys: pytest.CaptureFixture[str], insider: Path
) -> None:
    """The cap raised for one release and set back: every row matches its entry again, but
    the release's entry was accounted against a cap the log never set, past the logged one."""
    edit(insider, "UPDATE ledger_datasets SET epsilon_cap = 100.0")
    with PrivacyLedger.in_state_dir(insider) as ledger:
        ledger.charge(DATASET, ROUND, run_id="run-1", round=4)
    edit(insider, f"UPDATE ledger_datasets SET epsilon_cap = {CAP}")
    code, _, err = oralfed_audit(capsys, "budget", "--state-dir", str(insider))
    assert code == ExitCode.VERIFICATION_FAILED and "entry 7 (position 7)" in err
    details = [f.detail for f in verify_target(state_dir=insider).result.failures if f.seq == 7]
    assert details[0].startswith(
        "this charge of data set 'clinic-01' was accounted with epsilon_cap 100, but the log "
        "had set 2.5 (entry 1)"
    )
    assert details[1].startswith("charge 5 brought ε of data set 'clinic-01' to 2.6")
