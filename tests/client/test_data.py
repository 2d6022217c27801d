"""A clinic's data is imported once per file version, even when one process serves many
clinics in turn (a simulation's Ray worker), and never handed to another clinic's key."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oralfed.client.data import load_clinic_data
from oralfed.schemas.synthetic import write_federation


def test_a_worker_serving_many_clinics_imports_each_file_once(
    tmp_path: Path, imports: list[Path]
) -> None:
    files = write_federation(tmp_path / "data", 40, seed=2)
    imported = imports
    first = [load_clinic_data(path.stem, path) for path in files]
    again = [load_clinic_data(path.stem, path) for path in files]  # a second round
    assert len(imported) == len(files) and set(imported) == {p.resolve() for p in files}
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert len({data.fingerprint for data in first}) == len(files)  # each clinic its own
    # a file written again is a new version: imported again, not served from memory
    files[0].write_text(files[1].read_text())
    changed = load_clinic_data(files[0].stem, files[0])
    assert len(imported) == len(files) + 1
    assert np.array_equal(changed.x_train, first[1].x_train)
