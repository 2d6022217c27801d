"""End to end on Flower's Deployment Engine: a real SuperLink and real SuperNodes on
127.0.0.1, with TLS and node authentication, started through the ``oralfed`` command.

One module-scoped deployment: provision, start the coordinator and three clinics (each a
SuperNode and the warm clinic runtime beside it), show that an unregistered key, a node
without the federation's CA and a removed clinic are refused, run a 2-round federation,
kill a clinic mid-run and restart it with the same kit, kill one message's process mid-way
and see the next message served, and show that the runtime came out of every message as it
went in.
Every process is started in a process group of its own and stopped in the fixture's
``finally``, also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oralfed.deploy.launch import list_runs
from oralfed.deploy.provisioning import add_clinic, init_federation, remove_clinic
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.errors import ExitCode
from oralfed.server.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE
from tests.e2e.conftest import (
    Deployment,
    clinic_status,
    free_port,
    oralfed,
    running_federation,
    wait_for,
)
from tests.e2e.test_secure_aggregation import assert_models_are_means_of_releases
from tests.processes import children, footprint

pytestmark = pytest.mark.e2e
CLINICS = ("clinic-01", "clinic-02", "clinic-03")
TOKEN = re.compile(rb"[A-Za-z0-9_-]+")  # a patient_ref is one such token (data contract)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The coordinator, three clinics, and three nodes that must be refused, all started
    at once (each `oralfed` start costs seconds of imports on a busy 2-core machine)."""
    root = tmp_path_factory.mktemp("deployment")
    # Flower's SuperLink state on disk here, so that the raw-record search below reads the
    # messages it kept (by default that state is in memory; tests/e2e/test_resume.py).
    with running_federation(root, CLINICS, "--persist-superlink-state") as deployment:
        fed = deployment.fed
        # A second federation: its CA and its node key are strangers to the first.
        init_federation("other", root / "other", port=free_port())
        add_clinic(root / "other", "stranger")
        # An unregistered key: another federation's node key, trusting our CA.
        unregistered = root / "kit-unregistered"
        shutil.copytree(root / "other" / "clinics" / "stranger", unregistered)
        shutil.copyfile(fed / "ca" / "ca.crt", unregistered / "ca.crt")
        _point_at(unregistered, fed)
        deployment.start_clinic("unregistered", unregistered)
        # A registered key but another federation's CA: it cannot trust our coordinator.
        foreign_ca = root / "kit-foreign-ca"
        shutil.copytree(fed / "clinics" / "clinic-01", foreign_ca)
        shutil.copyfile(root / "other" / "ca" / "ca.crt", foreign_ca / "ca.crt")
        deployment.start_clinic("foreign-ca", foreign_ca)
        # A clinic added while the SuperLink runs (registered at once), then removed.
        assert add_clinic(fed, "leaver").status == "registered"
        assert remove_clinic(fed, "leaver").status == "removed"
        deployment.start_clinic("leaver", fed / "clinics" / "leaver")
        yield deployment


def test_unregistered_key_is_refused(deployment: Deployment) -> None:
    assert deployment.processes["unregistered"].wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in _supernode_log(deployment, "unregistered")


def test_node_without_the_federation_ca_is_refused(deployment: Deployment) -> None:
    assert deployment.processes["foreign-ca"].wait(timeout=120) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in _supernode_log(deployment, "foreign-ca")


def test_removed_clinic_is_refused(deployment: Deployment) -> None:
    assert clinic_status(deployment.fed)["leaver"] == "removed"
    assert deployment.processes["leaver"].wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in _supernode_log(deployment, "leaver")


def test_clinic_refuses_to_start_on_a_file_that_fails_the_contract(
    deployment: Deployment,
) -> None:
    broken = deployment.root / "broken.csv"
    broken.write_text("patient_ref,age_years\np-1,40\n")
    completed = oralfed(
        "clinic",
        "start",
        "--kit",
        deployment.fed / "clinics" / "clinic-01",
        "--data",
        broken,
        "--state-dir",
        deployment.root / "state" / "broken",
        check=False,
    )
    assert completed.returncode == ExitCode.INVALID_DATA
    assert str(broken) in completed.stderr and "Traceback" not in completed.stderr
    assert not (deployment.root / "state" / "broken" / "supernode.log").exists()


