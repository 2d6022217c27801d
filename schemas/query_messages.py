"""A query as it travels to the clinics, and their answers as they travel back.

The wire format of aggregate queries, shared by the clinic (which decodes the query and
encodes its noisy parts) and the coordinator (which does the opposite): neither side
imports the other's code, both import this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from oralfed.schemas import protocol
from oralfed.schemas.query import QuerySpec
from oralfed.schemas.records import record_floats, record_value

__all__ = ["ClinicAnswer", "ClinicRefusal", "query_content", "statistic_length"]


def statistic_length(spec: QuerySpec) -> int:
    """How many numbers a clinic's statistic part has for ``spec`` (cells x bins for bins)."""
    if spec.statistic is None:
        return 0
    edges = spec.edges()
    return spec.n_cells * (1 if edges is None else len(edges) - 1)


@dataclass(frozen=True)
class ClinicAnswer:
    """One clinic's noisy parts for a query, as they travel (flattened arrays and scales)."""

    clinic_id: str
    counts: list[float]
    count_noise_sd: float
    statistic: list[float]  # empty for a count query; cells x bins flattened for histograms
    statistic_noise_sd: float
    noise_multiplier: float
    epsilon_spent: float
    epsilon_cap: float
    delta: float
    accountant: str

    def to_content(self) -> RecordDict:
        return RecordDict(
            {
                protocol.REPLY_METRICS: MetricRecord(
                    {
                        protocol.QUERY_NOISY_COUNTS: self.counts,
                        protocol.QUERY_COUNT_NOISE_SD: self.count_noise_sd,
                        protocol.QUERY_NOISY_STATISTIC: self.statistic,
                        protocol.QUERY_STATISTIC_NOISE_SD: self.statistic_noise_sd,
                        protocol.NOISE_MULTIPLIER: self.noise_multiplier,
                        protocol.EPSILON_SPENT: self.epsilon_spent,
                        protocol.EPSILON_CAP: self.epsilon_cap,
                        protocol.DELTA: self.delta,
                    }
                ),
                protocol.REPLY_CLINIC: ConfigRecord(
                    {protocol.CLINIC_ID: self.clinic_id, protocol.ACCOUNTANT: self.accountant}
                ),
            }
        )

    def problem(self, spec: QuerySpec) -> str | None:
        """Why this answer cannot be combined for ``spec``, or None if it can.

        The coordinator combines what clinics send; a broken or hostile clinic must neither
        crash that (parts of another shape do not reshape) nor poison it (a NaN in one part
        is a NaN in every cell). Each part must have the query's own length and every
        number must be finite, with positive noise scales.
        """
        if len(self.counts) != spec.n_cells:
            return f"{len(self.counts)} noisy counts for a query of {spec.n_cells} cells"
        expected = statistic_length(spec)
        if len(self.statistic) != expected:
            return f"{len(self.statistic)} noisy statistics where the query makes {expected}"
        scales = [self.count_noise_sd, self.noise_multiplier]
        if expected:
            scales.append(self.statistic_noise_sd)
        if not all(math.isfinite(v) for v in [*self.counts, *self.statistic, *scales]):
            return "a value that is not a finite number"
        if min(scales) <= 0:
            return "a noise scale that is not positive"
        return None

    @classmethod
    def from_content(cls, content: RecordDict) -> ClinicAnswer:
        metrics = content[protocol.REPLY_METRICS]
        clinic = content[protocol.REPLY_CLINIC]
        return cls(
            clinic_id=str(clinic[protocol.CLINIC_ID]),
            counts=record_floats(metrics, protocol.QUERY_NOISY_COUNTS),
            count_noise_sd=record_value(metrics, protocol.QUERY_COUNT_NOISE_SD, float),
            statistic=record_floats(metrics, protocol.QUERY_NOISY_STATISTIC),
            statistic_noise_sd=record_value(metrics, protocol.QUERY_STATISTIC_NOISE_SD, float),
            noise_multiplier=record_value(metrics, protocol.NOISE_MULTIPLIER, float),
            epsilon_spent=record_value(metrics, protocol.EPSILON_SPENT, float),
            epsilon_cap=record_value(metrics, protocol.EPSILON_CAP, float),
            delta=record_value(metrics, protocol.DELTA, float),
            accountant=str(clinic[protocol.ACCOUNTANT]),
        )


@dataclass(frozen=True)
class ClinicRefusal:
    """A clinic that did not answer, and why (its budget, its data, a bad query).

    ``charged`` says whether the clinic's ledger holds a charge for this query all the same
    (it failed after paying): True or False where the coordinator can tell (clinics on this
    host), None where only the clinic's reason can (a reply over the network).
    """

    clinic_id: str
    code: int
    reason: str
    charged: bool | None = None


def query_content(spec: QuerySpec, min_records: int) -> RecordDict:
    """What the coordinator sends: the query and its clinic floor, nothing else."""
    return RecordDict(
        {
            "config": ConfigRecord(
                {
                    protocol.QUERY_SPEC: spec.model_dump_json(),
                    protocol.QUERY_CLINIC_MIN_RECORDS: min_records,
                }
            )
        }
    )
