"""A clinic's local data: import, consent filter, encoding and a stable train/test split.

Runs only inside the clinic process. What leaves it is computed from these arrays by the
DP training step, never the arrays themselves.
"""

from __future__ import annotations

import hashlib
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from stat import S_ISREG

import numpy as np

from oralfed.client.import_receipt import (
    ARRAYS,
    ImportReceipt,
    file_fingerprint,
    load_receipt,
    save_receipt,
)
from oralfed.schemas import protocol
from oralfed.schemas.contract import PatientRecord
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.features import Task, encode_features, encode_labels, has_label
from oralfed.schemas.importer import ImportResult, import_file

TEST_SHARE_PER_MILLE = 200  # 20 % of patients are held out for evaluation
CACHED_CLINIC_FILES = 10_000  # the largest synthetic federation `oralfed federate` runs


class ClinicDataError(OralFedError):
    """The clinic's data cannot be used for this job; the message says why and where."""

    exit_code = ExitCode.INVALID_DATA


@dataclass(frozen=True)
class ClinicData:
    """Encoded research-tier records of one clinic, split deterministically."""

    clinic_id: str
    task: Task
    fingerprint: str
    rows_read: int
    rows_rejected: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)


def is_test_patient(patient_ref: str) -> bool:
    """Hash-based split: a patient stays on the same side whatever the file's row order."""
    digest = hashlib.sha256(patient_ref.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < TEST_SHARE_PER_MILLE


def training_records(result: ImportResult, task: Task) -> list[PatientRecord]:
    """Research-tier rows with a label for ``task``: the only rows a model may learn from."""
    return [r for r in result.accepted if r.consent_tier.allows_training and has_label(r, task)]


def load_clinic_data(
    clinic_id: str,
    path: Path,
    task: Task = Task.UNTREATED_CARIES,
    *,
    state_dir: Path | None = None,
) -> ClinicData:
    """Import ``path`` and return the clinic's encoded train/test split.

    With the clinic's ``state_dir``, an import is kept there as a signed receipt and the
    next process to meet the clinic reads that instead of validating the file again
    (:mod:`oralfed.client.import_receipt`: keyed by the file's SHA-256, so an edited file is
    imported afresh).

    Cached per (file, size, mtime) because Flower calls the ClientApp once per message and
    re-validating thousands of rows each round would dominate a round's time. A simulation's
    Ray worker serves many clinics in turn, each under its own file's key: the cache holds
    up to :data:`CACHED_CLINIC_FILES` of them (encoded float32 arrays, about 150 kB for a
    clinic of 2,000 patients, so 1 GB at most for 10,000 clinics of a few hundred to two
    thousand), so that every clinic of the largest federation is imported once per worker
    and run: importing is a tenth of a second a clinic, paid again each round if evicted.
    """
    try:
        stat = path.stat()
    except OSError as error:
        raise ClinicDataError(
            f"{path}: the clinic's data file ({protocol.NODE_DATA_PATH} in the node config) "
            f"cannot be read ({error.strerror or error})"
        ) from None
    if not S_ISREG(stat.st_mode):
        raise ClinicDataError(
            f"{path}: the clinic's data file ({protocol.NODE_DATA_PATH} in the node config) "
            "is not a file"
        )
    return _load_cached(clinic_id, path.resolve(), stat.st_size, stat.st_mtime_ns, task, state_dir)


@lru_cache(maxsize=CACHED_CLINIC_FILES)
def _load_cached(
    clinic_id: str, path: Path, _size: int, _mtime_ns: int, task: Task, state_dir: Path | None
) -> ClinicData:
    if state_dir is None:
        return clinic_data(clinic_id, import_file(path), task)
    try:
        receipt = load_receipt(state_dir, file_fingerprint(path), task)
    except OSError as error:
        raise ClinicDataError(
            f"{path}: the clinic's data file cannot be read ({error.strerror or error})"
        ) from None
    if receipt is not None:
        return _from_receipt(clinic_id, receipt)
    data = clinic_data(clinic_id, import_file(path), task)
    keep_receipt(state_dir, data)
    return data


def keep_receipt(state_dir: Path, data: ClinicData) -> None:
    """Keep ``data`` as the clinic's signed import receipt, for the next process to read.

    A receipt that cannot be written (a full or read-only disk) only costs the next process
    its own import, so that is no reason to refuse the work at hand."""
    arrays = {name: getattr(data, name) for name in ARRAYS}
    receipt = ImportReceipt(data.fingerprint, data.task, data.rows_read, data.rows_rejected, arrays)
    with suppress(OSError):
        save_receipt(state_dir, receipt)


def _from_receipt(clinic_id: str, receipt: ImportReceipt) -> ClinicData:
    return ClinicData(
        clinic_id=clinic_id,
        task=receipt.task,
        fingerprint=receipt.fingerprint,
        rows_read=receipt.rows_read,
        rows_rejected=receipt.rows_rejected,
        **receipt.arrays,
    )


def clinic_data(clinic_id: str, result: ImportResult, task: Task) -> ClinicData:
    """The encoded train/test split of an imported file (refused if nothing is usable)."""
    path = result.path
    records = training_records(result, task)
    if not records:
        # No row counts in the message: a refusal carrying it leaves the clinic.
        raise ClinicDataError(
            f"{path}: no research-tier rows usable for {task.value}; only patients with "
            "consent_tier=research and a label for the task may be used for training"
        )
    test_mask = np.array([is_test_patient(r.patient_ref) for r in records])
    features, labels = encode_features(records), encode_labels(records, task)
    return ClinicData(
        clinic_id=clinic_id,
        task=task,
        fingerprint=result.fingerprint,
        rows_read=result.rows_read,
        rows_rejected=result.rows_rejected,
        x_train=features[~test_mask],
        y_train=labels[~test_mask],
        x_test=features[test_mask],
        y_test=labels[test_mask],
    )
