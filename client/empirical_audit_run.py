"""The empirical audit of a clinic's training, set up from plain settings.

:func:`~oralfed.client.empirical_audit.run_empirical_audit` takes arrays and a planner. This
module turns what an auditor chooses (a clinic's export, or a synthetic clinic; the DP-SGD
settings; δ) into those, planned exactly as a clinic plans one round, so the audited
training is the one the ledger would charge for. Settings are checked before anything is
loaded or trained: a bad confidence must not surface after minutes of training.

Refused settings are :class:`~oralfed.schemas.settings.SettingsError` naming the setting
("delta", "target epsilon"), which a command line shows as its own flags.

The audit's size defaults live here, where a command line can read them without loading
torch: this module imports the training (and so torch) only when an audit runs.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from oralfed.client.data import ClinicData, ClinicDataError, load_clinic_data
from oralfed.privacy.accountants import ACCOUNTANTS, DEFAULT_ACCOUNTANT
from oralfed.privacy.calibration import default_delta
from oralfed.schemas.features import Task
from oralfed.schemas.settings import FederationSettings, SettingsError
from oralfed.schemas.synthetic import write_federation

if TYPE_CHECKING:  # torch is imported only when an audit runs
    from oralfed.client.empirical_audit import EmpiricalAuditResult
    from oralfed.client.training import DpRoundPlan

__all__ = [
    "DEFAULT_CANARIES",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_INCLUDED_GUESSES",
    "audit_clinic_training",
]

# Canaries of each kind. A thousand leave ~430 drawn white-box canaries (Poisson sampling
# misses one in e^2 at two epochs) to pick the 200 "included" guesses from, so that at a tenth
# of the planned noise the 200 top scores are still all members.
DEFAULT_CANARIES = 1000
# 200 correct "included" guesses prove ε ≥ 3.95 (δ = 1e-5, 97.5 % per score), above the
# platform's ε = 3: a perfect attack could fail the audit, so passing it means something.
# 100 would prove at most 3.24; the former 25 per side (r = 50 of 500) at most 2.55.
DEFAULT_INCLUDED_GUESSES = 200
DEFAULT_CONFIDENCE = 0.95

# The DP-SGD a federation trains with unless told otherwise: what an audit checks by default.
_PLATFORM = FederationSettings()


def audit_clinic_training(
    data: Path | None = None,
    *,
    task: Task = _PLATFORM.task,
    canaries: int = DEFAULT_CANARIES,
    included_guesses: int = DEFAULT_INCLUDED_GUESSES,
    excluded_guesses: int = 0,  # none: see client.empirical_audit for why
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    batch_size: int = _PLATFORM.batch_size,
    local_epochs: int = _PLATFORM.local_epochs,
    learning_rate: float = _PLATFORM.learning_rate,
    clip_norm: float = _PLATFORM.clip_norm,
    delta: float | None = None,
    accountant: str = DEFAULT_ACCOUNTANT,
    engine: str = _PLATFORM.dp_engine,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> EmpiricalAuditResult:
    """Audit one training run on ``data`` (default: a synthetic clinic seeded by ``seed``).

    The noise is calibrated to ``target_epsilon`` as a clinic calibrates it (the platform's
    target when neither it nor a fixed ``noise_multiplier`` is given), by ``accountant``;
    δ defaults to the clinic default for the data's size. The default canaries and guesses
    (:data:`DEFAULT_CANARIES`, :data:`DEFAULT_INCLUDED_GUESSES`) are sized so that the audit
    can show a violation of the platform's ε; fewer may leave it "inconclusive".

    A missing data file is a :class:`~oralfed.client.data.ClinicDataError`; settings no
    training can run with are :class:`~oralfed.client.training.TrainingConfigError`.
    """
    _check_settings(target_epsilon, noise_multiplier, delta, accountant, confidence)
    from oralfed.client.empirical_audit import run_empirical_audit
    from oralfed.client.training import TrainingConfigError, plan_dp_round

    if target_epsilon is None and noise_multiplier is None:
        target_epsilon = _PLATFORM.target_epsilon
    clinic = _clinic_data(data, task, seed)
    audit_delta = delta if delta is not None else default_delta(clinic.rows_read)

    def plan_for(public_size: int) -> DpRoundPlan:
        plan = plan_dp_round(
            public_size=public_size,
            batch_size=batch_size,
            local_epochs=local_epochs,
            learning_rate=learning_rate,
            clip_norm=clip_norm,
            total_rounds=1,
            delta=audit_delta,
            target_epsilon=target_epsilon,
            noise_multiplier=noise_multiplier,
            accountant=accountant,  # calibrated by the accountant that reports ε
        )
        try:  # the charged event refuses a σ below its floor: before training, not after
            plan.event  # noqa: B018
        except ValueError as error:
            raise TrainingConfigError(str(error)) from None
        return plan

    with warnings.catch_warnings():
        # Opacus warns about its non-cryptographic RNG and hook internals: irrelevant to an
        # audit, whose training is never released.
        warnings.simplefilter("ignore", UserWarning)
        return run_empirical_audit(
            clinic.x_train,
            clinic.y_train,
            plan_for,
            canaries=canaries,
            included_guesses=included_guesses,
            excluded_guesses=excluded_guesses,
            delta=audit_delta,
            seed=seed,
            confidence=confidence,
            accountant=accountant,
            engine=engine,
        )


def _check_settings(
    target_epsilon: float | None,
    noise_multiplier: float | None,
    delta: float | None,
    accountant: str,
    confidence: float,
) -> None:
    if target_epsilon is not None and noise_multiplier is not None:
        raise SettingsError(
            ("target epsilon", "noise multiplier"), "give at most one of {0} and {1}"
        )
    if delta is not None and not 0 < delta < 1:
        raise SettingsError(("delta",), f"{{0}} must be between 0 and 1 (exclusive), got {delta}")
    if accountant not in ACCOUNTANTS:
        raise SettingsError(("accountant",), f"{{0}} must be one of {', '.join(ACCOUNTANTS)}")
    if not 0 < confidence < 1:
        raise SettingsError(
            ("confidence",), f"{{0}} must be between 0 and 1 (exclusive), got {confidence}"
        )


def _clinic_data(data: Path | None, task: Task, seed: int) -> ClinicData:
    """The audited records: the clinic's export, or one synthetic clinic (held in memory; its
    file is written to a temporary folder only to go through the real importer)."""
    if data is None:
        with tempfile.TemporaryDirectory() as folder:
            (path,) = write_federation(Path(folder), n_clinics=1, seed=seed)
            return load_clinic_data("synthetic-clinic", Path(path), task)
    if not data.is_file():
        raise ClinicDataError(f"{data}: no such file")
    return load_clinic_data("audited-clinic", data, task)
