"""Tests for the synthetic clinic-data generator (the ``schemas/synthetic/`` package).

The generator is the test bed for everything else (importer, federated training, privacy
accounting), so these tests pin down what the rest of the project relies on: byte-for-byte
determinism, clinic independence from federation size, contract-valid clean data, the
documented calibration, learnability, real heterogeneity, and faults that are exactly the
rows reported. Contract rules are re-implemented here in plain Python on purpose, so that
the generator is checked against the contract page, not against the project's own parser.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import date, timedelta
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oralfed.schemas.contract import (
    ConsentTier,
    FluoridatedWater,
    Periodontitis,
    Sex,
    SmokingStatus,
)
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.synthetic import (
    CONTRACT_COLUMNS,
    FAULT_KINDS,
    REFERENCE_DATE,
    ClinicProfile,
    SyntheticDataError,
    clinic_profiles,
    periodontitis_stage_probabilities,
    synthesize_clinic,
    synthesize_clinic_with_faults,
    untreated_caries_probability,
    write_federation,
)
from oralfed.schemas.synthetic.export import write_csv_atomically
from oralfed.schemas.synthetic.ground_truth import caries_age_offset, caries_logit
from oralfed.schemas.synthetic.vocabulary import (
    CONSENT_TIERS,
    PERIODONTITIS_STAGES,
    SEXES,
    SMOKING_STATUSES,
    WATER_STATUSES,
)

Row = dict[str, str]

# The default pooled population of the calibration (docs/data.md): ten clinics per seed,
# pooled over three seeds, since a single federation moves by 1-2 points from seed to seed.
CALIBRATION_SEEDS = (0, 1, 2)

# --- the contract, restated from shared/docs/data-contract.md -------------------------

EXPECTED_COLUMNS = (
    "patient_ref",
    "age_years",
    "sex",
    "smoking_status",
    "brushing_per_day",
    "flossing_days_per_week",
    "sugary_drinks_per_day",
    "sugary_snacks_per_day",
    "fluoride_toothpaste",
    "fluoridated_water",
    "dental_visits_per_year",
    "diabetes",
    "bmi",
    "last_visit_date",
    "dmft",
    "untreated_caries",
    "periodontitis",
    "consent_tier",
)
OPTIONAL = frozenset({"fluoridated_water", "bmi", "last_visit_date", "periodontitis"})
CATEGORIES = {
    "sex": {"female", "male", "other", "unknown"},
    "smoking_status": {"never", "former", "current"},
    "fluoridated_water": {"yes", "no", "unknown"},
    "periodontitis": {"none", "mild", "moderate", "severe"},
    "consent_tier": {"care_only", "statistics", "research"},
}
INTEGERS = {"age_years": (2, 110), "flossing_days_per_week": (0, 7), "dmft": (0, 32)}
NUMBERS = {
    "brushing_per_day": (0, 6),
    "sugary_drinks_per_day": (0, 20),
    "sugary_snacks_per_day": (0, 20),
    "dental_visits_per_year": (0, 12),
    "bmi": (10, 80),
}
BOOLEANS = ("fluoride_toothpaste", "diabetes", "untreated_caries")
BOOLEAN_WORDS = {"true", "false", "yes", "no", "1", "0"}
REF = re.compile(r"[A-Za-z0-9_-]{1,64}")
INTEGER = re.compile(r"-?\d+")
NUMBER = re.compile(r"-?\d+(\.\d+)?")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def cell_violations(row: Row) -> list[str]:
    """Every contract rule the row's cells break (uniqueness is checked per file)."""
    problems = []
    for column in CONTRACT_COLUMNS:
        value = row[column].strip()
        if value == "":
            if column not in OPTIONAL:
                problems.append(f"{column}: required")
            continue
        if column == "patient_ref":
            ok = REF.fullmatch(value) is not None
        elif column in CATEGORIES:
            ok = value in CATEGORIES[column]
        elif column in INTEGERS:
            low, high = INTEGERS[column]
            ok = INTEGER.fullmatch(value) is not None and low <= int(value) <= high
        elif column in NUMBERS:
            low, high = NUMBERS[column]
            ok = NUMBER.fullmatch(value) is not None and low <= float(value) <= high
        elif column in BOOLEANS:
            ok = value.lower() in BOOLEAN_WORDS
        else:  # last_visit_date
            ok = ISO_DATE.fullmatch(value) is not None and _real_past_date(value)
        if not ok:
            problems.append(f"{column}: {value!r}")
    return problems


