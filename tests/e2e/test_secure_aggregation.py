"""End to end: a simulated federation under secure aggregation, through the ``oralfed``
command. The global model each round is the weighted mean of the updates the clinics
released (read back from their own release stores), within the quantiser's rounding; the
report says secure aggregation was on, with its parameters; a clinic out of budget refuses
without a charge while the others' rounds complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oralfed.client.release_store import ReleaseKey, ReleaseStore
from oralfed.client.secure_aggregation import bounded_update
from oralfed.privacy.events import GaussianEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.model import build_model, load_model
from oralfed.schemas.model_record import model_record
from oralfed.schemas.settings import FederationSettings
from tests.e2e.conftest import oralfed
from tests.e2e.test_federation import federate

pytestmark = pytest.mark.e2e

CLINICS = ["clinic-01", "clinic-02", "clinic-03", "clinic-04"]
SPENT = "clinic-04"


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("secure")
    oralfed("data", "synth", "--out", root / "data", "--clinics", "4", "--seed", "13")
    with PrivacyLedger.in_state_dir(root / "state" / SPENT) as ledger:
        ledger.ensure_dataset(SPENT, 10.0, 1e-5, "pld")  # then spend nearly all of it
        ledger.charge(SPENT, GaussianEvent(noise_multiplier=0.5), run_id="earlier")
        spent = ledger.spent(SPENT)
    assert 9 < spent < 10
    result = federate(root / "data", root / "state", root / "run", "--secure-aggregation")
    report = json.loads((root / "run" / "report.json").read_text())
    return {"root": root, "report": report, "stdout": result.stdout, "spent": spent}


def test_each_global_model_is_the_mean_of_the_released_updates(secure_run: dict[str, Any]) -> None:
    assert secure_run["report"]["status"] == "completed"
    report = secure_run["report"]
    assert_models_are_means_of_releases(report, report["run_id"], secure_run["root"] / "state")


def assert_models_are_means_of_releases(
    report: dict[str, Any], oralfed_run_id: str, state: Path
) -> None:
    """Each round's saved global model is the model sent plus the weighted mean of the
    bounded updates its clinics released, as each clinic's own release store holds them
    (under the OralFed run id the clinics charged), within the quantiser's rounding."""
    settings = FederationSettings.from_public_dict(report["settings"])
    previous = model_record(build_model(settings.hidden_sizes, seed=settings.seed))
    for summary in report["rounds"]:
        names = list(previous)
        updates, weights = [], []
        for clinic in summary["trained"]:
            key = ReleaseKey(clinic, oralfed_run_id, summary["round"], "train")
            release = ReleaseStore(state / clinic).load(key)
            assert release is not None and release.arrays is not None
            updates.append(
                bounded_update(
                    [release.arrays[n].numpy() for n in names],
                    [previous[n].numpy() for n in names],
                    settings.update_norm_bound,
                )
            )
            weights.append(float(release.metrics[protocol.NUM_EXAMPLES]))
        model, _, _ = load_model(Path(summary["model_path"]))
        current = model_record(model)
        for i, name in enumerate(names):
            mean = sum(w * u[i] for u, w in zip(updates, weights, strict=True)) / sum(weights)
            np.testing.assert_allclose(
                current[name].numpy(), previous[name].numpy() + mean, atol=1e-5
            )
        previous = current


def test_the_report_says_secure_aggregation_and_its_parameters(secure_run: dict[str, Any]) -> None:
    secure = secure_run["report"]["secure_aggregation"]
    assert secure["enabled"] is True and len(secure["rounds"]) == 2
    for round_ in secure["rounds"]:
        assert round_["shares"] == 4 and round_["reconstruction_threshold"] == 3
        assert round_["clipping_range"] == FederationSettings().update_norm_bound
        assert round_["dropped_after_key_sharing"] == [SPENT]
    assert "Secure aggregation (SecAgg+)" in secure_run["stdout"].replace("\n", " ")


def test_a_clinic_out_of_budget_refuses_uncharged_and_the_others_train(
    secure_run: dict[str, Any],
) -> None:
    rows = {row["clinic"]: row for row in secure_run["report"]["clinics"]}
    assert rows[SPENT]["rounds_trained"] == 0 and len(rows[SPENT]["refusals"]) == 2
    assert all("cap" in refusal["reason"] for refusal in rows[SPENT]["refusals"])
    assert all(rows[c]["rounds_trained"] == 2 for c in CLINICS if c != SPENT)
    with PrivacyLedger.in_state_dir(secure_run["root"] / "state" / SPENT) as ledger:
        assert ledger.spent(SPENT) == pytest.approx(secure_run["spent"])
