"""Baselines for the simulated federation's report, computed in the same run.

Only possible in simulation, where every clinic's file is on this machine: the *central
pool* (all clinics' training rows in one place, non-private: the privacy disaster OralFed
exists to avoid, measured so users can see what federation with DP costs) and each clinic's
*local-only* model (non-private: it never leaves its clinic, so it needs no DP). All models
are scored on the same per-clinic test splits that the clinics use for federated evaluation.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from oralfed.client.data import ClinicData, load_clinic_data
from oralfed.client.training import Evaluation, evaluate
from oralfed.schemas.features import Task
from oralfed.schemas.json_safe import json_safe
from oralfed.schemas.model import RiskModel, build_model
from oralfed.schemas.node_config import ClinicNode

MAX_EPOCHS = 60
PATIENCE = 5
BATCH_SIZE = 64
VALIDATION_SHARE = 0.15


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
    central = central_pool_model(data, hidden_sizes, seed)
    local_only = {}
    for clinic_id, clinic_data in data.items():
        local = build_model(hidden_sizes, seed=seed)
        train_with_early_stopping(local, clinic_data.x_train, clinic_data.y_train, seed)
        local_only[clinic_id] = evaluate(local, clinic_data.x_test, clinic_data.y_test)
    return BaselineComparison(
        federated=score(federated_model, data),
        central=score(central, data),
        local_only=local_only,
    )


def central_pool_model(
    data: dict[str, ClinicData], hidden_sizes: tuple[int, ...], seed: int
) -> RiskModel:
    """The non-private model of every given clinic's training rows in one place."""
    x_pool = np.concatenate([d.x_train for d in data.values()])
    y_pool = np.concatenate([d.y_train for d in data.values()])
    return train_with_early_stopping(build_model(hidden_sizes, seed=seed), x_pool, y_pool, seed)


def train_with_early_stopping(
    model: RiskModel, x: np.ndarray, y: np.ndarray, seed: int
) -> RiskModel:
    """Adam with early stopping on a held-out share of the training rows.

    A baseline that over- or under-fits would flatter the federated model: the number of
    epochs is chosen on validation loss, separately for the pooled data and for each clinic
    (small clinics need many more passes than the pool).
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    n_validation = max(1, int(len(y) * VALIDATION_SHARE))
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    x_val, y_val = features[order[:n_validation]], labels[order[:n_validation]]
    x_fit, y_fit = features[order[n_validation:]], labels[order[n_validation:]]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    for _ in range(MAX_EPOCHS):
        model.train()
        for batch in torch.randperm(len(y_fit), generator=generator).split(BATCH_SIZE):
            optimizer.zero_grad()
            criterion(model(x_fit[batch]), y_fit[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            loss = float(criterion(model(x_val), y_val))
        if loss < best_loss:
            best_loss, best_state, stale = loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    model.load_state_dict(best_state)
    return model


def score(model: RiskModel, data: dict[str, ClinicData]) -> ModelScores:
    """A model's figures on every clinic's test split and on their union."""
    pooled_x = np.concatenate([d.x_test for d in data.values()])
    pooled_y = np.concatenate([d.y_test for d in data.values()])
    return ModelScores(
        per_clinic={cid: evaluate(model, d.x_test, d.y_test) for cid, d in data.items()},
        pooled=evaluate(model, pooled_x, pooled_y),
    )


def add_comparison(report: dict[str, Any], comparison: BaselineComparison) -> None:
    """Put the baselines beside the federated model in ``report`` (per clinic and overall)."""
    for row in report["clinics"]:
        clinic_id = row["clinic"]
        if clinic_id in comparison.federated.per_clinic:
            row["federated_dp"] = json_safe(asdict(comparison.federated.per_clinic[clinic_id]))
            row["central_pooled"] = json_safe(asdict(comparison.central.per_clinic[clinic_id]))
            row["local_only"] = json_safe(asdict(comparison.local_only[clinic_id]))
    federated_auc = comparison.federated.pooled.auc
    central_auc = comparison.central.pooled.auc
    report["overall"] = {
        "federated_dp": json_safe(asdict(comparison.federated.pooled)),
        "central_pooled": json_safe(asdict(comparison.central.pooled)),
        "local_only_mean_auc": comparison.local_only_mean_auc,
        "auc_gap_to_central": None
        if federated_auc is None or central_auc is None
        else central_auc - federated_auc,
    }
