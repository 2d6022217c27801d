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

from flwr.app import Message

from oralfed.server.wrapped_grid import WrappedGrid

__all__ = ["FIRST_POLL_SECONDS", "MAX_POLL_SECONDS", "PromptGrid"]

FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.2


class PromptGrid(WrappedGrid):
    """``grid`` with a ``send_and_receive`` that polls from 50 ms up to 0.2 s, not every 3 s."""

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
