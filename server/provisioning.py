"""Provision a deployed federation: its certificate authority, the coordinator's TLS
certificate, and one startup kit per clinic.

Everything lives in one federation folder on the coordinator's side::

    DIR/federation.json            name, addresses, clinics (fingerprint, added, status)
    DIR/ca/ca.key  ca/ca.crt       the federation's CA; the key (0600) never leaves DIR
    DIR/coordinator/server.{key,crt}   the SuperLink's TLS identity (SANs: DNS + IP)
    DIR/flwr-home/config.toml      a ``flwr`` connection to the SuperLink (TLS, our CA)
    DIR/public-keys/<clinic>.pub   the node keys the coordinator registers
    DIR/clinics/<clinic>/          the clinic's startup kit, handed to that clinic only

A kit holds the CA certificate, the clinic's own SuperNode auth key pair, its node config
and a README: nothing of the CA's key, the coordinator's key or another clinic. The clinic's
private key is created inside its kit and is never copied, logged or registered: only the
public half is sent to the SuperLink (``flwr supernode register``).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from schemas.contract import PATIENT_REF_PATTERN
from schemas.importer import write_text_atomically

FEDERATION_FILE = "federation.json"
KIT_CONFIG_FILE = "clinic.json"
KIT_CA_FILE = "ca.crt"
KIT_PRIVATE_KEY_FILE = "node.key"
KIT_PUBLIC_KEY_FILE = "node.key.pub"
KIT_README_FILE = "README.md"
DEFAULT_SERVER_NAMES = ("localhost",)
DEFAULT_IP_ADDRESSES = ("127.0.0.1",)
DEFAULT_PORT = 8000
CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=825)
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

ClinicStatus = Literal["pending", "registered", "removed"]


class ProvisioningError(Exception):
    """A provisioning step that cannot be done as asked; the message says what and where."""


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

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
        _write(fed_dir / FEDERATION_FILE, self.to_json(), PUBLIC_MODE)


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


def init_federation(
    name: str,
    out_dir: Path,
    server_names: list[str] | tuple[str, ...] = DEFAULT_SERVER_NAMES,
    ip_addresses: list[str] | tuple[str, ...] = DEFAULT_IP_ADDRESSES,
    port: int = DEFAULT_PORT,
) -> FederationConfig:
    """Create the CA, the coordinator's certificate and the federation config in ``out_dir``.

    Both ``localhost`` and ``127.0.0.1`` must be in the certificate when the coordinator
    runs the ServerApp beside the SuperLink: its executor connects back to it over TLS.
    """
    _check_name(name, "federation name")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ProvisioningError(f"--out {out_dir} already holds files; choose a new folder")
    addresses = [_parse_ip(ip) for ip in ip_addresses]
    if not server_names and not addresses:
        raise ProvisioningError("give at least one --server-name or --ip-address")
    if not 0 < port < 65536:
        raise ProvisioningError(f"--port must be between 1 and 65535, got {port}")
    paths = FederationPaths(out_dir)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"OralFed CA {name}")])
    ca_cert = (
        _certificate_builder(ca_name, ca_name, ca_key.public_key(), now, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(host) for host in server_names]
    alt_names += [x509.IPAddress(address) for address in addresses]
    server_subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, (list(server_names) or list(ip_addresses))[0])]
    )
    server_cert = (
        _certificate_builder(server_subject, ca_name, server_key.public_key(), now, SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(paths.ca_key, _pem_private(ca_key), PRIVATE_MODE)
    _write(paths.ca_cert, _pem_cert(ca_cert), PUBLIC_MODE)
    _write(paths.server_key, _pem_private(server_key), PRIVATE_MODE)
    _write(paths.server_cert, _pem_cert(server_cert), PUBLIC_MODE)
    os.chmod(paths.ca_key.parent, 0o700)
    config = FederationConfig(
        name=name,
        created=now.isoformat(timespec="seconds"),
        server_names=list(server_names),
        ip_addresses=[str(a) for a in addresses],
        port=port,
    )
    write_flwr_connection(paths, config)
    config.save(out_dir)
    return config


def write_flwr_connection(paths: FederationPaths, config: FederationConfig) -> None:
    """A ``flwr`` CLI home whose default connection is this federation's SuperLink over TLS."""
    toml = (
        "[superlink]\n"
        f'default = "{config.name}"\n\n'
        f"[superlink.{config.name}]\n"
        f'address = "{config.address}"\n'
        f'root-certificates = "{paths.ca_cert.resolve()}"\n'
    )
    _write(paths.flwr_home / "config.toml", toml, PUBLIC_MODE)


