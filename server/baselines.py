"""Baselines for the simulated federation's report, computed in the same run.

Only possible in simulation, where every clinic's file is on this machine: the *central
pool* (all clinics' training rows in one place, non-private: the privacy disaster OralFed
exists to avoid, measured so users can see what federation with DP costs) and each clinic's
*local-only* model (non-private: it never leaves its clinic, so it needs no DP). All models
are scored on the same per-clinic test splits that the clinics use for federated evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client.data import ClinicData, load_clinic_data
from client.model import RiskModel, build_model
from client.node import ClinicNode
from client.training import Evaluation, evaluate, train_plain
from schemas.features import Task

BASELINE_EPOCHS = 20
BASELINE_BATCH_SIZE = 64


@dataclass(frozen=True)
class ModelScores:
    per_clinic: dict[str, Evaluation]
    pooled: Evaluation


@dataclass(frozen=True)
class BaselineComparison:
    federated: ModelScores
    central: ModelScores
    local_only: dict[str, Evaluation]  # each clinic's own model on its own test split

    @property
    def local_only_mean_auc(self) -> float | None:
        aucs = [e.auc for e in self.local_only.values() if e.auc is not None]
        return float(np.mean(aucs)) if aucs else None


def compare_with_baselines(
    clinics: list[ClinicNode],
    federated_model: RiskModel,
    task: Task,
    hidden_sizes: tuple[int, ...],
    seed: int,
) -> BaselineComparison:
    data = {c.clinic_id: load_clinic_data(c.clinic_id, c.data_path, task) for c in clinics}
    central = build_model(hidden_sizes, seed=seed)
    x_pool = np.concatenate([d.x_train for d in data.values()])
    y_pool = np.concatenate([d.y_train for d in data.values()])
    train_plain(
        central, x_pool, y_pool, epochs=BASELINE_EPOCHS, batch_size=BASELINE_BATCH_SIZE, seed=seed
    )
    local_only = {}
    for clinic_id, clinic_data in data.items():
        local = build_model(hidden_sizes, seed=seed)
        train_plain(
            local,
            clinic_data.x_train,
            clinic_data.y_train,
            epochs=BASELINE_EPOCHS,
            batch_size=BASELINE_BATCH_SIZE,
            seed=seed,
        )
        local_only[clinic_id] = evaluate(local, clinic_data.x_test, clinic_data.y_test)
    return BaselineComparison(
        federated=score(federated_model, data),
        central=score(central, data),
        local_only=local_only,
    )


def score(model: RiskModel, data: dict[str, ClinicData]) -> ModelScores:
    """A model's figures on every clinic's test split and on their union."""
    pooled_x = np.concatenate([d.x_test for d in data.values()])
    pooled_y = np.concatenate([d.y_test for d in data.values()])
    return ModelScores(
        per_clinic={cid: evaluate(model, d.x_test, d.y_test) for cid, d in data.items()},
        pooled=evaluate(model, pooled_x, pooled_y),
    )