def launch_arguments(
    deployment: Deployment, out: Path, *, min_clinics: int, timeout: int, target_epsilon: float = 2
) -> tuple[str | Path, ...]:
    """`oralfed federation launch` of a small 2-round run on the test deployment."""
    return (
        "federation",
        "launch",
        "--federation-dir",
        deployment.fed,
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--target-epsilon",
        str(target_epsilon),
        "--min-clinics",
        str(min_clinics),
        "--round-timeout",
        str(timeout),
        "--out",
        out,
        "--json",
    )


@pytest.fixture(scope="module")
def federation_run(deployment: Deployment) -> dict[str, Any]:
    out = deployment.root / "run1"
    completed = oralfed(*launch_arguments(deployment, out, min_clinics=3, timeout=120), check=False)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    RUNTIME_AFTER_FIRST_RUN.update(_runtime_footprint(deployment, "clinic-01"))
    return json.loads((out / "report.json").read_text())


# The clinic runtime's processes after the first run: (resident KiB, open descriptors) by role.
RUNTIME_AFTER_FIRST_RUN: dict[str, tuple[int, int]] = {}


def _runtime_footprint(deployment: Deployment, clinic: str) -> dict[str, tuple[int, int]]:
    """Memory and open files of the clinic runtime's loop and of its fork-server template."""
    loop = int((deployment.root / "state" / clinic / "clinic-runtime.pid").read_text())
    [template] = children(loop)
    return {"loop": footprint(loop), "template": footprint(template)}


def test_deployed_federation_completes_with_report(
    deployment: Deployment, federation_run: dict[str, Any]
) -> None:
    report = federation_run
    assert report["status"] == "completed" and len(report["rounds"]) == 2
    assert [c["clinic"] for c in report["clinics"]] == list(CLINICS)  # refused nodes absent
    for clinic in report["clinics"]:
        assert clinic["rounds_trained"] == 2 and not clinic["refusals"]
        assert 0 < clinic["epsilon_spent"] <= 2.0 + 1e-9
        assert clinic["accountant"] == "pld" and 0 < clinic["delta"] < 1e-4
    assert report["rounds"][-1]["eval_auc"] is not None  # the DP evaluation's estimate
    assert report["evaluation"]["final"]["auc_95"] is not None
    assert Path(report["model_file"]).is_file()
    (run,) = list_runs(deployment.fed, report["run_id"])  # what `federation status` shows
    assert run["status"] == "finished:completed"


def test_every_clinic_ledger_holds_exactly_its_releases(
    deployment: Deployment, federation_run: dict[str, Any]
) -> None:
    """The size estimate (once per file), two DP-SGD rounds, the final DP evaluation."""
    for clinic in CLINICS:
        with PrivacyLedger.in_state_dir(deployment.root / "state" / clinic) as ledger:
            charges = ledger.history(clinic)
        assert [(type(c.event).__name__, c.round) for c in charges] == [
            ("DiscreteLaplaceEvent", None),
            ("DpSgdEvent", 1),
            ("DpSgdEvent", 2),
            ("DiscreteLaplaceEvent", 2),
        ]
        reported = next(c for c in federation_run["clinics"] if c["clinic"] == clinic)
        assert charges[-1].epsilon_after == pytest.approx(reported["epsilon_spent"])


