"""A repeated request (a resumed coordinator asking for a round again) costs nothing twice.

The real ClientApp handlers and a real ledger: a round already charged and stored is sent
again unchanged; a round charged but never stored is computed under the same charge; a
charge never covers another mechanism; and the store refuses files it cannot trust.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from oralfed.client.app import answer, handle_evaluate, handle_train
from oralfed.client.release_store import (
    RELEASES_DIR,
    Release,
    ReleaseKey,
    ReleaseStore,
    ReleaseStoreError,
)
from oralfed.privacy.events import DiscreteLaplaceEvent, DpSgdEvent
from oralfed.privacy.ledger import ChargeRecord, PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.clinic_policy import ClinicPolicy
from oralfed.schemas.model import build_model
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.settings import FederationSettings
from oralfed.schemas.synthetic import write_federation
from tests.adversarial.coordinator import evaluate_config, message, train_config

SETTINGS = FederationSettings(
    rounds=3, local_epochs=1, batch_size=64, target_epsilon=None, noise_multiplier=1.0
)
RUN = "3f2a9c0d4e5b6a7c8d9e0f1a2b3c4d5e"


@pytest.fixture(scope="module")
def clinic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,) = write_federation(tmp_path_factory.mktemp("data"), 1, seed=4)
    return path


@pytest.fixture
def node(clinic_file: Path, tmp_path: Path) -> ClinicNode:
    return ClinicNode("clinic-a", clinic_file, tmp_path / "state", "clinic-a")


def train(node: ClinicNode, *, flower_run: int, server_round: int = 1, **config: object) -> Message:
    """A train request of the OralFed run RUN, sent in Flower run ``flower_run``."""
    msg = message(
        "train",
        build_model(SETTINGS.hidden_sizes, seed=SETTINGS.seed),
        train_config(SETTINGS, **{protocol.CFG_RUN_ID: RUN, **config}),
        run_id=flower_run,
        server_round=server_round,
    )
    return answer(handle_train, msg, node)


def evaluate(node: ClinicNode, *, flower_run: int) -> Message:
    msg = message(
        "evaluate",
        build_model(SETTINGS.hidden_sizes, seed=SETTINGS.seed),
        evaluate_config(SETTINGS, **{protocol.CFG_RUN_ID: RUN}),
        run_id=flower_run,
        server_round=3,
    )
    return answer(handle_evaluate, msg, node)


def charges(node: ClinicNode) -> list[ChargeRecord]:
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        return ledger.history(node.dataset_id)


def arrays_of(reply: Message) -> dict[str, np.ndarray]:
    assert not reply.has_error(), reply.error.reason
    return {k: v.numpy() for k, v in reply.content.array_records[protocol.REPLY_ARRAYS].items()}


def metrics_of(reply: Message) -> dict[str, object]:
    return dict(reply.content.metric_records[protocol.REPLY_METRICS])


def test_a_round_asked_again_gets_the_same_release_and_costs_nothing(node: ClinicNode) -> None:
    first = train(node, flower_run=1)
    again = train(node, flower_run=2)  # the resumed run: a new Flower run, the same OralFed run
    assert metrics_of(again) == metrics_of(first)
    for name, array in arrays_of(first).items():
        np.testing.assert_array_equal(arrays_of(again)[name], array)
    rounds = [(c.run_id, c.round) for c in charges(node) if isinstance(c.event, DpSgdEvent)]
    assert rounds == [(RUN, 1)]  # charged under the OralFed run id, once


def test_a_charged_round_that_was_never_stored_is_computed_under_its_charge(
    node: ClinicNode,
) -> None:
    train(node, flower_run=1)
    before = charges(node)
    for stored in (node.state_dir / RELEASES_DIR).glob("*.npz"):
        stored.unlink()  # the clinic stopped after the charge, before the release was stored
    computed = train(node, flower_run=2)
    assert charges(node) == before  # nothing charged again
    again = train(node, flower_run=3)
    for name, array in arrays_of(computed).items():  # and that release is the one kept
        np.testing.assert_array_equal(arrays_of(again)[name], array)


def test_a_charge_never_covers_another_mechanism(node: ClinicNode) -> None:
    train(node, flower_run=1)
    before = charges(node)
    for stored in (node.state_dir / RELEASES_DIR).glob("*.npz"):
        stored.unlink()
    refused = train(node, flower_run=2, **{protocol.CFG_NOISE_MULTIPLIER: 2.0})
    assert refused.has_error() and refused.error.code == protocol.ERROR_POLICY_REFUSED
    assert "round 1 of run" in refused.error.reason and "another mechanism" in refused.error.reason
    assert charges(node) == before


def test_an_evaluation_asked_again_is_the_same_histogram(node: ClinicNode) -> None:
    first, again = evaluate(node, flower_run=1), evaluate(node, flower_run=2)
    assert metrics_of(again) == metrics_of(first)
    evaluations = [c for c in charges(node) if isinstance(c.event, DiscreteLaplaceEvent)]
    assert [(c.run_id, c.round) for c in evaluations] == [(RUN, 3)]


def test_the_per_run_bound_counts_the_run_across_flower_runs(node: ClinicNode) -> None:
    """The resumed run is the same run: its second round counts with its first."""
    first = train(node, flower_run=1)
    one_round = float(metrics_of(first)[protocol.EPSILON_SPENT])  # so far: all of this run
    bounded = replace(node, policy=ClinicPolicy(max_epsilon_per_run=one_round * 1.2))
    refused = train(bounded, flower_run=2, server_round=2)
    assert refused.has_error() and refused.error.code == protocol.ERROR_POLICY_REFUSED
    assert "per run" in refused.error.reason
    assert [c.round for c in charges(node) if isinstance(c.event, DpSgdEvent)] == [1]


@pytest.mark.parametrize("run_id", ["", "a" * 65, "../../etc", "run id"])
def test_a_malformed_run_id_is_refused_before_anything_is_charged(
    node: ClinicNode, run_id: str
) -> None:
    refused = train(node, flower_run=1, **{protocol.CFG_RUN_ID: run_id})
    assert refused.has_error() and protocol.CFG_RUN_ID in refused.error.reason
    assert not (node.state_dir / "ledger.db").exists() or not charges(node)


def stored_release() -> Release:
    arrays = ArrayRecord(
        {"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)), "b": Array(np.zeros(2))}
    )
    metrics = MetricRecord({protocol.NUM_EXAMPLES: 120, protocol.EPSILON_SPENT: 0.1 + 0.2})
    return Release(7, metrics, arrays, "estimate")


def test_a_stored_release_reads_back_exactly(tmp_path: Path) -> None:
    store, key = ReleaseStore(tmp_path), ReleaseKey("d", "r", 2, "train")
    assert store.load(key) is None
    release = stored_release()
    store.save(key, release)
    loaded = store.load(key)
    assert loaded is not None and loaded.charge_id == 7 and loaded.public_size_source == "estimate"
    assert dict(loaded.metrics) == dict(release.metrics)
    assert loaded.arrays is not None and release.arrays is not None
    assert list(loaded.arrays) == ["w", "b"]
    for name, array in release.arrays.items():
        loaded_array = loaded.arrays[name].numpy()
        assert loaded_array.dtype == array.numpy().dtype
        np.testing.assert_array_equal(loaded_array, array.numpy())
    assert store.load(ReleaseKey("d", "r", 2, "evaluate")) is None  # another phase, no release


def test_a_release_file_that_cannot_be_trusted_is_refused(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path)
    key, other = ReleaseKey("d", "r", 1, "train"), ReleaseKey("d", "r", 2, "train")
    store.save(key, stored_release())
    store.path(other).write_bytes(store.path(key).read_bytes())  # another round's file
    with pytest.raises(ReleaseStoreError, match="holds the release of"):
        store.load(other)
    store.path(key).write_bytes(b"not a release")
    with pytest.raises(ReleaseStoreError, match=str(store.path(key))):
        store.load(key)
