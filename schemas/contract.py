"""The clinic data contract (``shared/docs/data-contract.md``) as Pydantic v2 models.

One row of a clinic export is one :class:`PatientRecord`. Cells arrive as strings (CSV) or
typed values (Parquet); the validators here accept exactly what the contract allows and
nothing more, so that a record that passes is safe to encode for training or statistics.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class SmokingStatus(StrEnum):
    NEVER = "never"
    FORMER = "former"
    CURRENT = "current"


class FluoridatedWater(StrEnum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


class Periodontitis(StrEnum):
    NONE = "none"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"


class ConsentTier(StrEnum):
    """What the patient allowed; enforced inside the clinic before anything is computed."""

    CARE_ONLY = "care_only"
    STATISTICS = "statistics"
    RESEARCH = "research"

    @property
    def allows_statistics(self) -> bool:
        return self in (ConsentTier.STATISTICS, ConsentTier.RESEARCH)

    @property
    def allows_training(self) -> bool:
        return self is ConsentTier.RESEARCH


TRUE_WORDS = frozenset({"true", "yes", "1"})
FALSE_WORDS = frozenset({"false", "no", "0"})
PATIENT_REF_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
EARLIEST_VISIT = date(1900, 1, 1)


def _parse_bool(value: Any) -> Any:
    """Contract booleans: true/false, yes/no, 1/0 in any letter case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError("must be true/false (yes/no and 1/0 are accepted too)")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("must be true/false")


def _parse_iso_date(value: Any) -> Any:
    """Only ``YYYY-MM-DD``: Pydantic's own date parser would also take timestamps."""
    if isinstance(value, date):
        return value
    if isinstance(value, str) and ISO_DATE.match(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError as error:
            raise ValueError(f"is not a real calendar date ({error})") from None
    raise ValueError("must be a date written YYYY-MM-DD")


def _check_visit_date(value: date | None) -> date | None:
    if value is None:
        return None
    if value > date.today():
        raise ValueError("is in the future")
    if value < EARLIEST_VISIT:
        raise ValueError("is before 1900-01-01")
    return value


def _unknown_if_missing(value: Any) -> Any:
    """An empty ``fluoridated_water`` cell means ``unknown`` (contract)."""
    return FluoridatedWater.UNKNOWN if value is None else value


ContractBool = Annotated[bool, BeforeValidator(_parse_bool)]
VisitDate = Annotated[
    date | None,
    BeforeValidator(lambda v: v if v is None else _parse_iso_date(v)),
    AfterValidator(_check_visit_date),
]


class PatientRecord(BaseModel):
    """One patient's habits and outcomes, exactly as the contract defines them."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", str_strip_whitespace=True, allow_inf_nan=False
    )

    patient_ref: str = Field(pattern=PATIENT_REF_PATTERN)
    age_years: int = Field(ge=2, le=110)
    sex: Sex
    smoking_status: SmokingStatus
    brushing_per_day: float = Field(ge=0, le=6)
    flossing_days_per_week: int = Field(ge=0, le=7)
    sugary_drinks_per_day: float = Field(ge=0, le=20)
    sugary_snacks_per_day: float = Field(ge=0, le=20)
    fluoride_toothpaste: ContractBool
    fluoridated_water: Annotated[FluoridatedWater, BeforeValidator(_unknown_if_missing)] = (
        FluoridatedWater.UNKNOWN
    )
    dental_visits_per_year: float = Field(ge=0, le=12)
    diabetes: ContractBool
    bmi: float | None = Field(default=None, ge=10, le=80)
    last_visit_date: VisitDate = None
    dmft: int = Field(ge=0, le=32)
    untreated_caries: ContractBool
    periodontitis: Periodontitis | None = None
    consent_tier: ConsentTier


CONTRACT_COLUMNS: tuple[str, ...] = tuple(PatientRecord.model_fields)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(
    name for name, field in PatientRecord.model_fields.items() if field.is_required()
)
