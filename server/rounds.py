"""Flower's round loop, numbered from where a resumed run left off.

``Strategy.start`` numbers rounds from 1. A run resumed after round k must ask the clinics
for round k+1 (the clinics recognise a round they already paid for by its run and number),
evaluate in the run's own evaluation rounds and record its rounds under their numbers.
:class:`ContinuedRounds` wraps the run's strategy and adds k to every round number Flower
passes, so Flower's loop runs unchanged; it also keeps the latest global model, which the
ServerApp checkpoints after each round (``oralfed.server.checkpoint``).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

__all__ = ["ContinuedRounds"]


class ContinuedRounds(Strategy):
    """``strategy``'s rounds after ``completed`` rounds, starting from the model ``arrays``."""

    def __init__(self, strategy: Strategy, completed: int, arrays: ArrayRecord) -> None:
        self.strategy = strategy
        self.completed = completed
        self.arrays = arrays  # the global model after the latest aggregated round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.completed, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.strategy.aggregate_train(server_round + self.completed, replies)
        if arrays is not None:
            self.arrays = arrays
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.completed, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.completed, replies)

    def summary(self) -> None:
        self.strategy.summary()
