"""A curious coordinator running SecAgg+ with the real clinic handlers: what it receives is
keys, shares, masked vectors and the clinics' DP metrics, never an update or a weight; the
mean it unmasks is the mean of what the clinics released; a clinic that refuses is left out
without a charge, and the others' round completes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.supercore.task_identity import TaskIdentity

from oralfed.client.app import answer, handle_train
from oralfed.client.secure_aggregation import bounded_update
from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.model import build_model
from oralfed.schemas.model_record import model_record
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.settings import FederationSettings
from oralfed.schemas.synthetic import write_federation
from oralfed.server.secure_aggregation import SecAggParameters, SecureRound, run_secure_round
from tests.adversarial.coordinator import message, reply_keys, train_config
from tests.adversarial.secure_federation import Handler, SecureFederation

SETTINGS = FederationSettings(
    rounds=2, local_epochs=1, target_epsilon=None, noise_multiplier=3.0, secure_aggregation=True
)
SECURE_KEYS = {protocol.SECAGG_MASKED_UPDATE, *protocol.SECAGG_PROTOCOL_KEYS}


@pytest.fixture(autouse=True)
def _serverapp_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity a ServerApp process has (Flower's Message constructor reads it)."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _clinics(tmp_path: Path, caps: list[float]) -> list[ClinicNode]:
    files = write_federation(tmp_path / "data", len(caps), seed=5)
    return [
        ClinicNode(path.stem, path, tmp_path / "state" / path.stem, path.stem, epsilon_cap=cap)
        for path, cap in zip(files, caps, strict=True)
    ]


def _round(
    tmp_path: Path, caps: list[float]
) -> tuple[SecureRound, SecureFederation, list[ClinicNode], dict[int, Message]]:
    """One secure round of the real handlers; returns what each clinic released unmasked
    (captured inside the clinic, as the clinic itself holds it)."""
    clinics = _clinics(tmp_path, caps)
    released: dict[int, Message] = {}

    def handler(node: ClinicNode, node_id: int) -> Handler:
        def train(msg: Message, context: Context) -> Message:
            released[node_id] = answer(handle_train, msg, node)
            return released[node_id]

        return train

    nodes = {i + 1: handler(node, i + 1) for i, node in enumerate(clinics)}
    federation = SecureFederation(nodes)
    model = build_model(SETTINGS.hidden_sizes, seed=3)
    requests = [message("train", model, train_config(SETTINGS), node_id=n) for n in nodes]
    shapes = [array.numpy().shape for array in model_record(model).values()]
    parameters = SecAggParameters.for_round(
        len(nodes),
        SETTINGS.secagg_threshold,
        SETTINGS.update_norm_bound,
        SETTINGS.secagg_max_weight,
    )
    return (
        run_secure_round(federation.send, requests, parameters, shapes),
        federation,
        clinics,
        released,
    )


def test_the_coordinator_receives_no_update_no_weight_and_only_classified_keys(
    tmp_path: Path,
) -> None:
    result, federation, _, released = _round(tmp_path, [10.0, 10.0, 10.0])
    assert result.problem is None and len(released) == 3
    quantized_below = result.parameters.quantization_range
    for reply in federation.received:
        assert not reply.content.array_records  # no model, no update
        keys = reply_keys(reply)
        assert keys <= set(protocol.REPLY_FIELDS), keys - set(protocol.REPLY_FIELDS)
        assert protocol.NUM_EXAMPLES not in keys  # the weight is inside the masked vector
        masked = reply.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(
            protocol.SECAGG_MASKED_UPDATE
        )
        if masked:  # uniform over the modulus, not quantised values below the range
            values = np.concatenate([bytes_to_ndarray(b).ravel() for b in masked])  # type: ignore[arg-type]
            assert values.max() > quantized_below
    assert {k for r in federation.received for k in reply_keys(r)} >= SECURE_KEYS


def test_the_unmasked_mean_is_the_mean_of_the_clinics_bounded_updates(tmp_path: Path) -> None:
    result, _, _, released = _round(tmp_path, [10.0, 10.0, 10.0])
    sent = model_record(build_model(SETTINGS.hidden_sizes, seed=3))
    names = list(sent)
    updates, weights = [], []
    for reply in released.values():
        arrays = reply.content.array_records[protocol.REPLY_ARRAYS]
        updates.append(
            bounded_update(
                [arrays[n].numpy() for n in names],
                [sent[n].numpy() for n in names],
                SETTINGS.update_norm_bound,
            )
        )
        weights.append(
            float(reply.content.metric_records[protocol.REPLY_METRICS][protocol.NUM_EXAMPLES])
        )
    assert result.mean_update is not None
    for i, got in enumerate(result.mean_update):
        want = sum(w * u[i] for u, w in zip(updates, weights, strict=True)) / sum(weights)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_clinic_refusing_on_budget_is_left_out_uncharged(tmp_path: Path) -> None:
    result, _, clinics, _ = _round(tmp_path, [10.0, 10.0, 0.01])
    assert result.problem is None and result.mean_update is not None
    refusals = [r for r in result.replies if r.has_error()]
    assert len(refusals) == 1 and refusals[0].error.code == protocol.ERROR_BUDGET_EXCEEDED
    assert result.dropped == [3]  # shared its keys, sent no vector: its masks were removed
    with PrivacyLedger.in_state_dir(clinics[2].state_dir) as ledger:
        charges = ledger.history(clinics[2].dataset_id)
    assert not any(isinstance(c.event, DpSgdEvent) for c in charges)
