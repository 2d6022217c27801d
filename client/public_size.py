"""The size a clinic's mechanisms may depend on: declared public, or a DP estimate paid first.

DP-SGD's sample rate q, its step count and its normaliser, the default δ and FedAvg's weight
are all functions of a data set size. If that size is the exact number of training rows,
two neighbouring data sets (one patient more or less) run *different* mechanisms, with
certainty, and the add/remove accounting no longer describes what was released. So every
such parameter depends only on a public size:

* the size the clinic declares public in its node config (``public-size``), if it does;
* otherwise a DP estimate of the training-set size: a count released with discrete Laplace
  noise (ε = :data:`SIZE_ESTIMATE_EPSILON`), charged to the ledger *before* it is drawn, and
  kept in the clinic's state so that it is paid once per file and task. Everything derived
  from it is post-processing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from oralfed.client.data import ClinicData
from oralfed.privacy.events import DiscreteLaplaceEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.privacy.samplers import discrete_laplace
from oralfed.schemas.files import write_json_atomically
from oralfed.schemas.node_config import ClinicNode

__all__ = [
    "SIZE_ESTIMATE_EPSILON",
    "SIZE_GRID_BITS",
    "PublicSize",
    "on_size_grid",
    "public_size",
    "size_estimate_event",
]

SIZE_ESTIMATE_EPSILON = 0.05  # a count is ±20 rows or so: plenty to set q and steps by
SIZE_ESTIMATES_FILE = "public-sizes.json"
MIN_PUBLIC_SIZE = 1
SIZE_GRID_BITS = 6  # an estimate keeps its 6 leading binary digits: 1/32 below it at most


@dataclass(frozen=True)
class PublicSize:
    """A training-set size that may be used and released: declared, or a charged estimate."""

    value: int
    source: Literal["declared", "estimate"]


def size_estimate_event() -> DiscreteLaplaceEvent:
    """The mechanism of one size estimate (a count: L1 sensitivity 1)."""
    return DiscreteLaplaceEvent(1.0 / SIZE_ESTIMATE_EPSILON)


def public_size(
    node: ClinicNode, ledger: PrivacyLedger, data: ClinicData, run_id: str
) -> PublicSize:
    """The clinic's public training-set size for ``data``; estimates (and charges) it on the
    first use of this file and task, and re-uses that estimate afterwards."""
    if node.public_size is not None:
        return PublicSize(node.public_size, "declared")
    store = node.state_dir / SIZE_ESTIMATES_FILE
    key = f"{data.fingerprint}:{data.task.value}"
    known = _read(store)
    if key in known:
        return PublicSize(known[key], "estimate")
    ledger.charge(
        node.dataset_id,
        size_estimate_event(),
        run_id=run_id,
        data_fingerprint=data.fingerprint,
        note=f"size estimate of the {data.task.value} training set",
    )  # durable before the estimate exists; raises BudgetExceeded past the cap
    [noisy] = discrete_laplace([data.n_train], scale=size_estimate_event().noise_multiplier)
    estimate = on_size_grid(max(MIN_PUBLIC_SIZE, int(noisy)))
    write_json_atomically(store, {**known, key: estimate})
    return PublicSize(estimate, "estimate")


def on_size_grid(count: int) -> int:
    """``count`` rounded down to its :data:`SIZE_GRID_BITS` leading binary digits: unchanged
    below 64, then in steps of 1, 2, 4, ... rows per 32 (e.g. 1,000 and 1,007 both give 992)."""
    dropped = max(0, count.bit_length() - SIZE_GRID_BITS)
    return (count >> dropped) << dropped


def _read(store: Path) -> dict[str, int]:
    try:
        entries = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {
        str(key): int(value)
        for key, value in entries.items()
        if isinstance(value, int) and not isinstance(value, bool) and value >= MIN_PUBLIC_SIZE
    }
