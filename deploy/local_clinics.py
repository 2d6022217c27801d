"""Clinics on this host: each clinic's own query code run here, one after the other.

For ``oralfed insights serve`` and tests, where the clinics' files and ledgers are on the API
host. Each clinic still validates, charges its own ledger and adds its own noise before the
coordinator's combination sees anything: the code path is the deployed clinic's, only the
transport (a function call instead of a Flower message) differs.

The transport keeps the deployed one's failure behaviour too. A clinic that fails is that
clinic's refusal, naming it, and the others still answer (on a deployment Flower turns a
ClientApp's failure into an error reply the same way), so one broken clinic never leaves
the clinics asked before it charged for an answer nobody gets. Two things only this host can
do are done: every clinic's data file is checked before any clinic is asked, so a missing
file refuses its clinic before anyone pays; and every refusal says whether that clinic's
ledger holds a charge for the query all the same.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from oralfed.client.query import answer_query
from oralfed.privacy.ledger import LEDGER_FILE, PrivacyLedger, UnknownDataset
from oralfed.schemas import protocol
from oralfed.schemas.errors import OralFedError
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.query import QuerySpec
from oralfed.schemas.query_messages import ClinicAnswer, ClinicRefusal
from oralfed.server.insights import InsightAnswer, SuppressionPolicy, build_answer

__all__ = ["answer_in_process", "unreadable_data"]


def answer_in_process(
    clinics: Sequence[ClinicNode],
    spec: QuerySpec,
    policy: SuppressionPolicy,
    requester: str | None = None,
) -> InsightAnswer:
    """Run each clinic's own query code here, one after the other (clinics on this host)."""
    started = time.perf_counter()
    run_id = f"local-{uuid.uuid4().hex[:12]}"
    unusable = {c.clinic_id: why for c in clinics if (why := unreadable_data(c)) is not None}
    replies = [
        ClinicRefusal(
            c.clinic_id,
            protocol.ERROR_DATA_REFUSED,
            f"[{c.clinic_id}] {unusable[c.clinic_id]}; not asked, nothing was charged",
            False,
        )
        if c.clinic_id in unusable
        else _ask(c, spec, run_id, policy.clinic_min_records)
        for c in clinics
    ]
    return build_answer(spec, policy, replies, started, requester)


def unreadable_data(clinic: ClinicNode) -> str | None:
    """Why ``clinic``'s data file cannot be read at all (missing, a folder, no permission),
    or None. Checked for every clinic before any is asked and charged."""
    path = clinic.data_path
    if not path.exists():
        return f"data file {path} does not exist"
    if not path.is_file():
        return f"data path {path} is not a file"
    if not os.access(path, os.R_OK):
        return f"data file {path} cannot be read (permission denied)"
    return None


def _ask(
    clinic: ClinicNode, spec: QuerySpec, run_id: str, min_records: int
) -> ClinicAnswer | ClinicRefusal:
    """One clinic's reply; its failure is its refusal, as a ClientApp's is on a deployment.

    Any exception is caught because this is the transport: whatever the clinic's code
    raises ends that clinic's part of the query and no other's.
    """
    try:
        reply = answer_query(clinic, spec, run_id, min_records)
    except Exception as error:  # the transport boundary, see the docstring
        charged = _charged(clinic, run_id)
        why = str(error) if isinstance(error, OralFedError) else f"{type(error).__name__}: {error}"
        return ClinicRefusal(
            clinic.clinic_id,
            protocol.ERROR_DATA_REFUSED,
            f"[{clinic.clinic_id}] failed: {why}; {_CHARGE_STATE[charged]}",
            charged,
        )
    if isinstance(reply, ClinicRefusal):
        return ClinicRefusal(reply.clinic_id, reply.code, reply.reason, _charged(clinic, run_id))
    return reply


_CHARGE_STATE = {
    True: "it was charged for this query all the same",
    False: "nothing was charged",
    None: "its ledger could not be read to tell whether it was charged",
}


def _charged(clinic: ClinicNode, run_id: str) -> bool | None:
    """Whether ``clinic``'s ledger holds a charge for this query's run; None if unreadable.

    A clinic without a ledger file was charged nothing, and none is created to find out.
    """
    if not (clinic.state_dir / LEDGER_FILE).is_file():
        return False
    try:
        with PrivacyLedger.in_state_dir(clinic.state_dir) as ledger:
            return any(c.run_id == run_id for c in ledger.history(clinic.dataset_id))
    except UnknownDataset:
        return False
    except (OralFedError, OSError, SQLAlchemyError):
        return None
