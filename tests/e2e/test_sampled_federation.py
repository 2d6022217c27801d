"""End to end: a federation of 200 synthetic clinics of which each round samples 8
(``oralfed federate --clinics-per-round``), on Flower's Simulation Engine with real SQLite
ledgers. Exactly the sampled clinics are charged, once for each round they were asked; a
clinic never asked has no ledger at all."""

from __future__ import annotations

import json
from typing import Any

import pytest

from oralfed.privacy.events import DiscreteLaplaceEvent, DpSgdEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.synthetic.profiles import clinic_profiles
from tests.e2e.conftest import oralfed

pytestmark = pytest.mark.e2e

CLINICS, ROUNDS, PER_ROUND = 200, 2, 8


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sampled") / "run"
    printed = oralfed(
        "federate", "--clinics", str(CLINICS), "--rounds", str(ROUNDS),
        "--clinics-per-round", str(PER_ROUND), "--local-epochs", "1", "--no-baselines",
        "--seed", "5", "--out", out,
    )  # fmt: skip
    return {
        "out": out,
        "printed": printed.stdout,
        "report": json.loads((out / "report.json").read_text()),
    }


def _asked(report: dict[str, Any], phase: str) -> dict[int, set[str]]:
    """Per round, the clinics whose reply to ``phase`` the coordinator recorded."""
    return {
        summary["round"]: {e["clinic_id"] for e in summary["clinics"] if e["phase"] == phase}
        for summary in report["rounds"]
    }


def test_every_round_trains_exactly_its_sample(sampled_run: dict[str, Any]) -> None:
    report = sampled_run["report"]
    assert report["status"] == "completed", report["message"]
    trained = _asked(report, "train")
    assert sorted(trained) == list(range(1, ROUNDS + 1))
    assert all(len(clinics) == PER_ROUND for clinics in trained.values())
    assert trained[1] != trained[2]  # each round draws its own sample
    evaluated = _asked(report, "evaluate")
    assert len(evaluated[ROUNDS]) == PER_ROUND and not evaluated.get(1)
    assert f"round 1: {PER_ROUND} clinic(s) trained" in sampled_run["printed"]
    # more clinics took part than the report lists one by one: it summarises them
    assert "clinics that took part" in sampled_run["printed"]


def test_exactly_the_sampled_clinics_are_charged_once_per_round_asked(
    sampled_run: dict[str, Any],
) -> None:
    report, state = sampled_run["report"], sampled_run["out"] / "state"
    trained, evaluated = _asked(report, "train"), _asked(report, "evaluate")
    clinics = [profile.clinic_id for profile in clinic_profiles(CLINICS, 5)]
    asked = set().union(*trained.values(), *evaluated.values())
    assert asked <= set(clinics)
    for clinic in clinics:
        if clinic not in asked:
            assert not (state / clinic / "ledger.db").exists(), clinic
            continue
        with PrivacyLedger.in_state_dir(state / clinic) as ledger:
            history = ledger.history(clinic)
        training = [c.round for c in history if isinstance(c.event, DpSgdEvent)]
        assert training == [r for r in sorted(trained) if clinic in trained[r]], clinic
        noisy = [c.round for c in history if isinstance(c.event, DiscreteLaplaceEvent)]
        # one size estimate at the first request (no round), one evaluation per round asked
        expected = [None] * bool(training) + [
            r for r in sorted(evaluated) if clinic in evaluated[r]
        ]
        assert sorted(noisy, key=lambda r: r or 0) == expected, clinic
    rows = {row["clinic"]: row for row in report["clinics"]}
    assert set(rows) == asked  # report.json keeps every clinic that took part
    for clinic in set().union(*trained.values()):
        assert rows[clinic]["rounds_trained"] == sum(clinic in c for c in trained.values())


def test_the_state_of_clinics_never_asked_is_not_created(sampled_run: dict[str, Any]) -> None:
    data = sorted(p.stem for p in (sampled_run["out"] / "data").glob("*.csv"))
    assert len(data) == CLINICS
    ledgers = sorted(p.parent.name for p in (sampled_run["out"] / "state").glob("*/ledger.db"))
    report = sampled_run["report"]
    assert ledgers == sorted({row["clinic"] for row in report["clinics"]})
    assert len(ledgers) < CLINICS / 4
