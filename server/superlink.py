"""Run the coordinator's Flower SuperLink with TLS, node authentication and durable state.

The SuperLink is Flower's own server (we write no network layer). This module only builds
its command line from a provisioned federation folder and supervises the process: TLS with
the federation's certificates, SuperNode authentication on (only registered keys may
connect), a persistent ``--database`` (registered nodes and runs survive a restart), no
``uv sync`` per run (the coordinator's environment is fixed), and logs to a file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from schemas.importer import write_text_atomically
from server.app import COORDINATOR_URL_ENV
from server.provisioning import (
    FederationConfig,
    FederationPaths,
    ProvisioningError,
    superlink_reachable,
)

SUPERLINK_DATABASE = "superlink.db"
SUPERLINK_LOG = "superlink.log"
READY_TIMEOUT = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Flower's executors look for new ClientApp/ServerApp work every second by default; each
# message waits for that poll twice per round (train, evaluate). Loopback polls are cheap.
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
TASK_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class SuperLinkOptions:
    fed_dir: Path
    state_dir: Path
    host: str = "0.0.0.0"
    port: int | None = None  # default: the federation's port
    insecure: bool = False  # development only; the CLI allows it only behind --dev
    coordinator_url: str | None = None  # the runs' coordinator database (ServerApps inherit it)

    def command(self, config: FederationConfig) -> list[str]:
        paths = FederationPaths(self.fed_dir)
        command = [
            venv_executable("flower-superlink"),
            "--host",
            self.host,
            "--port",
            str(self.port or config.port),
            "--database",
            str((self.state_dir / SUPERLINK_DATABASE).resolve()),
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


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process's whole group, then SIGKILL what is left after ``grace`` seconds."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    _signal_group(process, signal.SIGKILL)  # children of an already-exited leader
    process.wait()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def venv_executable(name: str) -> str:
    """A console script of this environment (Flower's, ours) by absolute path."""
    return str(Path(sys.executable).with_name(name))


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's processes: this venv's ``bin`` first on PATH (they start
    ``flower-superexec`` and ``flwr-*app`` by name), a ``FLWR_HOME`` of their own (the
    app-bundle install check is not atomic between processes sharing one), and a faster
    executor poll than Flower's 1 s unless the operator set one (bench/deploy_overhead.py)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "FLWR_HOME": str(flwr_home.resolve())}
    env.setdefault(TASK_POLL_ENV, str(TASK_POLL_SECONDS))
    return env


def supervise(process: subprocess.Popen[bytes], pid_file: Path) -> int:
    """Wait for ``process`` in the foreground; on SIGTERM, SIGINT or SIGHUP stop its whole
    group before returning, so that no Flower child outlives the command (systemd, Ctrl-C)."""
    write_text_atomically(pid_file, f"{process.pid}\n")

    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        return process.wait()
    except _Stopped:
        return 0
    finally:
        stop_process_group(process)
        pid_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stopped(Exception):
    """Raised from a signal handler to leave the wait and clean up."""
