"""Per-round clinic sampling (``clinics-per-round``): the real strategy asks exactly the round's
sample of the connected nodes, the same sample for the same nodes, seed and round."""

from __future__ import annotations

from typing import cast

import pytest
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from oralfed.schemas.model import build_model
from oralfed.schemas.model_record import model_record
from oralfed.schemas.settings import FederationSettings
from oralfed.server.history import FederationHistory
from oralfed.server.strategy import make_strategy


@pytest.fixture(autouse=True)
def _serverapp_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run a ServerApp process has (Flower's Message constructor reads it)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)  # SUPERLINK_NODE_ID
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class _Nodes:
    """The one part of a grid the strategy's sampling reads."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def _asked(settings: FederationSettings, node_ids: list[int], server_round: int) -> list[int]:
    strategy = make_strategy(settings, FederationHistory(), None)
    arrays = model_record(build_model(settings.hidden_sizes, seed=1))
    messages: list[Message] = list(
        strategy.configure_train(server_round, arrays, ConfigRecord(), cast(Grid, _Nodes(node_ids)))
    )
    assert strategy.sampled[(server_round, "train")] == sorted(
        m.metadata.dst_node_id for m in messages
    )
    return sorted(m.metadata.dst_node_id for m in messages)


NODES = [7919 * k % 100_003 + 1 for k in range(1, 1001)]  # 1000 distinct, unordered ids


def test_every_connected_clinic_is_asked_by_default() -> None:
    assert _asked(FederationSettings(), NODES, 1) == sorted(NODES)


def test_a_count_asks_that_many_distinct_connected_clinics_reproducibly() -> None:
    settings = FederationSettings(clinics_per_round=50)
    first = _asked(settings, NODES, 1)
    assert len(first) == len(set(first)) == 50 and set(first) <= set(NODES)
    assert _asked(settings, list(reversed(NODES)), 1) == first  # the order nodes come in
    assert _asked(settings, NODES, 2) != first  # another round, another draw
    assert _asked(FederationSettings(clinics_per_round=50, seed=8), NODES, 1) != first


def test_a_share_rounds_up_and_never_asks_more_than_are_connected() -> None:
    assert len(_asked(FederationSettings(clinics_per_round=0.0505), NODES, 1)) == 51
    assert _asked(FederationSettings(clinics_per_round=5000), NODES, 1) == sorted(NODES)
    assert len(_asked(FederationSettings(clinics_per_round=0.001, min_clinics=3), NODES, 1)) == 3


def test_evaluation_rounds_sample_too_and_other_rounds_ask_no_one() -> None:
    settings = FederationSettings(rounds=2, clinics_per_round=20)
    strategy = make_strategy(settings, FederationHistory(), None)
    arrays = model_record(build_model(settings.hidden_sizes, seed=1))
    grid = cast(Grid, _Nodes(NODES))
    assert list(strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)) == []
    evaluated = list(strategy.configure_evaluate(2, arrays, ConfigRecord(), grid))
    assert len({m.metadata.dst_node_id for m in evaluated}) == 20
