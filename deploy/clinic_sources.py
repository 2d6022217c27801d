"""Which clinics take part in a run on this machine: synthetic ones, or a folder of files.

Shared by the simulated federation, simulated insight queries and the local insights API,
so that all of them name clinics, place their files and keep their ledgers the same way.
Clinic ledgers of real files live under the clinic state root (``oralfed.schemas.state``),
never in the working directory, so a clinic's lifetime budget does not reset when you
``cd``; synthetic clinics are throw-away and keep theirs in the run's own folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oralfed.deploy.errors import RunFolderError
from oralfed.deploy.parallel import map_over_cores
from oralfed.schemas.contract import PATIENT_REF_PATTERN
from oralfed.schemas.node_config import DEFAULT_EPSILON_CAP, ClinicNode
from oralfed.schemas.settings import DEFAULT_SEED
from oralfed.schemas.state import clinic_state_root
from oralfed.schemas.synthetic import write_federation

__all__ = ["CLINIC_FILE_SUFFIXES", "ClinicSource", "Notify", "clinic_files", "clinic_nodes"]

CLINIC_FILE_SUFFIXES = (".csv", ".parquet", ".pq")
Notify = Callable[[str], None]


@dataclass(frozen=True)
class ClinicSource:
    """Which clinics to ask: ``clinics`` synthetic ones, or one per file in ``data``."""

    clinics: int = 10
    data: Path | None = None
    state_dir: Path | None = None  # default: <folder>/state (synthetic), clinic state root (files)
    seed: int = DEFAULT_SEED  # of the synthetic clinics
    epsilon_cap: float = DEFAULT_EPSILON_CAP  # each clinic's lifetime cap, if not set yet


def clinic_files(folder: Path) -> list[Path]:
    """The clinic files in ``folder``: one per clinic, the file name (stem) its id."""
    if not folder.is_dir():
        raise RunFolderError(f"clinic data folder {folder}: not a folder")
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in CLINIC_FILE_SUFFIXES and p.is_file()
    )
    if not files:
        raise RunFolderError(f"clinic data folder {folder}: no clinic files (*.csv, *.parquet)")
    for path in files:
        if not re.match(PATIENT_REF_PATTERN, path.stem):
            raise RunFolderError(
                f"{path}: the file name must be a clinic id of A-Z, a-z, 0-9, '_' or '-'"
            )
    return files


def clinic_nodes(
    source: ClinicSource, folder: Path, notify: Notify = lambda _: None
) -> list[ClinicNode]:
    """The clinic nodes to ask; synthetic clinics are first written to ``<folder>/data``."""
    folder = folder.resolve()
    if source.data is None:
        files = write_federation(
            folder / "data", source.clinics, source.seed, map_each=map_over_cores
        )
        notify(f"Synthesized {len(files)} clinics in {folder / 'data'} (seed {source.seed})")
        state_root = source.state_dir or folder / "state"
    else:
        files = clinic_files(source.data)
        state_root = source.state_dir or clinic_state_root()
    state_root = state_root.resolve()
    return [
        ClinicNode(
            clinic_id=path.stem,
            data_path=path.resolve(),
            state_dir=state_root / path.stem,
            dataset_id=path.stem,
            epsilon_cap=source.epsilon_cap,
        )
        for path in files
    ]
