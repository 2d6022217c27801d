"""What the coordinator asks of a clinic, read from its message into typed requests.

Everything in a train or evaluate config is the coordinator's choice, and a malicious
coordinator chooses it adversarially: each value is read once, with its type checked,
before the clinic's policy (``oralfed.schemas.clinic_policy``) judges the request. A
malformed config is a refusal that names the key, never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message

from oralfed.schemas import protocol
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.features import Task
from oralfed.schemas.records import record_value
from oralfed.schemas.settings import DEFAULT_HIDDEN_SIZES, DpEngineName

__all__ = [
    "EvaluateRequest",
    "RequestError",
    "TrainRequest",
    "read_evaluate",
    "read_train",
    "run_id_of",
]

# What a run id may look like: the coordinator's uuid4 hex, or Flower's integer run id.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


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
    run_id: str | None  # the OralFed run id (protocol.CFG_RUN_ID), if the coordinator sent one


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
            run_id=_run_id(config),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise RequestError(f"unreadable request: {error}") from None


def run_id_of(request: EvaluateRequest, msg: Message) -> str:
    """The run a request belongs to: the OralFed run id the coordinator sent, else Flower's.

    Flower gives a resumed run a new run id; the OralFed id stays, so the ledger's per-run
    checks and the charges already made count for the run as a whole. The id is the
    coordinator's word, as Flower's is (a coordinator may start as many Flower runs as it
    likes): the lifetime cap, not the per-run bound, is what holds against a dishonest one.
    """
    return request.run_id if request.run_id is not None else str(msg.metadata.run_id)


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


def _run_id(config: ConfigRecord) -> str | None:
    if protocol.CFG_RUN_ID not in config:
        return None
    run_id = record_value(config, protocol.CFG_RUN_ID, str)
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise ValueError(f"{protocol.CFG_RUN_ID} must be 1 to 64 letters, digits, '.', '_' or '-'")
    return run_id


def _hidden_sizes(config: ConfigRecord) -> tuple[int, ...]:
    sizes = config.get(protocol.CFG_HIDDEN_SIZES)
    if sizes is None:
        return DEFAULT_HIDDEN_SIZES
    if not isinstance(sizes, list) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in sizes
    ):
        raise ValueError(f"{protocol.CFG_HIDDEN_SIZES} must be a list of positive widths")
    return tuple(int(size) for size in sizes)
