"""Shared CLI plumbing: one console for results, one for messages, and JSON output."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import dumps

__all__ = ["UserError", "console", "error_console", "print_json"]

console = Console()
error_console = Console(stderr=True)


class UserError(OralFedError):
    """A command-line problem the user can fix (an option, a path): one message, no trace."""

    exit_code = ExitCode.USAGE


def print_json(payload: Any) -> None:
    """Plain strict JSON on stdout (no Rich markup), so other programs can parse it."""
    sys.stdout.write(dumps(payload, indent=2) + "\n")