def _real_past_date(text: str) -> bool:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return False
    return date(1900, 1, 1) <= day <= date.today()


def duplicate_rows(rows: Sequence[Row]) -> set[int]:
    """1-based rows whose patient_ref repeats an earlier row's (first occurrence wins)."""
    seen: set[str] = set()
    repeats = set()
    for number, row in enumerate(rows, start=1):
        ref = row["patient_ref"].strip()
        if ref and ref in seen:
            repeats.add(number)
        seen.add(ref)
    return repeats


def invalid_rows(rows: Sequence[Row]) -> dict[int, int]:
    """Row number -> number of broken rules, for rows breaking at least one."""
    counts = Counter(duplicate_rows(rows))
    for number, row in enumerate(rows, start=1):
        counts[number] += len(cell_violations(row))
    return {number: count for number, count in counts.items() if count}


# --- shared fixtures --------------------------------------------------------------------


@cache
def federation_rows(seed: int, n_clinics: int = 10) -> tuple[tuple[Row, ...], ...]:
    """Rows of every clinic of the default federation (cached: used by several tests)."""
    return tuple(
        tuple(synthesize_clinic(profile, seed)) for profile in clinic_profiles(n_clinics, seed)
    )


def pooled(seeds: Sequence[int] = CALIBRATION_SEEDS) -> list[Row]:
    return [row for seed in seeds for clinic in federation_rows(seed) for row in clinic]


def column(rows: Sequence[Row], name: str) -> np.ndarray:
    return np.asarray([row[name] for row in rows])


def numbers(rows: Sequence[Row], name: str) -> np.ndarray:
    return np.asarray([float(row[name]) for row in rows])


def small_profile(n_patients: int = 200, **changes: object) -> ClinicProfile:
    return dataclasses.replace(clinic_profiles(1, 3)[0], n_patients=n_patients, **changes)


# --- API shape and determinism ------------------------------------------------------------


def test_contract_columns_are_the_contracts_in_order() -> None:
    assert CONTRACT_COLUMNS == EXPECTED_COLUMNS


# Positions are codes in the generator's ground truth (smoking 2 = current, water 1 = no,
# sex 1 = male), so the order of each vocabulary is pinned, not only its words.
CODE_ORDER = {
    "sex": ("female", "male", "other", "unknown"),
    "smoking_status": ("never", "former", "current"),
    "fluoridated_water": ("yes", "no", "unknown"),
    "periodontitis": ("none", "mild", "moderate", "severe"),
    "consent_tier": ("care_only", "statistics", "research"),
}


def test_category_codes_are_the_contract_words_in_pinned_order() -> None:
    # Reordering a contract enum must fail here, not silently change the risk model.
    generator = {
        "sex": (SEXES, Sex),
        "smoking_status": (SMOKING_STATUSES, SmokingStatus),
        "fluoridated_water": (WATER_STATUSES, FluoridatedWater),
        "periodontitis": (PERIODONTITIS_STAGES, Periodontitis),
        "consent_tier": (CONSENT_TIERS, ConsentTier),
    }
    assert generator.keys() == CATEGORIES.keys() == CODE_ORDER.keys()
    for name, (words, enum) in generator.items():
        assert words == CODE_ORDER[name] == tuple(member.value for member in enum), name
        assert set(words) == CATEGORIES[name], name


