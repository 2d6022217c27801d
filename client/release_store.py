"""What a clinic released, kept so that a repeated request gets the same release, free.

A coordinator that crashes mid-round and is resumed asks again for a round some clinics
already answered: Flower's new run carries the same OralFed run id and round number
(``protocol.CFG_RUN_ID``), and the ledger holds each charge with its run and round. The
clinic answers so that it neither trains nor pays twice, and never lets two different
releases stand for one charge:

1. The handler commits the charge to the ledger (as always, before anything is computed),
   computes the release, and stores the reply's content (model update and metrics, or the
   noisy evaluation histogram) here, atomically, **before** it is sent.
2. A request for a (data set, run, round, phase) with a stored release gets that release
   again, unchanged: re-sending a value already released costs nothing, so nothing is
   charged and nothing is recomputed.
3. A request for a key that was charged but has no stored release: the clinic stopped
   between the charge and the store (the release is stored before it is sent, so it was
   never sent). The release is computed under the existing charge, without a new one, and
   only if the mechanism asked for now is the one that was charged.

Every release is computed and stored while :meth:`ReleaseStore.claim` holds the store's
lock, so two copies of one request (the dead run's message and the resumed run's) are
answered one after the other: the second finds the first one's release. A stored release
that cannot be read is a refusal, never a reason to release again.

A release is one ``.npz`` file (no pickles): the update's arrays and a JSON header with the
key, the ledger charge it was made under, the metrics and the public-size source.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord

from oralfed.privacy.events import DiscreteLaplaceEvent, DpSgdEvent
from oralfed.privacy.ledger import ChargeRecord, LedgerError, PrivacyLedger
from oralfed.schemas.files import write_bytes_atomically

__all__ = [
    "RELEASES_DIR",
    "Release",
    "ReleaseKey",
    "ReleaseStore",
    "ReleaseStoreError",
    "charged_before",
]

RELEASES_DIR = "releases"
LOCK_FILE = ".lock"
HEADER = "header"
ARRAY_PREFIX = "array:"
Phase = Literal["train", "evaluate"]
# The mechanism each phase charges: a round's train and evaluate charges never mix up, and
# the size estimate (a discrete Laplace count too) carries no round.
PHASE_EVENTS: dict[str, type[DpSgdEvent | DiscreteLaplaceEvent]] = {
    "train": DpSgdEvent,
    "evaluate": DiscreteLaplaceEvent,
}
MetricValue = int | float | list[int] | list[float]


class ReleaseStoreError(LedgerError):
    """A stored release that cannot be read or written; nothing is released again."""


@dataclass(frozen=True)
class ReleaseKey:
    """One release a run may ask of a data set: its run, round and phase."""

    dataset_id: str
    run_id: str
    round: int
    phase: Phase

    def matches(self, charge: ChargeRecord) -> bool:
        return (
            charge.run_id == self.run_id
            and charge.round == self.round
            and isinstance(charge.event, PHASE_EVENTS[self.phase])
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "run_id": self.run_id,
            "round": self.round,
            "phase": self.phase,
        }


@dataclass(frozen=True)
class Release:
    """A reply's content as it was sent, and the ledger charge it was made under."""

    charge_id: int
    metrics: MetricRecord
    arrays: ArrayRecord | None = None
    public_size_source: str | None = None


def charged_before(ledger: PrivacyLedger, key: ReleaseKey) -> ChargeRecord | None:
    """The charge already made for ``key``, if any (the ledger keeps run and round)."""
    return next((c for c in ledger.history(key.dataset_id) if key.matches(c)), None)


class ReleaseStore:
    """The releases of one clinic state directory, one file per :class:`ReleaseKey`."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / RELEASES_DIR

    @contextmanager
    def claim(self) -> Iterator[None]:
        """Hold the store's lock: look up, charge, compute and store one release at a time."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def path(self, key: ReleaseKey) -> Path:
        digest = hashlib.sha256(json.dumps(key.as_dict(), sort_keys=True).encode()).hexdigest()
        return self.folder / f"{key.phase}-round-{key.round:04d}-{digest[:24]}.npz"

    def load(self, key: ReleaseKey) -> Release | None:
        """The release stored for ``key``; None if there is none."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                header = json.loads(str(stored[HEADER]))
                arrays = {
                    name.removeprefix(ARRAY_PREFIX): np.array(stored[name])
                    for name in stored.files
                    if name.startswith(ARRAY_PREFIX)
                }
            if header["key"] != key.as_dict():
                raise ValueError(f"it holds the release of {header['key']}")
            order = header["arrays"]
            if order is not None and sorted(order) != sorted(arrays):
                raise ValueError("its arrays do not match its header")
            return Release(
                charge_id=int(header["charge_id"]),
                metrics=MetricRecord(_metric_values(header["metrics"])),
                arrays=None
                if order is None
                else ArrayRecord({name: Array(arrays[name]) for name in order}),
                public_size_source=header["public_size_source"],
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ReleaseStoreError(
                f"the stored release {path} cannot be read ({error}); it is not released "
                "again. Restore the clinic's state from its backup."
            ) from None

    def save(self, key: ReleaseKey, release: Release) -> Path:
        """Store ``release`` for ``key``, whole or not at all; call before sending it."""
        arrays = release.arrays
        header = {
            "key": key.as_dict(),
            "charge_id": release.charge_id,
            "metrics": dict(release.metrics),
            "arrays": None if arrays is None else list(arrays.keys()),
            "public_size_source": release.public_size_source,
        }
        content: dict[str, Any] = {HEADER: np.array(json.dumps(header, allow_nan=False))}
        if arrays is not None:
            content |= {f"{ARRAY_PREFIX}{name}": array.numpy() for name, array in arrays.items()}
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **content)
        path = self.path(key)
        try:
            write_bytes_atomically(path, buffer.getvalue())
        except OSError as error:
            raise ReleaseStoreError(
                f"cannot store the release in {path} ({error}); it was not sent"
            ) from None
        return path


def _metric_values(metrics: Any) -> dict[str, MetricValue]:
    if not isinstance(metrics, dict):
        raise TypeError("the metrics are not a mapping")
    return {str(name): value for name, value in metrics.items()}
