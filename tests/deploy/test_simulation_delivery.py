"""The simulation's one-pass delivery hands out exactly what Flower's own per-node poll
would: each node's first message not yet delivered, expired messages dropped by Flower's
own check, each message once. Run on Flower's real in-memory SuperLink state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flwr.app import Message, RecordDict
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from oralfed.deploy.simulation_delivery import pending_messages

RUN_ID, SUPERLINK_NODE = 7, 1


@pytest.fixture(autouse=True)
def as_the_simulation() -> Iterator[None]:
    """Messages are made in the ServerApp's identity, as ``run_simulation`` sets it."""
    saved = TaskIdentity.__dict__.copy()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE
    yield
    for name in ("task_id", "run_id", "node_id"):
        setattr(TaskIdentity, name, saved.get(name))


def federation(nodes: int, per_node: int) -> tuple[InMemoryLinkState, list[int], list[str]]:
    """An in-memory SuperLink with ``nodes`` simulated nodes and ``per_node`` messages
    pushed to each, round-robin; the pushed ids in push order."""
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    state = factory.state()
    assert isinstance(state, InMemoryLinkState)
    run = Run.create_empty(RUN_ID)
    run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
    state.run_ids[RUN_ID] = RunRecord(run=run)
    state.task_store[1] = Task(task_id=1, run_id=RUN_ID)
    node_ids = list(_register_nodes(nodes, factory))
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    messages = [
        Message(RecordDict(), node, "train", ttl=600) for _ in range(per_node) for node in node_ids
    ]
    return state, node_ids, list(grid.push_messages(messages))


def handed_out(messages: list[Message], pushed: list[str]) -> list[int]:
    """Which pushed messages (by push order) ``messages`` are."""
    return sorted(pushed.index(m.metadata.message_id) for m in messages)


def test_each_poll_hands_out_what_flowers_per_node_poll_would() -> None:
    ours, our_nodes, our_ids = federation(5, 3)
    flowers, flower_nodes, flower_ids = federation(5, 3)
    for _ in range(4):  # three messages each, then nothing
        one_pass = pending_messages(ours, set(our_nodes))
        per_node = [m for node in flower_nodes for m in flowers.get_message_ins(node, limit=1)]
        assert handed_out(one_pass, our_ids) == handed_out(per_node, flower_ids)
        assert all(m.metadata.delivered_at for m in one_pass)
    assert not pending_messages(ours, set(our_nodes))


def test_only_the_nodes_asked_for_are_served() -> None:
    state, nodes, pushed = federation(4, 1)
    assert handed_out(pending_messages(state, {nodes[1]}), pushed) == [1]
    assert handed_out(pending_messages(state, set(nodes)), pushed) == [0, 2, 3]


def test_an_expired_message_is_dropped_and_the_next_one_served() -> None:
    state, nodes, pushed = federation(2, 2)
    expired = state.message_ins_store[pushed[0]]
    expired.metadata.created_at -= 3_600  # older than its ttl
    assert handed_out(pending_messages(state, set(nodes)), pushed) == [1]
    assert pushed[0] not in state.message_ins_store  # Flower's check deleted it
    assert handed_out(pending_messages(state, set(nodes)), pushed) == [2, 3]
