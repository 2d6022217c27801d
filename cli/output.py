"""Shared CLI plumbing: one console, JSON output, and user errors without tracebacks."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from rich.console import Console

console = Console()
error_console = Console(stderr=True)


class UserError(Exception):
    """A problem the user can fix; printed as one clear message, exit code 2."""


def fail(message: str, code: int = 2) -> NoReturn:
    error_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def print_json(payload: Any) -> None:
    """Plain JSON on stdout (no Rich markup), so other programs can parse it."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
