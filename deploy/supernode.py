"""Run a clinic's Flower SuperNode from its startup kit, after checking its data.

The node trusts only the federation's CA (``--root-certificates``) and proves who it is with
the kit's private key (``--auth-supernode-private-key``); the coordinator refuses any key it
has not registered. The data file is validated against the contract *before* the node
connects, so a clinic never joins a federation with a file that would be refused anyway.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from oralfed.client.data import ClinicData, load_clinic_data
from oralfed.deploy.kit import ClinicKit
from oralfed.deploy.processes import flower_environment, venv_executable
from oralfed.schemas.clinic_policy import ClinicPolicy, PolicyError
from oralfed.schemas.node_config import DEFAULT_EPSILON_CAP, ClinicNode

DEFAULT_NODE_PORT = 9094


@dataclass(frozen=True)
class SuperNodeOptions:
    kit_dir: Path
    data_path: Path
    state_dir: Path | None = None  # default: the kit's state folder
    superlink: str | None = None  # default: the kit's coordinator address
    port: int = DEFAULT_NODE_PORT  # the node's local runtime port; distinct per node on a host
    epsilon_cap: float = DEFAULT_EPSILON_CAP
    public_size: int | None = None  # a training-set size the clinic declares public
    policy: ClinicPolicy = field(default_factory=ClinicPolicy)

    def clinic_node(self, kit: ClinicKit) -> ClinicNode:
        return ClinicNode(
            clinic_id=kit.clinic_id,
            data_path=self.data_path.resolve(),
            state_dir=(self.state_dir or Path(kit.state_dir)).resolve(),
            dataset_id=kit.dataset_id,
            epsilon_cap=self.epsilon_cap,
            public_size=self.public_size,
            policy=self.policy,
        )


def read_policy(path: Path) -> ClinicPolicy:
    """A clinic policy from a JSON file of node-config keys (``accept-tasks``, …)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PolicyError(f"{path}: not a readable JSON policy file ({error})") from None
    if not isinstance(values, dict):
        raise PolicyError(f"{path}: a policy file holds one JSON object of node-config keys")
    known = set(ClinicPolicy().to_config())
    if unknown := sorted(set(values) - known):
        raise PolicyError(f"{path}: unknown policy keys {', '.join(unknown)}")
    return ClinicPolicy.from_config(values)


def check_clinic_data(node: ClinicNode) -> ClinicData:
    """Import and encode the clinic's file as training would; raises ContractError (file-level
    problems) or ClinicDataError (no usable research-tier rows) before anything connects."""
    return load_clinic_data(node.clinic_id, node.data_path)


def node_config_text(node: ClinicNode) -> str:
    """``--node-config`` text: TOML ``key=value`` pairs (JSON strings are valid TOML strings)."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in node.to_config().items())


def supernode_command(options: SuperNodeOptions, kit: ClinicKit, node: ClinicNode) -> list[str]:
    return [
        venv_executable("flower-supernode"),
        "--superlink",
        options.superlink or kit.superlink,
        "--root-certificates",
        str(kit.ca_cert(options.kit_dir).resolve()),
        "--auth-supernode-private-key",
        str(kit.private_key(options.kit_dir).resolve()),
        "--node-config",
        node_config_text(node),
        "--port",
        str(options.port),
    ]


def start_supernode(
    options: SuperNodeOptions, kit: ClinicKit, node: ClinicNode
) -> subprocess.Popen[bytes]:
    """Start the SuperNode in its own process group, with its own ``FLWR_HOME`` in its state
    folder; its output goes to ``supernode.log`` there."""
    node.state_dir.mkdir(parents=True, exist_ok=True)
    env = flower_environment(node.state_dir / "flwr-home")
    with (node.state_dir / "supernode.log").open("ab") as output:
        return subprocess.Popen(
            supernode_command(options, kit, node),
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
