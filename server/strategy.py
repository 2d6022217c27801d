"""Flower's strategies, taught to keep the run's history, to check what counts, and to stop
honestly.

Flower's strategies skip error replies silently, carry on with whatever came back, and
aggregate whatever a node sends. A clinical federation must instead report every refusal,
check every update against the model it was trained from (``oralfed.server.update_checks``)
and every reply's identity (``oralfed.server.identities``), bound each update's pull, and
stop with a clear reason when fewer clinics than agreed took part. The aggregation itself
is Flower's: FedAvg's weighted mean, or one of its robust strategies (docs/robustness.md).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from oralfed.schemas import protocol
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.model import build_model, l2_norm, save_model
from oralfed.schemas.model_record import load_model_record
from oralfed.schemas.settings import AggregationName, FederationSettings, StrategyName
from oralfed.server.history import ClinicResult, FederationHistory, Phase, RoundRecord
from oralfed.server.identities import check_identities, rejected
from oralfed.server.secure_aggregation import SecureRound
from oralfed.server.update_checks import (
    ModelArrays,
    UpdateRejected,
    check_metrics,
    check_update,
    finite_problem,
    reference_arrays,
)

RoundCallback = Callable[[RoundRecord], None]
NODE_POLL_SECONDS = 1.0
SECURE_MEAN_SLACK = 0.01  # room for the quantiser's rounding in the mean's norm check
NO_REPLY = "no reply before the round timeout: the node dropped out or did not finish in time"


class FederationHalted(OralFedError, RuntimeError):
    """Too few clinics took part in a round to go on; the message names who refused and why."""

    exit_code = ExitCode.FEDERATION_FAILED


class _ConnectedNodes:
    """A view of the grid that offers Flower's sampler exactly the round's nodes.

    Flower's ``sample_nodes`` waits *forever* for ``min_available_nodes``; a deployed clinic
    that dies would hang the next round. We wait for the minimum ourselves, bounded by the
    round timeout, draw the round's sample (``clinics-per-round``) from the nodes connected
    then, and let Flower take that fixed snapshot, which never waits.
    """

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


class RecordingMixin:
    """Records each reply in a :class:`FederationHistory`, checks it, and lets Flower
    aggregate only checked, norm-bounded updates; samples only connected nodes, and names
    the clinics whose reply never came (dropouts) or did not pass the checks (rejected)."""

    history: FederationHistory
    settings: FederationSettings
    on_round_end: RoundCallback | None
    clinic_of_node: dict[int, str]
    sampled: dict[tuple[int, str], list[int]]
    sent: dict[int, ModelArrays]  # per round: the model the replies must be trained from
    # per round, the secure aggregation's outcome (None: rounds train in the clear)
    secure_rounds: dict[int, SecureRound] | None
    # the nodes a round waits for to connect before it samples: min-clinics, or all of a
    # simulation's clinics (its nodes register while the ServerApp starts: at 10,000, round
    # 1 had found 5,464 of them)
    awaited_nodes: int

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's FedProx does nothing but tell the clinics ``proximal-mu``; doing it here
        gives every aggregation the FedProx local objective."""
        nodes = self._round_nodes(server_round, "train", grid)
        self.sampled[(server_round, "train")] = nodes.node_ids
        self.sent[server_round] = reference_arrays(arrays)
        if self.settings.strategy is StrategyName.FEDPROX:
            config[protocol.CFG_PROXIMAL_MU] = self.settings.proximal_mu
        return super().configure_train(server_round, arrays, config, cast(Grid, nodes))  # type: ignore[misc]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Only in the run's evaluation rounds: each evaluation is a charged release."""
        if server_round not in self.settings.evaluation_rounds():
            return []
        nodes = self._round_nodes(server_round, "evaluate", grid)
        self.sampled[(server_round, "evaluate")] = nodes.node_ids
        return super().configure_evaluate(server_round, arrays, config, cast(Grid, nodes))  # type: ignore[misc]

    def _round_nodes(self, server_round: int, phase: Phase, grid: Grid) -> _ConnectedNodes:
        """The round's sample of the connected nodes (all of them by default): the same
        nodes give the same draw for the run's seed, round and phase. Sampling decides only
        whom the coordinator asks, and it knows whom it asked, so no clinic's ε is claimed
        to shrink by it (docs/privacy.md)."""
        connected = sorted(self._connected_nodes(server_round, grid))
        count = self.settings.clinics_in_round(len(connected))
        if count == len(connected):
            return _ConnectedNodes(connected)
        draw = random.Random(f"{self.settings.seed}/{server_round}/{phase}")
        return _ConnectedNodes(sorted(draw.sample(connected, count)))

    def _connected_nodes(self, server_round: int, grid: Grid) -> list[int]:
        waited = self.settings.connect_timeout()
        deadline = time.monotonic() + waited
        while len(node_ids := list(grid.get_node_ids())) < self.awaited_nodes:
            if time.monotonic() >= deadline:
                if len(node_ids) >= self.settings.min_clinics:
                    break  # enough to go on: the rest are dropouts of the round
                raise FederationHalted(
                    f"round {server_round}: only {len(node_ids)} clinic node(s) connected after "
                    f"waiting {waited:.0f} s, fewer than the minimum of "
                    f"{self.settings.min_clinics}"
                )
            time.sleep(NODE_POLL_SECONDS)
        return node_ids

    def _record_replies(
        self, server_round: int, phase: Phase, replies: list[Message]
    ) -> tuple[RoundRecord, list[tuple[int, Message]]]:
        """Record every reply and dropout; return the replies that passed the identity and
        metric checks, with the index of their result in the round's record."""
        record = self.history.round(server_round)
        sampled = self.sampled.pop((server_round, phase), [])
        present = {*sampled, *(msg.metadata.src_node_id for msg in replies)}
        results = check_identities(
            replies, [_read_reply(msg, phase) for msg in replies], self.clinic_of_node, present
        )
        accepted: list[tuple[int, Message]] = []
        for msg, result in zip(replies, results, strict=True):
            if result.status == "ok":
                accepted.append((len(record.results), msg))
            record.results.append(result)
        answered = {msg.metadata.src_node_id for msg in replies}
        for node_id in sampled:
            if node_id not in answered:
                clinic = self.clinic_of_node.get(node_id, f"node-{node_id}")
                record.results.append(ClinicResult(clinic, phase, "failed", reason=NO_REPLY))
        return record, accepted

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record, accepted = self._record_replies(server_round, "train", list(replies))
        sent = self.sent.pop(server_round, None)
        if sent is None:
            raise FederationHalted(f"round {server_round}: replies came for no model sent")
        secure = None if self.secure_rounds is None else self.secure_rounds.pop(server_round)
        if secure is None:
            checked = self._check_updates(record, accepted, sent)
        else:
            checked = _contributors(record, accepted, secure, self.clinic_of_node)
        absent = [
            f"{r.clinic_id} ({r.status}: {r.reason})" for r in record.results if r.status != "ok"
        ]
        why = "; ".join(absent) if absent else "no clinic replied before the round timeout"
        if secure is not None and secure.problem is not None:
            raise FederationHalted(f"round {server_round}: {secure.problem}; {why}")
        if len(checked) < self.settings.min_clinics:
            raise FederationHalted(
                f"round {server_round}: only {len(checked)} clinic(s) trained with an update "
                f"that passed the checks, fewer than the minimum of {self.settings.min_clinics}; "
                + why
            )
        if secure is None:
            arrays, metrics = self._aggregate(server_round, checked)
        else:
            arrays, metrics = self._secure_mean(server_round, secure, sent), None
        problem = _model_problem(arrays, sent)
        if arrays is None or problem is not None:
            raise FederationHalted(
                f"round {server_round}: the aggregated model is unusable ({problem}); it was "
                "neither saved nor sent to the clinics"
            )
        if self.settings.out_dir is not None:
            record.model_path = str(self._save_round_model(server_round, arrays))
        return arrays, metrics

    def _check_updates(
        self, record: RoundRecord, accepted: list[tuple[int, Message]], sent: ModelArrays
    ) -> list[Message]:
        """The accepted replies whose update passed :func:`check_update`, each now holding
        only its checked (and clipped) arrays and weight; the record says what happened."""
        bound = self.settings.update_norm_bound
        checked: list[Message] = []
        for index, msg in accepted:
            result = record.results[index]
            try:
                update = check_update(
                    msg, sent, max_weight=self.settings.max_clinic_weight, norm_bound=bound
                )
            except UpdateRejected as error:
                record.results[index] = rejected(result, f"update rejected: {error}")
                continue
            record.results[index] = replace(
                result, update_norm=update.norm, clipped_to=bound if update.clipped else None
            )
            msg.content = update.content()
            checked.append(msg)
        return checked

    def _aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's aggregation of checked replies (a subclass may set it up per round)."""
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def _secure_mean(
        self, server_round: int, secure: SecureRound, sent: ModelArrays
    ) -> ArrayRecord:
        """The sent model moved by the unmasked mean update, once that mean passes what the
        coordinator can still check: it exists, and it is no longer than the norm bound every
        clinic scaled its own update to (a mean of such updates cannot be longer; rounding
        adds far less than the 1 % allowed)."""
        if secure.mean_update is None:  # a round with a problem halted before this
            raise FederationHalted(f"round {server_round}: secure aggregation gave no mean")
        mean = dict(zip(sent, secure.mean_update, strict=True))
        norm = l2_norm(mean.values())
        bound = self.settings.update_norm_bound
        if not norm <= bound * (1 + SECURE_MEAN_SLACK):
            raise FederationHalted(
                f"round {server_round}: the unmasked mean update has norm {norm:.4g}, beyond "
                f"the bound {bound:g} every clinic holds its update to, so some clinic sent a "
                "masked vector that is not its bounded update; the aggregate was neither saved "
                "nor sent to the clinics"
            )
        return ArrayRecord(
            {name: Array((sent[name] + mean[name]).astype(sent[name].dtype)) for name in sent}
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Record the clinics' noisy histograms; the estimate is post-processing of them
        (``oralfed.server.evaluation``), not an average of exact metrics."""
        record, _ = self._record_replies(server_round, "evaluate", list(replies))
        if self.on_round_end is not None:
            self.on_round_end(record)
        estimate = record.evaluation()
        if estimate is None or estimate.auc is None or estimate.accuracy is None:
            return None
        return MetricRecord({"eval-auc": estimate.auc, "eval-accuracy": estimate.accuracy})

    def _save_round_model(self, server_round: int, arrays: ArrayRecord) -> Path:
        assert self.settings.out_dir is not None
        model = load_model_record(build_model(self.settings.hidden_sizes), arrays)
        path = self.settings.out_dir / "models" / f"round-{server_round:03d}.pt"
        save_model(model, path, self.settings.task, {"round": server_round})
        return path


def _read_reply(msg: Message, phase: Phase) -> ClinicResult:
    """A reply as a result; one that cannot be read, names no clinic or carries a
    non-finite metric is rejected (it counts for nothing, but is on record)."""
    node = f"node-{msg.metadata.src_node_id}"
    if msg.has_error():
        return ClinicResult.from_reply(msg, phase)
    if protocol.REPLY_CLINIC not in msg.content.config_records:
        return ClinicResult(node, phase, "rejected", reason="the reply names no clinic")
    try:
        result = ClinicResult.from_reply(msg, phase)
    except (KeyError, TypeError, ValueError) as error:  # a malformed identity or metric
        return ClinicResult(node, phase, "rejected", reason=f"unreadable reply: {error}")
    try:
        for metrics in msg.content.metric_records.values():
            check_metrics(metrics)
    except UpdateRejected as error:
        return rejected(result, str(error))
    return result


def _contributors(
    record: RoundRecord,
    accepted: list[tuple[int, Message]],
    secure: SecureRound,
    clinic_of_node: dict[int, str],
) -> list[Message]:
    """Under secure aggregation: the accepted replies whose masked vector is in the sum. A
    clinic that replied but whose vector could not be used is rejected on record (its
    masks were removed as a dropped-out clinic's); the round's protocol parameters and its
    dropouts go on record too."""
    contributors: list[Message] = []
    for index, msg in accepted:
        if msg.metadata.src_node_id in secure.dropped:
            record.results[index] = rejected(
                record.results[index],
                "its masked vector was malformed and left out of the sum",
            )
        else:
            contributors.append(msg)
    record.secure_aggregation = {
        **secure.parameters.public_dict(),
        "dropped_after_key_sharing": [
            clinic_of_node.get(n) or secure.clinics.get(n) or f"node-{n}" for n in secure.dropped
        ],
    }
    return contributors


def _model_problem(arrays: ArrayRecord | None, sent: ModelArrays) -> str | None:
    """What makes an aggregated model unfit to save or send (None: nothing)."""
    if arrays is None:
        return "the aggregation returned no model"
    model = reference_arrays(arrays)
    if {name: (a.shape, a.dtype) for name, a in model.items()} != {
        name: (a.shape, a.dtype) for name, a in sent.items()
    }:
        return "its parameters differ from the sent model's"
    return finite_problem(model)


class RecordingFedAvg(RecordingMixin, FedAvg):
    """The mean, weighted by the clinics' public sizes."""


class RecordingFedMedian(RecordingMixin, FedMedian):
    """The coordinate-wise median of the updates."""


class RecordingFedTrimmedAvg(RecordingMixin, FedTrimmedAvg):
    """The coordinate-wise mean after cutting floor(β·n) updates off each tail."""


class RecordingKrum(RecordingMixin, Krum):
    """The one update closest to its n - f - 2 nearest neighbours."""


class RecordingMultiKrum(RecordingMixin, MultiKrum):
    """The weighted mean of the n - f updates Krum scores best (m = n - f, the choice of
    Blanchard et al.; Flower's fixed ``num_nodes_to_select`` is set for each round's n)."""

    def _aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.num_nodes_to_select = max(1, len(replies) - self.num_malicious_nodes)
        return super()._aggregate(server_round, replies)


class RecordingBulyan(RecordingMixin, Bulyan):
    """MultiKrum's n - 2f best, then the mean of the n - 4f values nearest the median."""


RecordingStrategy = (
    RecordingFedAvg
    | RecordingFedMedian
    | RecordingFedTrimmedAvg
    | RecordingKrum
    | RecordingMultiKrum
    | RecordingBulyan
)


def make_strategy(
    settings: FederationSettings,
    history: FederationHistory,
    on_round_end: RoundCallback | None,
    simulated_clinics: int | None = None,
) -> RecordingStrategy:
    """The run's aggregation over every connected clinic in every round, weighted (where
    it weighs) by the clinics' public sizes (``num-examples``: declared, or a charged DP
    estimate); the local objective (FedAvg or FedProx) is what the clinics are told. A
    simulation's rounds wait for all its ``simulated_clinics`` to connect."""
    common: dict[str, Any] = {  # Any: Flower's keyword types differ per argument
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": settings.min_clinics,
        "min_evaluate_nodes": settings.min_clinics,
        "min_available_nodes": settings.min_clinics,
    }
    hostile = settings.hostile_clinics
    strategy: RecordingStrategy
    match settings.aggregation:
        case AggregationName.MEDIAN:
            strategy = RecordingFedMedian(**common)
        case AggregationName.TRIMMED_MEAN:
            strategy = RecordingFedTrimmedAvg(**common, beta=settings.trim_fraction)
        case AggregationName.KRUM:
            strategy = RecordingKrum(**common, num_malicious_nodes=hostile)
        case AggregationName.MULTIKRUM:
            strategy = RecordingMultiKrum(**common, num_malicious_nodes=hostile)
        case AggregationName.BULYAN:
            strategy = RecordingBulyan(**common, num_malicious_nodes=hostile)
        case _:
            strategy = RecordingFedAvg(**common)
    strategy.history, strategy.settings, strategy.on_round_end = history, settings, on_round_end
    strategy.clinic_of_node, strategy.sampled, strategy.sent = {}, {}, {}
    strategy.secure_rounds = None  # run_federation_rounds sets it when the run is secure
    strategy.awaited_nodes = max(settings.min_clinics, simulated_clinics or 0)
    return strategy
