"""The fork server forks a fresh process per task from a template that never grows.

Real forks, real processes: each task here allocates memory, opens files it never closes,
crashes or is killed, and the template and the launching process must come out of many of
them exactly as they went in.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oralfed.deploy.fork_server import ForkServer, ForkServerError, TaskExit, TaskRunner
from tests.processes import footprint


def _leaky_task(request: dict[str, Any]) -> None:
    """Behaves like a careless handler: keeps 40 MB and 20 open files, then ends as asked."""
    hoard = bytearray(40 * 1024 * 1024)
    hoard[::4096] = b"x" * len(hoard[::4096])
    handles = [open(os.devnull) for _ in range(20)]  # noqa: SIM115 (left open on purpose)
    Path(request["out"]).write_text(json.dumps({"pid": os.getpid(), "handles": len(handles)}))
    match request.get("end"):
        case "raise":
            raise RuntimeError("the handler crashed")
        case "exit":
            raise SystemExit(7)
        case "hang":
            time.sleep(60)


def _random_task(request: dict[str, Any]) -> None:
    import numpy
    import torch

    values = [float(torch.rand(1)), float(numpy.random.rand())]
    Path(request["out"]).write_text(json.dumps(values))


def _prepare(marker: Path) -> TaskRunner:
    import numpy  # noqa: F401 (imported in the template, inherited by every task)
    import torch  # noqa: F401

    def after_task() -> None:
        with marker.open("a") as handle:
            handle.write(f"{os.getpid()}\n")

    def run(request: dict[str, Any]) -> None:
        (_random_task if request.get("random") else _leaky_task)(request)

    return TaskRunner(run, after_task)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ForkServer]:
    fork_server = ForkServer(lambda: _prepare(tmp_path / "after-task.log"))
    fork_server.start()
    try:
        yield fork_server
    finally:
        fork_server.close()


def _wait_for_exits(server: ForkServer, count: int, timeout: float = 60) -> list[TaskExit]:
    exits: list[TaskExit] = []
    deadline = time.monotonic() + timeout
    while len(exits) < count:
        assert time.monotonic() < deadline, f"only {len(exits)} of {count} tasks ended"
        exits += server.exits()
        time.sleep(0.05)
    return exits


def test_tasks_run_in_their_own_processes_and_report_how_they_ended(
    server: ForkServer, tmp_path: Path
) -> None:
    ends = {"ok": None, "raise": "raise", "exit": "exit"}
    pids = {
        name: server.launch({"out": str(tmp_path / name), "end": end}) for name, end in ends.items()
    }
    exits = {ended.pid: ended for ended in _wait_for_exits(server, 3)}
    assert server.pid not in pids.values() and os.getpid() not in pids.values()
    assert {name: exits[pid].code for name, pid in pids.items()} == {"ok": 0, "raise": 1, "exit": 7}
    for name, pid in pids.items():
        assert json.loads((tmp_path / name).read_text())["pid"] == pid
        assert exits[pid].wall_seconds >= 0 and exits[pid].cpu_seconds >= 0


def test_a_killed_task_is_reported_and_the_next_one_is_served(
    server: ForkServer, tmp_path: Path
) -> None:
    hung = server.launch({"out": str(tmp_path / "hung"), "end": "hang"})
    deadline = time.monotonic() + 30
    while not (tmp_path / "hung").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(hung, signal.SIGKILL)  # as the kernel's OOM killer would
    [killed] = _wait_for_exits(server, 1)
    assert (killed.pid, killed.code) == (hung, -signal.SIGKILL)
    following = server.launch({"out": str(tmp_path / "next")})
    [served] = _wait_for_exits(server, 1)
    assert (served.pid, served.code) == (following, 0)


def test_many_tasks_leave_the_template_and_the_launcher_as_they_were(
    server: ForkServer, tmp_path: Path
) -> None:
    assert server.pid is not None
    server.launch({"out": str(tmp_path / "warm-up")})
    _wait_for_exits(server, 1)
    template_before, launcher_fds_before = footprint(server.pid), footprint(os.getpid())[1]
    for index in range(30):
        server.launch(
            {"out": str(tmp_path / f"task-{index}"), "end": "raise" if index % 3 else None}
        )
        _wait_for_exits(server, 1)
    rss_after, fds_after = footprint(server.pid)
    assert fds_after == template_before[1]
    assert rss_after - template_before[0] < 4 * 1024  # KiB: each task kept 40 MB, none stayed
    assert footprint(os.getpid())[1] == launcher_fds_before
    after_task = (tmp_path / "after-task.log").read_text().split()
    assert set(after_task) == {str(server.pid)}  # the template prepared after each task
    assert len(after_task) >= 31


def test_every_task_draws_its_own_random_streams(server: ForkServer, tmp_path: Path) -> None:
    for index in range(2):
        server.launch({"out": str(tmp_path / f"random-{index}"), "random": True})
    _wait_for_exits(server, 2)
    first, second = (json.loads((tmp_path / f"random-{i}").read_text()) for i in range(2))
    assert first[0] != second[0] and first[1] != second[1]  # torch's and numpy's generators


def test_a_template_that_fails_to_prepare_is_an_error_not_a_hang(tmp_path: Path) -> None:
    def broken() -> TaskRunner:
        raise ImportError("no torch here")

    fork_server = ForkServer(broken)
    with pytest.raises(ForkServerError, match="exited"):
        fork_server.start()
    fork_server.close()


def test_a_template_that_is_gone_refuses_launches(server: ForkServer, tmp_path: Path) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    with pytest.raises(ForkServerError):
        server.launch({"out": str(tmp_path / "never")})
