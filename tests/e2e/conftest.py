"""What the Deployment Engine tests share: a provisioned federation on 127.0.0.1 with TLS
and node authentication, its processes, and the ``oralfed`` command.

Every process is started in a process group of its own and stopped when the federation's
``with`` block ends, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from oralfed.deploy.provisioning import add_clinic, init_federation, list_clinics

ORALFED = [sys.executable, "-m", "oralfed.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def oralfed(
    *arguments: str | Path, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [*ORALFED, *map(str, arguments)], capture_output=True, text=True, timeout=timeout
    )
    if check and completed.returncode != 0:
        raise AssertionError(
            f"oralfed {arguments[:2]} failed ({completed.returncode}):\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    return completed


@dataclass
class Deployment:
    root: Path
    fed: Path
    data: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *arguments: str | Path) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.out").open("ab")
        process = subprocess.Popen(
            [*ORALFED, *map(str, arguments)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def start_clinic(self, name: str, kit: Path, data_file: str = "clinic-01.csv") -> Any:
        return self.start(
            name,
            "clinic",
            "start",
            "--kit",
            kit,
            "--data",
            self.data / data_file,
            "--state-dir",
            self.root / "state" / name,
            "--port",
            str(free_port()),
        )

    def stop(self, name: str) -> None:
        """SIGTERM the command (it stops its Flower children), then kill what is left."""
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        _kill_recorded_group(self.root, name)

    def kill(self, name: str) -> None:
        """SIGKILL, as a crashed machine would: no goodbye reaches the SuperLink."""
        _kill_recorded_group(self.root, name)
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text(errors="replace")

    def descendants(self, name: str, program: str) -> list[int]:
        """The live processes running ``program`` that the command ``name`` started, however
        deep (found in /proc by command line and parentage; other deployments' are not)."""
        ancestor, found = self.processes[name].pid, []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                named = any(Path(os.fsdecode(arg)).name == program for arg in argv[:2])
                if named and ancestor in _ancestors(int(entry.name)):
                    found.append(int(entry.name))
        return found


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent, after "(comm) state"
        chain.append(pid)
    return chain


def _kill_recorded_group(root: Path, name: str) -> None:
    """Backstop: SIGKILL the Flower process group the command recorded in its pid file."""
    folder = root / "coordinator" if name == "server" else root / "state" / name
    for pid_file in folder.glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def clinic_status(fed: Path) -> dict[str, str]:
    return {entry.name: entry.status for entry in list_clinics(fed)}


@contextlib.contextmanager
def running_federation(
    root: Path, clinics: tuple[str, ...], *server_options: str
) -> Iterator[Deployment]:
    """Synthetic data, a provisioned federation, its coordinator (``oralfed server start``
    with ``server_options``) and ``clinics`` started through the ``oralfed`` command; every
    process is stopped when the block ends."""
    fed = root / "federation"
    oralfed("data", "synth", "--out", root / "data", "--clinics", str(len(clinics)), "--seed", "5")
    # Provisioning through the library (its CLI is covered in tests/server).
    init_federation("e2e", fed, port=free_port())
    for clinic in clinics:
        add_clinic(fed, clinic)
    deployment = Deployment(root, fed, root / "data")
    try:
        deployment.start(
            "server",
            "server",
            "start",
            "--federation-dir",
            fed,
            "--state-dir",
            root / "coordinator",
            "--host",
            "127.0.0.1",
            *server_options,
        )
        wait_for(
            lambda: set(clinic_status(fed).values()) == {"registered"},
            90,
            "the SuperLink to start and register the pending clinics",
        )
        for clinic in clinics:
            deployment.start_clinic(clinic, fed / "clinics" / clinic, f"{clinic}.csv")
        yield deployment
    finally:
        for name in list(deployment.processes):
            deployment.stop(name)


def federate(
    data: Path, state: Path, out: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``oralfed federate`` of the clinic files in ``data``: 2 rounds, target ε 2, seed 3."""
    return oralfed(
        "federate",
        "--data",
        data,
        "--state-dir",
        state,
        "--out",
        out,
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--target-epsilon",
        "2",
        "--seed",
        "3",
        *extra,
        check=check,
    )


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A simulated federation of 3 synthetic clinics, run once for the session: its data, the
    clinics' state and ``run1`` (with baselines); later tests add runs to it."""
    root = tmp_path_factory.mktemp("federation")
    oralfed("data", "synth", "--out", root / "data", "--clinics", "3", "--seed", "11")
    federate(root / "data", root / "state", root / "run1", "--baselines")
    report = json.loads((root / "run1" / "report.json").read_text())
    return {"root": root, "report": report}
