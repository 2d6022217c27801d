"""Views built once per state of the files they read.

Verifying a signed log of 10,000 entries and recomputing ε take longer than a page may; both
are pure functions of the databases they read. A view is kept with the size and modification
time of every file it was built from (a SQLite database and its write-ahead log) and built
again as soon as any of them changes, so a page never shows a stale figure and an unchanged
federation costs nothing to look at again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["FileSnapshots", "database_files"]

View = TypeVar("View")
FileState = tuple[tuple[str, int, int], ...]


def database_files(database: Path) -> tuple[Path, ...]:
    """A SQLite database and the journal files whose changes it does not show until a
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


class FileSnapshots(Generic[View]):
    """A view per key, rebuilt when the files it was built from change."""

    def __init__(self, limit: int = 512) -> None:
        self._views: dict[str, tuple[FileState, View]] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def get(self, key: str, files: Sequence[Path], build: Callable[[], View]) -> View:
        state = _state(files)
        with self._lock:
            kept = self._views.get(key)
        if kept is not None and kept[0] == state:
            return kept[1]
        view = build()
        with self._lock:
            if len(self._views) >= self._limit:
                self._views.pop(next(iter(self._views)))
            self._views[key] = (state, view)
        return view
