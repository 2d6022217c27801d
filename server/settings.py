"""Federation settings: one typed object built from CLI options or Flower's run config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from flwr.app import ConfigRecord

from client.model import DEFAULT_HIDDEN_SIZES
from schemas import protocol
from schemas.features import Task

StrategyName = Literal["fedavg", "fedprox"]
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox")


class SettingsError(ValueError):
    """A federation option out of range; the message names the option."""


@dataclass(frozen=True)
class FederationSettings:
    rounds: int = 5
    strategy: StrategyName = "fedavg"
    proximal_mu: float = 0.01
    local_epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 0.1
    clip_norm: float = 1.0
    target_epsilon: float | None = 3.0  # per clinic, over the whole run
    noise_multiplier: float | None = None  # instead of a target ε
    seed: int = 7
    min_clinics: int = 2
    round_timeout: float = 600.0
    task: Task = Task.UNTREATED_CARIES
    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES
    dp_engine: str = protocol.DEFAULT_DP_ENGINE  # same mechanism and ε either way; see --dp-engine
    out_dir: Path | None = None
    coordinator_url: str | None = None

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise SettingsError(f"--rounds must be at least 1, got {self.rounds}")
        if self.strategy not in STRATEGIES:
            raise SettingsError(
                f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.local_epochs < 1 or self.batch_size < 1:
            raise SettingsError("--local-epochs and --batch-size must be at least 1")
        if not (self.learning_rate > 0 and self.clip_norm > 0):
            raise SettingsError("--learning-rate and --clip-norm must be positive")
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise SettingsError("give exactly one of --target-epsilon and --noise-multiplier")
        for name, value in (
            ("--target-epsilon", self.target_epsilon),
            ("--noise-multiplier", self.noise_multiplier),
        ):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SettingsError(f"{name} must be a positive number, got {value}")
        if self.min_clinics < 1:
            raise SettingsError(f"--min-clinics must be at least 1, got {self.min_clinics}")
        if self.proximal_mu < 0:
            raise SettingsError(f"--proximal-mu must not be negative, got {self.proximal_mu}")
        if self.dp_engine not in protocol.DP_ENGINES:
            raise SettingsError(
                f"--dp-engine must be one of {', '.join(protocol.DP_ENGINES)}, "
                f"got {self.dp_engine!r}"
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationSettings:
        """Read ``[tool.flwr.app.config]`` / ``--run-config`` keys (see pyproject.toml)."""
        sigma = float(run_config.get("noise-multiplier", 0.0))
        target = float(run_config.get("target-epsilon", 0.0))
        out_dir = run_config.get("out-dir")
        return cls(
            rounds=int(run_config.get("num-server-rounds", cls.rounds)),
            strategy=str(run_config.get("strategy", cls.strategy)),  # type: ignore[arg-type]
            proximal_mu=float(run_config.get("proximal-mu", cls.proximal_mu)),
            local_epochs=int(run_config.get("local-epochs", cls.local_epochs)),
            batch_size=int(run_config.get("batch-size", cls.batch_size)),
            learning_rate=float(run_config.get("learning-rate", cls.learning_rate)),
            clip_norm=float(run_config.get("clip-norm", cls.clip_norm)),
            target_epsilon=None if sigma > 0 else (target or None),
            noise_multiplier=sigma if sigma > 0 else None,
            seed=int(run_config.get("seed", cls.seed)),
            min_clinics=int(run_config.get("min-clinics", cls.min_clinics)),
            round_timeout=float(run_config.get("round-timeout", cls.round_timeout)),
            task=Task(str(run_config.get("task", Task.UNTREATED_CARIES))),
            dp_engine=str(run_config.get("dp-engine", cls.dp_engine)),
            out_dir=Path(str(out_dir)) if out_dir else None,
            coordinator_url=run_config.get("coordinator-url") or None,  # type: ignore[arg-type]
        )

    @classmethod
    def from_public_dict(cls, data: Mapping[str, Any]) -> FederationSettings:
        """Inverse of :meth:`public_dict` (the simulation child gets its settings this way)."""
        values = dict(data)
        values["task"] = Task(values["task"])
        values["hidden_sizes"] = tuple(values["hidden_sizes"])
        values["out_dir"] = Path(values["out_dir"]) if values.get("out_dir") else None
        return cls(**values)

    def with_changes(self, **changes: Any) -> FederationSettings:
        return replace(self, **changes)

    def train_config(self) -> ConfigRecord:
        """What every clinic is told for training (FedProx adds ``proximal-mu`` itself)."""
        return ConfigRecord(
            {
                protocol.CFG_TOTAL_ROUNDS: self.rounds,
                protocol.CFG_LOCAL_EPOCHS: self.local_epochs,
                protocol.CFG_BATCH_SIZE: self.batch_size,
                protocol.CFG_LEARNING_RATE: self.learning_rate,
                protocol.CFG_CLIP_NORM: self.clip_norm,
                protocol.CFG_TARGET_EPSILON: self.target_epsilon or 0.0,
                protocol.CFG_NOISE_MULTIPLIER: self.noise_multiplier or 0.0,
                protocol.CFG_TASK: self.task.value,
                protocol.CFG_SEED: self.seed,
                protocol.CFG_HIDDEN_SIZES: list(self.hidden_sizes),
                protocol.CFG_DP_ENGINE: self.dp_engine,
            }
        )

    def evaluate_config(self) -> ConfigRecord:
        return ConfigRecord(
            {protocol.CFG_TASK: self.task.value, protocol.CFG_HIDDEN_SIZES: list(self.hidden_sizes)}
        )

    def public_dict(self) -> dict[str, Any]:
        """JSON-friendly form for reports and the coordinator database."""
        result: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Path | Task):
                value = str(value)
            result[item.name] = list(value) if isinstance(value, tuple) else value
        return result
