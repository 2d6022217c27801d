"""One root exception for everything OralFed refuses, and one table of exit codes.

Following Flower (``flwr/app/exception.py``, ``flwr/supercore/exit/exit_code.py``): every
error a user can cause or fix is an ``OralFedError`` whose subclass carries its exit code,
so the CLI maps errors in one place (``oralfed.cli.errors``) and a script can tell a refused
budget from a broken file by the code alone. Library messages name the *setting* or the
file, row and field; only the CLI knows its flags and adds them.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

__all__ = ["EXIT_CODE_HELP", "ExitCode", "OralFedError"]


class ExitCode(IntEnum):
    """Exit codes of the ``oralfed`` command. 0 is success; 1 is an audit that failed."""

    SUCCESS = 0
    VERIFICATION_FAILED = 1
    USAGE = 2
    INVALID_DATA = 3
    INVALID_QUERY = 4
    BUDGET_EXCEEDED = 5
    LEDGER = 6
    AUDIT = 7
    MODEL_FORMAT = 8
    DEPLOYMENT = 9
    FEDERATION_FAILED = 10
    INTERRUPTED = 130


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.SUCCESS: "done",
    ExitCode.VERIFICATION_FAILED: "an audit log, ledger or budget report did not verify",
    ExitCode.USAGE: "an option or setting is out of range, missing or contradictory",
    ExitCode.INVALID_DATA: "a clinic file or data set cannot be used (see the file, row, field)",
    ExitCode.INVALID_QUERY: "an insight query, profile or reference population is not valid",
    ExitCode.BUDGET_EXCEEDED: "the release would pass a privacy budget cap; nothing was spent",
    ExitCode.LEDGER: "a privacy ledger cannot be read or does not know the data set",
    ExitCode.AUDIT: "an audit log or its keys cannot be read",
    ExitCode.MODEL_FORMAT: "a model file is not an OralFed model",
    ExitCode.DEPLOYMENT: "a federation folder, kit, certificate or node config is unusable",
    ExitCode.FEDERATION_FAILED: "a federation run or deployed query did not complete",
    ExitCode.INTERRUPTED: "stopped by Ctrl-C; every process the command started was ended",
}


class OralFedError(Exception):
    """Something OralFed refused, with a message that says why and what to do.

    A refused operation has changed nothing. Subclasses set ``exit_code``.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.USAGE
