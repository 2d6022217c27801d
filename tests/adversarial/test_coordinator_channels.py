"""A curious or malicious coordinator against the real ClientApp handlers.

Each test plays an attack that got out before this protocol (exact evaluation metrics read
by an indicator network, exact train-loss under extreme hyper-parameters, parameters that
depend on the private size, requests no honest federation needs) and shows that what comes
back is covered by the charged ε, or refused with the clinic's reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from oralfed.client.app import answer, handle_evaluate, handle_train
from oralfed.client.data import load_clinic_data
from oralfed.client.evaluation import SCORE_BINS, private_evaluation
from oralfed.client.public_size import SIZE_ESTIMATES_FILE
from oralfed.client.query import handle_query
from oralfed.privacy.audit_log import POLICY_IN_FORCE, read_database_log
from oralfed.privacy.events import DiscreteLaplaceEvent, DpSgdEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.clinic_policy import ClinicPolicy
from oralfed.schemas.features import NUM_FEATURES, Task
from oralfed.schemas.model import RiskModel, build_model
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.query import parse_query
from oralfed.schemas.query_messages import query_content
from oralfed.schemas.settings import FederationSettings
from oralfed.schemas.synthetic import write_federation
from tests.adversarial.coordinator import (
    evaluate_config,
    message,
    query_message,
    reply_keys,
    train_config,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = FederationSettings(
    rounds=2, local_epochs=1, batch_size=64, target_epsilon=None, noise_multiplier=1.0
)


@pytest.fixture(scope="module")
def clinic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,) = write_federation(tmp_path_factory.mktemp("data"), 1, seed=11)
    return path


def clinic(path: Path, state: Path, **changes: object) -> ClinicNode:
    node = ClinicNode("target-clinic", path, state, "target-clinic")
    return replace(node, **changes)  # type: ignore[arg-type]


def indicator_network(target: np.ndarray, task_width: int = 64) -> RiskModel:
    """The default architecture, wired to fire only on one feature vector: the first layer
    computes |x_j - t_j| with two ReLUs per feature, the second ReLU(1 - 50 * Σ|x_j - t_j|),
    the output a large logit there and a very negative one anywhere else."""
    model = build_model((task_width, 32))
    linear1, linear2, out = (m for m in model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        for layer in (linear1, linear2, out):
            layer.weight.zero_()
            layer.bias.zero_()
        for j in range(NUM_FEATURES):
            linear1.weight[2 * j, j], linear1.bias[2 * j] = 1.0, -float(target[j])
            linear1.weight[2 * j + 1, j], linear1.bias[2 * j + 1] = -1.0, float(target[j])
        linear2.weight[0, : 2 * NUM_FEATURES] = -50.0
        linear2.bias[0] = 1.0
        out.weight[0, 0], out.bias[0] = 40.0, -20.0
    return model


def test_an_indicator_network_reads_nothing_the_evaluation_epsilon_does_not_allow(
    clinic_file: Path,
) -> None:
    data = load_clinic_data("c", clinic_file, Task.UNTREATED_CARIES)
    rows = data.x_test.astype(np.float64)
    distances = np.abs(rows[:, None, :] - rows[None, :, :]).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    unique = int(np.argmax(distances.min(axis=1)))  # the most isolated test patient
    network = indicator_network(rows[unique])
    scores = torch.sigmoid(network(torch.from_numpy(data.x_test))).detach().numpy()
    assert scores[unique] > 0.99 and np.delete(scores, unique).max() < 0.01  # the attack works
    label = int(data.y_test[unique])
    # Exact metrics (the old reply) gave the label away every time: the top bin held it.
    epsilon = FAST.eval_epsilon
    trials, correct = 300, 0
    for _ in range(trials):
        histogram = private_evaluation(network, data.x_test, data.y_test, epsilon).histogram
        guess = int(histogram[1, SCORE_BINS - 1] > histogram[0, SCORE_BINS - 1])
        correct += guess == label
    # Changing the label moves one patient between two cells: ε_replace = 2 ε. No test can
    # beat e^ε/(1+e^ε) in a balanced guess; allow three standard errors for chance.
    bound = math.exp(2 * epsilon) / (1 + math.exp(2 * epsilon))
    assert correct / trials <= bound + 3 * math.sqrt(0.25 / trials)


def test_every_evaluation_is_charged_and_the_run_is_refused_past_the_policy(
    clinic_file: Path, tmp_path: Path
) -> None:
    node = clinic(clinic_file, tmp_path / "state", policy=ClinicPolicy(max_epsilon_per_run=1.0))
    network = build_model(FAST.hidden_sizes, seed=1)
    replies = [
        answer(
            handle_evaluate,
            message("evaluate", network, evaluate_config(FAST), server_round=r),
            node,
        )
        for r in range(1, 8)
    ]
    answered = [r for r in replies if not r.has_error()]
    refused = [r for r in replies if r.has_error()]
    assert answered and refused  # charged until the run's policy bound, then refused
    assert all(r.error.code == protocol.ERROR_POLICY_REFUSED for r in refused)
    assert all(protocol.EVAL_HISTOGRAM not in reply_keys(r) for r in refused)
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        charges = ledger.history(node.dataset_id)
    assert len(charges) == len(answered)  # one charge per release, none for a refusal
    assert all(isinstance(c.event, DiscreteLaplaceEvent) for c in charges)
    assert charges[-1].epsilon_after <= 1.0


def test_extreme_hyper_parameters_get_no_training_statistic(
    clinic_file: Path, tmp_path: Path
) -> None:
    """Batch above n, learning rate 1e-9, σ = 1e4: the old reply's exact train-loss gave
    the training labels for an ε of almost nothing. Now the reply holds no statistic."""
    node = clinic(clinic_file, tmp_path / "state")
    config = train_config(
        FAST,
        **{
            protocol.CFG_BATCH_SIZE: 100_000,
            protocol.CFG_LEARNING_RATE: 1e-9,
            protocol.CFG_NOISE_MULTIPLIER: 1e4,
        },
    )
    reply = answer(handle_train, message("train", build_model(seed=2), config), node)
    assert not reply.has_error()
    keys = reply_keys(reply)
    assert "train-loss" not in keys
    assert keys <= set(protocol.REPLY_FIELDS), keys - set(protocol.REPLY_FIELDS)


def test_every_reply_field_is_classified_and_documented(clinic_file: Path, tmp_path: Path) -> None:
    node = clinic(clinic_file, tmp_path / "state")
    model = build_model(FAST.hidden_sizes, seed=3)
    train = answer(handle_train, message("train", model, train_config(FAST)), node)
    evaluate = answer(handle_evaluate, message("evaluate", model, evaluate_config(FAST)), node)
    spec = parse_query({"measure": "mean", "column": "age_years", "epsilon": 0.5})
    query = handle_query(query_message(query_content(spec, 10)), node)
    assert not query.has_error()
    keys = reply_keys(train) | reply_keys(evaluate) | reply_keys(query)
    assert keys <= set(protocol.REPLY_FIELDS), keys - set(protocol.REPLY_FIELDS)
    privacy_doc = (ROOT / "docs" / "privacy.md").read_text()
    assert all(f"`{key}`" in privacy_doc for key in protocol.REPLY_FIELDS)


def test_neighbouring_data_sets_run_the_same_mechanism(clinic_file: Path, tmp_path: Path) -> None:
    """Two runs on data sets differing in one patient: with a declared public size every
    derived field of the reply (weight, σ, q, steps, ε) is identical, so nothing but the
    DP release itself can tell them apart."""
    lines = clinic_file.read_text().splitlines(keepends=True)
    neighbour = tmp_path / "neighbour.csv"
    neighbour.write_text("".join(lines[:1] + lines[2:]))  # one patient fewer
    derived = [key for key, kind in protocol.REPLY_FIELDS.items() if kind == protocol.DERIVED]
    seen = []
    for index, path in enumerate((clinic_file, neighbour)):
        node = clinic(path, tmp_path / f"state-{index}", public_size=2_000)
        config = train_config(replace(FAST, target_epsilon=2.0, noise_multiplier=None))
        reply = answer(handle_train, message("train", build_model(seed=4), config), node)
        metrics = reply.content[protocol.REPLY_METRICS]
        seen.append({key: metrics[key] for key in derived if key in metrics})
    assert seen[0] == seen[1]
    assert seen[0][protocol.NUM_EXAMPLES] == 2_000


def test_an_undeclared_size_is_a_dp_estimate_charged_before_use(
    clinic_file: Path, tmp_path: Path
) -> None:
    node = clinic(clinic_file, tmp_path / "state")
    reply = answer(handle_train, message("train", build_model(seed=5), train_config(FAST)), node)
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        first, second = ledger.history(node.dataset_id)
    assert isinstance(first.event, DiscreteLaplaceEvent)  # the estimate, charged first
    assert isinstance(second.event, DpSgdEvent)
    weight = reply.content[protocol.REPLY_METRICS][protocol.NUM_EXAMPLES]
    stored = json.loads((node.state_dir / SIZE_ESTIMATES_FILE).read_text())
    assert list(stored.values()) == [weight]  # the weight is the charged estimate, kept
    assert second.event.sample_rate == pytest.approx(min(1.0, FAST.batch_size / weight))
    # a second round re-uses the estimate: paid once per file and task
    answer(
        handle_train,
        message("train", build_model(seed=5), train_config(FAST), server_round=2),
        node,
    )
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        kinds = [type(c.event) for c in ledger.history(node.dataset_id)]
    assert kinds == [DiscreteLaplaceEvent, DpSgdEvent, DpSgdEvent]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({protocol.CFG_TASK: "periodontitis"}, "not one this clinic accepts"),
        ({protocol.CFG_HIDDEN_SIZES: [512, 32]}, "outside this clinic's policy"),
        ({protocol.CFG_HIDDEN_SIZES: [8, 8, 8, 8]}, "outside this clinic's policy"),
        ({protocol.CFG_TOTAL_ROUNDS: 1000}, "rounds per run"),
        ({protocol.CFG_NOISE_MULTIPLIER: 0.2}, "below this clinic's policy minimum"),
        ({protocol.CFG_NOISE_MULTIPLIER: 0.0, protocol.CFG_TARGET_EPSILON: 50.0}, "target ε"),
        ({protocol.CFG_EVAL_EPSILON: 5.0}, "evaluation ε"),
        ({protocol.CFG_HIDDEN_SIZES: "64,32"}, "unreadable"),
    ],
)
def test_requests_outside_the_clinic_policy_are_refused_and_charge_nothing(
    clinic_file: Path, tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    node = clinic(
        clinic_file,
        tmp_path / "state",
        policy=ClinicPolicy(tasks=frozenset({Task.UNTREATED_CARIES})),
        public_size=2_000,
    )
    config = train_config(FAST, **change)
    reply = answer(handle_train, message("train", build_model(seed=6), config), node)
    assert reply.has_error() and reply.error.code == protocol.ERROR_POLICY_REFUSED
    assert reason in reply.error.reason
    if node.state_dir.exists():
        with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
            assert ledger.history(node.dataset_id) == []


def test_the_policy_in_force_is_in_the_clinic_audit_log(clinic_file: Path, tmp_path: Path) -> None:
    policy = ClinicPolicy(max_rounds_per_run=7)
    node = clinic(clinic_file, tmp_path / "state", policy=policy, public_size=2_000)
    answer(handle_train, message("train", build_model(seed=7), train_config(FAST)), node)
    log = read_database_log(node.state_dir / "ledger.db")
    entries = [e for e in log if e.kind == POLICY_IN_FORCE]
    assert [e.payload_data()["max_rounds_per_run"] for e in entries] == [7]


@pytest.mark.parametrize("cap", [0.01, 0.5])  # refused at the size estimate, at the round
def test_a_request_past_the_cap_is_refused_with_the_budget_code_and_nothing_released(
    clinic_file: Path, tmp_path: Path, cap: float
) -> None:
    node = clinic(clinic_file, tmp_path / "state", epsilon_cap=cap)
    config = train_config(FAST)
    reply = answer(handle_train, message("train", build_model(seed=8), config), node)
    assert reply.has_error() and reply.error.code == protocol.ERROR_BUDGET_EXCEEDED
    assert "cap" in reply.error.reason
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        spent = ledger.spent(node.dataset_id)
        kinds = [type(c.event) for c in ledger.history(node.dataset_id)]
    assert spent <= cap and DpSgdEvent not in kinds  # no round was charged, none trained
