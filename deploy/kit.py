"""A clinic's startup kit: the one folder the coordinator hands to that clinic.

A kit holds the CA certificate, the clinic's own SuperNode auth key pair, its node config
(``clinic.json``) and a README: nothing of the CA's key, the coordinator's key or another
clinic. The clinic's private key is created inside its kit and is never copied, logged or
registered: only the public half goes to the coordinator. The clinic's supervisor reads the
kit back with ``ClinicKit.load``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from oralfed.deploy.errors import ProvisioningError
from oralfed.deploy.federation_dir import PUBLIC_MODE, write_private_key
from oralfed.deploy.pki import NodeKey
from oralfed.schemas.files import write_bytes_atomically, write_text_atomically

__all__ = ["CLINIC_STATE_ROOT", "ClinicKit", "write_kit"]

CONFIG_FILE = "clinic.json"
CA_FILE = "ca.crt"
PRIVATE_KEY_FILE = "node.key"
PUBLIC_KEY_FILE = "node.key.pub"
README_FILE = "README.md"
# A node's default state folder is <root>/<clinic>, as in deploy/systemd/oralfed-clinic@.service.
CLINIC_STATE_ROOT = "/var/lib/oralfed"


@dataclass(frozen=True)
class ClinicKit:
    """A startup kit's ``clinic.json``: who the node is and where its SuperLink is."""

    federation: str
    clinic_id: str
    dataset_id: str
    superlink: str
    state_dir: str

    @classmethod
    def load(cls, kit_dir: Path) -> ClinicKit:
        path = kit_dir / CONFIG_FILE
        required = (CONFIG_FILE, CA_FILE, PRIVATE_KEY_FILE)
        missing = [name for name in required if not (kit_dir / name).is_file()]
        if missing:
            raise ProvisioningError(f"{kit_dir}: not a startup kit (missing {', '.join(missing)})")
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as error:
            raise ProvisioningError(f"{path}: not a valid kit config ({error})") from None

    def private_key(self, kit_dir: Path) -> Path:
        return kit_dir / PRIVATE_KEY_FILE

    def ca_cert(self, kit_dir: Path) -> Path:
        return kit_dir / CA_FILE


def write_kit(kit_dir: Path, kit: ClinicKit, ca_certificate_pem: bytes, node_key: NodeKey) -> None:
    """Write a new kit into ``kit_dir``, which holds no key yet (a key is never replaced)."""
    write_private_key(kit_dir / PRIVATE_KEY_FILE, node_key.private_openssh)
    write_text_atomically(kit_dir / PUBLIC_KEY_FILE, node_key.public_line, mode=PUBLIC_MODE)
    write_bytes_atomically(kit_dir / CA_FILE, ca_certificate_pem, mode=PUBLIC_MODE)
    config = json.dumps(asdict(kit), indent=2) + "\n"
    write_text_atomically(kit_dir / CONFIG_FILE, config, mode=PUBLIC_MODE)
    write_text_atomically(kit_dir / README_FILE, _readme(kit), mode=PUBLIC_MODE)


def _readme(kit: ClinicKit) -> str:
    return f"""# OralFed startup kit: clinic `{kit.clinic_id}` in federation `{kit.federation}`

This folder is this clinic's identity in the federation. Keep it on the clinic's node only.

| file | what it is |
|------|------------|
| `{CA_FILE}` | the federation's CA certificate: the node trusts only a coordinator it signed |
| `{PRIVATE_KEY_FILE}` | this node's authentication key (**secret**, mode 0600; never send it) |
| `{PUBLIC_KEY_FILE}` | its public half, already registered with the coordinator |
| `{CONFIG_FILE}` | clinic id, data set id, coordinator address, default state folder |

## Start the node

1. Install OralFed on the node (Python 3.11): `scripts/bootstrap.sh` in the OralFed
   checkout, or the `deploy/Dockerfile.clinic` image.
2. Check the export first (nothing leaves the machine):

       oralfed data validate /srv/oralfed/clinic.csv

3. Start the node (it validates the file again and refuses to start on a file that fails
   the data contract):

       oralfed clinic start --kit /etc/oralfed/kit --data /srv/oralfed/clinic.csv \\
           --state-dir {kit.state_dir}

   The state folder holds the clinic's privacy ledger: back it up, and never delete it
   (deleting it would forget the privacy budget already spent on these patients).

The node connects out to the coordinator at `{kit.superlink}` over TLS (no inbound port
is needed). Patient records never leave this machine: only model updates and metrics do,
each charged to the ledger before it is sent.

On a server with systemd, `deploy/systemd/oralfed-clinic@.service` runs the same command.
If this kit is lost or leaked, ask the coordinator to remove the clinic
(`oralfed deploy remove-clinic {kit.clinic_id}`) and to issue a new kit.
"""
