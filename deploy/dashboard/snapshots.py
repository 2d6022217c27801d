"""Views built once per state of the files they read, rebuilt in the background.

Verifying a signed log of 10,000 entries and recomputing ε take seconds; both are pure
functions of the databases they read. A view is kept with the size and modification time of
every file it was built from (a SQLite database, its write-ahead log, the audit key) and is
built again as soon as any of them changes. Pages ask for the latest view
(:meth:`FileSnapshots.latest`): when the files changed since it was built, they get it at
once, marked ``pending`` (the page says the figures are those verified at that time and a
newer state is being verified), while it is rebuilt in a background thread. Nothing is shown
unverified: the figures a page shows are always those of a whole, verified build, with the
time of that build. The dashboard's watcher asks every second, so a change is usually
verified before anyone looks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["FileSnapshots", "Snapshot", "database_files"]

View = TypeVar("View")
FileState = tuple[tuple[str, int, int], ...]
log = logging.getLogger("oralfed.dashboard")


def database_files(database: Path) -> tuple[Path, ...]:
    """A SQLite database and the journal file whose changes it does not show until a
    checkpoint."""
    return (database, database.with_name(database.name + "-wal"))


def _state(files: Sequence[Path]) -> FileState:
    states = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue  # absent now (a WAL after its checkpoint): part of the state as absent
        states.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(states)


@dataclass(frozen=True)
class Snapshot(Generic[View]):
    """A built view, when it was built, and whether its files changed since (``pending``:
    a newer view is being built)."""

    view: View
    built_at: float  # seconds since the epoch
    pending: bool = False


@dataclass(frozen=True)
class _Kept(Generic[View]):
    state: FileState
    snapshot: Snapshot[View]


class FileSnapshots(Generic[View]):
    """A view per key, rebuilt when the files it was built from change.

    ``build`` must not raise for what the files hold: a view of a broken file is a view
    that says so (the dashboard's builders return the problem as their view).
    """

    def __init__(self, limit: int = 512) -> None:
        self._kept: dict[str, _Kept[View]] = {}
        self._building: set[str] = set()
        self._lock = threading.Lock()
        self._limit = limit

    def get(self, key: str, files: Sequence[Path], build: Callable[[], View]) -> View:
        """The view of the files as they are now, built first if they changed."""
        state = _state(files)
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and kept.state == state:
            return kept.snapshot.view
        return self._build(key, state, build).view

    def latest(self, key: str, files: Sequence[Path], build: Callable[[], View]) -> Snapshot[View]:
        """The newest built view at once (built now if there is none yet); if the files
        changed since, it is marked pending and a rebuild runs in the background."""
        state = _state(files)
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or kept.state == state:
                starting = False
            else:
                starting = key not in self._building
                if starting:
                    self._building.add(key)
        if kept is None:
            return self._build(key, state, build)
        if kept.state == state:
            return kept.snapshot
        if starting:
            threading.Thread(
                target=self._rebuild, args=(key, state, build), daemon=True, name=f"view {key}"
            ).start()
        return Snapshot(kept.snapshot.view, kept.snapshot.built_at, pending=True)

    def _rebuild(self, key: str, state: FileState, build: Callable[[], View]) -> None:
        try:
            self._build(key, state, build)
        except Exception:  # a builder's bug: logged, and the next request tries again
            log.exception("the view %s could not be rebuilt", key)
        finally:
            with self._lock:
                self._building.discard(key)

    def _build(self, key: str, state: FileState, build: Callable[[], View]) -> Snapshot[View]:
        snapshot = Snapshot(build(), time.time())
        with self._lock:
            if key not in self._kept and len(self._kept) >= self._limit:
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = _Kept(state, snapshot)
        return snapshot
