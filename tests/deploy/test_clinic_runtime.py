"""The clinic runtime's executor: Flower's interface, ClientApp tasks only, forked warm.

The end-to-end path (a real SuperNode, TLS, node keys, many messages) is in
tests/e2e/test_deployment.py; here the executor meets Flower's own ``ExecutionSpec``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus

from oralfed.client.budget import run_epsilon
from oralfed.deploy.clinic_runtime import (
    CLIENT_TASKS,
    WarmExecutor,
    compose_likely_charges,
    task_request,
)
from oralfed.deploy.fork_server import ForkServer, TaskRunner
from oralfed.privacy.accountants import get_accountant
from oralfed.privacy.accountants.base import _composed_epsilon
from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.ledger import PrivacyLedger


def _spec(task_type: TaskType, out: Path) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:9094",
        token=str(out),  # the recording task below writes where its "token" says
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=False,
        task_id=7,
    )


def _recording() -> TaskRunner:
    def run(request: dict[str, Any]) -> None:
        Path(request["token"]).write_text(json.dumps(request))

    return TaskRunner(run)


@pytest.fixture
def executor() -> Iterator[WarmExecutor]:
    fork_server = ForkServer(_recording)
    fork_server.start()
    warm = WarmExecutor(fork_server)
    try:
        yield warm
    finally:
        warm.close()


def test_only_clientapp_tasks_are_asked_for(executor: WarmExecutor) -> None:
    types, bundles = executor.get_eligible_capacity(set(TaskType))
    assert types == set(CLIENT_TASKS) == {TaskType.CLIENT_APP} and bundles == set()


def test_a_clientapp_task_is_forked_with_flowers_execution_spec(
    executor: WarmExecutor, tmp_path: Path
) -> None:
    out = tmp_path / "task.json"
    result = executor.launch(_spec(TaskType.CLIENT_APP, out))
    assert result.status == LaunchResultStatus.ACCEPTED
    deadline = time.monotonic() + 30
    while executor.running:
        assert time.monotonic() < deadline, "the forked task never ended"
        executor.reconcile()
        time.sleep(0.05)
    assert json.loads(out.read_text()) == task_request(_spec(TaskType.CLIENT_APP, out))


@pytest.mark.parametrize("task_type", sorted(set(TaskType) - CLIENT_TASKS))
def test_any_other_app_type_is_refused_and_nothing_runs(
    executor: WarmExecutor, tmp_path: Path, task_type: TaskType
) -> None:
    out = tmp_path / "task.json"
    result = executor.launch(_spec(task_type, out))
    assert result.status == LaunchResultStatus.FAILED
    assert "ClientApps only" in (result.message or "")
    assert not executor.running and not out.exists()


def test_the_template_composes_what_a_repeated_charge_asks(tmp_path: Path) -> None:
    """After a round, the next round's charge (same mechanism, same run) and a new run's
    first charge find every ε they ask for already composed: no accountant work in the task."""
    earlier = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=20)
    event = DpSgdEvent(noise_multiplier=1.1, sample_rate=0.05, steps=20)
    with PrivacyLedger.in_state_dir(tmp_path) as ledger:
        ledger.ensure_dataset("clinic-01", 10.0, 1e-5, "pld")
        ledger.charge("clinic-01", earlier, run_id="run-0", round=1)
        ledger.charge("clinic-01", event, run_id="run-a", round=1)
        budget = ledger.budget("clinic-01")
        _composed_epsilon.cache_clear()
        compose_likely_charges(ledger, budget)
        composed = _composed_epsilon.cache_info().misses
        # for each of the two events: history + it, run-a's releases + it, it alone
        assert composed == 6

        assert run_epsilon(ledger, budget, "run-a", event) > 0
        assert run_epsilon(ledger, budget, "run-b", event) > 0
        charged = ledger.charge("clinic-01", event, run_id="run-a", round=2)
        assert _composed_epsilon.cache_info().misses == composed
    assert charged.epsilon_after == get_accountant("pld").epsilon([earlier, event, event], 1e-5)


def test_a_ledger_without_charges_has_nothing_to_compose_ahead(tmp_path: Path) -> None:
    with PrivacyLedger.in_state_dir(tmp_path) as ledger:
        budget = ledger.ensure_dataset("clinic-01", 10.0, 1e-5, "pld")
        _composed_epsilon.cache_clear()
        compose_likely_charges(ledger, budget)
    assert _composed_epsilon.cache_info().misses == 0
