"""A clinic's export: its rows in memory (clean or with known faults) or as CSV files.

These are the generator's entry points for the importer tests, the benchmarks and the
``oralfed data synth`` command. Files are written the way a clinic system should write
them: whole or not at all, so a clinic process watching the folder never reads half a file.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from oralfed.schemas.contract import CONTRACT_COLUMNS
from oralfed.schemas.files import write_text_atomically
from oralfed.schemas.synthetic.checks import check_fraction, check_n_clinics, check_seed
from oralfed.schemas.synthetic.faults import inject_faults
from oralfed.schemas.synthetic.profiles import ClinicProfile, clinic_profiles
from oralfed.schemas.synthetic.rows import clean_rows
from oralfed.schemas.synthetic.streams import clinic_streams

__all__ = [
    "synthesize_clinic",
    "synthesize_clinic_with_faults",
    "write_csv_atomically",
    "write_federation",
]


def synthesize_clinic_with_faults(
    profile: ClinicProfile, seed: int, bad_row_fraction: float = 0.0
) -> tuple[list[dict[str, str]], list[int]]:
    """Rows for one clinic plus the 1-based data-row numbers that were made invalid.

    ``round(bad_row_fraction * n_patients)`` distinct rows each get exactly one violation
    (a kind from :data:`~oralfed.schemas.synthetic.faults.FAULT_KINDS`, chosen at random),
    so an importer test can assert that precisely these rows are rejected. Faults use their
    own random stream: the other rows are byte-identical to the clean output for the same
    seed.
    """
    check_seed(seed)
    check_fraction(bad_row_fraction)
    rows = clean_rows(profile, seed)
    n_bad = round(bad_row_fraction * len(rows))
    if n_bad == 0:
        return rows, []
    rng = np.random.default_rng(clinic_streams(profile.clinic_id, seed).faults)
    return rows, inject_faults(rows, n_bad, rng)


def synthesize_clinic(
    profile: ClinicProfile, seed: int, bad_row_fraction: float = 0.0
) -> list[dict[str, str]]:
    """One clinic's rows as CSV cells (strings; "true"/"false"; "" = missing).

    Keys are :data:`~oralfed.schemas.contract.CONTRACT_COLUMNS`; ``patient_ref`` is unique
    unless a duplicate was injected as a fault. See :func:`synthesize_clinic_with_faults`
    for which rows are bad.
    """
    rows, _ = synthesize_clinic_with_faults(profile, seed, bad_row_fraction)
    return rows


# ``map``, or one that spreads the calls over processes: each clinic's file is its own work.
MapEach = Callable[[Callable[[ClinicProfile], Path], Iterable[ClinicProfile]], Iterator[Path]]


def write_federation(
    out_dir: Path,
    n_clinics: int,
    seed: int,
    bad_row_fraction: float = 0.0,
    map_each: MapEach = map,
) -> list[Path]:
    """Write ``clinic-01.csv`` ... into ``out_dir`` and return their paths.

    Each file is written to a temporary file in the same directory and renamed into place
    (``os.replace``), so a clinic process watching the folder never reads half a file. All
    arguments are checked first: a refused call leaves ``out_dir`` as it was. A clinic's
    rows depend on its profile and the seed only, so ``map_each`` may write them in any
    order, in other processes (``oralfed.deploy.parallel``), with the same files as a result.
    """
    check_n_clinics(n_clinics)
    check_seed(seed)
    check_fraction(bad_row_fraction)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write = functools.partial(
        _write_clinic, out_dir=out_dir, seed=seed, bad_row_fraction=bad_row_fraction
    )
    return list(map_each(write, clinic_profiles(n_clinics, seed)))


def _write_clinic(
    profile: ClinicProfile, *, out_dir: Path, seed: int, bad_row_fraction: float
) -> Path:
    rows = synthesize_clinic(profile, seed, bad_row_fraction)
    return write_csv_atomically(out_dir / f"{profile.clinic_id}.csv", rows)


def write_csv_atomically(destination: Path, rows: Iterable[Mapping[str, str]]) -> Path:
    """Write ``rows`` as a contract CSV (header first, ``\\n`` line ends); return the path.

    The whole file is built in memory first, so a failure while producing rows leaves any
    existing ``destination`` untouched and no temporary file behind.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CONTRACT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(destination, buffer.getvalue())
    return destination
