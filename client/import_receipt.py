"""A clinic's import receipt: its file's validated, encoded split, signed, in its own state.

Why: validating and encoding a clinic file is a tenth of a second for a clinic of a couple
of thousand patients, paid by every process that meets the clinic (the set-up's check, each
Ray worker a simulated clinic's messages land on, a restarted clinic node). The receipt lets
the next process skip it: the import's result, kept where the clinic keeps its ledger.

What keeps it honest:

- It is keyed by the SHA-256 of the file's bytes, read again each time: an edited file
  misses its receipt and is imported (and put on record) afresh.
- It is signed with the node's audit signing key (``privacy.keys``) and checked on load, so
  an insider who edits the receipt instead of the file cannot train the model on other
  records under the file's fingerprint: the edit fails the signature and the file is read.
- It names the exact code that made it (:func:`encoding_id`: the contract, the importer and
  the encoding's source): a receipt from other code is never reused.

Anything unreadable, foreign or stale is treated as no receipt: the file is imported again
and a new receipt replaces it. The receipt never leaves the clinic's state directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature

from oralfed.privacy.keys import AuditKeyError, load_or_create_signing_key, load_signing_key
from oralfed.schemas.features import Task
from oralfed.schemas.files import write_bytes_atomically

__all__ = [
    "ARRAYS",
    "RECEIPTS_DIR",
    "ImportReceipt",
    "encoding_id",
    "file_fingerprint",
    "load_receipt",
    "save_receipt",
]

RECEIPTS_DIR = "import-receipts"
RECEIPT_FORMAT = "oralfed-import-receipt/1"
SIGNATURE_BYTES = 64  # Ed25519
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# The modules whose code decides what an import yields: which rows pass, how they encode
# and split. A change to any of them makes every earlier receipt stale.
_ENCODING_MODULES = (
    "oralfed.schemas.contract",
    "oralfed.schemas.csv_reader",
    "oralfed.schemas.importer",
    "oralfed.schemas.features",
    "oralfed.client.data",
)


@dataclass(frozen=True)
class ImportReceipt:
    """What an import of one file for one task yielded: counts and the encoded split."""

    fingerprint: str  # SHA-256 of the file's bytes
    task: Task
    rows_read: int
    rows_rejected: int
    arrays: dict[str, np.ndarray]  # ARRAYS, float32


def file_fingerprint(path: Path) -> str:
    """SHA-256 of the file's bytes, as the importer computes it."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


@cache
def encoding_id() -> str:
    """A digest of the source of :data:`_ENCODING_MODULES`, computed once per process."""
    digest = hashlib.sha256(RECEIPT_FORMAT.encode())
    for name in _ENCODING_MODULES:
        source = sys.modules[name].__file__
        assert source is not None  # plain .py modules of this package
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def save_receipt(state_dir: Path, receipt: ImportReceipt) -> None:
    """Sign and store ``receipt`` in the clinic's state directory (atomically)."""
    buffer = io.BytesIO()
    meta = _meta(receipt.fingerprint, receipt.task, receipt.rows_read, receipt.rows_rejected)
    stored: dict[str, Any] = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        **receipt.arrays,
    }
    np.savez(buffer, allow_pickle=False, **stored)
    payload = buffer.getvalue()
    signature = load_or_create_signing_key(state_dir).sign(payload)
    write_bytes_atomically(_path(state_dir, receipt.fingerprint, receipt.task), signature + payload)


def load_receipt(state_dir: Path, fingerprint: str, task: Task) -> ImportReceipt | None:
    """The receipt of the file with ``fingerprint`` for ``task``, if one is stored, signed
    by this node's key, and made by this code; None otherwise (then import the file)."""
    path = _path(state_dir, fingerprint, task)
    try:
        content = path.read_bytes()
    except OSError:
        return None
    signature, payload = content[:SIGNATURE_BYTES], content[SIGNATURE_BYTES:]
    try:
        load_signing_key(state_dir).public_key().verify(signature, payload)
        with np.load(io.BytesIO(payload), allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes())
            arrays = {name: stored[name] for name in ARRAYS}
        counts = int(meta["rows_read"]), int(meta["rows_rejected"])
    except (AuditKeyError, InvalidSignature, ValueError, KeyError, TypeError, OSError):
        return None
    if meta != _meta(fingerprint, task, *counts):  # another file, task or code
        return None
    return ImportReceipt(fingerprint, task, *counts, arrays)


def _meta(fingerprint: str, task: Task, rows_read: int, rows_rejected: int) -> dict[str, Any]:
    return {
        "format": RECEIPT_FORMAT,
        "encoding": encoding_id(),
        "fingerprint": fingerprint,
        "task": task.value,
        "rows_read": rows_read,
        "rows_rejected": rows_rejected,
    }


def _path(state_dir: Path, fingerprint: str, task: Task) -> Path:
    return state_dir / RECEIPTS_DIR / f"{task.value}-{fingerprint}.npz"
