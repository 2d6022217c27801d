"""The one place where errors become what a user sees: a message and an exit code.

Every refusal is an :class:`~oralfed.schemas.errors.OralFedError`; its subclass says the
exit code (``oralfed.schemas.errors.ExitCode``). A settings error names run-config keys;
here they become the CLI's flags, so the library never needs to know its command line.
"""

from __future__ import annotations

from typing import NoReturn

from oralfed.cli.output import error_console
from oralfed.cli.settings_options import flag_names
from oralfed.schemas.errors import OralFedError
from oralfed.schemas.settings import SettingsError

__all__ = ["fail", "message_for"]


def message_for(error: OralFedError) -> str:
    """The error's message in the CLI's words (flags instead of setting keys)."""
    if isinstance(error, SettingsError):
        return error.naming(flag_names())
    return str(error)


def fail(error: OralFedError) -> NoReturn:
    error_console.print(
        f"[bold red]error:[/] {message_for(error)}", highlight=False, soft_wrap=True, markup=True
    )
    raise SystemExit(int(error.exit_code))
