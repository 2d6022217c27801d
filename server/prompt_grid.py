"""A Grid that collects replies as soon as they arrive.

Flower 1.42's deployed grid (``flwr/superlink/grid/http_grid.py``) sleeps 3 s between pulls
in ``send_and_receive``: a round whose replies are all in after 0.4 s is seen after 3 s, and
every round of a run pays up to 3 s twice (train, evaluate). :class:`PromptGrid` wraps the
grid Flower hands the ServerApp and waits on its own terms through the public
``push_messages`` / ``pull_messages``: 50 ms after a reply came in, backing off to a fifth of a
second while clinics train, so an idle coordinator does not hammer the SuperLink. A pull asks
about every reply still awaited, and the simulation's in-memory SuperLink walks them all each
time: at 10,000 clinics, with a reply in at nearly every pull, pulling was about 40 % of the
coordinator's CPU, itself a third of a core the clinics needed. The wait after a pull is
never less than :data:`PULL_SHARE_FACTOR` times what the pull took, so pulling stays under a
tenth of the coordinator's time however many clinics a round asks. Not on a deployment: there
a slow pull is one waiting for a reply's objects mid-upload (below), not a sign of load.

It can say how far a round has got: ``on_progress`` hears, after each pull that brought
replies, how many of the messages sent have been answered (``oralfed federate`` draws its
bar of clinics done within the round from it).

It also pulls a reply's objects with a short retry. The SuperLink hands out a reply as soon as
the SuperNode has announced it, before the SuperNode has uploaded the reply's objects, and
Flower's ``HttpGrid.pull_messages`` waits 1 s, then 2 s, … (``PULL_INITIAL_BACKOFF``) for an
object not there yet: collecting replies as they arrive would catch nearly every upload midway
and pay that second on most replies of a round. :func:`pull_replies` is Flower's pull with a
first retry after 20 ms; on any grid other than Flower's ``HttpGrid`` (the simulation's
in-memory grid) the wrapped grid pulls. Everything else goes to the wrapped grid unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flwr.app import Message, Metadata
from flwr.app.error import Error
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.proto.runtime_pb2 import PullAppMessagesRequest
from flwr.serverapp import Grid
from flwr.supercore.constant import SYSTEM_MESSAGE_TYPE
from flwr.supercore.date import now
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectPullError,
    pull_and_inflate_object_from_tree,
)
from flwr.superlink.grid.http_grid import HttpGrid

from oralfed.server.wrapped_grid import WrappedGrid

__all__ = [
    "FIRST_POLL_SECONDS",
    "MAX_POLL_SECONDS",
    "OBJECT_RETRY_CAP_SECONDS",
    "OBJECT_RETRY_SECONDS",
    "PULL_SHARE_FACTOR",
    "PromptGrid",
    "ReplyProgress",
    "pull_replies",
]

FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.2
PULL_SHARE_FACTOR = 10  # wait at least this many times a pull's own time before the next
OBJECT_RETRY_SECONDS = 0.02  # first wait for an object the SuperNode is still uploading
OBJECT_RETRY_CAP_SECONDS = 0.5


@dataclass(frozen=True)
class ReplyProgress:
    """How many of the messages one ``send_and_receive`` sent have been answered so far."""

    message_type: str  # Flower's: "train", "evaluate", "query"
    group_id: str  # Flower's strategies put the round number here
    replied: int
    sent: int


class PromptGrid(WrappedGrid):
    """``grid`` with a ``send_and_receive`` that polls from 50 ms up to 0.2 s, not every 3 s,
    and pulls replies with a short retry for their objects."""

    def __init__(
        self, grid: Grid, on_progress: Callable[[ReplyProgress], None] | None = None
    ) -> None:
        super().__init__(grid)
        self.on_progress = on_progress

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        if isinstance(self.grid, HttpGrid):
            return pull_replies(self.grid, message_ids)
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
        sent = len(waiting)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        poll = FIRST_POLL_SECONDS
        while waiting:
            started = time.monotonic()
            arrived = list(self.pull_messages(waiting))
            pulled_in = time.monotonic() - started
            replies.extend(arrived)
            poll = FIRST_POLL_SECONDS if arrived else min(poll * 1.5, MAX_POLL_SECONDS)
            if not isinstance(self.grid, HttpGrid):
                poll = max(poll, PULL_SHARE_FACTOR * pulled_in)
            waiting.difference_update(msg.metadata.reply_to_message_id for msg in arrived)
            if arrived and self.on_progress is not None:
                first = messages[0].metadata
                self.on_progress(
                    ReplyProgress(first.message_type, first.group_id, sent - len(waiting), sent)
                )
            if not waiting:
                break
            if deadline is not None and (left := deadline - time.monotonic()) <= 0:
                break
            time.sleep(poll if deadline is None else min(poll, left))
        return replies


def pull_replies(grid: HttpGrid, message_ids: Iterable[str]) -> list[Message]:
    """Flower 1.42's ``HttpGrid.pull_messages`` over the grid's own Runtime API client (its
    TLS, token and retry), with the first retry for a missing object after 20 ms, not 1 s.
    A reply whose objects never arrive becomes Flower's ``MESSAGE_UNAVAILABLE`` error reply,
    as Flower's pull makes it."""
    client = grid._runtime_client  # the connection Flower opened for this ServerApp
    run_id = grid.run.run_id
    pulled = client.PullMessages(PullAppMessagesRequest(message_ids=list(message_ids)))
    replies: list[Message] = []
    for proto, tree in zip(pulled.messages_list, pulled.message_object_trees, strict=True):
        try:
            reply = pull_and_inflate_object_from_tree(
                tree,
                make_pull_object_fn_protobuf(client.PullObject, grid.node, run_id),
                make_confirm_message_received_fn_protobuf(
                    client.ConfirmMessageReceived, grid.node, run_id
                ),
                return_type=Message,
                initial_backoff=OBJECT_RETRY_SECONDS,
                backoff_cap=OBJECT_RETRY_CAP_SECONDS,
            )
        except ObjectPullError as error:
            replies.append(_unavailable(run_id, grid.node.node_id, proto.metadata, error))
            continue
        reply.metadata.__dict__["_message_id"] = proto.metadata.message_id  # as Flower sets it
        replies.append(reply)
    return replies


def _unavailable(run_id: int, node_id: int, sent: Metadata, error: ObjectPullError) -> Message:
    """Flower's error reply for a reply whose objects stayed unavailable."""
    return make_message(
        metadata=Metadata(
            run_id=run_id,
            message_id="",
            src_node_id=node_id,
            dst_node_id=node_id,
            message_type=SYSTEM_MESSAGE_TYPE,
            group_id="",
            ttl=0,
            reply_to_message_id=sent.reply_to_message_id,
            created_at=now().timestamp(),
        ),
        error=Error(
            code=ErrorCode.MESSAGE_UNAVAILABLE,
            reason=f"Reply message objects are unavailable: {error}",
        ),
    )
