"""CLI options derived from the run settings: one ``--flag`` per setting, never restated.

``@run_setting_options()`` adds to a Typer command one option for each setting of
:class:`~oralfed.schemas.settings.FederationSettings` that has a flag, with the setting's
type, default and help; the command receives them as one ``settings`` object. So
``oralfed federate`` and ``oralfed federation launch`` cannot drift from each other, nor
from the Flower run config, which is derived from the same fields.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Annotated, Any

import typer

from oralfed.schemas.settings import FederationSettings, RunSetting, run_settings

__all__ = ["SettingValues", "flag_names", "run_setting_options"]

SETTINGS_PARAMETER = "settings"
# A Typer command; the decorated one takes different parameters (the options, not settings).
Command = Callable[..., Any]


def flag_names() -> dict[str, str]:
    """Run-config key → the CLI flag that sets it (for error messages)."""
    return {item.key: f"--{item.flag}" for item in run_settings() if item.flag}


def run_setting_options(*, exclude: Iterable[str] = ()) -> Callable[[Command], Command]:
    """Give the decorated command one option per run setting (but ``exclude``, by field name).

    The command declares a parameter ``settings: SettingValues`` and builds the validated
    settings from it once it knows the values it decides itself (its run folder).
    """
    excluded = set(exclude)
    options = [item for item in run_settings() if item.flag and item.name not in excluded]

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != SETTINGS_PARAMETER]

        @functools.wraps(command)
        def wrapper(**given: Any) -> Any:
            values = {item.name: given.pop(item.name) for item in options}
            return command(**given, **{SETTINGS_PARAMETER: SettingValues(values)})

        # What Typer reads the options from: inspect.signature() honours __signature__,
        # an attribute that typeshed does not declare on functions.
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*own, *(_parameter(item) for item in options)]
        )
        return wrapper

    return decorate


class SettingValues:
    """The options a user gave, turned into settings only when the command is ready."""

    def __init__(self, given: Mapping[str, Any]) -> None:
        self.given = dict(given)

    def value(self, name: str) -> Any:
        """The value given for a setting, or its default."""
        given = self.given.get(name)
        return getattr(FederationSettings, name) if given is None else given

    def build(self, **more: Any) -> FederationSettings:
        """Validated settings; ``more`` are field values the command decides (run folder)."""
        return FederationSettings.from_values({**self.given, **more})


def _parameter(item: RunSetting) -> inspect.Parameter:
    option_type: Any = item.value_type
    default: Any = None if item.optional else item.default
    if item.value_type is tuple:  # hidden sizes: "64,32"
        option_type, default = str, ",".join(str(width) for width in item.default)
    elif isinstance(item.default, Enum):
        default = item.default.value
    if item.optional:
        option_type = option_type | None
    annotation = Annotated[option_type, typer.Option(f"--{item.flag}", help=item.help)]
    return inspect.Parameter(
        item.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )
