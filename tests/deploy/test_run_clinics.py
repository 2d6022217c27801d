"""A simulated run's ClientApp carries its run folder, not its clinic list: Flower's Ray
backend pickles the ClientApp with every message, so what it holds must not grow with the
federation. Each worker reads the list once and finds every partition's clinic in it."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from ray import cloudpickle

from oralfed.client.app import make_client_app
from oralfed.deploy.run_clinics import SPEC_FILE, clinics_of_run
from oralfed.schemas.node_config import ClinicNode


def run_folder(folder: Path, clinics: int) -> list[ClinicNode]:
    nodes = [
        ClinicNode(f"clinic-{i:05d}", folder / f"clinic-{i:05d}.csv", folder / "state", "d")
        for i in range(clinics)
    ]
    folder.mkdir()
    (folder / SPEC_FILE).write_text(json.dumps({"clinics": [n.to_config() for n in nodes]}))
    return nodes


def test_the_pickled_client_app_does_not_grow_with_the_federation(tmp_path: Path) -> None:
    small, large = tmp_path / "a", tmp_path / "b"
    run_folder(small, 10)
    nodes = run_folder(large, 2_000)
    sizes = {
        len(cloudpickle.dumps(make_client_app(partial(clinics_of_run, folder))))
        for folder in (small, large)
    }
    assert len(sizes) == 1
    carrying_the_list = len(cloudpickle.dumps(make_client_app(nodes)))
    assert carrying_the_list > 10 * sizes.pop()  # what every message carried before
    assert clinics_of_run(large) == nodes
    assert clinics_of_run(large) is clinics_of_run(large)  # read once per process
