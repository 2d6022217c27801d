"""Flower's FedAvg / FedProx, taught to keep the run's history and to stop honestly.

Flower's strategies skip error replies silently and, with too few replies, carry on with
whatever came back. A clinical federation must instead report every refusal and stop with
a clear reason when fewer clinics than agreed took part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedProx

from client.model import build_model, save_model
from server.history import ClinicResult, FederationHistory, RoundRecord
from server.settings import FederationSettings

RoundCallback = Callable[[RoundRecord], None]


class FederationHalted(RuntimeError):
    """Too few clinics took part in a round to go on; the message names who refused and why."""


class RecordingMixin:
    """Records each reply in a :class:`FederationHistory` before Flower aggregates."""

    history: FederationHistory
    settings: FederationSettings
    on_round_end: RoundCallback | None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record = self.history.round(server_round)
        record.results.extend(ClinicResult.from_reply(msg, "train") for msg in replies)
        trained = record.of("train", "ok")
        if len(trained) < self.settings.min_clinics:
            absent = [
                f"{r.clinic_id} ({r.status}: {r.reason})"
                for r in record.results
                if r.status != "ok"
            ]
            raise FederationHalted(
                f"round {server_round}: only {len(trained)} clinic(s) trained, fewer than the "
                f"minimum of {self.settings.min_clinics}; "
                + ("; ".join(absent) if absent else "no clinic replied before the round timeout")
            )
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is not None and self.settings.out_dir is not None:
            record.model_path = str(self._save_round_model(server_round, arrays))
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        record = self.history.round(server_round)
        record.results.extend(ClinicResult.from_reply(msg, "evaluate") for msg in replies)
        metrics = super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]
        if self.on_round_end is not None:
            self.on_round_end(record)
        return metrics

    def _save_round_model(self, server_round: int, arrays: ArrayRecord) -> Path:
        assert self.settings.out_dir is not None
        model = build_model(self.settings.hidden_sizes)
        model.load_state_dict(arrays.to_torch_state_dict())
        path = self.settings.out_dir / "models" / f"round-{server_round:03d}.pt"
        save_model(model, path, self.settings.task, {"round": server_round})
        return path


class RecordingFedAvg(RecordingMixin, FedAvg):
    pass


class RecordingFedProx(RecordingMixin, FedProx):
    pass


def make_strategy(
    settings: FederationSettings, history: FederationHistory, on_round_end: RoundCallback | None
) -> FedAvg:
    """FedAvg or FedProx weighted by examples, every connected clinic in every round."""
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": settings.min_clinics,
        "min_evaluate_nodes": settings.min_clinics,
        "min_available_nodes": settings.min_clinics,
    }
    strategy: RecordingFedAvg | RecordingFedProx
    if settings.strategy == "fedprox":
        strategy = RecordingFedProx(proximal_mu=settings.proximal_mu, **common)
    else:
        strategy = RecordingFedAvg(**common)
    strategy.history, strategy.settings, strategy.on_round_end = history, settings, on_round_end
    return strategy
