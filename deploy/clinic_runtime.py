"""The clinic runtime: Flower's SuperExec loop with a warm executor, beside a SuperNode.

A SuperNode started with ``--isolation process`` runs no SuperExec of its own; one runs
beside it, as in Flower's container images. This is that process for a clinic. It asks the
SuperNode's Runtime API for tasks with Flower's own client, authenticated with the node's
SuperExec secret, and hands each ClientApp task to :class:`WarmExecutor`, an implementation
of Flower's ``Executor`` interface. Where Flower's ``SubprocessExecutor`` starts a new
``flwr-clientapp`` interpreter per message (importing torch and the app, seconds each),
the warm executor forks the task from a template that has already imported the ClientApp
and Flower's ``run_clientapp`` and imported and validated the clinic's file
(:mod:`oralfed.deploy.fork_server`). The child then runs Flower's own ``run_clientapp``
with the task's token: the same pull, the same app, the same push and heartbeats as a cold
``flwr-clientapp``, one process per message.

What is kept warm is code, the parsed file and arithmetic. The file's import is cached by
path, size and modification time (``oralfed.client.data``), so a changed file is imported
and validated again by the task that reads it. Between tasks the template composes the
ledger's history and its likely next charge, so the accountant's memo holds the PLDs and ε
the next task will ask for (:func:`compose_ledger_history`). Every privacy decision is made
afresh in each task from what it reads: the policy check, the ledger (opened, migrated,
every charge read, ε of that history), the release store.

Only ClientApp tasks are taken: a clinic node never runs a ServerApp or any other app
type, whatever its SuperNode is asked.

    python -m oralfed.deploy.clinic_runtime --runtime-api-address 127.0.0.1:9094 \
        --secret-file STATE/superexec.secret --node-config-json '{...}'

(``oralfed clinic start`` starts it; an operator never has to.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, LaunchResultStatus
from flwr.supercore.superexec.plugin import AutoExecPlugin

from oralfed.deploy.fork_server import ForkServer, ForkServerError, TaskRunner
from oralfed.schemas.node_config import ClinicNode

if TYPE_CHECKING:
    from oralfed.privacy.ledger import Budget, PrivacyLedger

__all__ = ["FIRST_POLL_SECONDS", "MAX_POLL_SECONDS", "WarmExecutor", "run_clinic_runtime"]

# The loop asks for a task again at once after one was launched (a round sends one message
# per node, but a query or a resent round may follow), then backs off to a quarter second
# while idle: a message waits at most that long for its process, and an idle node makes
# four cheap loopback requests a second.
FIRST_POLL_SECONDS = 0.02
MAX_POLL_SECONDS = 0.25
# The releases whose repetition the template composes ahead (compose_likely_charges): a
# round's training and a run's evaluation are among the last few charges.
LIKELY_CHARGES_LOOKBACK = 4
ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"
CLIENT_TASKS = frozenset({TaskType.CLIENT_APP})


class WarmExecutor:
    """Flower's ``Executor`` interface over a :class:`ForkServer`: ``launch`` forks the task
    from the warm template instead of starting ``flwr-clientapp``."""

    def __init__(self, fork_server: ForkServer) -> None:
        self.fork_server = fork_server
        self.running: dict[int, int] = {}  # pid -> task id

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        """ClientApp tasks only, and no agent-app bundles."""
        del insecure, root_certificates_path
        return supported_task_types & CLIENT_TASKS, set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        """A fork has no capacity gate: the SuperNode sends a node one message at a time."""
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork the task; a template that is gone raises ``ForkServerError``, which ends the
        runtime (its supervisor, ``oralfed clinic start``, then stops the node)."""
        if spec.task_type not in CLIENT_TASKS:
            return LaunchResult.failed(f"a clinic node runs ClientApps only, not {spec.task_type}")
        pid = self.fork_server.launch(task_request(spec))
        self.running[pid] = spec.task_id
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Log how each ended task ended; a task killed or failed is Flower's to report (its
        token expires and the SuperNode replies with an error), the next one runs as usual.
        An idle runtime asks the template nothing."""
        if not self.running:
            return
        for ended in self.fork_server.exits():
            task_id = self.running.pop(ended.pid, None)
            log(
                INFO if ended.code == 0 else WARNING,
                "task %s (pid %d) ended with code %d after %.2f s (%.2f s of CPU)",
                task_id,
                ended.pid,
                ended.code,
                ended.wall_seconds,
                ended.cpu_seconds,
            )

    def close(self) -> None:
        self.fork_server.close()


def task_request(spec: ExecutionSpec) -> dict[str, Any]:
    """What a forked task needs of Flower's execution spec to run ``run_clientapp``."""
    return {
        "runtime_api_address": spec.runtime_api_address,
        "token": spec.token,
        "insecure": spec.insecure,
        "root_certificates_path": spec.root_certificates_path,
        "parent_pid": spec.parent_pid,
    }


def prepare_clinic_task(node: ClinicNode) -> TaskRunner:
    """Runs once, in the template: import the clinic's ClientApp and Flower's Runtime client
    (the imports are most of a cold task's start-up), import and validate the clinic's file
    into the in-process cache, compose the ledger's history (:func:`compose_ledger_history`),
    and return what each forked task runs (:func:`~oralfed.deploy.clinic_task.run_clinic_task`)."""
    from oralfed.client.app import app
    from oralfed.client.data import load_clinic_data
    from oralfed.deploy.clinic_task import run_clinic_task

    load_clinic_data(node.clinic_id, node.data_path)
    _import_lazy_modules()
    compose_ledger_history(node)
    return TaskRunner(
        lambda request: run_clinic_task(app, request), lambda: compose_ledger_history(node)
    )


