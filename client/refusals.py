"""Why a clinic did not do the work, in words the coordinator can record: code and reason.

Flower turns an exception a ClientApp raises into an error reply that carries little more
than the exception's type, so the coordinator's round record (``[clinic] reason``, read by
``server/history.py``) and the operator would learn nothing of what to fix. Every failure is
therefore mapped here, in one place, to one of the refusal codes of
:mod:`oralfed.schemas.protocol`:

* OralFed's own errors carry a message written for the operator (the file, the key, the
  value) and are sent as they are;
* an ``OSError`` is named by what it means at a clinic (a full disk, a read-only file
  system, a permission) and the file it hit;
* anything else is a fault OralFed did not foresee. Its message may hold anything, and a
  reason leaves the clinic, so only its type is sent; the traceback goes to the clinic's
  own log.

A failure can come after a charge was committed (the charge always comes first, so a
failure while computing, storing or encoding the release is after it).
:func:`charge_note` reads the ledger back to say so, because "nothing was charged" would then
be false and the clinic's operator must know the ε is gone even though nothing was sent.
"""

from __future__ import annotations

import errno
import logging
from datetime import datetime

from flwr.app import Message

from oralfed.client.requests import RequestError
from oralfed.privacy.ledger import (
    LEDGER_FILE,
    BudgetExceeded,
    ChargeRecord,
    LedgerBusy,
    PrivacyLedger,
)
from oralfed.schemas import protocol
from oralfed.schemas.clinic_policy import PolicyRefusal
from oralfed.schemas.errors import OralFedError
from oralfed.schemas.node_config import ClinicNode

__all__ = ["charge_note", "failed_request", "refusal_reason"]

logger = logging.getLogger(__name__)

# What an OSError means on a clinic's server, by errno; the rest are named by strerror.
_OS_ERRORS = {
    errno.ENOSPC: "the disk is full: free space on the clinic's state or data volume",
    errno.EDQUOT: "the disk quota is used up: raise it for the clinic's process",
    errno.EROFS: "the file system is read-only: the clinic's state directory must be writable",
    errno.EACCES: "permission denied: the clinic's process must be able to read its data "
    "file and write its state directory",
    errno.EPERM: "operation not permitted: the clinic's process must be able to read its "
    "data file and write its state directory",
    errno.EIO: "the disk reported an I/O error: check the clinic's storage",
}


def failed_request(
    error: Exception, msg: Message, node: ClinicNode, since: datetime
) -> tuple[int, str]:
    """The code and reason for a request that failed with ``error`` after starting at
    ``since``: what failed, then what it had charged (or, for a failure OralFed's own
    message does not account for, that nothing was)."""
    code, reason = refusal_reason(error)
    note = charge_note(msg, node, since)
    if note is not None:
        return code, f"{reason}; {note}"
    if not isinstance(error, OralFedError):  # OralFed's messages say what was changed
        return code, f"{reason}; nothing was charged"
    return code, reason


def refusal_reason(error: Exception) -> tuple[int, str]:
    """The refusal code and reason for ``error`` (the clinic's name is added by the reply)."""
    if isinstance(error, BudgetExceeded):
        return protocol.ERROR_BUDGET_EXCEEDED, str(error)
    if isinstance(error, PolicyRefusal | RequestError):
        return protocol.ERROR_POLICY_REFUSED, str(error)
    if isinstance(error, LedgerBusy):
        text = str(error)
        return protocol.ERROR_DATA_REFUSED, text if "retry" in text.lower() else f"{text}; retry"
    if isinstance(error, OralFedError):
        return protocol.ERROR_DATA_REFUSED, str(error)
    if isinstance(error, OSError):
        return protocol.ERROR_DATA_REFUSED, os_error_text(error)
    logger.error("the clinic's handler failed unexpectedly", exc_info=error)
    return protocol.ERROR_DATA_REFUSED, (
        f"the clinic failed unexpectedly ({type(error).__name__}); the details are in the "
        "clinic's log"
    )


def os_error_text(error: OSError) -> str:
    """An ``OSError`` as a clinic's operator reads it: the file, and what it means there."""
    meaning = _OS_ERRORS.get(error.errno or 0) or error.strerror or type(error).__name__
    return f"{error.filename}: {meaning}" if error.filename else meaning


def charge_note(msg: Message, node: ClinicNode, since: datetime) -> str | None:
    """What a failed request had already charged, read back from the ledger; None if
    nothing (or if the ledger cannot be read, through which nothing could be charged).

    A charge counts if it was recorded since ``since`` (the request's start) for the run the
    message belongs to, by either of its ids (OralFed's, which a resumed run keeps, and
    Flower's).
    """
    path = node.state_dir / LEDGER_FILE
    if not path.is_file():
        return None
    runs = _run_ids(msg)
    try:
        with PrivacyLedger.read_only(path) as ledger:
            history = ledger.history(node.dataset_id)
    except (OralFedError, OSError):
        return None
    except Exception as error:  # the refusal must still go out, saying what is not known
        logger.error("the clinic's ledger could not be read back", exc_info=error)
        return "whether ε was charged could not be read back from the ledger; nothing was sent"
    made = [c for c in history if c.recorded_at >= since and c.run_id in runs]
    if not made:
        return None
    return f"ε for {' and '.join(_what(c) for c in made)} was charged; nothing was sent"


def _run_ids(msg: Message) -> set[str]:
    runs = {str(msg.metadata.run_id)}
    if msg.has_content() and (config := msg.content.config_records.get("config")) is not None:
        run_id = config.get(protocol.CFG_RUN_ID)
        if isinstance(run_id, str):
            runs.add(run_id)
    return runs


def _what(charge: ChargeRecord) -> str:
    if charge.round is not None:
        return "this round"
    return charge.note or "a release of this run"
