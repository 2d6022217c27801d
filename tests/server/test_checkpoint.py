"""The coordinator's checkpoint: written after each round, read back whole, or refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from oralfed.client.evaluation import SCORE_BINS
from oralfed.schemas.model import build_model
from oralfed.schemas.model_record import model_record
from oralfed.schemas.settings import FederationSettings, SettingsError
from oralfed.server.checkpoint import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    CheckpointError,
    read_checkpoint,
    resumable,
    resumed_settings,
    write_checkpoint,
)
from oralfed.server.history import ClinicResult, FederationHistory, history_from_summaries

RUN = "c0ffee"


def settings_in(folder: Path, **changes: object) -> FederationSettings:
    return FederationSettings(rounds=3, out_dir=folder, **changes)  # type: ignore[arg-type]


def history(rounds: int) -> FederationHistory:
    record = FederationHistory()
    for number in range(1, rounds + 1):
        results = record.round(number).results
        results.append(ClinicResult("clinic-a", "train", "ok", {"num-examples": 120.0}, "pld"))
        results.append(ClinicResult("clinic-b", "train", "refused", reason="budget"))
        results.append(
            ClinicResult(
                "clinic-a",
                "evaluate",
                "ok",
                {"eval-noise-scale": 3.3},
                "pld",
                None,
                histogram=[float(i % 7) for i in range(2 * SCORE_BINS)],
            )
        )
    return record


def model_arrays(seed: int) -> ArrayRecord:
    return model_record(build_model(seed=seed))


def checkpoint_after(folder: Path, rounds: int, seed: int = 1) -> None:
    write_checkpoint(
        folder, RUN, settings_in(folder), history(rounds), {11: "clinic-a"}, model_arrays(seed)
    )


def test_a_checkpoint_reads_back_as_it_was_written(tmp_path: Path) -> None:
    checkpoint_after(tmp_path, 1, seed=1)
    checkpoint_after(tmp_path, 2, seed=2)
    checkpoint = resumable(tmp_path, settings_in(tmp_path))
    assert (checkpoint.run_id, checkpoint.round, checkpoint.rounds) == (RUN, 2, 3)
    assert checkpoint.clinic_of_node == {11: "clinic-a"}
    assert checkpoint.history == [r.summary() for r in history(2).rounds]
    # The history comes back as records whose summaries are the saved ones (all fields).
    restored = history_from_summaries(checkpoint.history)
    assert [r.summary() for r in restored.rounds] == checkpoint.history
    assert restored.rounds[0].results == history(1).rounds[0].results
    expected = model_arrays(2)
    for name, array in checkpoint.model.items():
        np.testing.assert_array_equal(array.numpy(), expected[name].numpy())
    # Only the latest round's model is kept.
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).glob("*.pt")) == ["round-002.pt"]


def test_a_folder_without_a_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"{tmp_path} holds no checkpoint"):
        read_checkpoint(tmp_path)


def test_a_completed_run_is_not_resumed(tmp_path: Path) -> None:
    checkpoint_after(tmp_path, 3)
    with pytest.raises(CheckpointError, match="already completed all its 3 rounds"):
        resumable(tmp_path, settings_in(tmp_path))


def test_a_model_that_is_not_the_checkpointed_one_is_refused(tmp_path: Path) -> None:
    checkpoint_after(tmp_path, 1)
    (tmp_path / CHECKPOINT_DIR / "round-001.pt").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="is not the model the checkpoint recorded"):
        read_checkpoint(tmp_path)


def test_a_damaged_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    checkpoint_after(tmp_path, 1)
    path = tmp_path / CHECKPOINT_DIR / CHECKPOINT_FILE
    data = json.loads(path.read_text())
    del data["clinic_of_node"]
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(tmp_path)


def test_a_resumed_run_keeps_its_settings_but_the_timeout_and_minimum(tmp_path: Path) -> None:
    checkpoint_after(tmp_path, 1)
    moved = tmp_path / "moved"
    checkpoint = read_checkpoint(tmp_path)
    resumed = resumed_settings(checkpoint, moved, {"round_timeout": 30.0, "min_clinics": 1})
    assert (resumed.round_timeout, resumed.min_clinics, resumed.out_dir) == (30.0, 1, moved)
    assert resumed.rounds == 3 and resumed.seed == settings_in(tmp_path).seed
    with pytest.raises(SettingsError) as refused:
        resumed_settings(checkpoint, tmp_path, {"rounds": 5})
    assert refused.value.keys[0] == "num-server-rounds"
    assert "was 3 when run c0ffee started and is 5 now" in str(refused.value)
    with pytest.raises(SettingsError, match="learning-rate"):
        resumable(tmp_path, settings_in(tmp_path, learning_rate=0.5))
