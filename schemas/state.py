"""Where OralFed keeps its state: one root, never the working directory.

A clinic's lifetime ledger must not depend on where a command happens to be run: a budget
that resets when you ``cd`` is no budget. Every default location (clinic ledgers, the
coordinator's database, insight API state, simulated clinics of ``flwr run .``) is a folder
under one root, chosen in this order:

1. an explicit folder given for the command (``--state-dir``, ``--coordinator-url`` …);
2. the ``ORALFED_HOME`` environment variable;
3. ``~/.oralfed``.

A relative ``ORALFED_HOME`` is refused: it would again depend on the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from oralfed.schemas.errors import ExitCode, OralFedError

__all__ = [
    "ORALFED_HOME_ENV",
    "StateRootError",
    "clinic_state_root",
    "coordinator_state_dir",
    "state_root",
]

ORALFED_HOME_ENV = "ORALFED_HOME"


class StateRootError(OralFedError):
    """``ORALFED_HOME`` is set to something that cannot be the state root."""

    exit_code = ExitCode.USAGE


def state_root() -> Path:
    """The state root: ``$ORALFED_HOME`` if set (absolute), else ``~/.oralfed``."""
    configured = os.environ.get(ORALFED_HOME_ENV, "").strip()
    if not configured:
        return Path.home() / ".oralfed"
    root = Path(configured).expanduser()
    if not root.is_absolute():
        raise StateRootError(
            f"{ORALFED_HOME_ENV}={configured!r} is relative; the state root must be an "
            "absolute folder so that a ledger never depends on the working directory"
        )
    return root


def clinic_state_root() -> Path:
    """Default parent of the clinics' state folders (one folder per clinic: ledger, log)."""
    return state_root() / "clinics"


def coordinator_state_dir() -> Path:
    """Default folder of the coordinator's own state (database, audit log, keys)."""
    return state_root() / "coordinator"
