"""Clinics on this host: each clinic's own query code run here, one after the other.

For ``oralfed insights serve`` and tests, where the clinics' files and ledgers are on the API
host. Each clinic still validates, charges its own ledger and adds its own noise before the
coordinator's combination sees anything: the code path is the deployed clinic's, only the
transport (a function call instead of a Flower message) differs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from oralfed.client.query import answer_query
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.query import QuerySpec
from oralfed.server.insights import InsightAnswer, SuppressionPolicy, build_answer

__all__ = ["answer_in_process"]


def answer_in_process(
    clinics: Sequence[ClinicNode],
    spec: QuerySpec,
    policy: SuppressionPolicy,
    requester: str | None = None,
) -> InsightAnswer:
    """Run each clinic's own query code here, one after the other (clinics on this host)."""
    started = time.perf_counter()
    run_id = f"local-{uuid.uuid4().hex[:12]}"
    replies = [answer_query(c, spec, run_id, policy.clinic_min_records) for c in clinics]
    return build_answer(spec, policy, replies, started, requester)
