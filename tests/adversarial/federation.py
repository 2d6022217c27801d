"""Clinics' training replies as the coordinator receives them, and the real strategy they
go to: the material of the poisoned-update tests (tests/server/test_update_checks.py,
tests/adversarial/test_poisoned_updates.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Message

from oralfed.schemas import protocol
from oralfed.schemas.model import build_model
from oralfed.schemas.model_record import model_record
from oralfed.schemas.settings import FederationSettings
from oralfed.server.history import FederationHistory
from oralfed.server.strategy import RecordingStrategy, make_strategy
from oralfed.server.update_checks import ModelArrays, reference_arrays, update_norm
from tests.adversarial.coordinator import message, train_reply

HIDDEN = (64, 32)
HONEST_STEP = 0.02  # sd of an honest update per parameter: an update norm of about 1.2


def sent_model() -> ModelArrays:
    """The global model the coordinator sends in the round."""
    return reference_arrays(model_record(build_model(HIDDEN, seed=7)))


def honest_models(
    sent: ModelArrays, clinics: Iterable[str], seed: int = 0
) -> dict[str, ModelArrays]:
    """Each honest clinic's model: the sent one plus a small random update."""
    rng = np.random.default_rng(seed)
    return {
        clinic: {
            name: (value + rng.normal(0, HONEST_STEP, value.shape)).astype(np.float32)
            for name, value in sent.items()
        }
        for clinic in clinics
    }


def weighted_mean(models: dict[str, ModelArrays], weights: dict[str, float]) -> ModelArrays:
    total = sum(weights[c] for c in models)
    names = next(iter(models.values()))
    return {
        name: sum(models[c][name].astype(np.float64) * weights[c] for c in models) / total
        for name in names
    }


def distance(a: ModelArrays, b: ModelArrays) -> float:
    return update_norm({n: v.astype(np.float64) for n, v in a.items()}, b)


def clinic_reply(
    node: int, clinic: str, arrays: ModelArrays, num_examples: Any, **metrics: Any
) -> Message:
    """Node ``node``'s train reply, speaking for ``clinic``, with these arrays and weight."""
    train = message("train", build_model(HIDDEN), {}, node_id=node)
    figures = {
        protocol.NUM_EXAMPLES: num_examples,
        protocol.EPSILON_SPENT: 0.5,
        protocol.EPSILON_CAP: 10.0,
        protocol.DELTA: 1e-6,
        **metrics,
    }
    return train_reply(train, arrays, clinic_id=clinic, metrics=figures)


def strategy_for(
    settings: FederationSettings, sent: ModelArrays, server_round: int = 1
) -> RecordingStrategy:
    """The run's real strategy, as if it had just sent ``sent`` in ``server_round``."""
    strategy = make_strategy(settings, FederationHistory(), None)
    strategy.sent[server_round] = sent  # what configure_train keeps of the model it sends
    return strategy


def aggregate(
    strategy: RecordingStrategy, replies: list[Message], server_round: int = 1
) -> ModelArrays:
    arrays, _ = strategy.aggregate_train(server_round, replies)
    assert arrays is not None
    return reference_arrays(arrays)
