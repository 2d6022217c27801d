"""The coordinator's ``flwr`` CLI: its connection to the SuperLink and the node registry.

OralFed drives the SuperLink's Control API only through Flower's own ``flwr`` command, as
an operator would: a ``flwr`` home in the federation folder holds the one connection (TLS,
the federation's CA), and every reply is read as JSON (``--format json``).
"""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

from oralfed.deploy.errors import ProvisioningError
from oralfed.deploy.federation_dir import PUBLIC_MODE, FederationConfig, FederationPaths
from oralfed.deploy.processes import flower_environment, venv_executable
from oralfed.schemas.files import write_text_atomically

__all__ = [
    "flwr_cli",
    "register_node",
    "superlink_reachable",
    "unregister_node",
    "write_flwr_connection",
]


def write_flwr_connection(paths: FederationPaths, config: FederationConfig) -> None:
    """A ``flwr`` CLI home whose default connection is this federation's SuperLink over TLS."""
    toml = (
        "[superlink]\n"
        f'default = "{config.name}"\n\n'
        f"[superlink.{config.name}]\n"
        f'address = "{config.address}"\n'
        f'root-certificates = "{paths.ca_cert.resolve()}"\n'
    )
    write_text_atomically(paths.flwr_home / "config.toml", toml, mode=PUBLIC_MODE)


def flwr_cli(paths: FederationPaths, *arguments: str) -> dict[str, Any]:
    """Run the ``flwr`` CLI against this federation's SuperLink; its JSON reply, or an error."""
    completed = subprocess.run(
        [venv_executable("flwr"), *arguments],
        capture_output=True,
        text=True,
        env=flower_environment(paths.flwr_home),
        timeout=60,
    )
    reply = _json_reply(completed.stdout)
    if completed.returncode != 0 or (reply is not None and reply.get("success") is False):
        detail = (reply or {}).get("error-message") or completed.stderr.strip()
        raise ProvisioningError(
            f"`flwr {' '.join(arguments[:2])}` failed: {detail or completed.stdout.strip()}"
        )
    return reply or {}


def register_node(paths: FederationPaths, clinic: str) -> int:
    """Register ``clinic``'s public key with the running SuperLink; the node id it gave."""
    reply = flwr_cli(
        paths,
        "supernode",
        "register",
        str(paths.public_key(clinic).resolve()),
        "--name",
        clinic,
        "--format",
        "json",
    )
    return int(reply["node-id"])


def unregister_node(paths: FederationPaths, node_id: int) -> None:
    """Revoke a registered node's key: the SuperLink refuses that node from now on."""
    flwr_cli(paths, "supernode", "unregister", str(node_id))


def superlink_reachable(config: FederationConfig, timeout: float = 1.0) -> bool:
    """Whether something listens at the SuperLink's address (a TCP connect, no request)."""
    host, port = config.address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _json_reply(text: str) -> dict[str, Any] | None:
    """The JSON object that ends ``flwr``'s output (log lines may come before it)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except ValueError:
        return None
