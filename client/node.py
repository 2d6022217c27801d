"""Who this clinic node is: read and validate its node config in one place.

A deployed SuperNode gets ``clinic-id``, ``data-path``, ``state-dir`` and ``dataset-id`` through
``--node-config``; a simulated one gets only Flower's ``partition-id`` and looks its clinic up
in the federation manifest written by ``oralfed federate``.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context

from oralfed.schemas import protocol
from oralfed.schemas.node_config import ClinicNode, NodeConfigError
from oralfed.schemas.state import state_root
from oralfed.schemas.synthetic import write_federation

__all__ = ["resolve_clinic_node", "synthetic_clinic_node"]


def resolve_clinic_node(context: Context, manifest: list[ClinicNode] | None = None) -> ClinicNode:
    """The clinic this ClientApp serves, from node config or the simulation manifest."""
    node_config = context.node_config
    if protocol.NODE_DATA_PATH in node_config:
        return ClinicNode.from_config(node_config)
    if "partition-id" not in node_config:
        raise NodeConfigError(
            f"node config has neither {protocol.NODE_DATA_PATH} nor a simulation partition-id"
        )
    partition = int(node_config["partition-id"])
    if manifest is None:
        manifest_path = context.run_config.get(protocol.RUN_MANIFEST_PATH)
        if not manifest_path:
            seed = int(context.run_config.get(protocol.CFG_SEED, 0))
            return synthetic_clinic_node(partition, int(node_config["num-partitions"]), seed)
        entries = json.loads(Path(str(manifest_path)).read_text())["clinics"]
        manifest = [ClinicNode.from_config(entry) for entry in entries]
    if partition >= len(manifest):
        raise NodeConfigError(
            f"simulated node {partition}: the manifest lists {len(manifest)} clinics"
        )
    return manifest[partition]


def synthetic_clinic_node(partition: int, num_partitions: int, seed: int) -> ClinicNode:
    """A synthetic clinic for a simulated node started without a manifest.

    That is ``flwr run .`` on Flower's Simulation Engine as Flower users run any app: each
    simulated node becomes one clinic of a synthetic federation (``schemas.synthetic``),
    generated once under ``<state root>/flwr-simulation`` (``oralfed.schemas.state``) with
    its own ledger beside it.
    """
    folder = state_root() / "flwr-simulation" / f"seed-{seed}-clinics-{num_partitions}"
    clinic_id = f"clinic-{partition + 1:02d}"
    data_path = folder / "data" / f"{clinic_id}.csv"
    if not data_path.exists():  # every node writes the same files, each atomically
        write_federation(folder / "data", num_partitions, seed)
    return ClinicNode(clinic_id, data_path, folder / "state" / clinic_id, dataset_id=clinic_id)