def test_coordinator_never_receives_raw_records(
    deployment: Deployment, federation_run: dict[str, Any]
) -> None:
    """Everything the coordinator holds after the run (SuperLink state DB with its messages,
    logs, history, coordinator DB, model) is searched for every patient_ref of every clinic
    and for their raw rows; the replies carry only the protocol's aggregate keys."""
    refs: set[bytes] = set()
    rows: list[bytes] = []
    for clinic in CLINICS:
        lines = (deployment.data / f"{clinic}.csv").read_text().splitlines()[1:]
        refs |= {line.split(",", 1)[0].encode() for line in lines}
        rows += [line.encode() for line in lines[:50]]
    coordinator_files = [
        p
        for base in (deployment.root / "coordinator", deployment.root / "run1")
        for p in base.rglob("*")
        if p.is_file()
    ]
    assert any(p.name == "superlink.db" for p in coordinator_files)
    for path in coordinator_files:
        content = path.read_bytes()
        leaked = refs & set(TOKEN.findall(content)) | {row for row in rows if row in content}
        assert not leaked, f"{path} holds raw clinic data: {sorted(leaked)[:3]}"
    with sqlite3.connect(deployment.root / "coordinator" / "superlink.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert tables  # the SuperLink really kept its state (runs, nodes, messages) in this file
    allowed = {
        value for name, value in vars(protocol).items() if name.isupper() and isinstance(value, str)
    }
    for summary in federation_run["rounds"]:
        for entry in summary["clinics"]:
            assert set(entry["metrics"]) <= allowed, entry["metrics"]


def test_a_dp_query_runs_on_the_deployment_and_is_charged_first(
    deployment: Deployment, federation_run: dict[str, Any]
) -> None:
    """Issue 5 on the deployed path: the same ServerApp answers a query from the run config;
    every clinic charges a Gaussian release to its ledger before it replies."""
    completed = oralfed(
        "insights",
        "query",
        "--federation-dir",
        deployment.fed,
        "--measure",
        "proportion",
        "--column",
        "untreated_caries",
        "--epsilon",
        "1",
        "--out",
        deployment.root / "query1",
        "--json",
    )
    answer = json.loads(completed.stdout)
    assert sorted(p["clinic"] for p in answer["participants"]) == sorted(CLINICS)
    assert not answer["refusals"]
    [cell] = answer["cells"]
    assert not cell["suppressed"] and 0 < cell["value"]["value"] < 1
    for clinic in CLINICS:
        with PrivacyLedger.in_state_dir(deployment.root / "state" / clinic) as ledger:
            assert [type(c.event).__name__ for c in ledger.history(clinic)][
                -1
            ] == "DiscreteGaussianEvent"


def test_dead_node_does_not_hang_the_run_and_rejoins(
    deployment: Deployment, federation_run: dict[str, Any]
) -> None:
    out = deployment.root / "run2"
    launch = deployment.start(
        "launch2", *launch_arguments(deployment, out, min_clinics=2, timeout=40)
    )
    wait_for(lambda: "configure_train" in deployment.output("launch2"), 120, "round 1 to start")
    deployment.kill("clinic-03")
    launch.wait(timeout=300)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed", report["message"]
    assert "clinic-03" in report["dropped"]
    for summary in report["rounds"]:  # every round went on with the clinics still online
        assert set(summary["trained"]) >= {"clinic-01", "clinic-02"}
    # The same kit rejoins: the node keeps its identity and is accepted again.
    deployment.start_clinic("clinic-03", deployment.fed / "clinics" / "clinic-03", "clinic-03.csv")
    wait_for(
        lambda: (
            "Failed to activate" not in _supernode_log(deployment, "clinic-03")
            and _active_nodes(deployment) == 3
        ),
        90,
        "clinic-03 to reconnect",
    )


def test_a_message_whose_process_is_killed_fails_alone_and_the_next_is_served(
    deployment: Deployment, federation_run: dict[str, Any]
) -> None:
    """clinic-02's process for its round-1 message is SIGKILLed while it works on it (as an
    out-of-memory kill would end it: a new target ε keeps it calibrating σ for seconds after
    it pulled the message). Flower reports that message failed once the task's token
    expires; the clinic's round-2 message is served by a fresh process from the same warm
    runtime, and nothing was released for the killed one."""
    out = deployment.root / "run3"
    earlier = len(_charges(deployment, "clinic-02"))
    arguments = launch_arguments(deployment, out, min_clinics=2, timeout=120, target_epsilon=1.5)
    launch = deployment.start("launch3", *arguments)
    loop = int((deployment.root / "state" / "clinic-02" / "clinic-runtime.pid").read_text())
    [template] = children(loop)
    deadline = time.monotonic() + 180
    while not (tasks := children(template)):
        assert time.monotonic() < deadline and launch.poll() is None, "no message reached clinic-02"
        time.sleep(0.02)
    # It pulls its message in about 0.15 s, then calibrates σ for the new target and trains:
    # about a second in all on 2 cores since the calibration's quick search.
    time.sleep(0.3)
    assert children(template) == tasks, "the round-1 task ended before it could be killed"
    os.kill(tasks[0], signal.SIGKILL)
    assert launch.wait(timeout=400) == 0, deployment.output("launch3")[-3000:]
    report = json.loads((out / "report.json").read_text())
    first, second = report["rounds"]
    assert [(f["clinic"], f["reason"]) for f in first["failed"]] == [
        ("clinic-02", "ClientApp stopped responding.")  # Flower's word for an expired task
    ]
    assert {"clinic-01", "clinic-03"} <= set(first["trained"])
    assert "clinic-02" in second["trained"]
    log = (deployment.root / "state" / "clinic-02" / "clinic-runtime.log").read_text()
    assert f"(pid {tasks[0]}) ended with code -9" in log
    run3 = _charges(deployment, "clinic-02")[earlier:]
    assert [c.round for c in run3 if type(c.event).__name__ == "DpSgdEvent"] == [2]


def _charges(deployment: Deployment, clinic: str) -> list[Any]:
    with PrivacyLedger.in_state_dir(deployment.root / "state" / clinic) as ledger:
        return list(ledger.history(clinic))


def test_the_clinic_runtime_serves_messages_without_growing(
    deployment: Deployment, federation_run: dict[str, Any]
) -> None:
    """After every run and query of this module, clinic-01's runtime holds the files it held
    after the first run and no more memory than its bounded caches: each message's memory
    and files ended with that message's process."""
    log = (deployment.root / "state" / "clinic-01" / "clinic-runtime.log").read_text()
    assert log.count("ended with code 0") >= 6  # two runs at least: trained and evaluated
    now = _runtime_footprint(deployment, "clinic-01")
    for role, (rss, fds) in RUNTIME_AFTER_FIRST_RUN.items():
        assert now[role][1] == fds, f"the runtime's {role} holds {now[role][1] - fds} more files"
        assert now[role][0] - rss < 32 * 1024, (
            f"the runtime's {role} grew by {now[role][0] - rss} KiB"
        )


def test_secure_aggregation_survives_a_clinic_killed_after_sharing_its_keys(
    deployment: Deployment, federation_run: dict[str, Any]
) -> None:
    """A 2-round run under SecAgg+ over TLS: clinic-03 is SIGKILLed once it has answered
    round 1's setup and key-sharing messages, before its masked vector; 2 of 3 clinics
    still reconstruct (threshold 2), so the round's mean is unmasked without it: each
    round's model is the mean of the updates the other two released. The report names it
    and the protocol's parameters."""
    out = deployment.root / "run-secure"
    supernode_log = deployment.root / "state" / "clinic-03" / "supernode.log"
    before = supernode_log.read_text().count("Sent successfully")
    arguments = launch_arguments(deployment, out, min_clinics=2, timeout=30)
    launch = deployment.start("launch-secure", *arguments, "--secure-aggregation")
    deadline = time.monotonic() + 240
    # Its SuperNode has sent the setup and key-sharing answers; it then sleeps before it
    # looks for the collect stage's message (Flower's 3 s after an empty pull).
    while supernode_log.read_text().count("Sent successfully") < before + 2:
        assert time.monotonic() < deadline and launch.poll() is None, "no key sharing at clinic-03"
        time.sleep(0.02)
    deployment.kill("clinic-03")
    assert launch.wait(timeout=600) == 0, deployment.output("launch-secure")[-3000:]
    report = json.loads((out / "report.json").read_text())
    first = report["rounds"][0]
    assert first["secure_aggregation"]["dropped_after_key_sharing"] == ["clinic-03"]
    assert first["secure_aggregation"]["reconstruction_threshold"] == 2
    assert set(first["trained"]) == {"clinic-01", "clinic-02"}
    assert report["secure_aggregation"]["enabled"] is True
    checkpoint = json.loads((out / CHECKPOINT_DIR / CHECKPOINT_FILE).read_text())
    assert_models_are_means_of_releases(report, checkpoint["run_id"], deployment.root / "state")
    deployment.start_clinic("clinic-03", deployment.fed / "clinics" / "clinic-03", "clinic-03.csv")
    wait_for(lambda: _active_nodes(deployment) == 3, 90, "clinic-03 to reconnect")


def _active_nodes(deployment: Deployment) -> int:
    listing = subprocess.run(
        [str(Path(sys.executable).with_name("flwr")), "supernode", "list", "--format", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "FLWR_HOME": str(deployment.fed / "flwr-home")},
        timeout=60,
    )
    text = listing.stdout[listing.stdout.find("{") :]
    nodes = json.loads(text).get("nodes", []) if text else []
    return sum(1 for node in nodes if str(node.get("status", "")).lower() == "online")


def _point_at(kit: Path, fed: Path) -> None:
    config = json.loads((kit / "clinic.json").read_text())
    config["superlink"] = json.loads((fed / "federation.json").read_text())
    config["superlink"] = f"localhost:{config['superlink']['port']}"
    (kit / "clinic.json").write_text(json.dumps(config))


def _supernode_log(deployment: Deployment, name: str) -> str:
    log = deployment.root / "state" / name / "supernode.log"
    return log.read_text(errors="replace") if log.exists() else ""
