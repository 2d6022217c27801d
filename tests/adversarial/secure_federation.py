"""Clinic nodes behind Flower's SecAgg+ mod, in process, and everything the coordinator gets
from them: the material of the secure-aggregation tests."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict

from oralfed.client.secure_aggregation import secure_aggregation_mod

Handler = Callable[[Message, Context], Message]


class SecureFederation:
    """Each node answers through the clinic's mod with its own handler and Flower context;
    a node in :attr:`leave_at` stops answering from that stage (1 setup … 4 unmask)."""

    def __init__(self, handlers: dict[int, Handler]) -> None:
        self.handlers = handlers
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})
            for node in handlers
        }
        self.received: list[Message] = []
        self.leave_at: dict[int, int] = {}
        self.stage = 0

    def send(self, messages: list[Message]) -> Iterable[Message]:
        """The grid's ``send_and_receive`` for one stage."""
        self.stage += 1
        replies = [
            secure_aggregation_mod(msg, self.contexts[node], self.handlers[node])
            for msg in messages
            if self.leave_at.get(node := msg.metadata.dst_node_id, 99) > self.stage
        ]
        self.received += [copy.deepcopy(reply) for reply in replies]  # as they arrived
        return replies
