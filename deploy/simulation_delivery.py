"""Flower's Simulation Engine handing out each round's messages in one pass, not one per node.

Flower 1.42's engine (``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``)
polls its in-memory SuperLink every 0.1 s with ``get_message_ins(node_id, limit=1)`` for
*every* simulated node, and each call walks the whole message store. With N clinics and M
messages stored that is N x M checks per poll, whether or not anything is waiting: at 1,000
clinics asked 100 at a time, the poll alone kept the coordinator's core busy (40 % of its
samples under py-spy) while the clinics' Ray workers needed it, and at 10,000 clinics one
poll takes longer than a round's work.

:func:`pending_messages` returns what those N calls return, in one walk of the store: for
each node, its first message not yet delivered, after the same expiry and federation check
(Flower's own ``_check_stored_messages``), marked delivered as Flower marks it. The check
runs on the messages about to be handed out only: Flower runs it on every stored message
at every call, which at 10,000 clinics is 10,000 checks (each reading the clock and the
run's federation) ten times a second, under the lock the clinics' replies wait for.
:func:`use_one_pass_delivery` puts it in the engine's poll, in the simulation's own process
only (``oralfed.deploy.simulation``); a link state other than the in-memory one keeps
Flower's poll. Nothing else of the engine changes: the same queue, the same Ray backend.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from queue import Queue

from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkState
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

__all__ = ["pending_messages", "use_one_pass_delivery"]

_POLL_SECONDS = 0.1  # Flower's


def pending_messages(state: InMemoryLinkState, node_ids: Collection[int]) -> list[Message]:
    """``state.get_message_ins(node_id, limit=1)`` for each of ``node_ids``, in one walk."""
    found: dict[int, str] = {}
    with state.lock:
        for message_id, message in state.message_ins_store.items():
            node_id = message.metadata.dst_node_id
            if node_id in found or node_id not in node_ids or message.metadata.delivered_at:
                continue
            found[node_id] = message_id
        # Flower's check (expiry, federation), once for the messages about to be handed out
        # and not for every stored one each poll: a node whose message it drops gets its
        # next one at the next poll.
        state._check_stored_messages(set(found.values()))
        messages = [m for i in found.values() if (m := state.message_ins_store.get(i))]
        delivered_at = now().isoformat()
        for message in messages:
            message.metadata.delivered_at = delivered_at
    return messages


def _add_messages_to_queue(
    state: LinkState,
    queue: Queue[Message],
    nodes_mapping: Mapping[int, int],
    f_stop: threading.Event,
) -> None:
    """``vce_api.add_messages_to_queue``, with :func:`pending_messages` as its poll."""
    if not isinstance(state, InMemoryLinkState):
        _FLOWER_POLL(state, queue, nodes_mapping, f_stop)  # type: ignore[arg-type]
        return
    while not f_stop.is_set():
        for message in pending_messages(state, set(nodes_mapping)):
            queue.put(message)
        f_stop.wait(_POLL_SECONDS)


_FLOWER_POLL = vce_api.add_messages_to_queue


def use_one_pass_delivery() -> None:
    """Make this process's Simulation Engine poll with :func:`pending_messages`."""
    vce_api.add_messages_to_queue = _add_messages_to_queue
