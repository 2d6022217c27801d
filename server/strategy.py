"""Flower's FedAvg / FedProx, taught to keep the run's history and to stop honestly.

Flower's strategies skip error replies silently and, with too few replies, carry on with
whatever came back. A clinical federation must instead report every refusal and stop with
a clear reason when fewer clinics than agreed took part.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.model import build_model, save_model
from oralfed.schemas.settings import FederationSettings
from oralfed.server.history import ClinicResult, FederationHistory, Phase, RoundRecord

RoundCallback = Callable[[RoundRecord], None]
NODE_POLL_SECONDS = 1.0
NO_REPLY = "no reply before the round timeout: the node dropped out or did not finish in time"


class FederationHalted(OralFedError, RuntimeError):
    """Too few clinics took part in a round to go on; the message names who refused and why."""

    exit_code = ExitCode.FEDERATION_FAILED


class _ConnectedNodes:
    """A view of the grid that offers Flower's sampler exactly the nodes connected now.

    Flower's ``sample_nodes`` waits *forever* for ``min_available_nodes``; a deployed clinic
    that dies would hang the next round. We wait for the minimum ourselves, bounded by the
    round timeout, and then let Flower sample from this fixed snapshot, which never waits.
    """

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


class RecordingMixin:
    """Records each reply in a :class:`FederationHistory` before Flower aggregates, samples
    only connected nodes, and names the clinics whose reply never came (dropouts)."""

    history: FederationHistory
    settings: FederationSettings
    on_round_end: RoundCallback | None
    clinic_of_node: dict[int, str]
    sampled: dict[tuple[int, str], list[int]]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._connected_nodes(server_round, grid)
        self.sampled[(server_round, "train")] = nodes.node_ids
        return super().configure_train(server_round, arrays, config, cast(Grid, nodes))  # type: ignore[misc]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Only in the run's evaluation rounds: each evaluation is a charged release."""
        if server_round not in self.settings.evaluation_rounds():
            return []
        nodes = self._connected_nodes(server_round, grid)
        self.sampled[(server_round, "evaluate")] = nodes.node_ids
        return super().configure_evaluate(server_round, arrays, config, cast(Grid, nodes))  # type: ignore[misc]

    def _connected_nodes(self, server_round: int, grid: Grid) -> _ConnectedNodes:
        deadline = time.monotonic() + self.settings.round_timeout
        while len(node_ids := list(grid.get_node_ids())) < self.settings.min_clinics:
            if time.monotonic() >= deadline:
                raise FederationHalted(
                    f"round {server_round}: only {len(node_ids)} clinic node(s) connected after "
                    f"waiting {self.settings.round_timeout:.0f} s, fewer than the minimum of "
                    f"{self.settings.min_clinics}"
                )
            time.sleep(NODE_POLL_SECONDS)
        return _ConnectedNodes(node_ids)

    def _record_replies(
        self, server_round: int, phase: Phase, replies: list[Message]
    ) -> RoundRecord:
        record = self.history.round(server_round)
        for msg in replies:
            result = ClinicResult.from_reply(msg, phase)
            self.clinic_of_node[msg.metadata.src_node_id] = result.clinic_id
            record.results.append(result)
        answered = {msg.metadata.src_node_id for msg in replies}
        for node_id in self.sampled.pop((server_round, phase), []):
            if node_id not in answered:
                clinic = self.clinic_of_node.get(node_id, f"node-{node_id}")
                record.results.append(ClinicResult(clinic, phase, "failed", reason=NO_REPLY))
        return record

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record = self._record_replies(server_round, "train", replies)
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
        """Record the clinics' noisy histograms; the estimate is post-processing of them
        (``oralfed.server.evaluation``), not an average of exact metrics."""
        record = self._record_replies(server_round, "evaluate", list(replies))
        if self.on_round_end is not None:
            self.on_round_end(record)
        estimate = record.evaluation()
        if estimate is None or estimate.auc is None or estimate.accuracy is None:
            return None
        return MetricRecord({"eval-auc": estimate.auc, "eval-accuracy": estimate.accuracy})

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
    """FedAvg or FedProx weighted by the clinics' public sizes (``num-examples``: declared,
    or a charged DP estimate), every connected clinic in every round."""
    common: dict[str, Any] = {  # Any: Flower's keyword types differ per argument
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
    strategy.clinic_of_node, strategy.sampled = {}, {}
    return strategy
