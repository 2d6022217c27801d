"""How a clinic's replies are put together: the work's metrics, or a refusal with its reason.

Every reply names the clinic (``protocol.REPLY_CLINIC``) so the coordinator can report per
clinic without knowing node ids; a refusal is a Flower ``Error`` whose reason starts with it.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from oralfed.privacy.ledger import Budget
from oralfed.schemas import protocol
from oralfed.schemas.node_config import ClinicNode

__all__ = ["refusal", "reply"]


def refusal(msg: Message, code: int, clinic_id: str, reason: str) -> Message:
    """A reply that names the clinic and why it did not do the work."""
    return Message(Error(code=code, reason=f"[{clinic_id}] {reason}"), reply_to=msg)


def reply(
    msg: Message,
    node: ClinicNode,
    budget: Budget,
    metrics: MetricRecord,
    arrays: ArrayRecord | None = None,
    public_size_source: str | None = None,
) -> Message:
    """The work's reply: metrics, the clinic's identity and accountant, and the update."""
    identity = ConfigRecord(
        {protocol.CLINIC_ID: node.clinic_id, protocol.ACCOUNTANT: budget.accountant}
    )
    if public_size_source is not None:
        identity[protocol.PUBLIC_SIZE_SOURCE] = public_size_source
    content = RecordDict({protocol.REPLY_METRICS: metrics, protocol.REPLY_CLINIC: identity})
    if arrays is not None:
        content[protocol.REPLY_ARRAYS] = arrays
    return Message(content=content, reply_to=msg)
