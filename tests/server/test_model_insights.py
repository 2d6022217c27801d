"""Model insights: risk for a profile and habit effects, from a saved model and no private data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oralfed.schemas.features import FEATURE_NAMES, Task
from oralfed.schemas.model import build_model
from oralfed.server.model_insights import (
    HABIT_CHANGES,
    PUBLIC_DECLARATION,
    HabitChange,
    PrivateReferenceError,
    ProfileError,
    ReferenceKind,
    habit_effects,
    plot_effects,
    predict_risk,
    profile_record,
    reference_population,
)
from tests.conftest import GOOD_ROW, WriteCsv, good_rows


def smoking_only_model() -> torch.nn.Module:
    """A linear model whose logit is +2 for current smokers and nothing else."""
    model = build_model(hidden_sizes=())
    with torch.no_grad():
        layer = model.layers[0]
        layer.weight.zero_()
        layer.bias.zero_()
        layer.weight[0, FEATURE_NAMES.index("smoking_status=current")] = 2.0
    return model


def test_profile_defaults_and_errors_name_the_field() -> None:
    record = profile_record({"age_years": 70, "smoking_status": "current"})
    assert record.age_years == 70 and record.brushing_per_day == 2
    with pytest.raises(ProfileError, match="age_years"):
        profile_record({"age_years": 400})


def test_risk_follows_the_model() -> None:
    model = smoking_only_model()
    smoker, never = (profile_record({"smoking_status": s}) for s in ("current", "never"))
    risks = predict_risk(model, [smoker, never])
    assert risks[0] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-6)
    assert risks[1] == pytest.approx(0.5, abs=1e-6)


def test_effects_are_averaged_over_the_reference_population() -> None:
    population = reference_population(seed=3).records[:300]
    effects = {e.change.column: e for e in habit_effects(smoking_only_model(), population)}
    assert {c.column for c in HABIT_CHANGES} == set(effects)
    smoking = effects["smoking_status"]
    expected = 0.5 - torch.sigmoid(torch.tensor(2.0)).item()
    assert smoking.difference == pytest.approx(expected, abs=1e-6)
    assert effects["brushing_per_day"].difference == pytest.approx(0.0, abs=1e-9)


def test_the_default_reference_is_synthetic_seeded_and_says_so() -> None:
    reference = reference_population(seed=3)
    assert reference.records == reference_population(seed=3).records
    assert reference.records != reference_population(seed=4).records
    described = reference.describe()
    assert described["kind"] == ReferenceKind.SYNTHETIC == "synthetic"
    assert described["patients"] == len(reference.records)
    assert "oralfed.schemas.synthetic" in described["source"] and "seed 3" in described["source"]
    assert "declaration" not in described


def test_a_file_is_a_reference_only_when_declared_public(write_csv: WriteCsv) -> None:
    path = write_csv(good_rows(5))
    with pytest.raises(PrivateReferenceError, match="declared public"):
        reference_population(path)
    public = reference_population(path, declared_public=True)
    assert public.describe() == {
        "kind": "public",
        "source": str(path),
        "patients": 5,
        "declaration": PUBLIC_DECLARATION,
    }
    assert PUBLIC_DECLARATION in public.label()


def test_a_public_reference_file_excludes_care_only_rows(write_csv: WriteCsv) -> None:
    rows = good_rows(5)
    rows += [{**GOOD_ROW, "patient_ref": f"c{i}", "consent_tier": "care_only"} for i in range(3)]
    assert len(reference_population(write_csv(rows), declared_public=True).records) == 5


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    change = HabitChange("smoking", "smoking_status", "current", "never")
    population = reference_population(seed=3).records[:50]
    effects = habit_effects(smoking_only_model(), population, [change])
    path = plot_effects(effects, Task.UNTREATED_CARIES, tmp_path / "chart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
