"""A clinic node's identity and where its data and state live: the node-config format.

Both sides read it: a deployed SuperNode gets these keys through ``--node-config``; the
simulation harness writes them into the federation manifest; the coordinator's in-process
answers (``oralfed insights serve`` with the clinics on the API host) open the same files.
One reader validates them, so a node that does not know who it is refuses to start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oralfed.schemas import protocol
from oralfed.schemas.clinic_policy import ClinicPolicy
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
    delta: float | None = None  # None: the ledger's registered δ, or one from a public size
    accountant: str = DEFAULT_ACCOUNTANT
    public_size: int | None = None  # a training-set size the clinic declares public
    policy: ClinicPolicy = field(default_factory=ClinicPolicy)

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
        cap = _number(config, protocol.NODE_EPSILON_CAP, DEFAULT_EPSILON_CAP)
        if cap is None or not (math.isfinite(cap) and cap > 0):
            raise NodeConfigError(
                f"{protocol.NODE_EPSILON_CAP} must be a positive number, got {cap}"
            )
        delta = _number(config, protocol.NODE_DELTA, None)
        if delta is not None and not 0 < delta < 1:
            raise NodeConfigError(f"{protocol.NODE_DELTA} must be between 0 and 1, got {delta}")
        public_size = config.get(protocol.NODE_PUBLIC_SIZE)
        try:
            size = None if public_size in (None, "") else int(str(public_size))
        except ValueError:
            size = 0
        if size is not None and size < 1:
            raise NodeConfigError(
                f"{protocol.NODE_PUBLIC_SIZE} must be a whole number of records, got {public_size}"
            )
        return cls(
            clinic_id=str(config[protocol.NODE_CLINIC_ID]),
            data_path=Path(str(config[protocol.NODE_DATA_PATH])),
            state_dir=Path(str(config[protocol.NODE_STATE_DIR])),
            dataset_id=str(config[protocol.NODE_DATASET_ID]),
            epsilon_cap=cap,
            delta=delta,
            accountant=str(config.get(protocol.NODE_ACCOUNTANT, DEFAULT_ACCOUNTANT)),
            public_size=size,
            policy=ClinicPolicy.from_config(config),
        )

    def to_config(self) -> dict[str, Any]:
        """The node-config form (also the manifest entry), inverse of :meth:`from_config`."""
        config: dict[str, Any] = {
            protocol.NODE_CLINIC_ID: self.clinic_id,
            protocol.NODE_DATA_PATH: str(self.data_path),
            protocol.NODE_STATE_DIR: str(self.state_dir),
            protocol.NODE_DATASET_ID: self.dataset_id,
            protocol.NODE_EPSILON_CAP: self.epsilon_cap,
            protocol.NODE_ACCOUNTANT: self.accountant,
            **self.policy.to_config(),
        }
        if self.delta is not None:
            config[protocol.NODE_DELTA] = self.delta
        if self.public_size is not None:
            config[protocol.NODE_PUBLIC_SIZE] = self.public_size
        return config


def _number(config: Mapping[str, Any], key: str, default: float | None) -> float | None:
    """The number under ``key`` (``default`` if absent); a value that is not one is named."""
    value = config.get(key, default)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise NodeConfigError(f"{key} must be a number, got {value!r}") from None
