"""What the coordinator's rounds wait for, as the rounds really ask the grid: a simulated
round for every clinic it asked unless ``round-timeout`` is given, a deployed one 600 s
(``reply_timeout``); a simulation's first round for all its clinics to connect."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import Message
from flwr.supercore.task_identity import TaskIdentity

from oralfed.schemas.settings import DEPLOYED_ROUND_TIMEOUT, FederationSettings
from oralfed.server.app import FederationOutcome, run_federation_rounds
from oralfed.server.strategy import FederationHalted
from tests.server.test_prompt_grid import _SlowGrid


@pytest.fixture(autouse=True)
def _serverapp_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run a ServerApp process has (Flower's Message constructor reads it)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)  # SUPERLINK_NODE_ID
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class _SilentGrid(_SlowGrid):
    """Nodes that never reply, one more connected at each look up to ``nodes`` (as a
    simulation's register while its ServerApp starts); each round's wait and the nodes it
    asked are recorded."""

    def __init__(self, nodes: int = 2, connected: int = 2) -> None:
        super().__init__([])
        self.nodes, self.connected = nodes, connected
        self.timeouts: list[float | None] = []
        self.asked: list[list[int]] = []

    def get_node_ids(self) -> Iterable[int]:
        node_ids = list(range(1, self.connected + 1))
        self.connected = min(self.connected + 1, self.nodes)
        return node_ids

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.timeouts.append(timeout)
        self.asked.append(sorted(message.metadata.dst_node_id for message in messages))
        return []


def _halted_round(grid: _SilentGrid, settings: FederationSettings, clinics: int | None) -> None:
    outcome = FederationOutcome(run_id="run-1", settings=settings)
    with pytest.raises(FederationHalted):  # no clinic replied
        run_federation_rounds(grid, settings, outcome, simulated_clinics=clinics)
    assert outcome.status == "halted"


@pytest.mark.parametrize(
    ("clinics", "round_timeout", "waited"),
    [
        (2, None, None),  # a simulation of two clinics; None: until every one asked replied
        (None, None, DEPLOYED_ROUND_TIMEOUT),  # a deployment
        (2, 45.0, 45.0),
        (None, 45.0, 45.0),
    ],
)
def test_a_round_hands_the_grid_the_wait_its_engine_calls_for(
    tmp_path: Path, clinics: int | None, round_timeout: float | None, waited: float | None
) -> None:
    grid = _SilentGrid()
    _halted_round(
        grid, FederationSettings(rounds=1, out_dir=tmp_path, round_timeout=round_timeout), clinics
    )
    assert grid.timeouts == [waited]


def test_a_simulation_asks_every_clinic_once_all_have_connected(tmp_path: Path) -> None:
    simulated, deployed = _SilentGrid(nodes=5, connected=2), _SilentGrid(nodes=5, connected=2)
    _halted_round(simulated, FederationSettings(rounds=1, out_dir=tmp_path / "sim"), 5)
    _halted_round(deployed, FederationSettings(rounds=1, out_dir=tmp_path / "dep"), None)
    assert simulated.asked == [[1, 2, 3, 4, 5]]
    assert deployed.asked == [[1, 2]]  # min-clinics were there: a deployment goes on
