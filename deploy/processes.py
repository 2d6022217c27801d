"""Flower's processes as OralFed starts and stops them, on either side of a federation.

The coordinator's SuperLink and a clinic's SuperNode run the same way: this environment's
executables, an environment of their own, a process group of their own stopped as a whole.
Both supervisors share this module, so the clinic's never imports the coordinator's code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from oralfed.schemas.files import write_text_atomically

__all__ = [
    "TASK_POLL_ENV",
    "TASK_POLL_SECONDS",
    "Supervised",
    "flower_environment",
    "stop_process_group",
    "supervise",
    "venv_executable",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXIT_POLL_SECONDS = 0.5
# Flower's executors look for new ClientApp/ServerApp work every second by default; each
# message waits for that poll twice per round (train, evaluate). Loopback polls are cheap.
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
TASK_POLL_SECONDS = 0.2


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
    env["FLWR_TELEMETRY_ENABLED"] = "0"  # a clinic's or coordinator's node never phones home
    return env


@dataclass(frozen=True)
class Supervised:
    """A started process, by name, with the file its process-group id is recorded in."""

    name: str
    process: subprocess.Popen[bytes]
    pid_file: Path


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process's whole group, then SIGKILL what is left after ``grace`` seconds."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    _signal_group(process, signal.SIGKILL)  # children of an already-exited leader
    process.wait()


def supervise(processes: Sequence[Supervised]) -> tuple[str, int]:
    """Wait in the foreground until one of ``processes`` exits or a stop signal comes, then
    stop every process group (SIGTERM, SIGINT, SIGHUP: systemd, Ctrl-C), so that no Flower
    child outlives the command. Returns the name and exit code of the process that ended
    first (code 0 when stopped by a signal)."""
    for started in processes:
        write_text_atomically(started.pid_file, f"{started.process.pid}\n")

    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        while True:
            for started in processes:
                if (code := started.process.poll()) is not None:
                    return started.name, code
            time.sleep(EXIT_POLL_SECONDS)
    except _Stopped:
        return "", 0
    finally:
        for started in processes:
            stop_process_group(started.process)
            started.pid_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


class _Stopped(Exception):
    """Raised from a signal handler to leave the wait and clean up."""
