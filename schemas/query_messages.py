"""A query as it travels to the clinics, and their answers as they travel back.

The wire format of aggregate queries, shared by the clinic (which decodes the query and
encodes its noisy parts) and the coordinator (which does the opposite): neither side
imports the other's code, both import this.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from oralfed.schemas import protocol
from oralfed.schemas.query import QuerySpec
from oralfed.schemas.records import record_floats, record_value

__all__ = ["ClinicAnswer", "ClinicRefusal", "query_content"]


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
    """A clinic that did not answer, and why (its budget, its data, a bad query)."""

    clinic_id: str
    code: int
    reason: str


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
