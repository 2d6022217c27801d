"""DP-SGD engines: one interface, two interchangeable implementations of the same mechanism.

Like Opacus's accountants, the engines are chosen by name (``--dp-engine``) and differ only
in how fast they compute, never in what they release: both run Poisson sampling at the
plan's ``q`` for the plan's ``steps``, clip per sample to ``C`` and add noise of std ``σ·C``,
so the ledger's charge (:attr:`client.training.DpRoundPlan.event`) is the same whichever
trained.

* ``fast`` (default): :mod:`client.dp_fast`, ghost norms for ``nn.Linear`` on in-memory
  tensors.
* ``opacus``: Opacus's own ``make_private`` (per-sample gradients, clipping, noise) with a
  ``DataLoader``, the reference a user can cross-check the fast engine against.

Randomness: both engines draw their batches and their noise from
:class:`client.secure_random.DpRandom`, numpy's Philox keyed with 128 bits from the operating
system's CSPRNG (:func:`secrets.randbits`), so nobody, not even the clinic's operator, can
predict, replay or search for the noise. A ``torch.Generator`` would not do: its Mersenne
Twister keeps only the low 32 bits of any seed, few enough for an attacker to try them all,
subtract the noise and read a patient's gradient. A ``seed`` is accepted for tests and
benchmarks only (the key is ``seed mod 2**128``); the ClientApp never passes one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import nn

from oralfed.client.dp_fast import train_dp_fast
from oralfed.client.training import DpRoundPlan, TrainingConfigError, train_dp_opacus
from oralfed.schemas.settings import DpEngineName

__all__ = [
    "DP_ENGINES",
    "DpEngine",
    "DpTrainingResult",
    "FastDpEngine",
    "OpacusDpEngine",
    "get_dp_engine",
]


@dataclass(frozen=True)
class DpTrainingResult:
    """What a round of DP training did: the engine, its mean loss, the noisy steps taken."""

    engine: str
    mean_loss: float
    steps: int


class DpEngine(ABC):
    """Runs a :class:`~client.training.DpRoundPlan` on a clinic's in-memory data."""

    name: ClassVar[DpEngineName]

    def train(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        plan: DpRoundPlan,
        *,
        seed: int | None = None,
    ) -> DpTrainingResult:
        """Train ``model`` in place. ``seed`` (tests and benchmarks only) makes the batches
        and the noise reproducible (``DpRandom.from_seed``); without it they come from a
        secret 128-bit key (``DpRandom.secret``).

        Raises :class:`RuntimeError` if the engine took another number of noisy steps than
        the plan charged, so an update whose cost is not on the ledger cannot leave.
        """
        loss, steps = self._run(model, x, y, plan, seed)
        if steps != plan.steps:
            raise RuntimeError(
                f"the {self.name} DP engine took {steps} steps but the ledger was charged for "
                f"{plan.steps}: the update is withheld"
            )
        return DpTrainingResult(self.name, loss, steps)

    @abstractmethod
    def _run(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        plan: DpRoundPlan,
        seed: int | None,
    ) -> tuple[float, int]:
        """Train; return the mean loss per sampled example and the noisy steps taken."""


class FastDpEngine(DpEngine):
    """Ghost-norm DP-SGD on in-memory tensors (:mod:`client.dp_fast`)."""

    name = DpEngineName.FAST

    def _run(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        plan: DpRoundPlan,
        seed: int | None,
    ) -> tuple[float, int]:
        return train_dp_fast(model, x, y, plan, seed)


class OpacusDpEngine(DpEngine):
    """Opacus's ``make_private`` on a ``DataLoader`` of Poisson batches: the reference."""

    name = DpEngineName.OPACUS

    def _run(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        plan: DpRoundPlan,
        seed: int | None,
    ) -> tuple[float, int]:
        return train_dp_opacus(model, x, y, plan, seed)


# The one registry: every name of :class:`~oralfed.schemas.settings.DpEngineName` has its
# engine here (a test checks both ways), as Opacus keys its accountants by name.
DP_ENGINES: dict[DpEngineName, type[DpEngine]] = {
    engine.name: engine for engine in (FastDpEngine, OpacusDpEngine)
}


def get_dp_engine(name: str = DpEngineName.FAST) -> DpEngine:
    """The engine called ``name``; an unknown name is a :class:`TrainingConfigError`."""
    try:
        return DP_ENGINES[DpEngineName(name)]()
    except ValueError:
        raise TrainingConfigError(
            f"unknown DP engine {name!r}; choose one of {', '.join(DP_ENGINES)}"
        ) from None
