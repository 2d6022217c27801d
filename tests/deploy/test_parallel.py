"""A large federation's set-up over the cores: the same files and the same errors as serially."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from oralfed.client.import_receipt import RECEIPTS_DIR
from oralfed.deploy.clinic_sources import ClinicSource, clinic_nodes
from oralfed.deploy.parallel import PARALLEL_FROM, map_over_cores
from oralfed.deploy.simulated_run import _check_clinic_file
from oralfed.schemas.importer import ContractError
from oralfed.schemas.settings import FederationSettings
from oralfed.schemas.synthetic import write_federation


def test_a_large_federation_is_written_and_checked_over_the_cores_as_it_is_serially(
    tmp_path: Path,
) -> None:
    clinics = PARALLEL_FROM
    serial = write_federation(tmp_path / "serial", clinics, 7)
    nodes = clinic_nodes(ClinicSource(clinics=clinics, seed=7), tmp_path / "run")
    assert [node.data_path.name for node in nodes] == [path.name for path in serial]
    for node, path in zip(nodes, serial, strict=True):
        assert node.data_path.read_bytes() == path.read_bytes()

    check = partial(_check_clinic_file, settings=FederationSettings(), keep=True)
    checked = list(map_over_cores(check, nodes, workers=2))
    assert len(checked) == clinics
    assert all(checked[i] == check(nodes[i]) for i in range(0, clinics, 25))  # in order
    # each synthetic clinic's import is kept for its first request, in its own state only
    assert all(len(list((n.state_dir / RECEIPTS_DIR).iterdir())) == 1 for n in nodes)
    elsewhere = replace(nodes[0], state_dir=tmp_path / "clinic-files-own-state")
    _check_clinic_file(elsewhere, FederationSettings(), keep=False)
    assert not elsewhere.state_dir.exists()  # a check of clinics' own files writes nothing

    broken = nodes[clinics // 2].data_path
    broken.write_text("patient_ref\n")  # a header of one column: not the contract
    with pytest.raises(ContractError, match=broken.name):
        list(map_over_cores(check, nodes, workers=2))
