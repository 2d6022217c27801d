"""Many processes charging one SQLite ledger: never over the cap, never an unhandled error.

Each process is a clinic-side worker that opens the ledger and charges one release. Every
one must end with a charge, a :class:`BudgetExceeded`, or a :class:`LedgerBusy` (the named,
retryable refusal for a ledger whose lock stayed taken); the ledger's history must be
exactly the successful charges, and the signed log must still verify.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections import Counter
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from oralfed.privacy.accountants import PldAccountant, get_accountant
from oralfed.privacy.audit_log import read_database_log
from oralfed.privacy.events import GaussianEvent
from oralfed.privacy.ledger import (
    LEDGER_FILE,
    BudgetExceeded,
    LedgerBusy,
    LedgerError,
    PrivacyLedger,
)
from oralfed.schemas.errors import ExitCode
from tests.conftest import run_cli

DELTA = 1e-5
RELEASE = GaussianEvent(4.0)
ALREADY_CHARGED = 4  # the history before the workers start
ROOM = 4  # charges that still fit under the cap


def _charge_once(state_dir: Path, worker: int, start: Barrier) -> str:
    """One worker's outcome as text ("charged <id>", or the refusal's class name); any
    other error is reported with its type, so that the test can name it."""
    start.wait(timeout=120)
    try:
        with PrivacyLedger.in_state_dir(state_dir) as ledger:
            record = ledger.charge("clinic-01", RELEASE, run_id=f"worker-{worker}", round=1)
    except (BudgetExceeded, LedgerBusy) as refused:
        return type(refused).__name__
    except BaseException as error:
        return f"unexpected {type(error).__name__}: {error}"
    return f"charged {record.id}"


# Fifty workers on the RDP accountant (cheap, so the test is about the lock); six on PLD,
# whose ε takes long enough to compute that charges overtake each other's quotes.
@pytest.mark.parametrize(("accountant_name", "processes"), [("rdp", 50), ("pld", 6)])
def test_many_processes_near_the_cap_never_pass_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, accountant_name: str, processes: int
) -> None:
    accountant = get_accountant(accountant_name)
    fits = accountant.epsilon([RELEASE] * (ALREADY_CHARGED + ROOM), DELTA)
    too_many = accountant.epsilon([RELEASE] * (ALREADY_CHARGED + ROOM + 1), DELTA)
    cap = (fits + too_many) / 2
    state_dir = tmp_path / "clinic"
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", cap, DELTA, accountant_name)
        for round_number in range(ALREADY_CHARGED):
            ledger.charge("clinic-01", RELEASE, run_id="earlier", round=round_number)

    context = multiprocessing.get_context("fork")
    start = context.Manager().Barrier(processes)
    with context.Pool(processes) as pool:
        work = [(state_dir, worker, start) for worker in range(processes)]
        outcomes = pool.starmap_async(_charge_once, work).get(timeout=300)

    kinds = Counter(outcome.split(" ")[0] for outcome in outcomes)
    assert set(kinds) <= {"charged", "BudgetExceeded", "LedgerBusy"}, outcomes
    # Every release that fitted was charged, unless its worker was told the ledger was busy.
    assert ROOM - kinds["LedgerBusy"] <= kinds["charged"] <= ROOM, kinds
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        history = ledger.history("clinic-01")
        spent = ledger.spent("clinic-01")
    charged_ids = sorted(int(outcome.split(" ")[1]) for outcome in outcomes if "charged" in outcome)
    assert [record.id for record in history[ALREADY_CHARGED:]] == charged_ids
    assert len(history) == ALREADY_CHARGED + kinds["charged"]
    assert spent <= cap
    assert all(record.epsilon_after <= cap for record in history)
    # One signed entry per charge and per refused charge, in one unbroken chain.
    kinds_logged = Counter(entry.kind for entry in read_database_log(state_dir / LEDGER_FILE))
    assert kinds_logged["ledger.charge"] == ALREADY_CHARGED + kinds["charged"]
    assert kinds_logged["ledger.refused"] == kinds["BudgetExceeded"]
    code, out, err = run_cli(capsys, "audit", "verify", "--state-dir", state_dir)
    assert code == 0, out + err


def test_a_ledger_held_busy_refuses_by_name_and_charges_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "clinic"
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", 5.0, DELTA)
        ledger.charge("clinic-01", RELEASE, run_id="run-1", round=1)
    entries = len(read_database_log(state_dir / LEDGER_FILE))

    holder = sqlite3.connect(state_dir / LEDGER_FILE, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process's charge that does not finish
        # Opening needs no lock (the schema is current), and neither does reading.
        with PrivacyLedger.in_state_dir(state_dir, lock_wait=0.5) as ledger:
            assert len(ledger.history("clinic-01")) == 1
            with pytest.raises(LedgerBusy) as busy:
                ledger.charge("clinic-01", RELEASE, run_id="run-1", round=2)
            with pytest.raises(LedgerBusy):
                ledger.ensure_dataset("clinic-01", 6.0, DELTA)
    finally:
        holder.rollback()
        holder.close()
    refusal = busy.value
    assert isinstance(refusal, LedgerError) and refusal.exit_code == ExitCode.LEDGER
    assert str(refusal).startswith(f"{state_dir / LEDGER_FILE}: the privacy ledger is busy")
    assert "nothing was charged or changed" in str(refusal) and "Retry" in str(refusal)
    assert refusal.waited >= 0.5

    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        assert len(ledger.history("clinic-01")) == 1  # nothing was charged
        assert len(read_database_log(state_dir / LEDGER_FILE)) == entries  # nor logged
        assert ledger.budget("clinic-01").epsilon_cap == 5.0
        ledger.charge("clinic-01", RELEASE, run_id="run-1", round=2)  # the retry succeeds
        assert len(ledger.history("clinic-01")) == 2


def test_a_quote_computed_before_the_lock_is_not_used_for_another_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A charge that commits between another charge's snapshot and its lock changes the
    history that charge is decided on: ε must be recomputed, not taken from the snapshot.
    (The interleaving is forced by charging from a second ledger at exactly that point.)"""
    accountant = PldAccountant()
    cap = (accountant.epsilon([RELEASE], DELTA) + accountant.epsilon([RELEASE] * 2, DELTA)) / 2
    with (
        PrivacyLedger.in_state_dir(tmp_path) as first,
        PrivacyLedger.in_state_dir(tmp_path) as second,
    ):
        first.ensure_dataset("clinic-01", cap, DELTA)
        take_lock = second._write
        attempts: list[object] = []

        def charge_in_between(work: Callable[[Session], object], **options: float) -> object:
            if not attempts:
                first.charge("clinic-01", RELEASE, run_id="first")  # after second's snapshot
            attempts.append(take_lock(work, **options))
            return attempts[-1]

        monkeypatch.setattr(second, "_write", charge_in_between)
        with pytest.raises(BudgetExceeded):
            second.charge("clinic-01", RELEASE, run_id="second")
        # The stale quote was put aside unused (nothing written), the new one refused.
        assert attempts[0] is None and isinstance(attempts[1], BudgetExceeded)
        assert [record.run_id for record in first.history("clinic-01")] == ["first"]
        assert first.spent("clinic-01") <= cap
