"""Run settings: one definition, and every derived form round-trips to it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from oralfed.cli.errors import message_for
from oralfed.cli.settings_options import SettingValues, flag_names, run_setting_options
from oralfed.schemas import protocol
from oralfed.schemas.features import Task
from oralfed.schemas.settings import (
    DEPLOYED_ROUND_TIMEOUT,
    AggregationName,
    DpEngineName,
    FederationSettings,
    SettingsError,
    StrategyName,
    run_settings,
)

ROOT = Path(__file__).resolve().parents[2]
# Keys of [tool.flwr.app.config] that are not run settings (the query app, the simulation).
APP_ONLY_KEYS = {
    protocol.RUN_MANIFEST_PATH,
    protocol.RUN_QUERY_JSON,
    protocol.RUN_CELL_FLOOR,
    protocol.RUN_CLINIC_MIN_RECORDS,
    protocol.RUN_ALLOW_SMALL_FLOORS,
}

valid_settings = st.builds(
    FederationSettings,
    rounds=st.integers(1, 50),
    strategy=st.sampled_from(StrategyName),
    proximal_mu=st.floats(0, 1),
    eval_epsilon=st.floats(0.01, 1),
    eval_every=st.integers(0, 5),
    local_epochs=st.integers(1, 5),
    batch_size=st.integers(1, 512),
    learning_rate=st.floats(1e-4, 1),
    clip_norm=st.floats(0.1, 10),
    target_epsilon=st.just(None),
    noise_multiplier=st.floats(0.3, 5),
    seed=st.integers(0, 2**31),
    min_clinics=st.integers(1, 10),
    clinics_per_round=st.one_of(st.none(), st.floats(0.01, 0.99), st.integers(10, 500)),
    round_timeout=st.one_of(st.none(), st.floats(1, 3600)),
    task=st.sampled_from(Task),
    hidden_sizes=st.lists(st.integers(1, 128), min_size=1, max_size=3).map(tuple),
    dp_engine=st.sampled_from(DpEngineName),
    out_dir=st.one_of(st.none(), st.just(Path("/srv/run"))),
    coordinator_url=st.one_of(st.none(), st.just("postgresql+psycopg://db/oralfed")),
)


@given(valid_settings)
def test_settings_round_trip_through_the_run_config(settings: FederationSettings) -> None:
    assert FederationSettings.from_run_config(settings.run_config()) == settings


@given(valid_settings)
def test_settings_round_trip_through_their_public_form(settings: FederationSettings) -> None:
    assert FederationSettings.from_public_dict(settings.public_dict()) == settings


def test_a_target_epsilon_round_trips_too() -> None:
    settings = FederationSettings(target_epsilon=1.5)
    assert FederationSettings.from_run_config(settings.run_config()) == settings


def test_every_setting_is_in_the_run_config_with_a_value_flower_can_hold() -> None:
    config = FederationSettings().run_config()
    assert list(config) == [item.key for item in run_settings()]
    assert all(isinstance(value, bool | int | float | str) for value in config.values())
    # the bug this registry fixed: a deployed run dropped the engine and the task
    opacus = FederationSettings(dp_engine=DpEngineName.OPACUS, task=Task.PERIODONTITIS)
    assert FederationSettings.from_run_config(opacus.run_config()).dp_engine == "opacus"
    assert FederationSettings.from_run_config(opacus.run_config()).task == Task.PERIODONTITIS


def test_pyproject_run_config_states_the_defaults() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    table = pyproject["tool"]["flwr"]["app"]["config"]
    defaults = FederationSettings().run_config()
    assert {key: table[key] for key in defaults} == defaults
    assert set(table) - set(defaults) == APP_ONLY_KEYS


def test_every_cli_flag_sets_its_setting() -> None:
    app = typer.Typer()
    received: list[FederationSettings] = []

    @app.command()
    @run_setting_options()
    def command(
        settings: SettingValues,
        as_json: Annotated[bool, typer.Option("--json")] = False,  # the command's own option
    ) -> None:
        assert as_json
        received.append(settings.build())

    arguments = {
        "--rounds": "3",
        "--strategy": "fedprox",
        "--proximal-mu": "0.5",
        "--aggregation": "median",
        "--hostile-clinics": "1",
        "--trim-fraction": "0.1",
        "--update-norm-bound": "4.5",
        "--max-clinic-weight": "50000",
        "--secagg-threshold": "0.8",
        "--secagg-max-weight": "5000",
        "--local-epochs": "4",
        "--batch-size": "32",
        "--learning-rate": "0.05",
        "--clip-norm": "2.0",
        "--noise-multiplier": "1.1",
        "--eval-epsilon": "0.2",
        "--eval-every": "2",
        "--seed": "11",
        "--min-clinics": "3",
        "--clinics-per-round": "40",
        "--round-timeout": "60",
        "--task": "periodontitis",
        "--hidden-sizes": "16,8",
        "--dp-engine": "opacus",
        "--coordinator-url": "sqlite:///c.db",
    }
    # every flagged setting is covered (a target ε is the alternative to a fixed σ, above;
    # the secure-aggregation switch, refused with median, has a test of its own)
    assert {*arguments, "--target-epsilon", "--secure-aggregation"} == set(flag_names().values())
    flags = [part for pair in arguments.items() for part in pair]
    result = CliRunner().invoke(app, [*flags, "--json"])
    assert result.exit_code == 0, result.output
    assert received == [
        FederationSettings(
            rounds=3,
            strategy=StrategyName.FEDPROX,
            proximal_mu=0.5,
            aggregation=AggregationName.MEDIAN,
            hostile_clinics=1,
            trim_fraction=0.1,
            update_norm_bound=4.5,
            max_clinic_weight=50000.0,
            secagg_threshold=0.8,
            secagg_max_weight=5000.0,
            local_epochs=4,
            batch_size=32,
            learning_rate=0.05,
            clip_norm=2.0,
            target_epsilon=None,
            noise_multiplier=1.1,
            eval_epsilon=0.2,
            eval_every=2,
            seed=11,
            min_clinics=3,
            clinics_per_round=40,
            round_timeout=60.0,
            task=Task.PERIODONTITIS,
            hidden_sizes=(16, 8),
            dp_engine=DpEngineName.OPACUS,
            coordinator_url="sqlite:///c.db",
        )
    ]


def test_no_flags_give_the_defaults() -> None:
    assert SettingValues({}).build() == FederationSettings()


@pytest.mark.parametrize(
    ("values", "library_message", "cli_message"),
    [
        ({"rounds": 0}, "num-server-rounds must be at least 1", "--rounds must be at least 1"),
        (
            {"target_epsilon": 1.0, "noise_multiplier": 1.0},
            "give at most one of target-epsilon and noise-multiplier",
            "give at most one of --target-epsilon and --noise-multiplier",
        ),
        ({"dp_engine": "turbo"}, "dp-engine must be one of fast, opacus", "--dp-engine must"),
        ({"learning_rate": float("nan")}, "learning-rate must be a positive", "--learning-rate"),
    ],
)
def test_errors_name_the_setting_and_the_cli_names_its_flag(
    values: dict[str, Any], library_message: str, cli_message: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        FederationSettings.from_values(values)
    assert library_message in str(raised.value)
    assert "--" not in str(raised.value)
    assert cli_message in message_for(raised.value)


def test_the_secure_aggregation_switch_and_what_it_refuses() -> None:
    app = typer.Typer()
    received: list[FederationSettings] = []

    @app.command()
    @run_setting_options()
    def command(settings: SettingValues) -> None:
        received.append(settings.build())

    assert CliRunner().invoke(app, ["--secure-aggregation"]).exit_code == 0
    assert CliRunner().invoke(app, []).exit_code == 0
    assert [s.secure_aggregation for s in received] == [True, False]
    assert FederationSettings.from_run_config({"secure-aggregation": "true"}).secure_aggregation
    with pytest.raises(SettingsError, match="must be true or false"):
        FederationSettings.from_run_config({"secure-aggregation": "yes"})
    with pytest.raises(SettingsError, match="aggregation=krum needs them one by one"):
        FederationSettings(secure_aggregation=True, aggregation="krum", min_clinics=5)
    with pytest.raises(SettingsError, match="at least 2 clinics"):
        FederationSettings(secure_aggregation=True, min_clinics=1)
    with pytest.raises(SettingsError, match="secagg-threshold must be in"):
        FederationSettings(secagg_threshold=1.5)


def test_a_simulated_round_waits_for_every_reply_unless_a_timeout_is_given() -> None:
    unset, given = FederationSettings(), FederationSettings(round_timeout=45.0)
    assert (unset.reply_timeout(simulated=True), unset.reply_timeout(simulated=False)) == (
        None,
        DEPLOYED_ROUND_TIMEOUT,
    )
    assert (given.reply_timeout(simulated=True), given.reply_timeout(simulated=False)) == (45, 45)
    assert (unset.connect_timeout(), given.connect_timeout()) == (DEPLOYED_ROUND_TIMEOUT, 45)


@given(
    connected=st.integers(1, 20_000),
    share=st.floats(0.0001, 0.9999),
    count=st.integers(2, 20_000),
    minimum=st.integers(1, 2),
)
def test_a_round_samples_the_count_or_the_share_within_the_connected_clinics(
    connected: int, share: float, count: int, minimum: int
) -> None:
    assert FederationSettings(min_clinics=minimum).clinics_in_round(connected) == connected
    by_count = FederationSettings(clinics_per_round=count, min_clinics=minimum)
    assert by_count.clinics_in_round(connected) == min(count, connected)
    by_share = FederationSettings(clinics_per_round=share, min_clinics=minimum)
    sampled = by_share.clinics_in_round(connected)
    assert min(minimum, connected) <= sampled <= connected
    assert sampled >= share * connected and (sampled == minimum or sampled < share * connected + 1)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (0.0, "a whole number of clinics or a share in (0, 1)"),
        (-3.0, "a whole number of clinics or a share in (0, 1)"),
        (2.5, "a whole number of clinics or a share in (0, 1)"),
        (float("inf"), "a whole number of clinics or a share in (0, 1)"),
        (1.0, "clinics-per-round=1 samples fewer clinics than the min-clinics=2"),
    ],
)
def test_a_sample_that_is_no_count_or_share_or_below_the_minimum_is_refused(
    value: float, problem: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(problem)):
        FederationSettings(clinics_per_round=value)
    assert FederationSettings.from_run_config({"clinics-per-round": 0.0}).clinics_per_round is None
