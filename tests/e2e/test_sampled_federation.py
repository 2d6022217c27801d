"""End to end: a federation of 200 synthetic clinics of which each round samples 8
(``oralfed federate --clinics-per-round``), on Flower's Simulation Engine with real SQLite
ledgers, run on a Ray cluster of its own (``ray start --head`` on 127.0.0.1, joined with
``--ray-address`` as a multi-machine cluster would be). Exactly the sampled clinics are
charged, once for each round they were asked; a clinic never asked has no ledger at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from oralfed.privacy.events import DiscreteLaplaceEvent, DpSgdEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.synthetic.profiles import clinic_profiles
from tests.e2e.conftest import free_port, oralfed

pytestmark = pytest.mark.e2e

CLINICS, ROUNDS, PER_ROUND = 200, 2, 8
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class RayCluster:
    address: str
    temp_dir: Path  # the cluster's session logs: its driver's and its workers'


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A one-machine Ray cluster on loopback, stopped (with every Ray process) afterwards."""
    cluster = RayCluster(f"127.0.0.1:{free_port()}", tmp_path_factory.mktemp("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [RAY, "start", "--head", f"--port={cluster.address.split(':')[1]}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={cluster.temp_dir}"],
        check=True, capture_output=True, timeout=180, env=env,
    )  # fmt: skip
    try:
        yield cluster
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def sampled_run(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayCluster
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sampled") / "run"
    printed = oralfed(
        "federate", "--clinics", str(CLINICS), "--rounds", str(ROUNDS),
        "--clinics-per-round", str(PER_ROUND), "--local-epochs", "1", "--no-baselines",
        "--seed", "5", "--ray-address", ray_cluster.address, "--out", out,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    return {"out": out, "printed": printed.stdout, "report": report, "cluster": ray_cluster}


def test_the_run_joined_the_cluster_and_left_it_running(sampled_run: dict[str, Any]) -> None:
    cluster: RayCluster = sampled_run["cluster"]
    logs = cluster.temp_dir / "session_latest" / "logs"
    # the run's clinics ran in the cluster's own workers (a Ray of its own logs elsewhere)
    assert any("ClientAppActor" in log.read_text() for log in logs.glob("worker-*.out"))
    status = subprocess.run(
        [RAY, "status", f"--address={cluster.address}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr


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
    printed = sampled_run["printed"]
    assert f"round 1: {PER_ROUND} clinic(s) trained" in printed
    # beyond the clinics a report lists one by one, it summarises them
    took_part = len(report["clinics"])
    assert (f"Over the {took_part} clinics that took part" in printed) == (took_part > 30)


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
