"""What a clinic lets a coordinator ask of it: its policy, read from its node config.

The coordinator chooses the model, the hyper-parameters, the rounds and the evaluation; a
curious or malicious one chooses them to learn about patients (a network that fires on one
feature vector, noise so small that ε explodes, hundreds of rounds). Every ε is charged,
so the ledger's cap bounds the damage; the policy bounds it per run, and refuses requests
no honest federation needs, before anything is computed. The defaults protect a clinic
that sets nothing; each bound can be tightened (or loosened) in the node config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from oralfed.schemas import protocol
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.features import Task

__all__ = ["ClinicPolicy", "PolicyError", "PolicyRefusal"]


class PolicyError(OralFedError, ValueError):
    """A policy value in the node config that cannot be a policy."""

    exit_code = ExitCode.DEPLOYMENT


class PolicyRefusal(OralFedError):
    """A request outside the clinic's policy; the message says which bound and why."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class ClinicPolicy:
    """Bounds on any one run's requests. Defaults fit the platform's own defaults (a target
    ε of 3 over 5 rounds, an MLP of 64 and 32 units) with room to tune, and no more."""

    tasks: frozenset[Task] = field(default_factory=lambda: frozenset(Task))
    max_hidden_layers: int = 3
    max_hidden_width: int = 256
    max_epsilon_per_run: float = 5.0
    min_noise_multiplier: float = 0.5
    max_rounds_per_run: int = 100
    max_eval_epsilon: float = 1.0  # per evaluation release

    def __post_init__(self) -> None:
        if not self.tasks:
            raise PolicyError(f"{protocol.NODE_ACCEPT_TASKS} must name at least one task")
        for key, value in (
            (protocol.NODE_ACCEPT_MAX_LAYERS, self.max_hidden_layers),
            (protocol.NODE_ACCEPT_MAX_WIDTH, self.max_hidden_width),
            (protocol.NODE_MAX_ROUNDS_PER_RUN, self.max_rounds_per_run),
        ):
            if value < 1:
                raise PolicyError(f"{key} must be at least 1, got {value}")
        for key, number in (
            (protocol.NODE_MAX_EPSILON_PER_RUN, self.max_epsilon_per_run),
            (protocol.NODE_MIN_NOISE_MULTIPLIER, self.min_noise_multiplier),
            (protocol.NODE_MAX_EVAL_EPSILON, self.max_eval_epsilon),
        ):
            if not (math.isfinite(number) and number > 0):
                raise PolicyError(f"{key} must be a positive number, got {number}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClinicPolicy:
        """The policy from node-config keys (``accept-tasks = "untreated_caries,…"`` …)."""
        defaults = cls()
        tasks = config.get(protocol.NODE_ACCEPT_TASKS)
        try:
            accepted = (
                frozenset(Task(t.strip()) for t in str(tasks).split(",") if t.strip())
                if tasks
                else defaults.tasks
            )
        except ValueError as error:
            raise PolicyError(f"{protocol.NODE_ACCEPT_TASKS}: {error}") from None
        return cls(
            tasks=accepted,
            max_hidden_layers=_whole(
                config, protocol.NODE_ACCEPT_MAX_LAYERS, defaults.max_hidden_layers
            ),
            max_hidden_width=_whole(
                config, protocol.NODE_ACCEPT_MAX_WIDTH, defaults.max_hidden_width
            ),
            max_epsilon_per_run=_number(
                config, protocol.NODE_MAX_EPSILON_PER_RUN, defaults.max_epsilon_per_run
            ),
            min_noise_multiplier=_number(
                config, protocol.NODE_MIN_NOISE_MULTIPLIER, defaults.min_noise_multiplier
            ),
            max_rounds_per_run=_whole(
                config, protocol.NODE_MAX_ROUNDS_PER_RUN, defaults.max_rounds_per_run
            ),
            max_eval_epsilon=_number(
                config, protocol.NODE_MAX_EVAL_EPSILON, defaults.max_eval_epsilon
            ),
        )

    def to_config(self) -> dict[str, Any]:
        """The node-config form (inverse of :meth:`from_config`)."""
        return {
            protocol.NODE_ACCEPT_TASKS: ",".join(sorted(task.value for task in self.tasks)),
            protocol.NODE_ACCEPT_MAX_LAYERS: self.max_hidden_layers,
            protocol.NODE_ACCEPT_MAX_WIDTH: self.max_hidden_width,
            protocol.NODE_MAX_EPSILON_PER_RUN: self.max_epsilon_per_run,
            protocol.NODE_MIN_NOISE_MULTIPLIER: self.min_noise_multiplier,
            protocol.NODE_MAX_ROUNDS_PER_RUN: self.max_rounds_per_run,
            protocol.NODE_MAX_EVAL_EPSILON: self.max_eval_epsilon,
        }

    def public_dict(self) -> dict[str, Any]:
        """For the clinic's audit log: the policy in force, JSON-friendly."""
        values = asdict(self)
        values["tasks"] = sorted(task.value for task in self.tasks)
        return values

    def check_model(self, task: Task, hidden_sizes: tuple[int, ...]) -> None:
        """Refuse a task or an architecture the clinic does not accept."""
        if task not in self.tasks:
            raise PolicyRefusal(f"task {task.value} is not one this clinic accepts")
        if len(hidden_sizes) > self.max_hidden_layers or (
            hidden_sizes and max(hidden_sizes) > self.max_hidden_width
        ):
            raise PolicyRefusal(
                f"model with hidden layers {list(hidden_sizes)} is outside this clinic's "
                f"policy (at most {self.max_hidden_layers} layers of at most "
                f"{self.max_hidden_width} units)"
            )

    def check_run(
        self, total_rounds: int, target_epsilon: float | None, eval_epsilon: float
    ) -> None:
        """Refuse a run plan the clinic does not accept (before any charge)."""
        if total_rounds > self.max_rounds_per_run:
            raise PolicyRefusal(
                f"{total_rounds} rounds per run is more than this clinic's policy allows "
                f"({self.max_rounds_per_run})"
            )
        if target_epsilon is not None and target_epsilon > self.max_epsilon_per_run:
            raise PolicyRefusal(
                f"a target ε of {target_epsilon:g} per run is more than this clinic's policy "
                f"allows ({self.max_epsilon_per_run:g})"
            )
        if eval_epsilon > self.max_eval_epsilon:
            raise PolicyRefusal(
                f"an evaluation ε of {eval_epsilon:g} is more than this clinic's policy "
                f"allows ({self.max_eval_epsilon:g})"
            )

    def check_noise(self, noise_multiplier: float) -> None:
        if noise_multiplier < self.min_noise_multiplier:
            raise PolicyRefusal(
                f"a noise multiplier of {noise_multiplier:.3g} is below this clinic's policy "
                f"minimum of {self.min_noise_multiplier:g}"
            )

    def check_run_epsilon(self, epsilon_this_run: float) -> None:
        """Refuse a release that would take this run's ε past the per-run bound."""
        if epsilon_this_run > self.max_epsilon_per_run:
            raise PolicyRefusal(
                f"this release would bring the run's ε to {epsilon_this_run:.3f}, more than "
                f"this clinic's policy allows per run ({self.max_epsilon_per_run:g})"
            )


def _number(config: Mapping[str, Any], key: str, default: float) -> float:
    """The number under ``key`` (``default`` if absent); anything else is named with it."""
    value = config.get(key, default)
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{key} must be a number, got {value!r}") from None


def _whole(config: Mapping[str, Any], key: str, default: int) -> int:
    """A whole number under ``key``: 3 or "3", never 3.5 rounded down behind the clinic's back."""
    number = _number(config, key, default)
    if not (math.isfinite(number) and number == int(number)):
        raise PolicyError(f"{key} must be a whole number, got {config.get(key)!r}")
    return int(number)
