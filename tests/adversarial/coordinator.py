"""A malicious coordinator's toolbox: messages it may send to the real ClientApp handlers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from torch import nn

from oralfed.schemas import protocol
from oralfed.schemas.model_record import model_record
from oralfed.schemas.settings import FederationSettings


def message(
    kind: str,
    model: nn.Module,
    config: Mapping[str, Any],
    *,
    run_id: int = 1,
    server_round: int = 1,
    node_id: int = 1,
) -> Message:
    """A train or evaluate message with the coordinator's own model and config, to the
    node ``node_id`` (its reply comes from that node)."""
    metadata = Metadata(
        run_id=run_id,
        message_id=f"{kind}-{run_id}-{server_round}-{node_id}",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=0.0,
        ttl=3600.0,
        message_type=MessageType.TRAIN if kind == "train" else MessageType.EVALUATE,
    )
    content = RecordDict(
        {
            protocol.REPLY_ARRAYS: model_record(model),
            "config": ConfigRecord({**config, protocol.CFG_ROUND: server_round}),
        }
    )
    return Message(content=content, metadata=metadata)


def train_reply(
    train: Message,
    arrays: Mapping[str, np.ndarray],
    *,
    clinic_id: str,
    metrics: Mapping[str, Any],
) -> Message:
    """A clinic's reply to ``train`` as ``oralfed.client.replies.reply`` lays it out
    (identity, metrics, arrays), with whatever arrays and metrics a clinic chooses to send."""
    content = RecordDict(
        {
            protocol.REPLY_METRICS: MetricRecord(dict(metrics)),
            protocol.REPLY_CLINIC: ConfigRecord(
                {protocol.CLINIC_ID: clinic_id, protocol.ACCOUNTANT: "pld"}
            ),
            protocol.REPLY_ARRAYS: ArrayRecord(
                {name: Array(np.asarray(value)) for name, value in arrays.items()}
            ),
        }
    )
    return Message(content=content, reply_to=train)


def query_message(content: RecordDict, *, run_id: int = 1) -> Message:
    """A query message carrying the coordinator's query content."""
    metadata = Metadata(
        run_id=run_id,
        message_id=f"query-{run_id}",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="query",
        created_at=0.0,
        ttl=3600.0,
        message_type=MessageType.QUERY,
    )
    return Message(content=content, metadata=metadata)


def train_config(settings: FederationSettings, **overrides: Any) -> dict[str, Any]:
    return {**settings.train_config(), **overrides}


def evaluate_config(settings: FederationSettings, **overrides: Any) -> dict[str, Any]:
    return {**settings.evaluate_config(), **overrides}


def reply_keys(reply: Message) -> set[str]:
    """Every metric and identity key a reply carries (what the coordinator learns)."""
    keys: set[str] = set()
    if not reply.has_content():  # a refusal: an error code and its reason only
        return keys
    for record in reply.content.metric_records.values():
        keys |= set(record)
    for record in reply.content.config_records.values():
        keys |= set(record)
    keys |= set(reply.content.array_records)
    return keys
