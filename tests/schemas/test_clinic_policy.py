"""The clinic policy: its node-config form, its defaults and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oralfed.schemas import protocol
from oralfed.schemas.clinic_policy import ClinicPolicy, PolicyError, PolicyRefusal
from oralfed.schemas.features import Task
from oralfed.schemas.node_config import ClinicNode

policies = st.builds(
    ClinicPolicy,
    tasks=st.frozensets(st.sampled_from(Task), min_size=1),
    max_hidden_layers=st.integers(1, 8),
    max_hidden_width=st.integers(1, 4096),
    max_epsilon_per_run=st.floats(0.01, 100),
    min_noise_multiplier=st.floats(0.1, 10),
    max_rounds_per_run=st.integers(1, 1000),
    max_eval_epsilon=st.floats(0.01, 10),
)


@given(policies)
def test_a_policy_round_trips_through_the_node_config(policy: ClinicPolicy) -> None:
    assert ClinicPolicy.from_config(policy.to_config()) == policy
    node = ClinicNode("c", Path("/d.csv"), Path("/s"), "c", policy=policy, public_size=500)
    assert ClinicNode.from_config(node.to_config()) == node


def test_the_defaults_accept_the_platform_defaults_and_refuse_the_extremes() -> None:
    policy = ClinicPolicy()
    policy.check_model(Task.UNTREATED_CARIES, (64, 32))
    policy.check_run(total_rounds=5, target_epsilon=3.0, eval_epsilon=0.3)
    policy.check_noise(0.8)
    with pytest.raises(PolicyRefusal, match="outside this clinic's policy"):
        policy.check_model(Task.UNTREATED_CARIES, (1024,))
    with pytest.raises(PolicyRefusal, match="below this clinic's policy minimum"):
        policy.check_noise(0.05)
    with pytest.raises(PolicyRefusal, match="per run"):
        policy.check_run_epsilon(5.5)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({protocol.NODE_ACCEPT_TASKS: "flossing"}, "accept-tasks: 'flossing' is not a valid"),
        ({protocol.NODE_ACCEPT_MAX_LAYERS: 0}, "accept-max-layers must be at least 1"),
        ({protocol.NODE_MAX_EPSILON_PER_RUN: "nan"}, "max-epsilon-per-run must be a positive"),
        ({protocol.NODE_MIN_NOISE_MULTIPLIER: "x"}, "min-noise-multiplier must be a number"),
        ({protocol.NODE_ACCEPT_MAX_WIDTH: "wide"}, "accept-max-width must be a number"),
        ({protocol.NODE_MAX_ROUNDS_PER_RUN: 2.5}, "max-rounds-per-run must be a whole number"),
    ],
)
def test_a_bad_policy_value_names_its_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        ClinicPolicy.from_config(config)
