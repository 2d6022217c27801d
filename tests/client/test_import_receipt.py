"""A clinic's signed import receipt spares the next process the import, and only ever
yields what importing the file itself would: an edited file, an edited or foreign receipt,
or a receipt made by other code is ignored and the file is imported afresh."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import oralfed.client.data as clinic_data
import oralfed.client.import_receipt as import_receipt
from oralfed.client.data import ClinicData, load_clinic_data
from oralfed.client.import_receipt import RECEIPTS_DIR
from oralfed.schemas.synthetic import write_federation


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return write_federation(tmp_path / "data", 2, seed=5)


def in_new_process(path: Path, state_dir: Path) -> ClinicData:
    clinic_data._load_cached.cache_clear()
    return load_clinic_data(path.stem, path, state_dir=state_dir)


def same(a: ClinicData, b: ClinicData) -> bool:
    arrays = ("x_train", "y_train", "x_test", "y_test")
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in arrays) and (
        a.fingerprint,
        a.rows_read,
        a.rows_rejected,
    ) == (b.fingerprint, b.rows_read, b.rows_rejected)


def receipt_of(state_dir: Path) -> Path:
    (receipt,) = (state_dir / RECEIPTS_DIR).iterdir()
    return receipt


def test_the_next_process_reads_the_receipt_instead_of_the_import(
    files: list[Path], imports: list[Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = in_new_process(files[0], state)
    again = in_new_process(files[0], state)
    assert imports == [files[0].resolve()]
    assert same(first, again) and again.clinic_id == files[0].stem


def test_an_edited_file_is_imported_afresh(
    files: list[Path], imports: list[Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    in_new_process(files[0], state)
    files[0].write_text(files[1].read_text())
    edited = in_new_process(files[0], state)
    assert len(imports) == 2
    assert same(edited, load_clinic_data(files[1].stem, files[1]))


def test_an_edited_receipt_is_ignored_and_the_file_read(
    files: list[Path], imports: list[Path], tmp_path: Path
) -> None:
    """An insider who rewrites the stored features instead of the file trains nothing."""
    state = tmp_path / "state"
    true = in_new_process(files[0], state)
    receipt = receipt_of(state)
    content = bytearray(receipt.read_bytes())
    content[-200] ^= 0x01  # one bit of the last array
    receipt.write_bytes(bytes(content))
    assert same(in_new_process(files[0], state), true)
    assert len(imports) == 2


def test_another_clinics_receipt_is_foreign(
    files: list[Path], imports: list[Path], tmp_path: Path
) -> None:
    """A receipt signed by another node's key is not this node's, even for the same file."""
    in_new_process(files[0], tmp_path / "other-clinic")
    mine = tmp_path / "state"
    in_new_process(files[1], mine)  # this node's key exists
    receipt = receipt_of(tmp_path / "other-clinic")
    shutil.copy(receipt, mine / RECEIPTS_DIR / receipt.name)
    in_new_process(files[0], mine)
    assert len(imports) == 3


def test_a_receipt_made_by_other_code_is_stale(
    files: list[Path], imports: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    in_new_process(files[0], state)
    monkeypatch.setattr(import_receipt, "encoding_id", lambda: "another version of the importer")
    in_new_process(files[0], state)
    assert len(imports) == 2


def test_a_truncated_or_unsigned_receipt_is_no_receipt(
    files: list[Path], imports: list[Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    true = in_new_process(files[0], state)
    receipt = receipt_of(state)
    for damaged in (b"", receipt.read_bytes()[:100], b"\0" * 64 + receipt.read_bytes()[64:]):
        receipt.write_bytes(damaged)
        assert same(in_new_process(files[0], state), true)
    assert len(imports) == 4


def test_a_receipt_that_cannot_be_written_costs_only_the_next_import(
    files: list[Path], imports: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(import_receipt, "write_bytes_atomically", disk_full)
    state = tmp_path / "state"
    first = in_new_process(files[0], state)
    assert same(in_new_process(files[0], state), first)
    assert len(imports) == 2 and not (state / RECEIPTS_DIR).exists()
