"""PromptGrid keeps Flower's ``send_and_receive`` contract while collecting replies as they
arrive, over a grid whose replies come in after a given number of pulls."""

from __future__ import annotations

import time
from collections.abc import Iterable
from itertools import pairwise
from typing import cast

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # type: ignore[attr-defined]
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from oralfed.server.prompt_grid import (
    MAX_POLL_SECONDS,
    PULL_SHARE_FACTOR,
    PromptGrid,
    ReplyProgress,
)


class _Reply:
    """The parts of a reply message ``send_and_receive`` reads."""

    def __init__(self, reply_to: str) -> None:
        self.metadata = type("Metadata", (), {"reply_to_message_id": reply_to})()


class _SlowGrid(Grid):
    """Replies to message ``i`` become available at the ``arrives[i]``-th pull."""

    def __init__(self, arrives: list[int | None]) -> None:
        self.arrives = arrives
        self.pulls = 0
        self.pushes = 0
        self.pushed: list[str] = []

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return [1, 2, 3]

    def get_nodes(self) -> Iterable[NodeInfo]:
        return []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.pushes += 1
        self.pushed = [f"m{i}" for i, _ in enumerate(messages)]
        return list(self.pushed)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        wanted = set(message_ids)
        ready = [
            f"m{i}"
            for i, at in enumerate(self.arrives)
            if at is not None and at == self.pulls and f"m{i}" in wanted
        ]
        return [_Reply(message_id) for message_id in ready]  # type: ignore[misc]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise AssertionError("PromptGrid must not fall back on Flower's 3 s loop")


def _messages(count: int) -> list[Message]:
    """Stand-ins: the grid under test only counts what it is asked to push."""
    return cast(list[Message], [object() for _ in range(count)])


def test_all_replies_are_returned_soon_after_the_last_arrives() -> None:
    grid = _SlowGrid([1, 3, 6])
    started = time.monotonic()
    replies = list(PromptGrid(grid).send_and_receive(_messages(3), timeout=30))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert grid.pulls == 6  # it stopped pulling once every reply was in
    assert time.monotonic() - started < 5 * MAX_POLL_SECONDS + 1  # not Flower's 3 s per pull


def test_a_missing_reply_ends_at_the_timeout_with_the_replies_that_came() -> None:
    started = time.monotonic()
    replies = list(PromptGrid(_SlowGrid([2, None])).send_and_receive(_messages(2), timeout=1.0))
    waited = time.monotonic() - started
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 1.0 <= waited < 1.0 + MAX_POLL_SECONDS + 0.5


class _CostlyGrid(_SlowGrid):
    """A grid whose every pull takes ``seconds`` (a SuperLink walking many awaited ids)."""

    def __init__(self, arrives: list[int | None], seconds: float) -> None:
        super().__init__(arrives)
        self.seconds = seconds
        self.pull_starts: list[float] = []

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pull_starts.append(time.monotonic())
        time.sleep(self.seconds)
        return super().pull_messages(message_ids)


def test_pulls_take_at_most_a_share_of_the_coordinator_however_costly_each_is() -> None:
    grid = _CostlyGrid([1, 2, 3, 4], seconds=0.03)  # a reply at every pull: no back-off
    replies = PromptGrid(grid).send_and_receive(_messages(4), timeout=30)
    assert len(list(replies)) == 4
    gaps = [later - earlier for earlier, later in pairwise(grid.pull_starts)]
    assert min(gaps) >= (1 + PULL_SHARE_FACTOR) * 0.03


def test_progress_counts_the_replies_of_the_round_as_they_arrive() -> None:
    sent = type("Metadata", (), {"message_type": "train", "group_id": "4"})()
    messages = cast(list[Message], [type("Sent", (), {"metadata": sent})() for _ in range(3)])
    heard: list[ReplyProgress] = []
    PromptGrid(_SlowGrid([1, 1, 3]), heard.append).send_and_receive(messages, timeout=30)
    assert heard == [ReplyProgress("train", "4", 2, 3), ReplyProgress("train", "4", 3, 3)]


def test_no_messages_ask_the_superlink_nothing() -> None:
    grid = _SlowGrid([])
    assert list(PromptGrid(grid).send_and_receive(iter([]), timeout=30)) == []
    assert (grid.pushes, grid.pulls) == (0, 0)


def test_everything_else_is_the_wrapped_grid() -> None:
    grid = _SlowGrid([])
    assert list(PromptGrid(grid).get_node_ids()) == [1, 2, 3]
