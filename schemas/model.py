"""The oral-health risk model: a small MLP that Opacus can privatise layer by layer.

Only ``nn.Linear`` and ReLU: every layer has a per-sample-gradient rule in Opacus, and a
tabular risk model gains nothing from anything fancier.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.features import FEATURE_NAMES, NUM_FEATURES, Task
from oralfed.schemas.files import write_bytes_atomically
from oralfed.schemas.settings import DEFAULT_HIDDEN_SIZES

MODEL_FORMAT = "oralfed-risk-model/1"


class RiskModel(nn.Module):
    """Maps encoded features (:data:`schemas.features.FEATURE_NAMES`) to a risk logit."""

    def __init__(
        self, num_features: int = NUM_FEATURES, hidden_sizes: Sequence[int] = DEFAULT_HIDDEN_SIZES
    ):
        super().__init__()
        self.hidden_sizes = tuple(int(size) for size in hidden_sizes)
        layers: list[nn.Module] = []
        width = num_features
        for size in self.hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Risk probabilities for an encoded feature matrix."""
        self.eval()
        with torch.no_grad():
            return torch.sigmoid(self(torch.from_numpy(features))).numpy()


def build_model(
    hidden_sizes: Sequence[int] = DEFAULT_HIDDEN_SIZES, seed: int | None = None
) -> RiskModel:
    """A freshly initialised model; seeded so every participant can rebuild the same start."""
    if seed is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return RiskModel(hidden_sizes=hidden_sizes)
    return RiskModel(hidden_sizes=hidden_sizes)


def save_model(model: RiskModel, path: Path, task: Task, metadata: dict[str, Any]) -> None:
    """Save in the documented format (docs/model-format.md): one ``torch.save`` dictionary.

    Only tensors, strings and numbers are stored so that ``torch.load(weights_only=True)``
    can read it without executing code from the file.
    """
    buffer = io.BytesIO()
    torch.save(
        {
            "format": MODEL_FORMAT,
            "task": task.value,
            "feature_names": list(FEATURE_NAMES),
            "hidden_sizes": list(model.hidden_sizes),
            "state_dict": {
                name: tensor.detach().clone() for name, tensor in model.state_dict().items()
            },
            "metadata": metadata,
        },
        buffer,
    )
    write_bytes_atomically(path, buffer.getvalue())


class ModelFormatError(OralFedError):
    """A file that is not an OralFed model, or one made for other features."""

    exit_code = ExitCode.MODEL_FORMAT


def load_model(path: Path) -> tuple[RiskModel, Task, dict[str, Any]]:
    """Load a model saved by :func:`save_model`, refusing files made for other features."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except Exception as error:
        raise ModelFormatError(f"{path}: not an OralFed model file ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFormatError(
            f"{path}: not an OralFed model file (expected format {MODEL_FORMAT})"
        )
    if payload["feature_names"] != list(FEATURE_NAMES):
        raise ModelFormatError(
            f"{path}: was trained on other features than this OralFed version encodes"
        )
    model = RiskModel(hidden_sizes=payload["hidden_sizes"])
    model.load_state_dict(payload["state_dict"])
    return model, Task(payload["task"]), dict(payload.get("metadata", {}))


def l2_norm(parts: Iterable[np.ndarray]) -> float:
    """The L2 norm of a model-sized vector held as arrays, summed in float64 (float32
    squares of an update near 1e38 would overflow); NaN or ±Inf if any part holds one."""
    return math.sqrt(sum(float(np.square(part.astype(np.float64)).sum()) for part in parts))
