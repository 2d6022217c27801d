"""Run settings: every setting of a federation run, defined once with its default, type and help.

Each field of :class:`FederationSettings` *is* the setting's definition: its default, its
type annotation and its metadata (run-config key, CLI flag, help). Everything else is
derived from these fields, never restated: the CLI options (``oralfed.cli.settings_options``),
the Flower run config (``--run-config`` and ``[tool.flwr.app.config]``, checked against this
by a test), what the clinics are told (:meth:`FederationSettings.train_config`) and the
report's settings block (:meth:`FederationSettings.public_dict`).

Encoding in a Flower run config, which holds only bool, int, float and str: an unset
optional number is ``0.0`` (the numbers it stands for must be positive), an unset text or
folder is ``""``, an enum is its value, the hidden sizes are ``"64,32"``.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from oralfed.schemas import protocol
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.features import Task

if TYPE_CHECKING:  # the settings module itself never loads Flower
    from flwr.app import ConfigRecordValues

__all__ = [
    "DEFAULT_EVAL_EPSILON",
    "DEFAULT_HIDDEN_SIZES",
    "DEFAULT_MAX_CLINIC_WEIGHT",
    "DEFAULT_SECAGG_MAX_WEIGHT",
    "DEFAULT_SECAGG_THRESHOLD",
    "DEFAULT_SEED",
    "DEFAULT_TARGET_EPSILON",
    "DEFAULT_UPDATE_NORM_BOUND",
    "AggregationName",
    "DpEngineName",
    "FederationSettings",
    "RunSetting",
    "SettingsError",
    "StrategyName",
    "clinics_needed",
    "run_settings",
    "setting_key",
]

DEFAULT_SEED = 7
DEFAULT_TARGET_EPSILON = 3.0
DEFAULT_EVAL_EPSILON = 0.3
DEPLOYED_ROUND_TIMEOUT = 600.0  # a node can vanish: a deployed round waits this long by default
DEFAULT_HIDDEN_SIZES: tuple[int, ...] = (64, 32)
# The L2 distance from the global model that no honest clinic's update reaches in the
# standard synthetic federation (measured: docs/robustness.md, bench/robustness.py --norms).
DEFAULT_UPDATE_NORM_BOUND = 25.0
# A clinic's FedAvg weight is its public size; no dental clinic has ten million patients.
DEFAULT_MAX_CLINIC_WEIGHT = 1e7
# Secure aggregation: a majority-and-more of a round's clinics reconstruct a secret; weights
# are quantised relative to the largest, which a dental clinic's patient list stays under.
DEFAULT_SECAGG_THRESHOLD = 0.6
DEFAULT_SECAGG_MAX_WEIGHT = 10_000.0


class StrategyName(StrEnum):
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"


class AggregationName(StrEnum):
    """How the coordinator combines the clinics' checked updates (``oralfed.server.
    robust_aggregation`` maps each to Flower's strategy; docs/robustness.md says how many
    hostile clinics each tolerates)."""

    MEAN = "mean"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed-mean"
    KRUM = "krum"
    MULTIKRUM = "multikrum"
    BULYAN = "bulyan"


def clinics_needed(aggregation: AggregationName, hostile: int, trim_fraction: float) -> int | None:
    """The fewest updates with which ``aggregation`` still tolerates ``hostile`` clinics
    (None: no number of updates is enough).

    Median: a majority of honest updates (n ≥ 2f + 1). Trimmed mean: at least f cut off each
    tail, as Flower counts them (floor(β·n) ≥ f). Krum and MultiKrum: n > 2f + 2 (Blanchard et
    al. 2017). Bulyan: n ≥ 4f + 3 (El Mhamdi et al. 2018). The mean tolerates none (only the
    norm bound limits a hostile clinic's pull), so one update is enough for it.
    """
    if aggregation is AggregationName.MEDIAN:
        return 2 * hostile + 1
    if aggregation is AggregationName.TRIMMED_MEAN:
        if hostile == 0:
            return 1
        if trim_fraction <= 0:
            return None
        n = max(1, math.ceil(hostile / trim_fraction) - 1)
        while int(trim_fraction * n) < hostile:  # Flower's own rounding (trim_mean)
            n += 1
        return n
    if aggregation in (AggregationName.KRUM, AggregationName.MULTIKRUM):
        return 2 * hostile + 3
    if aggregation is AggregationName.BULYAN:
        return 4 * hostile + 3
    return 1


class DpEngineName(StrEnum):
    """DP-SGD engines at the clinics (``oralfed.client.dp_engines`` registers one per name):
    the same mechanism and charge; ``fast`` is Opacus's mechanism, vectorised."""

    FAST = "fast"
    OPACUS = "opacus"


class SettingsError(OralFedError, ValueError):
    """A run setting out of range, or settings that contradict each other.

    ``template`` names the settings as ``{0}``, ``{1}``…; ``keys`` are their run-config keys.
    The message names the keys; the CLI formats the same template with its own flags.
    """

    exit_code = ExitCode.USAGE

    def __init__(self, keys: tuple[str, ...], template: str) -> None:
        super().__init__(template.format(*keys))
        self.keys = keys
        self.template = template

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each key replaced by ``names[key]`` (e.g. a CLI flag)."""
        return self.template.format(*(names.get(key, key) for key in self.keys))


def _setting(default: Any, key: str, help: str, *, flag: str | None = "") -> Any:
    """A dataclass field carrying its run-config key, CLI flag ("" = the key; None = no
    option: the command sets it itself) and help text."""
    return field(
        default=default, metadata={"key": key, "flag": key if flag == "" else flag, "help": help}
    )


@dataclass(frozen=True)
class FederationSettings:
    """What a federation run is: rounds, strategy, the clinics' DP-SGD, where results go."""

    rounds: int = _setting(5, "num-server-rounds", "Federation rounds.", flag="rounds")
    strategy: StrategyName = _setting(
        StrategyName.FEDAVG, "strategy", "Local objective: fedavg or fedprox."
    )
    proximal_mu: float = _setting(0.01, "proximal-mu", "FedProx μ (used with fedprox only).")
    aggregation: AggregationName = _setting(
        AggregationName.MEAN,
        "aggregation",
        "How updates are combined: mean, median, trimmed-mean, krum, multikrum or bulyan.",
    )
    hostile_clinics: int = _setting(
        1,
        "hostile-clinics",
        "f: hostile clinics a robust aggregation must tolerate (checked against min-clinics).",
    )
    trim_fraction: float = _setting(
        0.2, "trim-fraction", "β: share of updates trimmed-mean cuts off each tail, in [0, 0.5)."
    )
    update_norm_bound: float = _setting(
        DEFAULT_UPDATE_NORM_BOUND,
        "update-norm-bound",
        "Largest L2 distance of an update from the global model; longer ones are scaled down.",
    )
    max_clinic_weight: float = _setting(
        DEFAULT_MAX_CLINIC_WEIGHT,
        "max-clinic-weight",
        "Largest num-examples (public size) a clinic's reply may carry; more is rejected.",
    )
    secure_aggregation: bool = _setting(
        False,
        "secure-aggregation",
        "Train under SecAgg+: the coordinator learns the round's weighted mean update, never "
        "one clinic's update or weight (aggregation mean only).",
    )
    secagg_threshold: float = _setting(
        DEFAULT_SECAGG_THRESHOLD,
        "secagg-threshold",
        "Share of a round's clinics whose shares reconstruct a secret (at least 2): more "
        "resists collusion, fewer tolerates dropouts.",
    )
    secagg_max_weight: float = _setting(
        DEFAULT_SECAGG_MAX_WEIGHT,
        "secagg-max-weight",
        "Largest public size a clinic's weight carries under secure aggregation (larger count "
        "as it); the quantisation's error grows with it over the clinics' sizes.",
    )
    local_epochs: int = _setting(2, "local-epochs", "Local epochs per round.")
    batch_size: int = _setting(64, "batch-size", "Expected DP-SGD batch size.")
    learning_rate: float = _setting(
        0.1, "learning-rate", "Clinic learning rate (SGD, momentum 0.9)."
    )
    clip_norm: float = _setting(1.0, "clip-norm", "Per-sample gradient clipping norm C.")
    target_epsilon: float | None = _setting(
        DEFAULT_TARGET_EPSILON,
        "target-epsilon",
        f"ε per clinic over the whole run (default {DEFAULT_TARGET_EPSILON:g}).",
    )
    noise_multiplier: float | None = _setting(
        None, "noise-multiplier", "Fixed σ instead of a target ε."
    )
    eval_epsilon: float = _setting(
        DEFAULT_EVAL_EPSILON,
        "eval-epsilon",
        "ε each clinic spends per federated evaluation (a noisy score histogram); the target "
        "ε covers it.",
    )
    eval_every: int = _setting(
        0, "eval-every", "Evaluate at the clinics every N rounds (0: the final round only)."
    )
    seed: int = _setting(DEFAULT_SEED, "seed", "Seed of synthetic data and the initial model.")
    min_clinics: int = _setting(2, "min-clinics", "Stop if fewer clinics train in a round.")
    clinics_per_round: float | None = _setting(
        None,
        "clinics-per-round",
        "Clinics sampled each round to train (and, in evaluation rounds, to evaluate): a "
        "count such as 100, or a share of the connected clinics in (0, 1); default: all. "
        "Only sampled clinics are asked, so only they are charged.",
    )
    round_timeout: float | None = _setting(
        None,
        "round-timeout",
        "Seconds a round waits for replies (and for clinics to connect); default: a simulated "
        f"round waits for every clinic it asked, a deployed one {DEPLOYED_ROUND_TIMEOUT:g} s.",
    )
    task: Task = _setting(Task.UNTREATED_CARIES, "task", "Outcome to learn.")
    hidden_sizes: tuple[int, ...] = _setting(
        DEFAULT_HIDDEN_SIZES, "hidden-sizes", "Hidden layer widths of the model, e.g. 64,32."
    )
    dp_engine: DpEngineName = _setting(
        DpEngineName.FAST,
        "dp-engine",
        "DP-SGD engine at the clinics: fast (default) or opacus (Opacus make_private, the "
        "slower reference); the same mechanism, so the same ε.",
    )
    out_dir: Path | None = _setting(
        None, "out-dir", "Where the ServerApp writes history.json and the model.", flag=None
    )
    coordinator_url: str | None = _setting(
        None, "coordinator-url", "Coordinator database URL (default: SQLite in the run folder)."
    )

    def __post_init__(self) -> None:
        for item in run_settings():  # enums and tuples from their plain forms
            value = getattr(self, item.name)
            converted = item.convert(value)
            if converted is not value:
                object.__setattr__(self, item.name, converted)
        for name in ("rounds", "local_epochs", "batch_size", "min_clinics"):
            if getattr(self, name) < 1:
                raise SettingsError(
                    (setting_key(name),), f"{{0}} must be at least 1, got {getattr(self, name)}"
                )
        if self.eval_every < 0:
            raise SettingsError(
                ("eval-every",), f"{{0}} must not be negative, got {self.eval_every}"
            )
        for name in (
            "learning_rate",
            "clip_norm",
            "eval_epsilon",
            "update_norm_bound",
            "max_clinic_weight",
            "secagg_max_weight",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problem = f"{{0}} must be a positive number, got {value}"
                raise SettingsError((setting_key(name),), problem)
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise SettingsError(
                ("target-epsilon", "noise-multiplier"), "give exactly one of {0} and {1}"
            )
        for name in ("target_epsilon", "noise_multiplier", "round_timeout"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                problem = f"{{0}} must be a positive number, got {value}"
                raise SettingsError((setting_key(name),), problem)
        if not (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0):
            raise SettingsError(
                ("proximal-mu",), f"{{0}} must not be negative, got {self.proximal_mu}"
            )
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise SettingsError(
                ("hidden-sizes",), f"{{0}} must be positive widths, got {list(self.hidden_sizes)}"
            )
        self._check_clinics_per_round()
        self._check_aggregation()
        self._check_secure_aggregation()

    def _check_clinics_per_round(self) -> None:
        """A count is a whole number a round can go on with; a share is below one."""
        sample = self.clinics_per_round
        if sample is None:
            return
        if not (math.isfinite(sample) and sample > 0) or (sample >= 1 and sample % 1 != 0):
            raise SettingsError(
                ("clinics-per-round",),
                f"{{0}} must be a whole number of clinics or a share in (0, 1), got {sample}",
            )
        if sample >= 1 and sample < self.min_clinics:
            raise SettingsError(
                ("clinics-per-round", "min-clinics"),
                f"{{0}}={sample:g} samples fewer clinics than the {{1}}={self.min_clinics} a "
                "round needs to go on",
            )

    def reply_timeout(self, simulated: bool) -> float | None:
        """Seconds a round waits for its replies; ``None``: until every clinic asked replied.

        Without ``round-timeout`` a simulated round waits for them all, as the Simulation
        Engine answers for a clinic that fails: a limit there only cuts a large federation's
        round short after its clinics were charged (docs/scale.md). A deployed node can
        vanish without a word, so a deployed round has a limit."""
        return None if simulated and self.round_timeout is None else self.connect_timeout()

    def connect_timeout(self) -> float:
        """Seconds a round waits for ``min-clinics`` nodes to connect (a simulation's are
        connected from the start; a limit keeps a too-small one from waiting forever)."""
        return DEPLOYED_ROUND_TIMEOUT if self.round_timeout is None else self.round_timeout

    def clinics_in_round(self, connected: int) -> int:
        """How many of ``connected`` clinics a round samples: the count asked for, or the
        share rounded up, never fewer than ``min-clinics`` nor more than are connected."""
        sample = self.clinics_per_round
        if sample is None:
            return connected
        wanted = (
            int(sample) if sample >= 1 else max(self.min_clinics, math.ceil(sample * connected))
        )
        return min(wanted, connected)

    def _check_secure_aggregation(self) -> None:
        """Secure aggregation hides the individual updates, which a robust aggregation needs
        (it compares them), and needs two clinics at least to hide anything."""
        if not (0 < self.secagg_threshold <= 1):
            raise SettingsError(
                ("secagg-threshold",), f"{{0}} must be in (0, 1], got {self.secagg_threshold}"
            )
        if not self.secure_aggregation:
            return
        if self.aggregation is not AggregationName.MEAN:
            raise SettingsError(
                ("secure-aggregation", "aggregation"),
                f"{{0}} hides each clinic's update, and {{1}}={self.aggregation.value} needs "
                "them one by one: use aggregation mean with secure aggregation (the norm bound "
                "still limits each clinic's pull)",
            )
        if self.min_clinics < 2:
            raise SettingsError(
                ("secure-aggregation", "min-clinics"),
                f"{{0}} needs at least 2 clinics in a round to hide one in the sum: set {{1}} "
                f"to 2 or more, got {self.min_clinics}",
            )

    def _check_aggregation(self) -> None:
        """Refuse a robust aggregation that cannot tolerate the hostile clinics it is asked
        to with as few clinics as a round may go on with (``min-clinics``)."""
        if self.hostile_clinics < 0:
            raise SettingsError(
                ("hostile-clinics",), f"{{0}} must not be negative, got {self.hostile_clinics}"
            )
        if not (0.0 <= self.trim_fraction < 0.5):
            raise SettingsError(
                ("trim-fraction",), f"{{0}} must be in [0, 0.5), got {self.trim_fraction}"
            )
        needed = clinics_needed(self.aggregation, self.hostile_clinics, self.trim_fraction)
        if needed is None:
            raise SettingsError(
                ("aggregation", "trim-fraction", "hostile-clinics"),
                f"{{0}}=trimmed-mean with {{1}}=0 trims nothing: it cannot tolerate "
                f"{{2}}={self.hostile_clinics}",
            )
        if self.min_clinics < needed:
            raise SettingsError(
                ("aggregation", "hostile-clinics", "min-clinics"),
                f"{{0}}={self.aggregation.value} with {{1}}={self.hostile_clinics} needs "
                f"{{2}} of at least {needed} (every round must have that many checked "
                f"updates), got {self.min_clinics}",
            )

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> FederationSettings:
        """Settings from field values given by a user (``None``: not given, use the default).

        A fixed noise multiplier replaces the default target ε; giving both is refused.
        """
        given = {name: value for name, value in values.items() if value is not None}
        if "noise_multiplier" in given and "target_epsilon" in given:
            raise SettingsError(
                ("target-epsilon", "noise-multiplier"), "give at most one of {0} and {1}"
            )
        if "noise_multiplier" in given:
            given["target_epsilon"] = None
        return cls(**given)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationSettings:
        """From ``[tool.flwr.app.config]`` / ``--run-config`` keys; missing keys: defaults."""
        values = {
            item.name: item.from_run_config(run_config[item.key])
            for item in run_settings()
            if item.key in run_config
        }
        if values.get("noise_multiplier") is not None:
            values["target_epsilon"] = None
        return cls(**values)

    def run_config(self) -> dict[str, bool | int | float | str]:
        """The run-config form of every setting (inverse of :meth:`from_run_config`)."""
        return {item.key: item.to_run_config(getattr(self, item.name)) for item in run_settings()}

    @classmethod
    def from_public_dict(cls, data: Mapping[str, Any]) -> FederationSettings:
        """Inverse of :meth:`public_dict` (the simulation child gets its settings this way)."""
        return cls(**dict(data))

    def public_dict(self) -> dict[str, Any]:
        """JSON-friendly form for reports and the coordinator database (field names)."""
        return {item.name: item.to_json(getattr(self, item.name)) for item in run_settings()}

    def evaluation_rounds(self) -> tuple[int, ...]:
        """The rounds after which the clinics evaluate (always including the last)."""
        every = self.eval_every or self.rounds
        return tuple(r for r in range(1, self.rounds + 1) if r % every == 0 or r == self.rounds)

    def train_config(self) -> dict[str, ConfigRecordValues]:
        """What every clinic is told for training (FedProx adds ``proximal-mu`` itself)."""
        return {
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
            protocol.CFG_DP_ENGINE: self.dp_engine.value,
            protocol.CFG_EVAL_EPSILON: self.eval_epsilon,
            protocol.CFG_EVAL_COUNT: len(self.evaluation_rounds()),
        }

    def evaluate_config(self) -> dict[str, ConfigRecordValues]:
        return {
            protocol.CFG_TASK: self.task.value,
            protocol.CFG_HIDDEN_SIZES: list(self.hidden_sizes),
            protocol.CFG_EVAL_EPSILON: self.eval_epsilon,
            protocol.CFG_TOTAL_ROUNDS: self.rounds,
        }


@dataclass(frozen=True)
class RunSetting:
    """One setting as the derived forms see it: field name, key, flag, help and type."""

    name: str
    key: str
    flag: str | None
    help: str
    default: Any
    value_type: Any  # the annotation without ``None``: int, float, str, Path, an enum, tuple
    optional: bool

    def convert(self, value: Any) -> Any:
        """A field value in its declared type (enums from strings, tuples from lists)."""
        if value is None:
            return None
        if isinstance(self.value_type, type) and issubclass(self.value_type, Enum):
            try:
                return value if isinstance(value, self.value_type) else self.value_type(value)
            except ValueError:
                choices = ", ".join(str(member.value) for member in self.value_type)
                raise SettingsError(
                    (self.key,), f"{{0}} must be one of {choices}, got {value!r}"
                ) from None
        if self.value_type is Path and not isinstance(value, Path):
            return Path(str(value))
        if self.name == "hidden_sizes" and not isinstance(value, tuple):
            return _widths(self.key, value)
        return value

    def to_run_config(self, value: Any) -> bool | int | float | str:
        if value is None:
            return 0.0 if self.value_type is float else ""
        if isinstance(value, Enum):
            return str(value.value)
        if isinstance(value, tuple):
            return ",".join(str(item) for item in value)
        if isinstance(value, Path):
            return str(value)
        return typing.cast(bool | int | float | str, value)

    def from_run_config(self, raw: Any) -> Any:
        if self.optional and raw in (0, 0.0, ""):
            return None
        if self.value_type in (int, float):
            try:
                return self.value_type(raw)
            except (TypeError, ValueError):
                problem = f"{{0}} must be a number, got {raw!r}"
                raise SettingsError((self.key,), problem) from None
        if self.name == "hidden_sizes":
            return _widths(self.key, raw)
        if self.value_type is bool:
            return _flag(self.key, raw)
        return self.convert(raw) if isinstance(raw, str) else raw

    def to_json(self, value: Any) -> Any:
        if isinstance(value, Enum | Path):
            return str(value.value if isinstance(value, Enum) else value)
        return list(value) if isinstance(value, tuple) else value


def _flag(key: str, raw: Any) -> bool:
    """A switch from a run config: TOML's true/false, or its spelling in ``--run-config``."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise SettingsError((key,), f"{{0}} must be true or false, got {raw!r}")


def _widths(key: str, raw: Any) -> tuple[int, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    try:
        return tuple(int(str(item).strip()) for item in items)
    except ValueError:
        raise SettingsError(
            (key,), f"{{0}} must be comma-separated whole numbers, got {raw!r}"
        ) from None


def run_settings() -> tuple[RunSetting, ...]:
    """Every run setting, in declaration order (the CLI lists its options in this order)."""
    return _RUN_SETTINGS


def _describe(item: Field[Any], annotation: Any) -> RunSetting:
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation)
    value_type = arguments[0] if optional else annotation
    if typing.get_origin(value_type) is tuple:
        value_type = tuple
    assert item.default is not MISSING
    return RunSetting(
        name=item.name,
        key=item.metadata["key"],
        flag=item.metadata["flag"],
        help=item.metadata["help"],
        default=item.default,
        value_type=value_type,
        optional=optional,
    )


_HINTS = get_type_hints(FederationSettings)
_RUN_SETTINGS = tuple(_describe(item, _HINTS[item.name]) for item in fields(FederationSettings))
_KEYS = {item.name: item.key for item in _RUN_SETTINGS}


def setting_key(name: str) -> str:
    """The run-config key of the setting whose field is ``name``."""
    return _KEYS[name]
