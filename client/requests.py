"""What the coordinator asks of a clinic, read from its message into typed requests.

Everything in a train or evaluate config is the coordinator's choice, and a malicious
coordinator chooses it adversarially: each value is read once, with its type checked,
before the clinic's policy (``oralfed.schemas.clinic_policy``) judges the request. A
malformed config is a refusal that names the key, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord

from oralfed.schemas import protocol
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.features import Task
from oralfed.schemas.records import record_value
from oralfed.schemas.settings import DEFAULT_HIDDEN_SIZES, DpEngineName

__all__ = ["EvaluateRequest", "RequestError", "TrainRequest", "read_evaluate", "read_train"]


class RequestError(OralFedError):
    """A coordinator request the clinic cannot read; the message names the key."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class EvaluateRequest:
    server_round: int
    total_rounds: int
    task: Task
    hidden_sizes: tuple[int, ...]
    eval_epsilon: float


@dataclass(frozen=True)
class TrainRequest(EvaluateRequest):
    local_epochs: int
    batch_size: int
    learning_rate: float
    clip_norm: float
    target_epsilon: float | None
    noise_multiplier: float | None
    proximal_mu: float
    dp_engine: str
    eval_count: int


def read_evaluate(config: ConfigRecord) -> EvaluateRequest:
    try:
        return EvaluateRequest(
            server_round=record_value(config, protocol.CFG_ROUND, int),
            total_rounds=record_value(config, protocol.CFG_TOTAL_ROUNDS, int),
            task=Task(record_value(config, protocol.CFG_TASK, str)),
            hidden_sizes=_hidden_sizes(config),
            eval_epsilon=record_value(config, protocol.CFG_EVAL_EPSILON, float),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise RequestError(f"unreadable request: {error}") from None


def read_train(config: ConfigRecord) -> TrainRequest:
    base = read_evaluate(config)
    try:
        target = record_value(config, protocol.CFG_TARGET_EPSILON, float, 0.0)
        sigma = record_value(config, protocol.CFG_NOISE_MULTIPLIER, float, 0.0)
        return TrainRequest(
            **vars(base),
            local_epochs=record_value(config, protocol.CFG_LOCAL_EPOCHS, int),
            batch_size=record_value(config, protocol.CFG_BATCH_SIZE, int),
            learning_rate=record_value(config, protocol.CFG_LEARNING_RATE, float),
            clip_norm=record_value(config, protocol.CFG_CLIP_NORM, float),
            target_epsilon=target if target > 0 else None,
            noise_multiplier=sigma if sigma > 0 else None,
            proximal_mu=record_value(config, protocol.CFG_PROXIMAL_MU, float, 0.0),
            dp_engine=record_value(config, protocol.CFG_DP_ENGINE, str, str(DpEngineName.FAST)),
            eval_count=record_value(config, protocol.CFG_EVAL_COUNT, int),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise RequestError(f"unreadable request: {error}") from None


def _hidden_sizes(config: ConfigRecord) -> tuple[int, ...]:
    sizes = config.get(protocol.CFG_HIDDEN_SIZES)
    if sizes is None:
        return DEFAULT_HIDDEN_SIZES
    if not isinstance(sizes, list) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in sizes
    ):
        raise ValueError(f"{protocol.CFG_HIDDEN_SIZES} must be a list of positive widths")
    return tuple(int(size) for size in sizes)
