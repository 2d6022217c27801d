"""Run the coordinator's Flower SuperLink with TLS and node authentication.

The SuperLink is Flower's own server (we write no network layer). This module only builds
its command line from a provisioned federation folder and starts it (``processes``
supervises it): TLS with the federation's certificates, SuperNode authentication on (only
registered keys may connect), no ``uv sync`` per run (the coordinator's environment is
fixed), and logs to a file.

Its state (registered node keys, runs, messages in flight) is kept in memory by default:
Flower's SQLite state database cost the SuperLink 2.5 s of CPU per round with 5 clinics
here (bench/deploy_overhead.py, docs/benchmarks.md), more than the clinics' work. What must
survive a restart lives elsewhere: the federation folder lists every clinic and its key
(``oralfed server start`` registers them all again at each start), and the coordinator
database and the run folder's checkpoint hold the runs. ``persist_state`` keeps Flower's
database (``superlink.db``) for operators who want Flower's own records across restarts.
Its ServerApps inherit the coordinator database's URL through the
environment variable ``oralfed.server.app`` reads; the clinic's side never imports this.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from oralfed.deploy.errors import ProvisioningError
from oralfed.deploy.federation_dir import FederationConfig, FederationPaths
from oralfed.deploy.flwr_cli import superlink_reachable
from oralfed.deploy.processes import flower_environment, venv_executable
from oralfed.server.app import COORDINATOR_URL_ENV

__all__ = [
    "SUPERLINK_LOG",
    "SuperLinkOptions",
    "start_superlink",
    "wait_until_ready",
]

SUPERLINK_DATABASE = "superlink.db"
SUPERLINK_LOG = "superlink.log"
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class SuperLinkOptions:
    """How to run one federation's SuperLink; it listens on the federation's port."""

    fed_dir: Path
    state_dir: Path
    host: str = "0.0.0.0"
    insecure: bool = False  # development only; the CLI allows it only behind --dev
    coordinator_url: str | None = None  # the runs' coordinator database (ServerApps inherit it)
    persist_state: bool = False  # Flower's state in superlink.db instead of in memory

    def command(self, config: FederationConfig) -> list[str]:
        paths = FederationPaths(self.fed_dir)
        command = [
            venv_executable("flower-superlink"),
            "--host",
            self.host,
            "--port",
            str(config.port),
            *(
                ["--database", str((self.state_dir / SUPERLINK_DATABASE).resolve())]
                if self.persist_state
                else []
            ),
            "--log-file",
            str((self.state_dir / SUPERLINK_LOG).resolve()),
            "--disable-runtime-dependency-installation",
        ]
        if self.insecure:
            return [*command, "--insecure"]
        return [
            *command,
            "--ssl-ca-certfile",
            str(paths.ca_cert.resolve()),
            "--ssl-certfile",
            str(paths.server_cert.resolve()),
            "--ssl-keyfile",
            str(paths.server_key.resolve()),
            "--enable-supernode-auth",
        ]


def start_superlink(options: SuperLinkOptions) -> subprocess.Popen[bytes]:
    """Start the SuperLink in a process group of its own (so its ServerApps stop with it)."""
    config = FederationConfig.load(options.fed_dir)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    env = flower_environment(options.state_dir / "flwr-home")
    if options.coordinator_url:
        env[COORDINATOR_URL_ENV] = options.coordinator_url
    with (options.state_dir / "superlink.out").open("ab") as output:
        return subprocess.Popen(
            options.command(config),
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until_ready(
    process: subprocess.Popen[bytes], config: FederationConfig, timeout: float = READY_TIMEOUT
) -> None:
    """Block until the SuperLink accepts connections; raise if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ProvisioningError(
                f"the SuperLink exited with code {process.returncode} before it was ready; "
                "see superlink.out and superlink.log in the state folder"
            )
        if superlink_reachable(config, timeout=0.5):
            return
        time.sleep(0.3)
    raise ProvisioningError(f"the SuperLink did not listen on {config.address} in {timeout:.0f} s")
