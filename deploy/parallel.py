"""A federation's set-up spread over this machine's cores: each clinic's file is its own work.

Before a simulated federation starts, every synthetic clinic's file is written and every
clinic file is validated, one clinic at a time: about 0.1 s a clinic here, so many minutes
for ten thousand, on one core while the others wait (Ray has not started yet).
:func:`map_over_cores` runs such a per-clinic function in worker processes, in order, and
raises the first clinic's error as a serial loop would. Only what the function returns
travels back (counts and rejected rows, never a clinic's accepted records, see
``oralfed.deploy.simulated_run``); each call sees one clinic's file.

The workers are spawned, not forked: the parent may hold threads (the CLI's progress
display, torch's pools), and a fork copies their locks in whatever state they are in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

__all__ = ["PARALLEL_FROM", "map_over_cores"]

Item = TypeVar("Item")
Result = TypeVar("Result")

# Fewer items than this run in the calling process: starting a worker (importing OralFed,
# torch among it) takes a few seconds, more than a few dozen clinics' work.
PARALLEL_FROM = 200
# Items a worker takes at a time: few round trips, and still an even share at the end.
_CHUNK = 32


def map_over_cores(
    function: Callable[[Item], Result], items: Iterable[Item], workers: int | None = None
) -> Iterator[Result]:
    """``map(function, items)``, over ``workers`` processes (default: one per core) when
    there are enough items to be worth it. ``function`` and the items must pickle (a
    module-level function, or a ``functools.partial`` of one)."""
    listed = list(items)
    workers = workers or os.cpu_count() or 1
    if workers < 2 or len(listed) < PARALLEL_FROM:
        return map(function, listed)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return iter(list(pool.map(function, listed, chunksize=_CHUNK)))
