"""Run a clinic's Flower SuperNode from its startup kit, after checking its data.

The node trusts only the federation's CA (``--root-certificates``) and proves who it is with
the kit's private key (``--auth-supernode-private-key``); the coordinator refuses any key it
has not registered. The data file is validated against the contract *before* the node
connects, so a clinic never joins a federation with a file that would be refused anyway.

Two runtimes run the node's ClientApp messages (``--runtime``):

* ``warm`` (the default): the SuperNode with ``--isolation process`` and, beside it, the
  clinic runtime (``oralfed.deploy.clinic_runtime``), which forks each message's process
  from a template that has the app imported and the file loaded. The two authenticate to
  each other with a fresh SuperExec secret per start (``superexec.secret``, mode 0600).
* ``flower``: the SuperNode starts Flower's own SuperExec, which starts a new
  ``flwr-clientapp`` interpreter per message (seconds of imports each; for comparison,
  ``bench/deploy_overhead.py``).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from oralfed.client.data import ClinicData, load_clinic_data
from oralfed.deploy.kit import ClinicKit
from oralfed.deploy.processes import Supervised, flower_environment, venv_executable
from oralfed.schemas.clinic_policy import ClinicPolicy, PolicyError
from oralfed.schemas.files import write_bytes_atomically
from oralfed.schemas.node_config import DEFAULT_EPSILON_CAP, ClinicNode

DEFAULT_NODE_PORT = 9094
SECRET_FILE = "superexec.secret"


class NodeRuntime(StrEnum):
    """How the node's ClientApp messages are run (see the module's docstring)."""

    WARM = "warm"
    FLOWER = "flower"


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
    runtime: NodeRuntime = NodeRuntime.WARM

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
    isolation = (
        ["--isolation", "process", "--superexec-auth-secret-file", str(_secret_file(node))]
        if options.runtime is NodeRuntime.WARM
        else []
    )
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
        *isolation,
    ]


def runtime_command(options: SuperNodeOptions, node: ClinicNode) -> list[str]:
    return [
        sys.executable,
        "-m",
        "oralfed.deploy.clinic_runtime",
        "--runtime-api-address",
        f"127.0.0.1:{options.port}",
        "--secret-file",
        str(_secret_file(node)),
        "--node-config-json",
        json.dumps(node.to_config()),
    ]


def start_supernode(
    options: SuperNodeOptions, kit: ClinicKit, node: ClinicNode
) -> list[Supervised]:
    """Start the SuperNode (and, for the warm runtime, the clinic runtime beside it), each in
    its own process group, with their own ``FLWR_HOME`` in the state folder; their output
    goes to ``supernode.log`` and ``clinic-runtime.log`` there."""
    node.state_dir.mkdir(parents=True, exist_ok=True)
    env = flower_environment(node.state_dir / "flwr-home")
    commands = {"supernode": supernode_command(options, kit, node)}
    if options.runtime is NodeRuntime.WARM:
        # A new secret per start: only this start's runtime can take this node's tasks.
        write_bytes_atomically(_secret_file(node), secrets.token_bytes(32), mode=0o600)
        commands["clinic-runtime"] = runtime_command(options, node)
    return [_start(name, command, env, node.state_dir) for name, command in commands.items()]


def _start(name: str, command: list[str], env: dict[str, str], state_dir: Path) -> Supervised:
    with (state_dir / f"{name}.log").open("ab") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Supervised(name, process, state_dir / f"{name}.pid")


def _secret_file(node: ClinicNode) -> Path:
    return node.state_dir / SECRET_FILE