def add_clinic(fed_dir: Path, name: str, dataset_id: str | None = None) -> ClinicEntry:
    """Create ``name``'s startup kit and register its public key (now, or at server start)."""
    _check_name(name, "clinic name")
    config = FederationConfig.load(fed_dir)
    paths = FederationPaths(fed_dir)
    existing = config.clinics.get(name)
    if existing is not None and existing.status != "removed":
        raise ProvisioningError(
            f"clinic {name!r} is already in federation {config.name!r} ({existing.status}); "
            "remove it first to issue a new kit"
        )
    kit = paths.kit(name)
    if kit.exists():
        shutil.rmtree(kit)  # a removed clinic's old kit: its key is revoked, never reused
    node_key = ec.generate_private_key(ec.SECP384R1())
    public_openssh = node_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    private_openssh = node_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_text = public_openssh.decode("ascii") + f" oralfed-{config.name}-{name}\n"
    _write(kit / KIT_PRIVATE_KEY_FILE, private_openssh.decode("ascii"), PRIVATE_MODE)
    _write(kit / KIT_PUBLIC_KEY_FILE, public_text, PUBLIC_MODE)
    _write(paths.public_key(name), public_text, PUBLIC_MODE)
    shutil.copyfile(paths.ca_cert, kit / KIT_CA_FILE)
    os.chmod(kit / KIT_CA_FILE, PUBLIC_MODE)
    kit_config = ClinicKit(
        federation=config.name,
        clinic_id=name,
        dataset_id=dataset_id or name,
        superlink=config.address,
        state_dir=f"/var/lib/oralfed/{name}",
    )
    _write(kit / KIT_CONFIG_FILE, json.dumps(asdict(kit_config), indent=2) + "\n", PUBLIC_MODE)
    _write(kit / KIT_README_FILE, _kit_readme(kit_config), PUBLIC_MODE)
    entry = ClinicEntry(
        name=name,
        fingerprint=key_fingerprint(public_openssh),
        added=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    config.clinics[name] = entry
    config.save(fed_dir)
    if superlink_reachable(config):
        register_pending(fed_dir)
    return FederationConfig.load(fed_dir).clinics[name]


def remove_clinic(fed_dir: Path, name: str) -> ClinicEntry:
    """Revoke a clinic: unregister its key from the SuperLink and mark it removed.

    A clinic whose key was registered can only be removed while the SuperLink runs, so that
    the revocation really reaches it (a stale entry would let the old key back in).
    """
    config = FederationConfig.load(fed_dir)
    entry = config.clinics.get(name)
    if entry is None or entry.status == "removed":
        raise ProvisioningError(f"clinic {name!r} is not an active member of {config.name!r}")
    if entry.status == "registered":
        if not superlink_reachable(config):
            raise ProvisioningError(
                f"clinic {name!r} is registered with the SuperLink at {config.address}, which "
                "is not running; start it (`oralfed server start`) and remove the clinic again"
            )
        assert entry.node_id is not None
        flwr_cli(FederationPaths(fed_dir), "supernode", "unregister", str(entry.node_id))
    entry.status, entry.removed, entry.node_id = "removed", datetime.now(UTC).isoformat(), None
    FederationPaths(fed_dir).public_key(name).unlink(missing_ok=True)
    config.save(fed_dir)
    return entry


def list_clinics(fed_dir: Path) -> list[ClinicEntry]:
    return sorted(FederationConfig.load(fed_dir).clinics.values(), key=lambda e: e.added)


def register_pending(fed_dir: Path) -> list[ClinicEntry]:
    """Register every pending clinic's public key with the running SuperLink."""
    paths = FederationPaths(fed_dir)
    config = FederationConfig.load(fed_dir)
    registered = []
    for entry in config.clinics.values():
        if entry.status != "pending":
            continue
        reply = flwr_cli(
            paths,
            "supernode",
            "register",
            str(paths.public_key(entry.name).resolve()),
            "--name",
            entry.name,
            "--format",
            "json",
        )
        entry.node_id, entry.status = int(reply["node-id"]), "registered"
        config.save(fed_dir)  # after each one: a failure later leaves the earlier ones true
        registered.append(entry)
    return registered


def superlink_reachable(config: FederationConfig, timeout: float = 1.0) -> bool:
    host, port = config.address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def key_fingerprint(public_openssh: bytes) -> str:
    """OpenSSH-style ``SHA256:…`` fingerprint of a public key, as ``ssh-keygen -l`` prints."""
    blob = base64.b64decode(public_openssh.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


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
        path = kit_dir / KIT_CONFIG_FILE
        missing = [
            f
            for f in (KIT_CONFIG_FILE, KIT_CA_FILE, KIT_PRIVATE_KEY_FILE)
            if not (kit_dir / f).is_file()
        ]
        if missing:
            raise ProvisioningError(
                f"--kit {kit_dir}: not a startup kit (missing {', '.join(missing)})"
            )
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as error:
            raise ProvisioningError(f"{path}: not a valid kit config ({error})") from None

    def private_key(self, kit_dir: Path) -> Path:
        return kit_dir / KIT_PRIVATE_KEY_FILE

    def ca_cert(self, kit_dir: Path) -> Path:
        return kit_dir / KIT_CA_FILE


def flwr_cli(paths: FederationPaths, *arguments: str) -> dict[str, Any]:
    """Run the ``flwr`` CLI against this federation's SuperLink; its JSON reply, or an error."""
    command = [str(Path(sys.executable).with_name("flwr")), *arguments]
    env = {**os.environ, "FLWR_HOME": str(paths.flwr_home.resolve())}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    reply = _last_json_object(completed.stdout)
    if completed.returncode != 0 or (reply is not None and reply.get("success") is False):
        detail = (reply or {}).get("error-message") or completed.stderr.strip()
        raise ProvisioningError(
            f"`flwr {' '.join(arguments[:2])}` failed: {detail or completed.stdout.strip()}"
        )
    return reply or {}


def _last_json_object(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except ValueError:
        return None


def _check_name(name: str, what: str) -> None:
    if not re.match(PATIENT_REF_PATTERN, name):
        raise ProvisioningError(
            f"{what} {name!r} must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'"
        )


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ProvisioningError(f"--ip-address {text!r} is not an IP address") from None


def _certificate_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    validity: timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + validity)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_private(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _write(path: Path, text: str, mode: int) -> None:
    """Atomic write; the temporary file is already 0600, so a key is never briefly readable."""
    write_text_atomically(path, text)
    os.chmod(path, mode)


def _kit_readme(kit: ClinicKit) -> str:
    return f"""# OralFed startup kit: clinic `{kit.clinic_id}` in federation `{kit.federation}`

This folder is this clinic's identity in the federation. Keep it on the clinic's node only.

| file | what it is |
|------|------------|
| `{KIT_CA_FILE}` | the federation's CA certificate: the node trusts only a coordinator it signed |
| `{KIT_PRIVATE_KEY_FILE}` | this node's authentication key (**secret**, mode 0600; never send it) |
| `{KIT_PUBLIC_KEY_FILE}` | its public half, already registered with the coordinator |
| `{KIT_CONFIG_FILE}` | clinic id, data set id, coordinator address, default state folder |

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
