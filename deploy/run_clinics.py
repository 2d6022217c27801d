"""The clinics of a simulated run, read from its folder once per process.

Flower's Ray backend pickles the ClientApp with every message it hands a worker, so a
ClientApp that held the run's clinic list carried all of it each time: at 5,000 clinics,
unpickling those nodes was a sixth of a Ray worker's time, and the cost grew with the
federation on every message. The simulation's ClientApp holds ``partial(clinics_of_run,
out_dir)`` instead (a function and a path), and each worker reads the list once. This
module is never run as ``__main__``, so the function pickles by name and its cache is the
worker's own.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from oralfed.deploy.errors import RunFolderError
from oralfed.schemas.node_config import ClinicNode

__all__ = ["SPEC_FILE", "clinics_of_run", "simulated_clinics"]

SPEC_FILE = "simulation-spec.json"  # in the run folder: the clinics and the settings


@cache
def clinics_of_run(out_dir: Path) -> list[ClinicNode]:
    """:func:`simulated_clinics`, remembered: a run's clinics are fixed when it starts (a
    resumed run starts a new simulation process and workers)."""
    return simulated_clinics(out_dir)


def simulated_clinics(out_dir: Path) -> list[ClinicNode]:
    """The clinics of the simulation run in ``out_dir`` (from its spec), to resume it."""
    spec_path = out_dir / SPEC_FILE
    try:
        spec = json.loads(spec_path.read_text())
        return [ClinicNode.from_config(entry) for entry in spec["clinics"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunFolderError(
            f"{out_dir} is not a simulated run's folder: {spec_path} cannot be read ({error})"
        ) from None
