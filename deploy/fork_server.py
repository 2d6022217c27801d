"""A fork server: one process that has done the slow start-up once, forking a fresh process
per task from that state.

Starting a ClientApp process costs an interpreter and the import of torch, the accountants
and the app, seconds on a busy 2-core node, for a fraction of a second of work. The fork
server pays that once: its *template* process imports and loads what every task needs
(``prepare``), then waits for requests and forks one child per task. A child is a separate
process, as Flower's own ``flwr-clientapp`` is: one task's crash, memory or open files end
with it and never reach the template or the next task. The template itself runs no task, so
it does not grow while it serves.

The template is forked early, from a process with no threads and no network connections, so
nothing that fork cannot copy safely (held locks, sockets of a client) is inherited. Each
child reseeds the random generators it inherited (Python's reseeds itself at fork; numpy's
and torch's global ones do not), so no two tasks share a stream.

Requests and answers are one JSON line each over a Unix socket pair.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import json
import os
import secrets
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ForkServer", "ForkServerError", "TaskExit", "TaskRunner"]

REAP_SECONDS = 0.5


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class TaskRunner:
    """What the template holds once prepared: ``run`` runs one task in a forked child;
    ``after_task`` runs in the template after a task ended, to prepare what the next one
    will need (it must leave no thread or open connection behind: the next task is forked
    from this state)."""

    run: Callable[[dict[str, Any]], None]
    after_task: Callable[[], None] = field(default=_nothing)


class ForkServerError(RuntimeError):
    """The template process is gone or answered out of protocol."""


@dataclass(frozen=True)
class TaskExit:
    pid: int
    code: int  # the exit code, or minus the signal that ended the process
    cpu_seconds: float  # user + system time the task used
    wall_seconds: float  # from its fork to its reaping (within REAP_SECONDS of its end)


class ForkServer:
    """Fork a template with ``prepare()`` done; :meth:`launch` forks a task from it.

    ``prepare`` runs once, in the template, and returns its :class:`TaskRunner`; each child
    runs ``run`` with the request it was launched with, and what it raises or exits with is
    the child's exit code (0 on return).
    """

    def __init__(self, prepare: Callable[[], TaskRunner]) -> None:
        self._prepare = prepare
        self._socket: socket.socket | None = None
        self._stream: io.BufferedRWPair | None = None
        self.pid: int | None = None

    def start(self) -> None:
        """Fork the template and wait until its preparation is done (or failed)."""
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the template
            ours.close()
            code = 0
            try:
                _serve(theirs, self._prepare)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                _flush_and_exit(code)
        theirs.close()
        self.pid, self._socket = pid, ours
        self._stream = ours.makefile("rwb")
        self._answer("ready")

    def launch(self, request: dict[str, Any]) -> int:
        """Fork a task for ``request`` (JSON-serialisable); returns the task's pid."""
        self._send({"launch": request})
        return int(self._answer("pid"))

    def exits(self) -> list[TaskExit]:
        """The tasks that ended since the last call, as the template reaped them."""
        self._send({"exits": True})
        return [TaskExit(*exit) for exit in self._answer("exits")]

    def close(self) -> None:
        """Stop the template: it exits when its socket closes; tasks finish on their own."""
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
        if self._socket is not None:
            self._socket.close()
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self._stream = self._socket = self.pid = None

    def _send(self, message: dict[str, Any]) -> None:
        if self._stream is None:
            raise ForkServerError("the fork server is not running")
        try:
            self._stream.write(json.dumps(message).encode() + b"\n")
            self._stream.flush()
        except OSError as error:
            raise ForkServerError(f"the fork server's template is gone ({error})") from None

    def _answer(self, key: str) -> Any:
        assert self._stream is not None
        try:
            line = self._stream.readline()
        except OSError as error:
            raise ForkServerError(f"the fork server's template is gone ({error})") from None
        if not line:
            raise ForkServerError("the fork server's template exited (see its log)")
        answer = json.loads(line)
        if key not in answer:
            raise ForkServerError(f"the fork server's template answered {answer}")
        return answer[key]


def _serve(channel: socket.socket, prepare: Callable[[], TaskRunner]) -> None:
    """The template's loop: prepare, then fork a child per launch request, reaping the
    children that ended (and preparing for the next after each), until the socket closes."""
    runner = prepare()
    stream = channel.makefile("rwb")
    ended: list[tuple[int, int, float, float]] = []
    started: dict[int, float] = {}

    def answer(message: dict[str, Any]) -> None:
        stream.write(json.dumps(message).encode() + b"\n")
        stream.flush()

    answer({"ready": True})
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ)
    while True:
        if reaped := _reap(started):
            ended.extend(reaped)
            runner.after_task()
            _return_freed_memory()
        if not selector.select(timeout=REAP_SECONDS):
            continue
        line = stream.readline()
        if not line:
            return  # the runtime closed its end: stop serving
        request = json.loads(line)
        if "exits" in request:
            answer({"exits": ended})
            ended = []
            continue
        pid = os.fork()
        if pid == 0:
            selector.close()
            stream.close()
            channel.close()
            _run_task(runner.run, request["launch"])
        started[pid] = time.monotonic()
        answer({"pid": pid})


def _return_freed_memory() -> None:
    """Hand the heap that ``after_task``'s arithmetic freed back to the system (glibc's
    ``malloc_trim``): freed memory otherwise stays resident in the template, and every fork
    copies its page tables, so the template's resident size shows only what it keeps (its
    bounded caches). Nothing to do where the C library has no such call."""
    library = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None
    if trim is not None:
        trim(0)


def _reap(started: dict[int, float]) -> list[tuple[int, int, float, float]]:
    """The children that ended: pid, exit code, CPU seconds, wall seconds."""
    ended: list[tuple[int, int, float, float]] = []
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        wall = time.monotonic() - started.pop(pid, time.monotonic())
        code = os.waitstatus_to_exitcode(status)
        ended.append((pid, code, usage.ru_utime + usage.ru_stime, wall))


def _run_task(task: Callable[[dict[str, Any]], None], request: dict[str, Any]) -> None:
    """In the child: reseed, run the task, exit with its code; never return."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    _reseed()
    code = 0
    try:
        task(request)
    except SystemExit as leaving:
        code = leaving.code if isinstance(leaving.code, int) else (0 if leaving.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        _flush_and_exit(code)


def _reseed() -> None:
    """Give the child generators of its own (numpy's and torch's global ones are copied by
    fork; OralFed's noise never uses them, see client/secure_random.py, but a library might)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(secrets.randbits(32))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(secrets.randbits(63))


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
