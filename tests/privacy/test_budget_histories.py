"""Every report handles any history the ledger accepted, and an edited one, without a traceback.

Histories are charged through the real ledger (a SQLite file in a state dir) with extreme but
valid mechanisms: σ at its floor and far above it, q near 0 and at 1, many steps. Whatever
the ledger accepted, ``audit budget`` (table, by round, JSON, chart), ``audit verify`` and
``audit export`` answer; an ε with no finite bound is shown as such.
"""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oralfed.privacy.budget_plot import plot_budgets
from oralfed.privacy.budget_report import ChargePoint, DatasetBudgetReport
from oralfed.privacy.budget_views import clinic_budgets
from oralfed.privacy.events import (
    MIN_NOISE_MULTIPLIER,
    DiscreteGaussianEvent,
    DiscreteLaplaceEvent,
    DpSgdEvent,
    GaussianEvent,
    LaplaceEvent,
    PrivacyEvent,
)
from oralfed.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger
from tests.conftest import run_cli

SIGMAS = st.one_of(
    st.just(MIN_NOISE_MULTIPLIER),
    st.floats(MIN_NOISE_MULTIPLIER, 1e4, allow_nan=False),
    st.just(1e6),
)
RATES = st.one_of(st.just(1.0), st.just(1e-9), st.floats(1e-6, 1.0, exclude_min=True))
COUNTS = st.integers(1, 100_000)
EVENTS: st.SearchStrategy[PrivacyEvent] = st.one_of(
    st.builds(DpSgdEvent, SIGMAS, RATES, COUNTS),
    st.builds(GaussianEvent, SIGMAS, COUNTS),
    st.builds(LaplaceEvent, SIGMAS, COUNTS),
    st.builds(DiscreteLaplaceEvent, SIGMAS, COUNTS),
    st.builds(DiscreteGaussianEvent, SIGMAS, COUNTS),
)


def charge_all(state: Path, events: list[PrivacyEvent], accountant: str, cap: float) -> int:
    """Charge what the ledger accepts (one data set); how many it accepted."""
    accepted = 0
    with PrivacyLedger.in_state_dir(state) as ledger:
        ledger.ensure_dataset("ds", epsilon_cap=cap, delta=1e-5, accountant=accountant)
        for round_number, event in enumerate(events, start=1):
            try:
                ledger.charge("ds", event, run_id="run", round=round_number)
            except (LedgerError, ValueError):  # past the cap, or a mechanism it cannot account
                continue
            accepted += 1
    return accepted


def every_report(state: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run every report on ``state``; their outputs (each checked for a traceback)."""
    outputs = []
    for argv in (
        ("audit", "budget", "--state-dir", state),
        ("audit", "budget", "--state-dir", state, "--by-round"),
        ("audit", "budget", "--state-dir", state, "--json"),
        ("audit", "budget", "--state-dir", state, "--plot", state.parent / "chart.png"),
        ("audit", "verify", "--state-dir", state),
        ("audit", "export", "--state-dir", state, "--out", state.parent / "log.json"),
    ):
        code, out, err = run_cli(capsys, *argv)
        assert "Traceback" not in out + err, argv
        assert code in (0, 1), (argv, code, out, err)
        outputs.append(out + err)
    return outputs


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(EVENTS, min_size=1, max_size=5), cap=st.sampled_from([1.0, 1e3, 1e9]))
def test_every_report_answers_any_accepted_history(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    events: list[PrivacyEvent],
    cap: float,
) -> None:
    state = tmp_path_factory.mktemp("clinic") / "state"
    if charge_all(state, events, "rdp", cap) == 0:
        return
    view = clinic_budgets(state, by_round=True, chart=state.parent / "view.png")
    assert view.verification.ok and view.chart is not None
    [report] = view.reports
    assert report.spent == report.points[-1].epsilon <= cap
    assert all(point.receipt_matches for point in report.points)
    outputs = every_report(state, capsys)
    budget = json.loads(outputs[2])
    assert budget["datasets"][0]["charges"] == len(report.points)


def test_pld_over_extreme_sampling_and_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PLD (the default accountant) over q near 0 with many steps, a huge σ, and a pure-DP
    release at the floor (σ at the floor with q = 1 takes PLD minutes: rdp covers it above)."""
    state = tmp_path / "state"
    events: list[PrivacyEvent] = [
        DpSgdEvent(1.0, 1e-9, 100_000),
        DpSgdEvent(1e6, 0.5, 100_000),
        DiscreteLaplaceEvent(MIN_NOISE_MULTIPLIER, 3),
    ]
    assert charge_all(state, events, "pld", 1e9) == 3
    for output in every_report(state, capsys):
        assert "undefined" not in output


def test_an_edited_row_no_release_can_have_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """σ = 0.01 is below every event's floor, so the ledger never charged it: the row was
    edited, the report says so, with the verification's failures, and exits 1."""
    state = tmp_path / "state"
    assert charge_all(state, [LaplaceEvent(1.0, 1)], "pld", 10.0) == 1
    with sqlite3.connect(state / LEDGER_FILE) as database:
        database.execute("UPDATE ledger_charges SET noise_multiplier = 0.01")
    view = clinic_budgets(state)
    assert not view.verification.ok and view.reports == ()
    assert view.unaccountable is not None and "0.01" in view.unaccountable
    code, out, err = run_cli(capsys, "audit", "budget", "--state-dir", state)
    assert code == 1 and "Traceback" not in out + err
    assert "cannot be accounted" in err and "NOT VERIFIED" in err
    code, out, err = run_cli(capsys, "audit", "budget", "--state-dir", state, "--json")
    assert code == 1 and json.loads(out)["unaccountable"]


def test_a_chart_with_no_finite_bound_is_drawn(tmp_path: Path) -> None:
    """A point with ε = ∞ (PRV's answer when its numerics give up) is drawn at the top."""
    now = datetime.now(UTC)
    points = tuple(
        ChargePoint(i, now, "run", i, "dpsgd", 1.0, 0.1, 10, eps, eps, 5.0)
        for i, eps in enumerate([1.0, math.inf], start=1)
    )
    report = DatasetBudgetReport("ds", "prv", 1e-5, 5.0, math.inf, 0.0, 2, (), (), points)
    plot_budgets([report], tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")
