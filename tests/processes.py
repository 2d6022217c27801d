"""What tests read of live processes in /proc: their children, their memory and open files."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if (
                    int(stat.rsplit(")", 1)[1].split()[1]) == pid
                ):  # the parent, after "(comm) state"
                    found.append(int(entry.name))
    return found


def footprint(pid: int) -> tuple[int, int]:
    """Resident memory in KiB and the number of open file descriptors of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))
