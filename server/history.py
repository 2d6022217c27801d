"""What happened in each round, clinic by clinic: the run's memory and its report's source."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from flwr.app import Message, MetricRecord

from oralfed.schemas import protocol
from oralfed.schemas.records import record_floats, record_value
from oralfed.server.evaluation import EvaluationEstimate, estimate_evaluation

Phase = Literal["train", "evaluate"]
# "rejected": the reply came but the coordinator's checks refused it (server/update_checks.py)
Status = Literal["ok", "refused", "failed", "rejected"]
REFUSAL_CODES = frozenset(
    {protocol.ERROR_BUDGET_EXCEEDED, protocol.ERROR_DATA_REFUSED, protocol.ERROR_POLICY_REFUSED}
)
CLINIC_PREFIX = re.compile(r"^\[(?P<clinic>[^\]]+)\]\s*")


@dataclass(frozen=True)
class ClinicResult:
    """One clinic's reply in one phase of one round."""

    clinic_id: str
    phase: Phase
    status: Status
    metrics: dict[str, float] = field(default_factory=dict)
    accountant: str | None = None
    reason: str | None = None
    histogram: list[float] | None = None  # an evaluation's noisy score histogram
    update_norm: float | None = None  # an accepted update's L2 distance from the global model
    clipped_to: float | None = None  # the norm bound it was scaled down to, if it was

    @classmethod
    def from_reply(cls, msg: Message, phase: Phase) -> ClinicResult:
        """Read a reply; errors carry the clinic id as a ``[clinic]`` prefix (see client.app)."""
        if msg.has_error():
            reason = msg.error.reason or "no reason given"
            match = CLINIC_PREFIX.match(reason)
            clinic = match["clinic"] if match else f"node-{msg.metadata.src_node_id}"
            status: Status = "refused" if msg.error.code in REFUSAL_CODES else "failed"
            return cls(clinic, phase, status, reason=CLINIC_PREFIX.sub("", reason))
        identity = msg.content.config_records.get(protocol.REPLY_CLINIC)
        metrics = next(iter(msg.content.metric_records.values()), MetricRecord())
        histogram = (
            record_floats(metrics, protocol.EVAL_HISTOGRAM)
            if protocol.EVAL_HISTOGRAM in metrics
            else None
        )
        return cls(
            clinic_id=str(identity[protocol.CLINIC_ID])
            if identity
            else f"node-{msg.metadata.src_node_id}",
            phase=phase,
            status="ok",
            metrics={
                key: record_value(metrics, key, float)
                for key, value in metrics.items()
                if not isinstance(value, list)
            },
            accountant=str(identity[protocol.ACCOUNTANT]) if identity else None,
            histogram=histogram,
        )


@dataclass
class RoundRecord:
    round: int
    results: list[ClinicResult] = field(default_factory=list)
    model_path: str | None = None
    # the round's secure-aggregation parameters and dropouts (None: trained in the clear)
    secure_aggregation: dict[str, Any] | None = None

    def of(self, phase: Phase, status: Status | None = None) -> list[ClinicResult]:
        return [
            r for r in self.results if r.phase == phase and (status is None or r.status == status)
        ]

    def evaluation(self) -> EvaluationEstimate | None:
        """Model quality from this round's noisy evaluation histograms (None: none came)."""
        released = [
            r
            for r in self.of("evaluate", "ok")
            if r.histogram and protocol.EVAL_NOISE_SCALE in r.metrics
        ]
        return estimate_evaluation(
            [r.histogram for r in released if r.histogram],
            [r.metrics[protocol.EVAL_NOISE_SCALE] for r in released],
            seed=self.round,
        )

    def summary(self) -> dict[str, Any]:
        evaluation = self.evaluation()
        return {
            "round": self.round,
            "trained": [r.clinic_id for r in self.of("train", "ok")],
            "refused": [
                {"clinic": r.clinic_id, "reason": r.reason} for r in self.of("train", "refused")
            ],
            "failed": [
                {"clinic": r.clinic_id, "reason": r.reason} for r in self.of("train", "failed")
            ],
            # replies the coordinator's checks excluded, in either phase, and why
            "rejected": [
                {"clinic": r.clinic_id, "phase": r.phase, "reason": r.reason}
                for r in self.results
                if r.status == "rejected"
            ],
            # updates scaled down to the norm bound before aggregation
            "clipped": [
                {"clinic": r.clinic_id, "norm": r.update_norm, "bound": r.clipped_to}
                for r in self.of("train", "ok")
                if r.clipped_to is not None
            ],
            # DP estimates from the clinics' noisy histograms (no exact metric is released)
            "eval_auc": evaluation.auc if evaluation else None,
            "eval_accuracy": evaluation.accuracy if evaluation else None,
            "evaluation": evaluation.to_dict() if evaluation else None,
            "model_path": self.model_path,
            "secure_aggregation": self.secure_aggregation,
            "clinics": [asdict(r) for r in self.results],
        }


@dataclass
class FederationHistory:
    rounds: list[RoundRecord] = field(default_factory=list)

    def round(self, number: int) -> RoundRecord:
        if not self.rounds or self.rounds[-1].round != number:
            self.rounds.append(RoundRecord(number))
        return self.rounds[-1]


def history_from_summaries(summaries: list[dict[str, Any]]) -> FederationHistory:
    """The history again from its rounds' :meth:`RoundRecord.summary` (a checkpoint's, or
    ``history.json``): each clinic entry is its result's fields, read by name, so a field
    added to :class:`ClinicResult` comes back too."""
    names = {item.name for item in fields(ClinicResult)}
    return FederationHistory(
        [
            RoundRecord(
                round=int(summary["round"]),
                results=[
                    ClinicResult(**{k: v for k, v in entry.items() if k in names})
                    for entry in summary["clinics"]
                ],
                model_path=summary.get("model_path"),
                secure_aggregation=summary.get("secure_aggregation"),
            )
            for summary in summaries
        ]
    )
