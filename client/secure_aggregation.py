"""The clinic's side of secure aggregation: Flower's SecAgg+ mod around the training handler.

A training round under secure aggregation is four train messages (Flower's stages: setup,
share keys, collect masked vectors, unmask), recognised by Flower's SecAgg+ config record.
Flower's ``secaggplus_mod`` answers three of them itself (keys and Shamir shares, with
``cryptography`` underneath) and, in the collect stage, calls the clinic's training
handler and masks what it returns. This module only adapts the two ends to each other:

* In: the collect stage's message is an ordinary training request with the protocol's
  record added; the handler judges it, charges the ledger and trains as always, so the
  charge is committed before anything, masked or not, leaves.
* Out: the masked vector is the clinic's *update* (trained model minus the model sent),
  scaled down to the protocol's clipping range in L2 norm (so no coordinate is clipped by
  the quantiser either), weighted by the public size bounded by the protocol's maximum
  weight. Flower's mod reads the update from a legacy ``FitRes``; the reply that leaves
  carries the masked vector, the clinic's identity and its metrics without the weight,
  which is inside the masked vector. A refusal leaves as the refusal it is.

Other messages (evaluation, queries, training without the protocol's record) pass through.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
)
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from oralfed.schemas import protocol
from oralfed.schemas.model import l2_norm

__all__ = ["bounded_update", "secure_aggregation_mod"]

LEGACY_PREFIX = "fitres."  # the records Flower's mod reads the update and weight from


class _Refused(Exception):
    """The handler's refusal, carried out of Flower's mod unmasked and unchanged."""

    def __init__(self, reply: Message) -> None:
        super().__init__("refused")
        self.reply = reply


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ mod for train messages that carry its record; anything else passes."""
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or RECORD_KEY_CONFIGS not in msg.content.config_records
    ):
        return call_next(msg, context)

    def masked_release(request: Message, ctxt: Context) -> Message:
        return _legacy_update(request, ctxt, call_next(request, ctxt))

    try:
        out = secaggplus_mod(msg, context, masked_release)
    except _Refused as refused:
        return refused.reply
    for name in [name for name in out.content if name.startswith(LEGACY_PREFIX)]:
        del out.content[name]
    clinic = context.node_config.get(protocol.NODE_CLINIC_ID)
    if protocol.REPLY_CLINIC not in out.content and isinstance(clinic, str):
        # every stage's answer names the clinic (declared public), so a clinic that drops
        # out before it trains is still named in the coordinator's record
        out.content[protocol.REPLY_CLINIC] = ConfigRecord({protocol.CLINIC_ID: clinic})
    return out


def _legacy_update(request: Message, context: Context, reply: Message) -> Message:
    """The handler's reply as Flower's mod reads it: the bounded update and the weight as a
    legacy ``FitRes``, beside the reply's identity and metrics (minus the weight)."""
    if reply.has_error():
        raise _Refused(reply)
    state = SecAggPlusState(**context.state.config_records[RECORD_KEY_STATE])
    sent = request.content.array_records[protocol.REPLY_ARRAYS]
    trained = reply.content.array_records[protocol.REPLY_ARRAYS]
    update = bounded_update(
        [trained[name].numpy() for name in sent],
        [sent[name].numpy() for name in sent],
        state.clipping_range,
    )
    metrics = reply.content.metric_records[protocol.REPLY_METRICS]
    weight = min(float(metrics[protocol.NUM_EXAMPLES]), state.max_weight)  # type: ignore[arg-type]
    content = fitres_to_recorddict(
        FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), int(weight), {}),
        keep_input=False,
    )
    content[protocol.REPLY_METRICS] = MetricRecord(
        {key: value for key, value in metrics.items() if key != protocol.NUM_EXAMPLES}
    )
    for name, record in reply.content.config_records.items():
        content[name] = record
    return Message(content=content, reply_to=request)


def bounded_update(
    trained: list[np.ndarray], sent: list[np.ndarray], norm_bound: float
) -> list[np.ndarray]:
    """``trained - sent``, scaled down to L2 norm ``norm_bound`` if longer (post-processing of
    a DP release: it costs nothing); a non-finite one is refused. Every coordinate is then
    within ±``norm_bound``, the quantiser's clipping range, so masking changes the update by
    rounding only."""
    update = [
        t.astype(np.float64) - s.astype(np.float64) for t, s in zip(trained, sent, strict=True)
    ]
    norm = l2_norm(update)
    if not math.isfinite(norm):  # only a model sent with NaN or ±Inf trains into this
        raise ValueError("the trained update is not finite; it was not masked or sent")
    scale = norm_bound / norm if norm > norm_bound else 1.0
    return [part * scale for part in update]