def test_rows_are_string_cells_keyed_by_contract_columns() -> None:
    rows = synthesize_clinic(small_profile(50), seed=1)
    assert len(rows) == 50
    for row in rows:
        assert tuple(row) == CONTRACT_COLUMNS
        assert all(isinstance(value, str) for value in row.values())


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    first = write_federation(tmp_path / "a", n_clinics=3, seed=42, bad_row_fraction=0.05)
    again = write_federation(tmp_path / "b", n_clinics=3, seed=42, bad_row_fraction=0.05)
    other = write_federation(tmp_path / "c", n_clinics=3, seed=43, bad_row_fraction=0.05)
    assert [p.name for p in first] == ["clinic-01.csv", "clinic-02.csv", "clinic-03.csv"]
    for a, b, c in zip(first, again, other, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()


def test_clinic_k_does_not_depend_on_how_many_clinics_are_generated(tmp_path: Path) -> None:
    three = clinic_profiles(3, seed=9)
    five = clinic_profiles(5, seed=9)
    assert five[:3] == three
    small = write_federation(tmp_path / "three", n_clinics=3, seed=9, bad_row_fraction=0.1)
    large = write_federation(tmp_path / "five", n_clinics=5, seed=9, bad_row_fraction=0.1)
    for a, b in zip(small, large[:3], strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_files_are_utf8_csv_with_the_contract_header(tmp_path: Path) -> None:
    paths = write_federation(tmp_path, n_clinics=2, seed=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clinic-01.csv", "clinic-02.csv"]
    for path, profile in zip(paths, clinic_profiles(2, 5), strict=True):
        with path.open(encoding="utf-8", newline="") as stream:
            reader = csv.DictReader(stream)
            assert tuple(reader.fieldnames or ()) == CONTRACT_COLUMNS
            assert list(reader) == synthesize_clinic(profile, 5)


def test_write_is_atomic_and_leaves_no_temporary_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "clinic-01.csv"
    target.write_text("old content\n", encoding="utf-8")

    def rows_then_crash() -> Iterator[Row]:
        yield synthesize_clinic(small_profile(1), seed=0)[0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_csv_atomically(target, rows_then_crash())
    assert target.read_text(encoding="utf-8") == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["clinic-01.csv"]
    write_federation(tmp_path, n_clinics=1, seed=0)  # replaces the old file in place
    assert target.read_text(encoding="utf-8").startswith(",".join(CONTRACT_COLUMNS))
    assert [p.name for p in tmp_path.iterdir()] == ["clinic-01.csv"]


# --- clean data follows the contract ------------------------------------------------------


def test_clean_rows_satisfy_every_contract_rule() -> None:
    for clinic in federation_rows(0):
        assert invalid_rows(clinic) == {}
        refs = column(clinic, "patient_ref")
        assert len(set(refs.tolist())) == len(refs)


def test_clean_rows_are_plausible() -> None:
    rows = pooled((0,))
    age = numbers(rows, "age_years")
    assert age.min() <= 5  # pediatric clinics see toddlers
    assert age.max() >= 90
    assert set(column(rows, "sex")) == CATEGORIES["sex"]
    assert set(column(rows, "consent_tier")) == CATEGORIES["consent_tier"]
    assert set(column(rows, "fluoridated_water")) == {"yes", "no", "unknown", ""}
    perio = column(rows, "periodontitis")
    assert (perio[age < 30] == "").all()
    adults = age >= 30
    assert 0.05 <= (perio[adults] == "").mean() <= 0.15  # ~10% of adults not examined
    assert 0.07 <= (column(rows, "bmi") == "").mean() <= 0.13
    dates = column(rows, "last_visit_date")
    assert 0.03 <= (dates == "").mean() <= 0.07
    written = [date.fromisoformat(d) for d in dates if d]
    assert min(written) >= REFERENCE_DATE - timedelta(days=3 * 365)
    assert max(written) <= REFERENCE_DATE
    dmft = numbers(rows, "dmft")
    caries = column(rows, "untreated_caries") == "true"
    assert (dmft[caries & (age >= 6)] >= 1).all()  # untreated decay is the D in DMFT
    assert dmft[age >= 65].mean() > dmft[(age >= 20) & (age < 65)].mean() > dmft[age < 20].mean()
    adults_20_64 = (age >= 20) & (age <= 64)
    low_risk = dmft[adults_20_64 & ~caries].mean()
    assert dmft[adults_20_64 & caries].mean() > low_risk


# --- calibration and ground truth ---------------------------------------------------------


def test_pooled_population_matches_the_reference_prevalences() -> None:
    rows = pooled()
    age = numbers(rows, "age_years")
    caries = column(rows, "untreated_caries") == "true"
    smoker = column(rows, "smoking_status") == "current"
    adults = (age >= 20) & (age <= 64)
    youth = (age >= 6) & (age <= 19)
    assert caries[adults].mean() == pytest.approx(0.26, abs=0.03)
    assert 0.38 <= caries[adults & smoker].mean() <= 0.52
    assert caries[youth].mean() == pytest.approx(0.133, abs=0.03)
    perio = column(rows, "periodontitis")
    examined = (age >= 30) & (perio != "")
    assert (perio[examined] != "none").mean() == pytest.approx(0.42, abs=0.04)
    assert (perio[examined] == "severe").mean() == pytest.approx(0.078, abs=0.02)
    older = (age >= 65) & (perio != "")
    younger = (age >= 30) & (age < 65) & (perio != "")
    assert (perio[older] != "none").mean() > (perio[younger] != "none").mean()


def caries_probabilities(rows: Sequence[Row]) -> np.ndarray:
    return untreated_caries_probability(
        age_years=numbers(rows, "age_years"),
        smoking_status=column(rows, "smoking_status"),
        brushing_per_day=numbers(rows, "brushing_per_day"),
        flossing_days_per_week=numbers(rows, "flossing_days_per_week"),
        sugary_drinks_per_day=numbers(rows, "sugary_drinks_per_day"),
        sugary_snacks_per_day=numbers(rows, "sugary_snacks_per_day"),
        fluoride_toothpaste=column(rows, "fluoride_toothpaste"),
        fluoridated_water=column(rows, "fluoridated_water"),
        dental_visits_per_year=numbers(rows, "dental_visits_per_year"),
        diabetes=column(rows, "diabetes"),
    )


def test_public_caries_model_is_the_one_the_labels_come_from() -> None:
    rows = pooled((0,))
    probability = caries_probabilities(rows)
    caries = column(rows, "untreated_caries") == "true"
    assert probability.shape == (len(rows),)
    assert caries.mean() == pytest.approx(probability.mean(), abs=0.01)
    for low, high in ((0.0, 0.1), (0.1, 0.3), (0.3, 0.6), (0.6, 1.0)):  # reliability bins
        band = (probability >= low) & (probability < high)
        assert caries[band].mean() == pytest.approx(probability[band].mean(), abs=0.03)


def test_caries_model_directions() -> None:
    base = dict(
        age_years=40,
        smoking_status="never",
        brushing_per_day=2,
        flossing_days_per_week=3,
        sugary_drinks_per_day=1,
        sugary_snacks_per_day=1,
        fluoride_toothpaste=True,
        fluoridated_water="yes",
        dental_visits_per_year=1,
        diabetes=False,
    )
    p0 = untreated_caries_probability(**base)[0]

    def p(**change: object) -> float:
        return float(untreated_caries_probability(**{**base, **change})[0])

    assert p(smoking_status="current") > p(smoking_status="former") > p0
    assert p(sugary_drinks_per_day=3) > p0 and p(sugary_snacks_per_day=3) > p0
    assert p(brushing_per_day=3) < p0 and p(flossing_days_per_week=7) < p0
    assert p(fluoride_toothpaste=False) > p0 and p(fluoridated_water="no") > p0
    assert p(fluoridated_water="") == p(fluoridated_water="unknown")
    assert p(dental_visits_per_year=3) < p0 and p(diabetes=True) > p0
    assert p(age_years=12) < p0
    with pytest.raises(ValueError, match="smoking_status"):
        p(smoking_status="sometimes")


def test_caries_logit_is_the_age_offset_plus_habits() -> None:
    # DMFT and the calibration take "logit minus age offset" as the habit score: it must be
    # zero without habits and must not depend on age for equal habits.
    age = np.arange(2.0, 105.0)
    zero, no = np.zeros_like(age), np.zeros(age.size, dtype=bool)
    # codes: age, smoking, brushing, flossing, drinks, snacks, toothpaste, water, visits, diabetes
    no_habits = caries_logit(age, zero, zero, zero, zero, zero, no, zero, zero, no)
    np.testing.assert_array_equal(no_habits, caries_age_offset(age))
    two = zero + 2.0
    habits = caries_logit(age, two, two, two, two, two, ~no, two - 1, two, ~no)
    habit_score = habits - caries_age_offset(age)
    np.testing.assert_allclose(habit_score, habit_score[0], rtol=0, atol=1e-12)
    assert len(set(caries_age_offset(age).tolist())) == 4  # ages 2-5, 6-19, 20-64, 65+


def test_periodontitis_model_is_ordinal_and_matches_the_labels() -> None:
    rows = [row for row in pooled((0,)) if row["periodontitis"]]
    probabilities = periodontitis_stage_probabilities(
        age_years=numbers(rows, "age_years"),
        smoking_status=column(rows, "smoking_status"),
        diabetes=column(rows, "diabetes"),
        sex=column(rows, "sex"),
        flossing_days_per_week=numbers(rows, "flossing_days_per_week"),
        dental_visits_per_year=numbers(rows, "dental_visits_per_year"),
    )
    assert probabilities.shape == (len(rows), 4)
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    observed = [np.mean(column(rows, "periodontitis") == s) for s in PERIODONTITIS_STAGES]
    np.testing.assert_allclose(observed, probabilities.mean(axis=0), atol=0.015)

    def severe_or_moderate(**kw: object) -> float:
        person = dict(
            age_years=45,
            smoking_status="never",
            diabetes=False,
            sex="female",
            flossing_days_per_week=3,
            dental_visits_per_year=1,
        )
        stages = periodontitis_stage_probabilities(**{**person, **kw})[0]
        return float(stages[2:].sum())

    base = severe_or_moderate()
    assert severe_or_moderate(age_years=70) > base
    assert severe_or_moderate(smoking_status="current") > base
    assert severe_or_moderate(diabetes=True) > base
    assert severe_or_moderate(flossing_days_per_week=7) < base
    assert severe_or_moderate(dental_visits_per_year=3) < base


def design_matrix(rows: Sequence[Row]) -> np.ndarray:
    """A plain feature encoding like the models use (no dmft: it is outcome-adjacent)."""
    age = numbers(rows, "age_years")
    bmi_written = column(rows, "bmi")
    bmi = np.asarray([float(v) if v else 26.0 for v in bmi_written])
    features = [
        np.ones(len(rows)),
        (age - 40) / 20,
        numbers(rows, "brushing_per_day"),
        numbers(rows, "flossing_days_per_week") / 7,
        numbers(rows, "sugary_drinks_per_day"),
        numbers(rows, "sugary_snacks_per_day"),
        numbers(rows, "dental_visits_per_year"),
        (bmi - 26) / 5,
        bmi_written == "",
        age <= 5,
        (age >= 6) & (age <= 19),
        age >= 65,
    ]
    for name, values in CATEGORIES.items():
        if name in ("sex", "smoking_status", "fluoridated_water"):
            cells = np.asarray([v or "unknown" for v in column(rows, name)])
            features += [cells == value for value in sorted(values)[1:]]
    features += [column(rows, name) == "true" for name in ("fluoride_toothpaste", "diabetes")]
    return np.column_stack([np.asarray(f, dtype=float) for f in features])


def fit_logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Newton-Raphson (IRLS) with a whisper of ridge for stability."""
    weights = np.zeros(x.shape[1])
    for _ in range(30):
        p = 1 / (1 + np.exp(-x @ weights))
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + 1e-6 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, x.T @ (y - p))
        weights += step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def test_outcome_is_learnable_from_the_features() -> None:
    rows = pooled((0,))
    x = design_matrix(rows)
    y = column(rows, "untreated_caries") == "true"
    train = np.arange(len(rows)) % 2 == 0
    weights = fit_logistic(x[train], y[train].astype(float))
    learned = auc(x[~train] @ weights, y[~train])
    bayes = auc(caries_probabilities(rows)[~train], y[~train])
    assert 0.75 <= learned <= 0.85
    assert learned <= bayes + 0.01  # cannot beat the truth (beyond noise)


# --- heterogeneity ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_clinics_are_heterogeneous(seed: int) -> None:
    profiles = clinic_profiles(10, seed)
    sizes = [p.n_patients for p in profiles]
    assert min(sizes) >= 300 and max(sizes) <= 5000
    assert max(sizes) >= 5 * min(sizes)
    assert {p.age_mix for p in profiles} == {"pediatric", "general", "geriatric"}
    assert [p.clinic_id for p in profiles] == [f"clinic-{k:02d}" for k in range(1, 11)]
    for field in ("current_smoking_rate", "fluoridated_water_rate", "consent_research"):
        values = [getattr(p, field) for p in profiles]
        assert max(values) - min(values) >= 0.1, field
    assert all(0.5 <= p.consent_research <= 0.9 for p in profiles)


def test_clinics_differ_in_what_is_observed() -> None:
    smoking, caries, older = [], [], []
    for clinic in federation_rows(0):
        age = numbers(clinic, "age_years")
        adults = (age >= 20) & (age <= 64)
        smoking.append(np.mean(column(clinic, "smoking_status")[adults] == "current"))
        caries.append(np.mean(column(clinic, "untreated_caries") == "true"))
        older.append(np.mean(age >= 65))
    assert max(smoking) - min(smoking) >= 0.08
    assert max(caries) - min(caries) >= 0.08
    assert max(older) - min(older) >= 0.3


# --- faults -------------------------------------------------------------------------------


def check_faults(profile: ClinicProfile, seed: int, fraction: float) -> list[int]:
    rows, bad = synthesize_clinic_with_faults(profile, seed, fraction)
    clean = synthesize_clinic(profile, seed)
    assert len(rows) == len(clean) == profile.n_patients
    assert abs(len(bad) - fraction * len(rows)) <= 1
    assert bad == sorted(set(bad)) and all(1 <= n <= len(rows) for n in bad)
    # exactly the reported rows break the contract, each exactly one rule ...
    assert invalid_rows(rows) == dict.fromkeys(bad, 1)
    # ... by one changed cell, and every other row is untouched
    bad_set = set(bad)
    for number, (row, original) in enumerate(zip(rows, clean, strict=True), start=1):
        changed = [c for c in CONTRACT_COLUMNS if row[c] != original[c]]
        assert len(changed) == (1 if number in bad_set else 0)
    return bad


def test_bad_rows_are_exactly_the_reported_ones() -> None:
    kinds_seen: set[str] = set()
    for profile in clinic_profiles(3, seed=4):
        bad = check_faults(profile, seed=4, fraction=0.1)
        rows, _ = synthesize_clinic_with_faults(profile, 4, 0.1)
        clean = synthesize_clinic(profile, 4)
        for number in bad:
            kinds_seen.add(describe_fault(rows[number - 1], clean[number - 1], rows))
    assert kinds_seen == set(FAULT_KINDS)


def describe_fault(row: Row, original: Row, rows: Sequence[Row]) -> str:
    """Classify a bad row's single change into one of FAULT_KINDS (from the outside)."""
    (name,) = [c for c in CONTRACT_COLUMNS if row[c] != original[c]]
    value = row[name]
    if name == "patient_ref":
        others = [r["patient_ref"] for r in rows if r is not row]
        return "duplicate_patient_ref" if value in others else "invalid_patient_ref"
    if value == "":
        return "empty_required_cell"
    if name == "age_years" and INTEGER.fullmatch(value):
        return "age_out_of_range"
    if name in CATEGORIES:
        return "unknown_category"
    if name in BOOLEANS:
        return "malformed_boolean"
    if name == "last_visit_date":
        return (
            "future_visit_date"
            if ISO_DATE.fullmatch(value) and value > "2100"
            else ("bad_date_format")
        )
    return "number_out_of_range" if NUMBER.fullmatch(value) else "non_numeric_number"


def test_bad_row_fraction_zero_and_rounding() -> None:
    profile = small_profile(30)
    assert synthesize_clinic_with_faults(profile, 0, 0.0)[1] == []
    assert synthesize_clinic(profile, 0, 0.0) == synthesize_clinic(profile, 0)
    assert len(synthesize_clinic_with_faults(profile, 0, 0.5)[1]) == 15
    assert len(synthesize_clinic_with_faults(small_profile(7), 0, 0.3)[1]) in (2, 3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_patients=st.integers(min_value=1, max_value=80),
    seed=st.integers(min_value=0, max_value=2**32),
    fraction=st.floats(min_value=0.0, max_value=0.5),
)
def test_fault_invariants_hold_for_any_clinic(n_patients: int, seed: int, fraction: float) -> None:
    check_faults(small_profile(n_patients), seed, fraction)


def test_faulty_file_rows_match_the_reported_numbers(tmp_path: Path) -> None:
    (path,) = write_federation(tmp_path, n_clinics=1, seed=8, bad_row_fraction=0.2)
    with path.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    _, bad = synthesize_clinic_with_faults(clinic_profiles(1, 8)[0], 8, 0.2)
    assert sorted(invalid_rows(rows)) == bad


# --- argument checks ----------------------------------------------------------------------


@pytest.mark.parametrize("n_clinics", [0, -3])
def test_refuses_fewer_than_one_clinic(tmp_path: Path, n_clinics: int) -> None:
    with pytest.raises(ValueError, match="n_clinics"):
        write_federation(tmp_path, n_clinics=n_clinics, seed=0)
    with pytest.raises(ValueError, match="n_clinics"):
        clinic_profiles(n_clinics, seed=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fraction", [-0.01, 0.51, 1.0, math.nan, math.inf])
def test_refuses_bad_row_fraction_outside_zero_to_half(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ValueError, match=r"bad_row_fraction must be a number in \[0, 0.5\]"):
        write_federation(tmp_path, n_clinics=1, seed=0, bad_row_fraction=fraction)
    with pytest.raises(ValueError, match="bad_row_fraction"):
        synthesize_clinic_with_faults(small_profile(10), 0, fraction)
    assert list(tmp_path.iterdir()) == []


def test_refusals_are_usage_errors_that_name_the_setting(tmp_path: Path) -> None:
    for call, setting in (
        (lambda: write_federation(tmp_path, n_clinics=0, seed=0), "n_clinics"),
        (lambda: clinic_profiles(2, seed=True), "seed"),
        (lambda: synthesize_clinic(small_profile(10), 0, bad_row_fraction=0.9), "bad_row_fraction"),
        (lambda: small_profile(visit_rate=-1.0), "visit_rate"),
    ):
        with pytest.raises(SyntheticDataError, match=setting) as refused:
            call()
        assert isinstance(refused.value, OralFedError) and isinstance(refused.value, ValueError)
        assert refused.value.exit_code is ExitCode.USAGE
        assert "--" not in str(refused.value)  # a setting, not a CLI flag
    assert list(tmp_path.iterdir()) == []


def test_refuses_negative_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        clinic_profiles(2, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        synthesize_clinic(small_profile(10), seed=-1)


@pytest.mark.parametrize(
    "change",
    [
        {"n_patients": 0},
        {"clinic_id": "clinic 01"},
        {"age_mix": "teen"},
        {"current_smoking_rate": 1.5},
        {"consent_research": 0.99},
        {"visit_rate": 0.0},
    ],
)
def test_profile_refuses_impossible_values(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(clinic_profiles(1, 3)[0], **change)
