"""The privacy ledger: atomic charges against a cap, recomputed ε, durable state."""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oralfed.privacy.accountants import PldAccountant, UnsupportedEvent
from oralfed.privacy.events import DpSgdEvent, GaussianEvent, LaplaceEvent, PrivacyEvent
from oralfed.privacy.ledger import (
    BudgetExceeded,
    ChargeRecord,
    InvalidBudget,
    PrivacyLedger,
    UnknownDataset,
)

DELTA = 1e-5
# One local training round; parameters chosen so that PLD builds it quickly (about 0.2 s).
ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[PrivacyLedger]:
    with PrivacyLedger.in_state_dir(tmp_path / "state") as ledger:
        yield ledger


def test_charges_compose_instead_of_adding_up(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", epsilon_cap=10.0, delta=DELTA)
    first = ledger.charge("clinic-01", ROUND, run_id="run-1", round=1, data_fingerprint="abc")
    second = ledger.charge("clinic-01", ROUND, run_id="run-1", round=2, note="second round")

    one_round = PldAccountant().epsilon([ROUND], DELTA)
    assert first.epsilon_after == pytest.approx(one_round)
    assert ledger.spent("clinic-01") == pytest.approx(
        PldAccountant().epsilon([ROUND, ROUND], DELTA)
    )
    assert ledger.spent("clinic-01") == second.epsilon_after
    assert ledger.spent("clinic-01") < 2 * one_round  # the per-round sum overstates ε

    assert ledger.history("clinic-01") == [first, second]
    assert (first.run_id, first.round, first.event, first.data_fingerprint) == (
        "run-1",
        1,
        ROUND,
        "abc",
    )
    assert (second.note, second.delta) == ("second round", DELTA)
    assert first.recorded_at.utcoffset() is not None
    assert first.recorded_at <= second.recorded_at


def test_budget_reports_spent_and_remaining(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", 5.0, DELTA)
    ledger.charge("clinic-01", GaussianEvent(4.0), run_id="stats")
    budget = ledger.budget("clinic-01")
    assert (budget.dataset_id, budget.epsilon_cap, budget.delta, budget.accountant) == (
        "clinic-01",
        5.0,
        DELTA,
        "pld",
    )
    assert budget.spent == ledger.spent("clinic-01") > 0
    assert budget.remaining == pytest.approx(5.0 - budget.spent)
    assert ledger.datasets() == [budget]


def test_mixed_mechanisms_share_one_budget(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", 10.0, DELTA)
    events: list[PrivacyEvent] = [ROUND, GaussianEvent(5.0, 2), LaplaceEvent(4.0)]
    for event in events:
        ledger.charge("clinic-01", event, run_id="run-1")
    assert [record.event for record in ledger.history("clinic-01")] == events
    assert ledger.spent("clinic-01") == pytest.approx(PldAccountant().epsilon(events, DELTA))
    assert ledger.spent("clinic-01", accountant="rdp") >= ledger.spent("clinic-01")


def test_charge_over_the_cap_is_refused_and_changes_nothing(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", 2.0, DELTA)
    ledger.charge("clinic-01", ROUND, run_id="run-1", round=1)
    history, spent = ledger.history("clinic-01"), ledger.spent("clinic-01")
    greedy = GaussianEvent(1.0)

    with pytest.raises(BudgetExceeded) as refused:
        ledger.charge("clinic-01", greedy, run_id="run-1", round=2)

    error = refused.value
    assert (error.dataset_id, error.cap, error.delta, error.accountant) == (
        "clinic-01",
        2.0,
        DELTA,
        "pld",
    )
    assert error.spent == pytest.approx(spent)
    assert error.would_spend == pytest.approx(ledger.preview("clinic-01", greedy))
    assert error.would_spend > 2.0
    assert "clinic-01" in str(error)
    assert "Nothing was charged" in str(error)
    assert ledger.history("clinic-01") == history
    assert ledger.spent("clinic-01") == spent


def test_preview_writes_nothing(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", 3.0, DELTA)
    assert ledger.preview("clinic-01", ROUND) == pytest.approx(
        PldAccountant().epsilon([ROUND], DELTA)
    )
    assert ledger.history("clinic-01") == []
    assert ledger.spent("clinic-01") == 0.0


def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    state = tmp_path / "node" / "state"
    with PrivacyLedger.in_state_dir(state) as ledger:
        ledger.ensure_dataset("clinic-01", 3.0, DELTA)
        record = ledger.charge("clinic-01", ROUND, run_id="run-1", round=1)
        spent = ledger.spent("clinic-01")

    with PrivacyLedger.in_state_dir(state) as reopened:
        assert reopened.history("clinic-01") == [record]
        assert reopened.spent("clinic-01") == spent
        assert reopened.ensure_dataset("clinic-01", 3.0, DELTA).spent == spent

    with sqlite3.connect(state / "ledger.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_cap_changes_are_recorded(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", 3.0, DELTA)
    ledger.charge("clinic-01", ROUND, run_id="run-1")
    ledger.ensure_dataset("clinic-01", 3.0, DELTA)  # same cap: not a change
    raised = ledger.ensure_dataset("clinic-01", 4.5, DELTA, reason="ethics board approval")

    assert raised.epsilon_cap == 4.5
    changes = ledger.budget_changes("clinic-01")
    assert [(c.old_cap, c.new_cap, c.reason) for c in changes] == [
        (None, 3.0, "registered"),
        (3.0, 4.5, "ethics board approval"),
    ]
    assert changes[0].changed_at <= changes[1].changed_at


def test_lowering_the_cap_below_spent_blocks_further_charges(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", 3.0, DELTA)
    ledger.charge("clinic-01", ROUND, run_id="run-1")
    lowered = ledger.ensure_dataset("clinic-01", 0.5, DELTA, reason="policy change")
    assert lowered.remaining == 0.0
    with pytest.raises(BudgetExceeded):
        ledger.charge("clinic-01", GaussianEvent(50.0), run_id="run-2")


@pytest.mark.parametrize(("delta", "accountant"), [(1e-6, "pld"), (DELTA, "rdp")])
def test_delta_and_accountant_are_fixed_once_charged(
    ledger: PrivacyLedger, delta: float, accountant: str
) -> None:
    ledger.ensure_dataset("clinic-01", 3.0, DELTA)
    ledger.charge("clinic-01", GaussianEvent(5.0), run_id="run-1")
    with pytest.raises(InvalidBudget, match="re-interpret"):
        ledger.ensure_dataset("clinic-01", 3.0, delta, accountant)
    assert ledger.budget("clinic-01").delta == DELTA
    assert ledger.budget("clinic-01").accountant == "pld"


def test_delta_and_accountant_may_change_before_any_charge(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", 3.0, DELTA)
    budget = ledger.ensure_dataset("clinic-01", 3.0, 1e-7, "rdp")
    assert (budget.delta, budget.accountant) == (1e-7, "rdp")


@pytest.mark.parametrize(
    ("dataset_id", "cap", "delta", "accountant"),
    [
        ("", 1.0, DELTA, "pld"),
        ("  ", 1.0, DELTA, "pld"),
        ("clinic-01", 0.0, DELTA, "pld"),
        ("clinic-01", -1.0, DELTA, "pld"),
        ("clinic-01", math.inf, DELTA, "pld"),
        ("clinic-01", math.nan, DELTA, "pld"),
        ("clinic-01", 1.0, 0.0, "pld"),
        ("clinic-01", 1.0, 1.0, "pld"),
        ("clinic-01", 1.0, DELTA, "moments"),
    ],
)
def test_invalid_budgets_are_refused(
    ledger: PrivacyLedger, dataset_id: str, cap: float, delta: float, accountant: str
) -> None:
    with pytest.raises(InvalidBudget):
        ledger.ensure_dataset(dataset_id, cap, delta, accountant)
    assert ledger.datasets() == []


def test_unknown_dataset_is_refused_everywhere(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", 3.0, DELTA)
    calls = [
        lambda: ledger.budget("clinic-02"),
        lambda: ledger.spent("clinic-02"),
        lambda: ledger.history("clinic-02"),
        lambda: ledger.budget_changes("clinic-02"),
        lambda: ledger.preview("clinic-02", ROUND),
        lambda: ledger.charge("clinic-02", ROUND, run_id="run-1"),
    ]
    for call in calls:
        with pytest.raises(UnknownDataset, match=r"clinic-02.*registered: clinic-01"):
            call()


def test_prv_ledger_refuses_laplace_without_charging(ledger: PrivacyLedger) -> None:
    ledger.ensure_dataset("clinic-01", 3.0, DELTA, accountant="prv")
    ledger.charge("clinic-01", GaussianEvent(5.0), run_id="run-1")
    with pytest.raises(UnsupportedEvent):
        ledger.charge("clinic-01", LaplaceEvent(5.0), run_id="run-1")
    assert [record.event for record in ledger.history("clinic-01")] == [GaussianEvent(5.0)]


@pytest.mark.parametrize("shared", [True, False], ids=["one-ledger", "two-ledgers"])
def test_concurrent_charges_cannot_both_squeeze_under_the_cap(tmp_path: Path, shared: bool) -> None:
    release = GaussianEvent(2.0)
    one = PldAccountant().epsilon([release], DELTA)
    two = PldAccountant().epsilon([release, release], DELTA)
    with PrivacyLedger.in_state_dir(tmp_path) as setup:
        setup.ensure_dataset("clinic-01", (one + two) / 2, DELTA)

    ledgers = [PrivacyLedger.in_state_dir(tmp_path) for _ in range(1 if shared else 2)]
    start = threading.Barrier(2)
    outcomes: list[ChargeRecord | BaseException] = []

    def charge(worker: int) -> None:
        ledger = ledgers[worker % len(ledgers)]
        start.wait()
        try:
            outcomes.append(ledger.charge("clinic-01", release, run_id=f"worker-{worker}"))
        except BaseException as error:
            outcomes.append(error)

    threads = [threading.Thread(target=charge, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(isinstance(outcome, ChargeRecord) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, BudgetExceeded) for outcome in outcomes) == 1
    assert len(ledgers[0].history("clinic-01")) == 1
    assert ledgers[0].spent("clinic-01") == pytest.approx(one)
    for ledger in ledgers:
        ledger.close()


# A small palette so that the property test exercises merging of repeated mechanisms.
EVENTS = st.one_of(
    st.builds(GaussianEvent, st.sampled_from([2.0, 4.0, 8.0]), st.integers(1, 3)),
    st.builds(LaplaceEvent, st.sampled_from([2.0, 5.0, 10.0]), st.integers(1, 3)),
    st.builds(DpSgdEvent, st.just(1.5), st.just(0.01), st.sampled_from([5, 20])),
)


@settings(
    max_examples=15,
    deadline=None,
    database=None,  # no example database left in the working tree
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    cap=st.floats(0.5, 6.0),
    events=st.lists(EVENTS, min_size=1, max_size=6),
    accountant=st.sampled_from(["pld", "rdp"]),
)
def test_spent_is_monotone_and_never_exceeds_the_cap(
    cap: float, events: list[PrivacyEvent], accountant: str
) -> None:
    with PrivacyLedger("sqlite://") as ledger:
        ledger.ensure_dataset("clinic-01", cap, DELTA, accountant)
        spent = 0.0
        for event in events:
            charged = len(ledger.history("clinic-01"))
            try:
                record = ledger.charge("clinic-01", event, run_id="property")
            except BudgetExceeded:
                assert len(ledger.history("clinic-01")) == charged
            else:
                assert record.epsilon_after <= cap
            now = ledger.spent("clinic-01")
            assert spent <= now <= cap
            spent = now
