"""The coordinator's SecAgg+ stages against the clinics' Flower mod, in process: the mean
comes out, no individual update or weight does, dropouts are tolerated to the threshold."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.supercore.task_identity import TaskIdentity

from oralfed.client.secure_aggregation import bounded_update
from oralfed.schemas import protocol
from oralfed.server.secure_aggregation import SecAggParameters, SecureRound, run_secure_round
from tests.adversarial.secure_federation import Handler, SecureFederation

SHAPES = [(3, 2), (2,)]


@pytest.fixture(autouse=True)
def _serverapp_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run a ServerApp process has (Flower's Message constructor reads it)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)  # SUPERLINK_NODE_ID
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


BOUND = 5.0


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(value.astype(np.float32)) for name, value in arrays.items()})


def _sent() -> dict[str, np.ndarray]:
    return {"w": np.full(SHAPES[0], 0.5, np.float32), "b": np.zeros(SHAPES[1], np.float32)}


def _clinic(update: dict[str, np.ndarray], weight: float) -> Handler:
    """A clinic's training handler: replies with the sent model plus ``update``."""

    def train(msg: Message, context: Context) -> Message:
        sent = msg.content.array_records[protocol.REPLY_ARRAYS].to_numpy_ndarrays()
        trained = {n: s + update[n] for n, s in zip(_sent(), sent, strict=True)}
        content = RecordDict(
            {
                protocol.REPLY_ARRAYS: _record(trained),
                protocol.REPLY_METRICS: MetricRecord(
                    {protocol.NUM_EXAMPLES: weight, "epsilon": 1.0}
                ),
                protocol.REPLY_CLINIC: ConfigRecord({protocol.CLINIC_ID: "c"}),
            }
        )
        return Message(content, reply_to=msg)

    return train


def _requests(nodes: Iterable[int]) -> list[Message]:
    arrays = _record(_sent())
    return [
        Message(
            RecordDict({protocol.REPLY_ARRAYS: arrays, "config": ConfigRecord({"x": 1})}),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
            group_id="1",
        )
        for node in nodes
    ]


def _run(federation: SecureFederation, threshold: float = 0.6) -> SecureRound:
    parameters = SecAggParameters.for_round(len(federation.handlers), threshold, BOUND, 1000.0)
    return run_secure_round(federation.send, _requests(federation.handlers), parameters, SHAPES)


def _updates(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{n: rng.normal(0, 0.3, a.shape) for n, a in _sent().items()} for _ in range(count)]


def _mean(updates: list[dict[str, np.ndarray]], weights: list[float]) -> list[np.ndarray]:
    total = sum(weights)
    return [
        sum(w * u[name] for u, w in zip(updates, weights, strict=True)) / total  # type: ignore[misc]
        for name in _sent()
    ]


def test_the_mean_of_the_updates_comes_out_and_nothing_else() -> None:
    updates, weights = _updates(1, 5), [100.0, 250.0, 80.0, 400.0, 170.0]
    nodes = {
        node: _clinic(u, w) for node, u, w in zip(range(11, 16), updates, weights, strict=True)
    }
    federation = SecureFederation(nodes)
    result = _run(federation)
    assert result.problem is None and result.mean_update is not None
    for got, want in zip(result.mean_update, _mean(updates, weights), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # Everything the coordinator received: no arrays, no weight, no update in the clear.
    for reply in federation.received:
        assert not reply.content.array_records
        for record in reply.content.metric_records.values():
            assert protocol.NUM_EXAMPLES not in record
    assert {r.metadata.src_node_id for r in result.replies} == set(nodes)
    assert all(
        r.content.metric_records[protocol.REPLY_METRICS]["epsilon"] == 1.0 for r in result.replies
    )


def test_a_clinic_gone_after_sharing_its_keys_is_tolerated_to_the_threshold() -> None:
    updates, weights = _updates(2, 5), [300.0] * 5
    nodes = {node: _clinic(u, w) for node, u, w in zip(range(1, 6), updates, weights, strict=True)}
    federation = SecureFederation(nodes)
    federation.leave_at = {3: 3}  # answers setup and key sharing, never trains
    result = _run(federation)
    assert result.problem is None and result.mean_update is not None
    assert result.dropped == [3]
    kept = [u for node, u in zip(range(1, 6), updates, strict=True) if node != 3]
    for got, want in zip(result.mean_update, _mean(kept, [300.0] * 4), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_below_the_threshold_the_round_fails_and_no_sum_is_formed() -> None:
    nodes = {node: _clinic(u, 1.0) for node, u in zip(range(1, 6), _updates(3, 5), strict=True)}
    federation = SecureFederation(nodes)
    federation.leave_at = {1: 3, 2: 3, 3: 3}  # 2 of 5 train; the threshold is 3
    result = _run(federation)
    assert result.mean_update is None
    assert result.problem is not None and "reconstruction threshold of 3" in result.problem


def test_an_update_longer_than_the_bound_is_scaled_to_it_before_masking() -> None:
    long = {n: np.full(a.shape, 10.0) for n, a in _sent().items()}
    update = bounded_update(
        [long["w"], long["b"]], [np.zeros(SHAPES[0]), np.zeros(SHAPES[1])], BOUND
    )
    assert np.sqrt(sum(float(np.square(p).sum()) for p in update)) == pytest.approx(BOUND)
    with pytest.raises(ValueError, match="not finite"):
        bounded_update([np.full((2,), np.nan)], [np.zeros((2,))], BOUND)
