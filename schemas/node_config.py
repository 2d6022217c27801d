"""A clinic node's identity and where its data and state live: the node-config format.

Both sides read it: a deployed SuperNode gets these keys through ``--node-config``; the
simulation harness writes them into the federation manifest; the coordinator's in-process
answers (``oralfed insights serve`` with the clinics on the API host) open the same files.
One reader validates them, so a node that does not know who it is refuses to start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oralfed.schemas import protocol
from oralfed.schemas.errors import ExitCode, OralFedError

__all__ = ["DEFAULT_ACCOUNTANT", "DEFAULT_EPSILON_CAP", "ClinicNode", "NodeConfigError"]

DEFAULT_EPSILON_CAP = 10.0
DEFAULT_ACCOUNTANT = "pld"


class NodeConfigError(OralFedError, ValueError):
    """The node was started without what it needs to know who and where it is."""

    exit_code = ExitCode.DEPLOYMENT


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
