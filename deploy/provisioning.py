"""Provision a deployed federation: create it, add and remove clinics, register their keys.

These are the operator's operations (``oralfed deploy``, ``oralfed server start``); each
checks the request first and refuses with a ``ProvisioningError`` before anything is
written. The parts they combine each have a module of their own: the folder and its
``federation.json`` (``federation_dir``), keys and certificates (``pki``), the clinic's
startup kit (``kit``) and the SuperLink's node registry through ``flwr`` (``flwr_cli``).
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from oralfed.deploy.errors import ProvisioningError
from oralfed.deploy.federation_dir import (
    DEFAULT_IP_ADDRESSES,
    DEFAULT_PORT,
    DEFAULT_SERVER_NAMES,
    PUBLIC_MODE,
    ClinicEntry,
    FederationConfig,
    FederationPaths,
    write_private_key,
)
from oralfed.deploy.flwr_cli import (
    register_node,
    superlink_reachable,
    unregister_node,
    write_flwr_connection,
)
from oralfed.deploy.kit import CLINIC_STATE_ROOT, ClinicKit, write_kit
from oralfed.deploy.pki import issue_federation_credentials, new_node_key
from oralfed.schemas.contract import PATIENT_REF_PATTERN
from oralfed.schemas.files import write_bytes_atomically, write_text_atomically

__all__ = ["add_clinic", "init_federation", "list_clinics", "register_pending", "remove_clinic"]


def init_federation(
    name: str,
    out_dir: Path,
    server_names: Sequence[str] = DEFAULT_SERVER_NAMES,
    ip_addresses: Sequence[str] = DEFAULT_IP_ADDRESSES,
    port: int = DEFAULT_PORT,
) -> FederationConfig:
    """Create the CA, the coordinator's certificate and the federation config in ``out_dir``.

    Both ``localhost`` and ``127.0.0.1`` must be in the certificate when the coordinator
    runs the ServerApp beside the SuperLink: its executor connects back to it over TLS.
    """
    _check_name(name, "federation name")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ProvisioningError(
            f"the new federation folder {out_dir} already holds files; choose a new folder"
        )
    addresses = [_parse_ip(ip) for ip in ip_addresses]
    if not server_names and not addresses:
        raise ProvisioningError("give the coordinator at least one server name or IP address")
    if not 0 < port < 65536:
        raise ProvisioningError(f"the SuperLink's port must be between 1 and 65535, got {port}")
    paths = FederationPaths(out_dir)
    now = datetime.now(UTC)
    credentials = issue_federation_credentials(name, server_names, addresses, now)
    paths.ca_key.parent.mkdir(parents=True)
    paths.ca_key.parent.chmod(0o700)  # before the CA key is in it
    write_private_key(paths.ca_key, credentials.ca.key_pem)
    write_private_key(paths.server_key, credentials.server.key_pem)
    write_bytes_atomically(paths.ca_cert, credentials.ca.certificate_pem, mode=PUBLIC_MODE)
    write_bytes_atomically(paths.server_cert, credentials.server.certificate_pem, mode=PUBLIC_MODE)
    config = FederationConfig(
        name=name,
        created=now.isoformat(timespec="seconds"),
        server_names=list(server_names),
        ip_addresses=[str(address) for address in addresses],
        port=port,
    )
    write_flwr_connection(paths, config)
    config.save(out_dir)
    return config


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
    kit_dir = paths.kit(name)
    if kit_dir.exists():
        shutil.rmtree(kit_dir)  # a removed clinic's old kit: its key is revoked, never reused
    node_key = new_node_key(comment=f"oralfed-{config.name}-{name}")
    kit = ClinicKit(
        federation=config.name,
        clinic_id=name,
        dataset_id=dataset_id or name,
        superlink=config.address,
        state_dir=f"{CLINIC_STATE_ROOT}/{name}",
    )
    write_kit(kit_dir, kit, paths.ca_cert.read_bytes(), node_key)
    write_text_atomically(paths.public_key(name), node_key.public_line, mode=PUBLIC_MODE)
    config.clinics[name] = ClinicEntry(
        name=name,
        fingerprint=node_key.fingerprint,
        added=datetime.now(UTC).isoformat(timespec="seconds"),
    )
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
    paths = FederationPaths(fed_dir)
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
        unregister_node(paths, entry.node_id)
    entry.status, entry.removed, entry.node_id = "removed", datetime.now(UTC).isoformat(), None
    paths.public_key(name).unlink(missing_ok=True)
    config.save(fed_dir)
    return entry


def list_clinics(fed_dir: Path) -> list[ClinicEntry]:
    """The federation's clinics, removed ones included, in the order they were added."""
    return sorted(FederationConfig.load(fed_dir).clinics.values(), key=lambda e: e.added)


def register_pending(fed_dir: Path, *, again: bool = False) -> list[ClinicEntry]:
    """Register every pending clinic's public key with the running SuperLink; ``again``: the
    registered ones too (a SuperLink whose state is in memory starts knowing none of them).
    A removed clinic is never registered."""
    paths = FederationPaths(fed_dir)
    config = FederationConfig.load(fed_dir)
    registered = []
    wanted = {"pending", "registered"} if again else {"pending"}
    for entry in config.clinics.values():
        if entry.status not in wanted:
            continue
        entry.node_id, entry.status = register_node(paths, entry.name), "registered"
        config.save(fed_dir)  # after each one: a failure later leaves the earlier ones true
        registered.append(entry)
    return registered


def _check_name(name: str, what: str) -> None:
    if not re.match(PATIENT_REF_PATTERN, name):
        raise ProvisioningError(
            f"{what} {name!r} must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'"
        )


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ProvisioningError(f"the coordinator's IP address {text!r} is not valid") from None
