"""A run's checkpoint: what the coordinator needs to continue a run after it crashed.

After every completed round the ServerApp writes into the run folder (``out-dir``):

- ``checkpoint/round-NNN.pt``: the global model after round NNN (the documented model
  format, so ``oralfed model score`` can read it too);
- ``checkpoint/checkpoint.json``: the OralFed run id, the round, the run's settings, the
  round history so far (each round's summary), the strategy's state (which node is which
  clinic) and the model file's name and SHA-256.

The model is written first and ``checkpoint.json`` then replaces the previous one in one
rename (``oralfed.schemas.files``), so a crash at any moment leaves a checkpoint.json that
names a complete model of its own round; the older model files are removed afterwards.

A run folder holding a checkpoint is a run to continue: ``oralfed federation launch`` and
``oralfed federate`` only start runs in new folders, so the ServerApp resumes whenever
its out-dir has one (:func:`resumable`). A resumed run keeps its settings; only those in
:data:`RESUMABLE_CHANGES` may differ (a clinic that left may need a lower minimum, a slow
network a longer timeout). A completed run, a folder without a checkpoint and a checkpoint
that does not verify are refused with the folder's name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import write_json_atomically
from oralfed.schemas.model import ModelFormatError, RiskModel, build_model, load_model, save_model
from oralfed.schemas.model_record import load_model_record, model_record
from oralfed.schemas.settings import FederationSettings, SettingsError, setting_key
from oralfed.server.history import FederationHistory

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FILE",
    "RESUMABLE_CHANGES",
    "Checkpoint",
    "CheckpointError",
    "check_settings",
    "model_of",
    "read_checkpoint",
    "resumable",
    "resumed_settings",
    "unfinished_checkpoint",
    "write_checkpoint",
]

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_FORMAT = "oralfed-checkpoint/1"
# Settings a resumed run may change (field names): none of them changes what a clinic is
# asked to release. The run folder may have moved.
RESUMABLE_CHANGES = ("min_clinics", "round_timeout", "out_dir")


class CheckpointError(OralFedError):
    """A run that cannot be continued: no checkpoint, a completed run, or a damaged one."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Checkpoint:
    """A run as it stood after its last completed round."""

    run_id: str
    round: int
    settings: dict[str, Any]  # FederationSettings.public_dict() of the run
    history: list[dict[str, Any]]  # RoundRecord.summary() of each completed round
    clinic_of_node: dict[int, str]  # the strategy's node -> clinic bindings
    model: ArrayRecord  # the global model after ``round``

    @property
    def rounds(self) -> int:
        return int(self.settings["rounds"])

    @property
    def completed(self) -> bool:
        return self.round >= self.rounds


def model_of(arrays: ArrayRecord, settings: FederationSettings) -> RiskModel:
    """The risk model holding ``arrays``."""
    return load_model_record(build_model(settings.hidden_sizes), arrays)


def write_checkpoint(
    run_dir: Path,
    run_id: str,
    settings: FederationSettings,
    history: FederationHistory,
    clinic_of_node: Mapping[int, str],
    arrays: ArrayRecord,
) -> Path:
    """Checkpoint the run after its last round in ``history``; returns checkpoint.json."""
    folder = run_dir / CHECKPOINT_DIR
    completed = history.rounds[-1].round
    model_file = folder / f"round-{completed:03d}.pt"
    save_model(
        model_of(arrays, settings),
        model_file,
        settings.task,
        {"run_id": run_id, "round": completed},
    )
    path = folder / CHECKPOINT_FILE
    write_json_atomically(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "run_id": run_id,
            "round": completed,
            "settings": settings.public_dict(),
            "history": [record.summary() for record in history.rounds],
            "clinic_of_node": {str(node): clinic for node, clinic in clinic_of_node.items()},
            "model_file": model_file.name,
            "model_sha256": _sha256(model_file),
        },
    )
    for old in folder.glob("round-*.pt"):
        if old != model_file:
            old.unlink(missing_ok=True)
    return path


def read_checkpoint(run_dir: Path) -> Checkpoint:
    """The run folder's checkpoint, verified; :class:`CheckpointError` naming the folder."""
    path = run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} holds no checkpoint ({CHECKPOINT_DIR}/{CHECKPOINT_FILE}): the run "
            "completed no round there, so there is nothing to continue; start a new run"
        )
    try:
        data = json.loads(path.read_text())
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        model_file = path.parent / str(data["model_file"])
        if _sha256(model_file) != data["model_sha256"]:
            raise ValueError(f"{model_file.name} is not the model the checkpoint recorded")
        model, _, _ = load_model(model_file)
        return Checkpoint(
            run_id=str(data["run_id"]),
            round=int(data["round"]),
            settings=dict(data["settings"]),
            history=list(data["history"]),
            clinic_of_node={int(node): str(c) for node, c in data["clinic_of_node"].items()},
            model=model_record(model),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ModelFormatError) as error:
        raise CheckpointError(f"the checkpoint {path} cannot be used: {error}") from None


def resumable(run_dir: Path, settings: FederationSettings) -> Checkpoint:
    """The checkpoint to continue from with ``settings``; refused if the run completed or
    its settings differ in anything but :data:`RESUMABLE_CHANGES`."""
    checkpoint = unfinished_checkpoint(run_dir)
    check_settings(checkpoint, settings)
    return checkpoint


def unfinished_checkpoint(run_dir: Path) -> Checkpoint:
    """The run folder's checkpoint, refused if its run already completed every round."""
    checkpoint = read_checkpoint(run_dir)
    if checkpoint.completed:
        raise CheckpointError(
            f"the run in {run_dir} ({checkpoint.run_id}) already completed all its "
            f"{checkpoint.rounds} rounds; there is nothing to resume"
        )
    return checkpoint


def check_settings(checkpoint: Checkpoint, settings: FederationSettings) -> None:
    """Refuse settings that differ from the checkpointed run's (naming the first key)."""
    now = settings.public_dict()
    for name in sorted(set(now) | set(checkpoint.settings)):
        if name in RESUMABLE_CHANGES or now.get(name) == checkpoint.settings.get(name):
            continue
        changeable = tuple(setting_key(item) for item in RESUMABLE_CHANGES if item != "out_dir")
        then, given = (_literal(values.get(name)) for values in (checkpoint.settings, now))
        raise SettingsError(
            (setting_key(name), *changeable),
            f"{{0}} was {then} when run {checkpoint.run_id} started and is {given} now; a "
            "resumed run keeps its settings (only "
            + ", ".join(f"{{{i + 1}}}" for i in range(len(changeable)))
            + " may change)",
        )


def resumed_settings(
    checkpoint: Checkpoint, run_dir: Path, changes: Mapping[str, Any]
) -> FederationSettings:
    """The checkpointed run's settings in ``run_dir`` with ``changes`` (field names) made;
    a change outside :data:`RESUMABLE_CHANGES` is refused."""
    values = {**checkpoint.settings, **changes, "out_dir": run_dir}
    settings = FederationSettings.from_public_dict(values)
    check_settings(checkpoint, settings)
    return settings


def _literal(value: Any) -> str:
    """A value for a message template (its braces doubled)."""
    return repr(value).replace("{", "{{").replace("}", "}}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
