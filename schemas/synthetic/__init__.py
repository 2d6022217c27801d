"""Synthetic, heterogeneous clinic exports that follow the data contract.

Why this exists: OralFed must be developed, tested and demonstrated without a single real
patient record. This package writes clinic files that look like real exports (same columns,
same cell syntax, plausible distributions and correlations) and whose outcomes come from a
*documented* ground-truth risk model (``docs/data.md``), so that

* the importer can be tested against files with a known set of broken rows
  (:func:`synthesize_clinic_with_faults` says exactly which rows it broke);
* federated training is non-trivial: clinics differ in age mix, smoking, fluoridation,
  habits and consent (non-IID), yet a pooled model is learnable because the outcome is a
  function of the contract's features;
* the pooled population reproduces the contract's reference prevalence figures, so numbers
  shown in demos are in a believable range.

Everything is numpy only and deterministic: clinic ``k``'s profile and rows depend only on
the seed and on ``k`` (one :class:`numpy.random.SeedSequence` child per clinic), never on
how many clinics are generated or on the wall clock. (Byte-identical output is promised for
one numpy version; numpy does not guarantee identical Generator streams across releases.)

One concept per module, in pipeline order: ``profiles`` (how clinics differ), ``cohort``
(patients' features), ``ground_truth`` and ``outcomes`` (the risk models and the sampled
labels), ``rows`` (contract cells), ``faults`` (known violations), ``export`` (rows and
CSV files), ``calibration`` (re-fitting the frozen constants); ``streams``, ``vocabulary``
and ``checks`` are shared by them. This module re-exports the public API.
"""

from __future__ import annotations

from oralfed.schemas.contract import CONTRACT_COLUMNS
from oralfed.schemas.synthetic.calibration import derive_calibration
from oralfed.schemas.synthetic.checks import SyntheticDataError
from oralfed.schemas.synthetic.export import (
    synthesize_clinic,
    synthesize_clinic_with_faults,
    write_federation,
)
from oralfed.schemas.synthetic.faults import FAULT_KINDS
from oralfed.schemas.synthetic.ground_truth import (
    CARIES_COEFFICIENTS,
    PERIODONTITIS_COEFFICIENTS,
    PERIODONTITIS_THRESHOLDS,
    periodontitis_stage_probabilities,
    untreated_caries_probability,
)
from oralfed.schemas.synthetic.profiles import AGE_MIXES, ClinicProfile, clinic_profiles
from oralfed.schemas.synthetic.rows import REFERENCE_DATE

__all__ = [
    "AGE_MIXES",
    "CARIES_COEFFICIENTS",
    "CONTRACT_COLUMNS",
    "FAULT_KINDS",
    "PERIODONTITIS_COEFFICIENTS",
    "PERIODONTITIS_THRESHOLDS",
    "REFERENCE_DATE",
    "ClinicProfile",
    "SyntheticDataError",
    "clinic_profiles",
    "derive_calibration",
    "periodontitis_stage_probabilities",
    "synthesize_clinic",
    "synthesize_clinic_with_faults",
    "untreated_caries_probability",
    "write_federation",
]
