"""Run a whole federation on this machine with Flower's Simulation Engine.

``launch_simulation`` runs it in a child process of its own session: Ray starts a tree of
processes (GCS, raylet, workers) and the ServerApp thread does not listen for Ctrl-C, so
ending the child's whole process group is the one reliable way to leave nothing running
when ``oralfed federate`` returns, however it returns. The child reports each round, and
within a round how many clinics have replied, as JSON lines on a pipe; Flower's and Ray's
own logs go to ``federation.log`` in the run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from oralfed.deploy.run_clinics import SPEC_FILE, clinics_of_run
from oralfed.schemas.files import dumps, write_json_atomically
from oralfed.schemas.node_config import ClinicNode

OUTCOME_FILE = "outcome.json"
LOG_FILE = "federation.log"
STOP_GRACE_SECONDS = 10.0
FEDERATION_APP = "federation"
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own: the cluster ray.init() joins
QUERY_APP = "query"

EventCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SimulationResult:
    run_id: str | None
    status: str  # "completed" | "halted" | "failed"
    message: str | None
    rounds: list[dict[str, Any]]


def launch_simulation(
    clinics: list[ClinicNode],
    settings_json: dict[str, Any],
    out_dir: Path,
    on_event: EventCallback | None = None,
    app: str = FEDERATION_APP,
    ray_address: str | None = None,
) -> SimulationResult:
    """Run the federation in a child process and wait for it; always reaps the process group.

    ``ray_address`` runs the clinics on that Ray cluster (``ray start --head``'s address)
    instead of a Ray started for the run; without it Ray's own ``RAY_ADDRESS`` is honoured.
    Only the run's own Ray is stopped with the run; a cluster's stays up.

    ``app`` picks the child's ServerApp: the training federation (``settings_json`` is a
    ``FederationSettings.public_dict()``) or one insight query (``QUERY_APP``, a
    ``server.insights.QuerySettings.public_dict()``; the answer arrives as an ``answer`` event).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"app": app, "clinics": [c.to_config() for c in clinics], "settings": settings_json}
    write_json_atomically(out_dir / SPEC_FILE, spec)
    (out_dir / OUTCOME_FILE).unlink(missing_ok=True)  # a resumed run's folder has an old one
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    if ray_address:
        env[RAY_ADDRESS_ENV] = ray_address
    with (out_dir / LOG_FILE).open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "oralfed.deploy.simulation", str(out_dir), str(write_fd)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
    os.close(write_fd)
    rounds: list[dict[str, Any]] = []
    try:
        with os.fdopen(read_fd, "r", encoding="utf-8") as events:
            for line in events:
                event = json.loads(line)
                if event.get("event") == "round":
                    rounds.append(event["summary"])
                if on_event is not None:
                    on_event(event)
        child.wait()
    finally:
        _end_process_group(child)
    outcome_path = out_dir / OUTCOME_FILE
    if not outcome_path.exists():
        return SimulationResult(
            None,
            "failed",
            f"the simulation process exited with code {child.returncode}; see {out_dir / LOG_FILE}",
            rounds,
        )
    outcome = json.loads(outcome_path.read_text())
    return SimulationResult(
        outcome.get("run_id"), outcome["status"], outcome.get("message"), rounds
    )


def _end_process_group(child: subprocess.Popen[bytes]) -> None:
    """Terminate the child's session (Ray included); escalate to SIGKILL after a grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; stragglers in its group may remain
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            return


def _run_child(out_dir: Path, events_fd: int) -> int:
    """Child side: run the simulation in-process and stream round summaries."""
    import torch
    from flwr.simulation import run_simulation

    from oralfed.client.app import make_client_app
    from oralfed.deploy.simulation_delivery import use_one_pass_delivery
    from oralfed.schemas.settings import FederationSettings
    from oralfed.server.app import make_server_app
    from oralfed.server.insights import QuerySettings, make_query_server_app

    torch.set_num_threads(1)
    use_one_pass_delivery()  # Flower's poll walks every node's messages for every node
    logging.getLogger("flwr").setLevel(logging.INFO)
    spec = json.loads((out_dir / SPEC_FILE).read_text())
    clinics = clinics_of_run(out_dir)
    events = os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)

    def emit(payload: dict[str, Any]) -> None:
        events.write(dumps(payload) + "\n")

    outcomes: list[Any] = []  # FederationOutcome or QueryOutcome: run_id, status, message
    if spec.get("app") == QUERY_APP:
        server_app = make_query_server_app(
            QuerySettings(**spec["settings"]),
            outcomes,
            lambda answer: emit({"event": "answer", "answer": answer.to_dict()}),
        )
    else:
        settings = FederationSettings.from_public_dict(spec["settings"])
        server_app = make_server_app(
            settings,
            outcomes,
            lambda record: emit({"event": "round", "summary": record.summary()}),
            on_progress=lambda progress: emit({"event": "progress", **asdict(progress)}),
            simulated_clinics=len(clinics),
        )
    status, message = "failed", None
    try:
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(partial(clinics_of_run, out_dir)),
            num_supernodes=len(clinics),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": _ray_init_args(len(clinics)),
            },
        )
        status = outcomes[0].status if outcomes else "failed"
        message = outcomes[0].message if outcomes else "the ServerApp did not start"
    except Exception as error:  # report any end of the run to the parent, then exit non-zero
        status = outcomes[0].status if outcomes and outcomes[0].status == "halted" else "failed"
        message = (outcomes[0].message if outcomes else None) or f"{type(error).__name__}: {error}"
    run_id = outcomes[0].run_id if outcomes else None
    write_json_atomically(
        out_dir / OUTCOME_FILE, {"run_id": run_id, "status": status, "message": message}
    )
    emit({"event": "end", "status": status, "message": message})
    events.close()
    return 0 if status == "completed" else 1


def _ray_init_args(clinics: int) -> dict[str, Any]:
    """Join the cluster ``RAY_ADDRESS`` names (Ray refuses a CPU count for a cluster it
    joins: the cluster's nodes say what they have), else start Ray on this machine's CPUs."""
    address = os.environ.get(RAY_ADDRESS_ENV)
    if address:
        return {"address": address}
    return {"num_cpus": max(1, min(clinics, os.cpu_count() or 1))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: OralFed simulation worker")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("events_fd", type=int)
    arguments = parser.parse_args()
    sys.exit(_run_child(arguments.out_dir, arguments.events_fd))
