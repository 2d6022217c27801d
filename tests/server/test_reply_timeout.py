"""How long the coordinator's rounds wait for replies: a simulated round for every clinic it
asked unless ``round-timeout`` is given, a deployed one 600 s (``reply_timeout``), as the
rounds really hand it to the grid."""

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
    """Two connected nodes that never reply; each round's wait is recorded."""

    def __init__(self) -> None:
        super().__init__([])
        self.timeouts: list[float | None] = []

    def get_node_ids(self) -> Iterable[int]:
        return [1, 2]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.timeouts.append(timeout)
        return []


@pytest.mark.parametrize(
    ("simulated", "round_timeout", "waited"),
    [
        (True, None, None),  # None: until every clinic asked has replied
        (False, None, DEPLOYED_ROUND_TIMEOUT),
        (True, 45.0, 45.0),
        (False, 45.0, 45.0),
    ],
)
def test_a_round_hands_the_grid_the_wait_its_engine_calls_for(
    tmp_path: Path, simulated: bool, round_timeout: float | None, waited: float | None
) -> None:
    settings = FederationSettings(rounds=1, out_dir=tmp_path, round_timeout=round_timeout)
    grid = _SilentGrid()
    outcome = FederationOutcome(run_id="run-1", settings=settings)
    with pytest.raises(FederationHalted):  # no clinic replied
        run_federation_rounds(grid, settings, outcome, simulated=simulated)
    assert grid.timeouts == [waited]
    assert outcome.status == "halted"
