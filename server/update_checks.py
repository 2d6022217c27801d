"""What a clinic's training reply must be before it may count, and how far it may pull.

A reply is untrusted input: a broken or hostile clinic can send arrays of another shape
(numpy would broadcast a ``(1, n)`` row or a scalar over the whole layer), NaN or ±Inf, an
absurd weight, or one very long update. Flower's aggregation trusts all of it, so the
coordinator checks each reply against the model it sent in that round and bounds each
update's L2 distance from that model before Flower's strategy sees it. A check names what
is wrong; the strategy records it against the clinic (``oralfed.server.strategy``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from oralfed.schemas import protocol
from oralfed.schemas.model import l2_norm

__all__ = [
    "CheckedUpdate",
    "ModelArrays",
    "UpdateRejected",
    "check_metrics",
    "check_update",
    "finite_problem",
    "reference_arrays",
    "update_norm",
]

ModelArrays = dict[str, np.ndarray]


class UpdateRejected(ValueError):
    """A reply that may not count; the message says what was wrong with it."""


@dataclass(frozen=True)
class CheckedUpdate:
    """A reply's model as it may be aggregated: checked, and clipped when it was too far."""

    arrays: ModelArrays
    weight: float
    norm: float  # L2 distance from the sent model, before clipping
    clipped: bool

    def content(self) -> RecordDict:
        """What Flower's strategy aggregates: the checked arrays and the weight, nothing
        else (other metrics are recorded per clinic, never averaged into the model)."""
        return RecordDict(
            {
                protocol.REPLY_ARRAYS: ArrayRecord(
                    {name: Array(value) for name, value in self.arrays.items()}
                ),
                protocol.REPLY_METRICS: MetricRecord({protocol.NUM_EXAMPLES: self.weight}),
            }
        )


def reference_arrays(record: ArrayRecord) -> ModelArrays:
    """The model the coordinator sent, as numpy arrays (the reference every reply must fit)."""
    return {name: array.numpy() for name, array in record.items()}


def finite_problem(arrays: Mapping[str, np.ndarray]) -> str | None:
    """Which arrays hold NaN or ±Inf, and how many values (None: all finite)."""
    bad = {name: int(np.size(value) - np.isfinite(value).sum()) for name, value in arrays.items()}
    bad = {name: count for name, count in bad.items() if count}
    if not bad:
        return None
    return "non-finite values (NaN or ±Inf): " + ", ".join(
        f"{count} in {name!r}" for name, count in bad.items()
    )


def check_metrics(metrics: MetricRecord) -> None:
    """Every metric a clinic reports is a finite number (the report and the ledgers'
    figures are read from them)."""
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in values):
            raise UpdateRejected(f"metric {key!r} is not finite: {value!r}")


def check_update(
    reply: Message, sent: ModelArrays, *, max_weight: float, norm_bound: float
) -> CheckedUpdate:
    """The reply's model checked against ``sent`` and clipped to ``norm_bound``.

    Exactly one array record with exactly the sent parameters (names, shapes, dtypes), all
    finite; exactly one metric record, all finite, whose ``num-examples`` is a number in
    (0, ``max_weight``]. Raises :class:`UpdateRejected` naming the first problem.
    """
    content = reply.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        raise UpdateRejected(
            f"expected one array record and one metric record, got "
            f"{len(content.array_records)} and {len(content.metric_records)}"
        )
    metrics = next(iter(content.metric_records.values()))
    check_metrics(metrics)
    weight = _weight(metrics, max_weight)
    arrays = _arrays(next(iter(content.array_records.values())), sent)
    problem = finite_problem(arrays)
    if problem is not None:
        raise UpdateRejected(problem)
    norm = update_norm(arrays, sent)
    if norm <= norm_bound:
        return CheckedUpdate(arrays, weight, norm, clipped=False)
    scale = norm_bound / norm
    clipped = {
        name: (sent[name] + (arrays[name] - sent[name]) * scale).astype(sent[name].dtype)
        for name in sent
    }
    return CheckedUpdate(clipped, weight, norm, clipped=True)


def update_norm(arrays: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> float:
    """L2 distance of the whole model from the sent one, in float64 (float32 squares of an
    update near 1e38 would overflow)."""
    return l2_norm(arrays[name].astype(np.float64) - sent[name].astype(np.float64) for name in sent)


def _weight(metrics: MetricRecord, max_weight: float) -> float:
    value = metrics.get(protocol.NUM_EXAMPLES)
    if value is None:
        raise UpdateRejected(f"no {protocol.NUM_EXAMPLES!r} (the clinic's weight)")
    if isinstance(value, list) or not (0 < value <= max_weight):
        raise UpdateRejected(
            f"{protocol.NUM_EXAMPLES!r} must be a number in (0, {max_weight:g}] (the "
            f"max-clinic-weight setting), got {value!r}"
        )
    return float(value)


def _arrays(record: ArrayRecord, sent: ModelArrays) -> ModelArrays:
    """The record's arrays if they are exactly the sent parameters (same names, shapes and
    dtypes); never broadcast, never reordered."""
    if set(record) != set(sent):
        missing, extra = sorted(set(sent) - set(record)), sorted(set(record) - set(sent))
        raise UpdateRejected(
            f"parameters differ from the sent model: missing {missing}, extra {extra}"
        )
    arrays: ModelArrays = {}
    for name, expected in sent.items():
        try:
            value = record[name].numpy()
        except (TypeError, ValueError, OSError, EOFError) as error:  # untrusted bytes
            raise UpdateRejected(f"parameter {name!r} cannot be read: {error}") from None
        if value.shape != expected.shape or value.dtype != expected.dtype:
            raise UpdateRejected(
                f"parameter {name!r} is {value.dtype}{list(value.shape)}, the sent model's is "
                f"{expected.dtype}{list(expected.shape)}"
            )
        arrays[name] = value
    return arrays
