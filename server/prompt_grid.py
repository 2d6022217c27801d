"""A Grid that collects replies as soon as they arrive.

Flower 1.42's deployed grid (``flwr/superlink/grid/http_grid.py``) sleeps 3 s between pulls
in ``send_and_receive``: a round whose replies are all in after 0.4 s is seen after 3 s, and
every round of a run pays up to 3 s twice (train, evaluate). :class:`PromptGrid` wraps the
grid Flower hands the ServerApp and waits on its own terms through the public
``push_messages`` / ``pull_messages``: 50 ms after a reply came in, backing off to a fifth of a
second while clinics train, so an idle coordinator does not hammer the SuperLink. Everything
else goes to the wrapped grid unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["FIRST_POLL_SECONDS", "MAX_POLL_SECONDS", "PromptGrid"]

FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.2


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that polls from 50 ms up to 0.2 s, not every 3 s."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's contract: push, then pull until every reply is in or ``timeout`` passed
        (``None``: wait for all). Nothing to send asks the SuperLink nothing: Flower's
        strategies send the evaluation messages of every round, none in most rounds."""
        messages = list(messages)
        if not messages:
            return []
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        poll = FIRST_POLL_SECONDS
        while waiting:
            arrived = list(self.pull_messages(waiting))
            replies.extend(arrived)
            poll = FIRST_POLL_SECONDS if arrived else min(poll * 1.5, MAX_POLL_SECONDS)
            waiting.difference_update(msg.metadata.reply_to_message_id for msg in arrived)
            if not waiting:
                break
            if deadline is not None and (left := deadline - time.monotonic()) <= 0:
                break
            time.sleep(poll if deadline is None else min(poll, left))
        return replies
