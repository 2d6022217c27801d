"""A coordinator that dies mid-run is resumed, and no clinic trains or pays for a round twice.

Deployed: a real SuperLink and SuperNodes on 127.0.0.1 with TLS and node authentication
(``tests/e2e/conftest.py``); the ServerApp process is SIGKILLed after round 1 is
checkpointed, while round 2 runs and a clinic has already released it; ``oralfed federation
resume`` finishes the run. Simulated: ``oralfed federate`` is interrupted after round 1 and
``oralfed federate --resume`` finishes it. Either way every round is in the report once,
each clinic's ledger holds one charge per round, and the audit logs still verify.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oralfed.client.release_store import RELEASES_DIR
from oralfed.privacy.audit_targets import verify_target
from oralfed.privacy.events import DiscreteLaplaceEvent, DpSgdEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.errors import ExitCode
from oralfed.server.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE
from oralfed.server.coordinator_db import CoordinatorStore
from tests.e2e.conftest import ORALFED, Deployment, oralfed, running_federation, wait_for

pytestmark = pytest.mark.e2e
CLINICS = ("clinic-01", "clinic-02", "clinic-03")
RUN_SETTINGS = ("--rounds", "3", "--local-epochs", "1", "--target-epsilon", "2")


def checkpointed_round(out: Path) -> int:
    path = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    return int(json.loads(path.read_text())["round"]) if path.is_file() else 0


def assert_paid_once_per_round(state: Path, clinics: tuple[str, ...], run_id: str) -> None:
    """One DP-SGD charge per round and one final evaluation, all under the OralFed run."""
    for clinic in clinics:
        with PrivacyLedger.in_state_dir(state / clinic) as ledger:
            charges = [c for c in ledger.history(clinic) if c.round is not None]
        assert [(type(c.event), c.round) for c in charges] == [
            (DpSgdEvent, 1),
            (DpSgdEvent, 2),
            (DpSgdEvent, 3),
            (DiscreteLaplaceEvent, 3),
        ], clinic
        assert {c.run_id for c in charges} == {run_id}
        assert_log_verifies(state / clinic)


def assert_log_verifies(state_dir: Path) -> None:
    """What ``oralfed audit verify --state-dir`` checks: hashes, signatures, chain, ledger."""
    report = verify_target(state_dir=state_dir)
    assert report.ok, report.to_dict()


def assert_resumed_report(report: dict[str, Any], clinics: tuple[str, ...]) -> None:
    assert report["status"] == "completed", report["message"]
    assert [summary["round"] for summary in report["rounds"]] == [1, 2, 3]
    assert [c["clinic"] for c in report["clinics"]] == list(clinics)
    for clinic in report["clinics"]:
        assert clinic["rounds_trained"] == 3 and not clinic["refusals"]
    assert report["rounds"][-1]["eval_auc"] is not None


def test_a_simulated_run_interrupted_after_a_round_is_resumed(tmp_path: Path) -> None:
    clinics = ("clinic-01", "clinic-02")
    oralfed("data", "synth", "--out", tmp_path / "data", "--clinics", "2", "--seed", "9")
    out, state = tmp_path / "run", tmp_path / "state"
    command = [
        *ORALFED,
        "federate",
        "--data",
        str(tmp_path / "data"),
        "--state-dir",
        str(state),
        "--out",
        str(out),
        *RUN_SETTINGS,
    ]
    with (tmp_path / "first.out").open("wb") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: checkpointed_round(out) >= 1, 300, "round 1 to be checkpointed")
        first.send_signal(signal.SIGINT)  # Ctrl-C: the simulation is stopped mid-run
        assert first.wait(timeout=120) == ExitCode.INTERRUPTED
    finally:
        if first.poll() is None:
            first.kill()
    done = checkpointed_round(out)
    assert 1 <= done < 3
    run_id = json.loads((out / CHECKPOINT_DIR / CHECKPOINT_FILE).read_text())["run_id"]

    changed = oralfed("federate", "--resume", out, "--rounds", "4", check=False)
    assert changed.returncode == ExitCode.USAGE and "--rounds was 3" in changed.stderr

    oralfed("federate", "--resume", out, "--round-timeout", "300", "--json")
    report = json.loads((out / "report.json").read_text())
    assert_resumed_report(report, clinics)
    assert report["resumed_after_round"] == done and report["run_id"] == run_id
    assert_paid_once_per_round(state, clinics, run_id)

    again = oralfed("federate", "--resume", out, check=False)
    assert again.returncode == ExitCode.USAGE and "already completed" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running_federation(tmp_path_factory.mktemp("resume"), CLINICS) as deployment:
        yield deployment


def resume(
    deployment: Deployment, folder: Path, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return oralfed("federation", "resume", folder, "--federation-dir", deployment.fed, check=check)


def released(deployment: Deployment, server_round: int) -> list[Path]:
    pattern = f"train-round-{server_round:04d}-*.npz"
    return list((deployment.root / "state").glob(f"*/{RELEASES_DIR}/{pattern}"))


def test_a_deployed_run_whose_serverapp_is_killed_mid_round_is_resumed(
    deployment: Deployment,
) -> None:
    out = deployment.root / "run"
    deployment.start(
        "launch",
        "federation",
        "launch",
        "--federation-dir",
        deployment.fed,
        *RUN_SETTINGS,
        "--min-clinics",
        "3",
        "--round-timeout",
        "120",
        "--out",
        out,
    )
    wait_for(lambda: checkpointed_round(out) == 1, 300, "round 1 to be checkpointed")
    deadline = time.monotonic() + 120
    while not released(deployment, 2):  # round 2 runs: a clinic has paid for and stored it
        assert time.monotonic() < deadline, "no clinic released round 2 within 120 s"
        time.sleep(0.1)
    [serverapp] = deployment.descendants("server", "flwr-serverapp")
    os.kill(serverapp, signal.SIGKILL)
    assert checkpointed_round(out) == 1, "round 2 completed before the ServerApp was killed"
    deployment.stop("launch")  # its `flwr run --stream` would wait for Flower's heartbeat

    resume(deployment, out)
    report = json.loads((out / "report.json").read_text())
    assert_resumed_report(report, CLINICS)
    checkpoint = json.loads((out / CHECKPOINT_DIR / CHECKPOINT_FILE).read_text())
    assert checkpoint["round"] == 3
    assert_paid_once_per_round(deployment.root / "state", CLINICS, checkpoint["run_id"])
    # The coordinator's record: one run, continued, each round once; its log verifies.
    store = CoordinatorStore.sqlite_file(out / "coordinator.db")
    try:
        [run] = store.runs()
        assert (run.run_id, run.status) == (checkpoint["run_id"], "completed")
        assert [row.round for row in store.rounds(run.run_id)] == [1, 2, 3]
    finally:
        store.close()
    assert_log_verifies(out)

    again = resume(deployment, out, check=False)
    assert again.returncode == ExitCode.USAGE and "already completed" in again.stderr
    empty = deployment.root / "never-ran"
    empty.mkdir()
    missing = resume(deployment, empty, check=False)
    assert missing.returncode == ExitCode.USAGE and f"{empty} holds no checkpoint" in missing.stderr
