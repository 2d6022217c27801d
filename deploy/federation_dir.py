"""The federation folder on the coordinator's side: where each part lives, and
``federation.json``, the coordinator's record of the federation and its clinics.

::

    DIR/federation.json            name, addresses, clinics (fingerprint, added, status)
    DIR/ca/ca.key  ca/ca.crt       the federation's CA; the key (0600) never leaves DIR
    DIR/coordinator/server.{key,crt}   the SuperLink's TLS identity (SANs: DNS + IP)
    DIR/flwr-home/config.toml      a ``flwr`` connection to the SuperLink (TLS, our CA)
    DIR/public-keys/<clinic>.pub   the node keys the coordinator registers
    DIR/clinics/<clinic>/          the clinic's startup kit, handed to that clinic only

The paths are named in one place (``FederationPaths``) so that provisioning, the SuperLink
and the ``flwr`` connection never disagree on where a file is.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from oralfed.deploy.errors import ProvisioningError
from oralfed.schemas.files import write_bytes_atomically, write_text_atomically

__all__ = [
    "DEFAULT_IP_ADDRESSES",
    "DEFAULT_PORT",
    "DEFAULT_SERVER_NAMES",
    "PUBLIC_MODE",
    "ClinicEntry",
    "ClinicStatus",
    "FederationConfig",
    "FederationPaths",
    "write_private_key",
]

FEDERATION_FILE = "federation.json"
# localhost and 127.0.0.1 both: the coordinator's ServerApp connects back to its SuperLink.
DEFAULT_SERVER_NAMES = ("localhost",)
DEFAULT_IP_ADDRESSES = ("127.0.0.1",)
DEFAULT_PORT = 8000
# Permission bits of what provisioning writes: private keys are the owner's only.
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

ClinicStatus = Literal["pending", "registered", "removed"]


@dataclass
class ClinicEntry:
    """What the coordinator remembers of a clinic: never its private key."""

    name: str
    fingerprint: str
    added: str
    status: ClinicStatus = "pending"
    node_id: int | None = None
    removed: str | None = None


@dataclass
class FederationConfig:
    """``federation.json``: the federation's name, the SuperLink's addresses, its clinics."""

    name: str
    created: str
    server_names: list[str]
    ip_addresses: list[str]
    port: int = DEFAULT_PORT
    clinics: dict[str, ClinicEntry] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """Where SuperNodes and ``flwr`` reach the SuperLink (first server name or IP)."""
        host = (self.server_names or self.ip_addresses)[0]
        return f"{host}:{self.port}"

    @classmethod
    def load(cls, fed_dir: Path) -> FederationConfig:
        path = fed_dir / FEDERATION_FILE
        if not path.is_file():
            raise ProvisioningError(
                f"{fed_dir}: not a federation folder (no {FEDERATION_FILE}); "
                "create one with `oralfed deploy init`"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        clinics = {name: ClinicEntry(**entry) for name, entry in data.pop("clinics").items()}
        return cls(**data, clinics=clinics)

    def save(self, fed_dir: Path) -> None:
        text = json.dumps(asdict(self), indent=2) + "\n"
        write_text_atomically(fed_dir / FEDERATION_FILE, text, mode=PUBLIC_MODE)


@dataclass(frozen=True)
class FederationPaths:
    """Where each part of a federation folder lives (one place, so nothing drifts)."""

    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "coordinator" / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "coordinator" / "server.crt"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    def public_key(self, clinic: str) -> Path:
        return self.root / "public-keys" / f"{clinic}.pub"

    def kit(self, clinic: str) -> Path:
        return self.root / "clinics" / clinic


def write_private_key(path: Path, key: bytes) -> None:
    """A private key: 0600 from its first byte, and never over an existing key (each key is
    made once; a clinic that needs a new one gets a new kit)."""
    write_bytes_atomically(path, key, mode=PRIVATE_MODE, exclusive=True)
