"""Who this clinic node is: read and validate its node config in one place.

A deployed SuperNode gets ``clinic-id``, ``data-path``, ``state-dir`` and ``dataset-id`` through
``--node-config``; a simulated one gets only Flower's ``partition-id`` and looks its clinic up
in the federation manifest written by ``oralfed federate``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context

from schemas import protocol
from schemas.synthetic import write_federation

DEFAULT_EPSILON_CAP = 10.0
DEFAULT_ACCOUNTANT = "pld"
SYNTHETIC_ROOT = Path.home() / ".oralfed" / "flwr-simulation"


class NodeConfigError(ValueError):
    """The node was started without what it needs to know who and where it is."""


@dataclass(frozen=True)
class ClinicNode:
    clinic_id: str
    data_path: Path
    state_dir: Path
    dataset_id: str
    epsilon_cap: float = DEFAULT_EPSILON_CAP
    delta: float | None = None  # None: the ledger's registered δ, or a default below 1/n
    accountant: str = DEFAULT_ACCOUNTANT

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClinicNode:
        missing = [
            key
            for key in (
                protocol.NODE_CLINIC_ID,
                protocol.NODE_DATA_PATH,
                protocol.NODE_STATE_DIR,
                protocol.NODE_DATASET_ID,
            )
            if not str(config.get(key, "")).strip()
        ]
        if missing:
            raise NodeConfigError(
                f"node config is missing {', '.join(missing)}; the data set identity "
                f"({protocol.NODE_DATASET_ID}) is never guessed from a file name because the "
                "privacy budget belongs to the patients, not to a file"
            )
        cap = float(config.get(protocol.NODE_EPSILON_CAP, DEFAULT_EPSILON_CAP))
        if not (math.isfinite(cap) and cap > 0):
            raise NodeConfigError(
                f"{protocol.NODE_EPSILON_CAP} must be a positive number, got {cap}"
            )
        delta = config.get(protocol.NODE_DELTA)
        if delta is not None and not 0 < float(delta) < 1:
            raise NodeConfigError(f"{protocol.NODE_DELTA} must be between 0 and 1, got {delta}")
        return cls(
            clinic_id=str(config[protocol.NODE_CLINIC_ID]),
            data_path=Path(str(config[protocol.NODE_DATA_PATH])),
            state_dir=Path(str(config[protocol.NODE_STATE_DIR])),
            dataset_id=str(config[protocol.NODE_DATASET_ID]),
            epsilon_cap=cap,
            delta=None if delta is None else float(delta),
            accountant=str(config.get(protocol.NODE_ACCOUNTANT, DEFAULT_ACCOUNTANT)),
        )

    def to_config(self) -> dict[str, Any]:
        """The node-config form (also the manifest entry), inverse of :meth:`from_config`."""
        config = {key.replace("_", "-"): value for key, value in asdict(self).items()}
        config[protocol.NODE_DATA_PATH] = str(self.data_path)
        config[protocol.NODE_STATE_DIR] = str(self.state_dir)
        if self.delta is None:
            del config[protocol.NODE_DELTA]
        return config


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
    generated once under ``~/.oralfed/flwr-simulation`` with its own ledger beside it.
    """
    folder = SYNTHETIC_ROOT / f"seed-{seed}-clinics-{num_partitions}"
    clinic_id = f"clinic-{partition + 1:02d}"
    data_path = folder / "data" / f"{clinic_id}.csv"
    if not data_path.exists():  # every node writes the same files, each atomically
        write_federation(folder / "data", num_partitions, seed)
    return ClinicNode(clinic_id, data_path, folder / "state" / clinic_id, dataset_id=clinic_id)