def compose_ledger_history(node: ClinicNode) -> None:
    """Compose the data set's history as its ledger holds it now, and the checks of the
    newest calibrated σ, in the template, so that the next task finds the arithmetic done:
    the per-step PLD of each DP-SGD (σ, q) and ε of each exact history are remembered by
    the accountants, keyed by the whole history (``oralfed.privacy.accountants``), and
    what the next charge will likely ask (:func:`compose_likely_charges`). A task
    still reads the ledger itself and decides on what it reads; a history that changed in
    between is simply composed again. Run after each task, in the pause before the next
    round's message; the ledger is closed again before anything is forked. A failure here
    (a locked or damaged ledger) only costs the next task the arithmetic: it meets the
    problem itself and refuses with a reason."""
    from oralfed.client.app import CALIBRATION_CACHE_FILE
    from oralfed.privacy.calibration import CalibrationCache
    from oralfed.privacy.ledger import PrivacyLedger, UnknownDataset

    try:
        with (
            PrivacyLedger.in_state_dir(node.state_dir) as ledger,
            contextlib.suppress(UnknownDataset),  # a new clinic: nothing to compose yet
        ):
            budget = ledger.budget(node.dataset_id)
            compose_likely_charges(ledger, budget)
        CalibrationCache(node.state_dir / CALIBRATION_CACHE_FILE).compose_latest()
    except Exception as error:
        log(WARNING, "the ledger's history was not composed ahead: %s", error)


def compose_likely_charges(ledger: PrivacyLedger, budget: Budget) -> None:
    """Compose what the next task's charge will ask the accountant if it repeats one of the
    latest releases (a run's next round trains with the same σ, q and steps; its final
    evaluation is the last run's): ε of the whole history with that event added (the
    ledger's quote), of the latest run's releases with it (the run's bound), and of the
    event alone (a new run's first round). The same calls the task makes, so their answers
    are in the accountants' memo when it asks; a wrong guess costs only this idle work."""
    from oralfed.client.budget import run_epsilon
    from oralfed.privacy.accountants import get_accountant

    charges = ledger.history(budget.dataset_id)
    if not charges:
        return
    history = [charge.event for charge in charges]
    accountant = get_accountant(budget.accountant)
    latest_run = charges[-1].run_id
    for event in dict.fromkeys(history[-LIKELY_CHARGES_LOOKBACK:][::-1]):  # newest first
        accountant.epsilon([*history, event], budget.delta)
        run_epsilon(ledger, budget, latest_run, event)
        accountant.epsilon([event], budget.delta)


def _import_lazy_modules() -> None:
    """What a task would otherwise import on first use: torch's first optimizer imports
    ``torch._dynamo`` (3 s here), Flower's Runtime client ``httpcore``, a private
    evaluation OpenDP (a second). Building an optimizer computes nothing, so no thread pool
    is started in the template before it forks."""
    import httpcore  # noqa: F401
    import opendp.prelude  # noqa: F401  (the exact samplers' first use: about a second)
    import torch

    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    # The risk model has a few thousand parameters: a step's matrix products are too small
    # for a second thread to pay for its synchronisation, and the node's other processes
    # (the SuperNode, other messages) need the cores more than one message's idle spinning.
    torch.set_num_threads(1)


def run_clinic_runtime(runtime_api_address: str, secret: bytes, node: ClinicNode) -> None:
    """Serve the SuperNode at ``runtime_api_address`` until stopped (SIGTERM ends the whole
    process group: this loop, the template and any running task)."""
    fork_server = ForkServer(lambda: prepare_clinic_task(node))
    fork_server.start()  # before any connection or thread exists in this process
    executor = WarmExecutor(fork_server)
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,  # the SuperNode's Runtime API listens on this host's loopback
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE_TASK}),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    plugin = AutoExecPlugin(
        runtime_api_address=runtime_api_address,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        executor=executor,
    )
    log(INFO, "Clinic runtime for %s serving %s", node.clinic_id, runtime_api_address)
    poll = FIRST_POLL_SECONDS
    try:
        while True:
            executor.reconcile()
            task_types, fab_hashes = executor.get_eligible_capacity(
                set(plugin.supported_task_types)
            )
            acquired = client.AcquireTask(
                AcquireTaskRequest(supported_task_types=task_types, agentapp_fab_hashes=fab_hashes)
            )
            if acquired.HasField("task") and acquired.token:
                result = plugin.launch_task(token=acquired.token, task=acquired.task)
                if result.status != LaunchResultStatus.ACCEPTED:
                    log(ERROR, "task %d not launched: %s", acquired.task.task_id, result.message)
                poll = FIRST_POLL_SECONDS
                continue
            time.sleep(poll)
            poll = min(poll * 1.5, MAX_POLL_SECONDS)
    finally:
        client.close()
        executor.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--secret-file", type=Path, required=True)
    parser.add_argument("--node-config-json", required=True)
    args = parser.parse_args(argv)
    node = ClinicNode.from_config(json.loads(args.node_config_json))
    try:
        run_clinic_runtime(args.runtime_api_address, args.secret_file.read_bytes(), node)
    except ForkServerError as error:
        print(f"clinic runtime: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
