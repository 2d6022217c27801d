"""What operating a federation can refuse: run folders, provisioning, runs that stop."""

from __future__ import annotations

from oralfed.schemas.errors import ExitCode, OralFedError

__all__ = ["DeployedQueryError", "FederationStopped", "ProvisioningError", "RunFolderError"]


class RunFolderError(OralFedError):
    """A run folder or clinic folder that cannot be used; nothing was written."""

    exit_code = ExitCode.USAGE


class ProvisioningError(OralFedError):
    """A provisioning step that cannot be done as asked; the message says what and where."""

    exit_code = ExitCode.DEPLOYMENT


class FederationStopped(OralFedError):
    """A federation run that did not complete; its report (kept) says why."""

    exit_code = ExitCode.FEDERATION_FAILED


class DeployedQueryError(OralFedError):
    """A deployed query that produced no answer; the message says what Flower reported."""

    exit_code = ExitCode.FEDERATION_FAILED
