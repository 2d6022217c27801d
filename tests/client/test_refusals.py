"""Every failure at the clinic is a refusal that names the clinic and why, never a traceback.

Each case runs the real ClientApp (``make_client_app()(message, context)``, as a SuperNode
calls it) on a real state directory and real files, broken the way an attacker or bad luck
breaks them: a missing data file, unreadable node-config values, a ledger that is not a
database, a damaged key, an edited calibration cache, a read-only or full disk (real
``tmpfs`` file systems, so these two need root and are skipped without it), and a request
that fails only after its round was charged, whose refusal must say so.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, RecordDict

from oralfed.client.app import CALIBRATION_CACHE_FILE, answer, handle_train, make_client_app
from oralfed.client.release_store import RELEASES_DIR
from oralfed.privacy.keys import PRIVATE_KEY_FILE
from oralfed.privacy.ledger import LEDGER_FILE, PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.model import build_model
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.settings import FederationSettings
from oralfed.schemas.synthetic import write_federation
from tests.adversarial.coordinator import message, train_config

CLINIC = "clinic-refuses"
FAST = FederationSettings(
    rounds=3, local_epochs=1, batch_size=64, target_epsilon=None, noise_multiplier=1.0
)
# A wide model: its stored release (~0.3 MB) is far larger than a ledger commit, so a disk
# with a little room left fills at the release, after the charge.
WIDE = FederationSettings(
    rounds=3,
    local_epochs=1,
    batch_size=64,
    target_epsilon=None,
    noise_multiplier=1.0,
    hidden_sizes=(256, 256),
)

# A target ε: the clinic calibrates σ for it (and caches the result).
CALIBRATED = FederationSettings(rounds=3, local_epochs=1, batch_size=64, target_epsilon=2.0)


@pytest.fixture(scope="module")
def clinic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,) = write_federation(tmp_path_factory.mktemp("data"), 1, seed=12)
    return path


def node_config(data: Path, state: Path, **extra: Any) -> dict[str, Any]:
    """A deployed SuperNode's ``--node-config``, with ``extra`` keys (underscores: dashes)."""
    return {
        protocol.NODE_CLINIC_ID: CLINIC,
        protocol.NODE_DATA_PATH: str(data),
        protocol.NODE_STATE_DIR: str(state),
        protocol.NODE_DATASET_ID: CLINIC,
        protocol.NODE_PUBLIC_SIZE: 2_000,
        **{key.replace("_", "-"): value for key, value in extra.items()},
    }


def ask(
    config: dict[str, Any],
    settings: FederationSettings = FAST,
    *,
    server_round: int = 1,
    **overrides: Any,
) -> Message:
    """One train request of ``settings`` to the real ClientApp on a node with ``config``."""
    context = Context(run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config={})
    model = build_model(settings.hidden_sizes, seed=server_round)
    request = message(
        "train", model, train_config(settings, **overrides), server_round=server_round
    )
    return make_client_app()(request, context)


def refused(reply: Message, *parts: str, clinic: str = CLINIC) -> str:
    """The refusal's reason, checked to name the clinic, each of ``parts`` and no traceback."""
    assert reply.has_error(), "the clinic answered instead of refusing"
    reason = reply.error.reason
    assert reason.startswith(f"[{clinic}] "), reason
    assert "Traceback" not in reason
    for part in parts:
        assert part.lower() in reason.lower(), (part, reason)
    return reason


def charges(state: Path) -> int:
    with PrivacyLedger.read_only(state / LEDGER_FILE) as ledger:
        return len(ledger.history(CLINIC))


def test_a_missing_data_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-export.csv"
    reply = ask(node_config(missing, tmp_path / "state"))
    refused(reply, str(missing), protocol.NODE_DATA_PATH)
    assert reply.error.code == protocol.ERROR_DATA_REFUSED


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (protocol.NODE_EPSILON_CAP, "ten"),
        (protocol.NODE_EPSILON_CAP, "nan"),
        (protocol.NODE_DELTA, "tiny"),
        (protocol.NODE_DELTA, "2"),
        (protocol.NODE_PUBLIC_SIZE, "many"),
    ],
)
def test_an_unreadable_node_config_value_is_named_with_its_key(
    clinic_file: Path, tmp_path: Path, key: str, value: str
) -> None:
    config = {**node_config(clinic_file, tmp_path / "state"), key: value}
    refused(ask(config), key, value)
    assert not (tmp_path / "state").exists()  # refused before anything was written


def test_a_ledger_that_is_not_a_database_is_named(clinic_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / LEDGER_FILE).write_bytes(b"these are not the pages of an SQLite database\n" * 100)
    refused(ask(node_config(clinic_file, state)), LEDGER_FILE, "not an SQLite database")


def test_a_ledger_that_is_a_directory_is_named(clinic_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / LEDGER_FILE).mkdir(parents=True)
    refused(ask(node_config(clinic_file, state)), LEDGER_FILE, "directory")


def test_a_damaged_private_key_is_named(clinic_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = node_config(clinic_file, state)
    assert not ask(config).has_error()
    key = state / PRIVATE_KEY_FILE
    key.write_bytes(key.read_bytes()[:40] + b"garbage" + key.read_bytes()[60:])
    refused(ask(config, server_round=2), PRIVATE_KEY_FILE)
    assert charges(state) == 1  # round 2 was not charged


@pytest.mark.parametrize("edit", ["not a number", [1, 2], None, 0.0, "smaller"])
def test_an_edited_calibration_cache_is_never_trusted(
    clinic_file: Path, tmp_path: Path, edit: object
) -> None:
    """A cached σ is the calibration's result or it is recomputed: an edited entry can
    never buy a round less noise than its target ε needs."""
    state = tmp_path / "state"
    config = node_config(clinic_file, state, accountant="rdp")  # rdp: calibrates fast
    first = ask(config, CALIBRATED)
    sigma = first.content.metric_records[protocol.REPLY_METRICS][protocol.NOISE_MULTIPLIER]
    cache = state / CALIBRATION_CACHE_FILE
    entries = json.loads(cache.read_text())
    (key,) = entries
    entries[key] = float(sigma) / 4 if edit == "smaller" else edit
    cache.write_text(json.dumps(entries))
    second = ask(config, CALIBRATED, server_round=2)
    assert not second.has_error(), second.error.reason if second.has_error() else ""
    metrics = second.content.metric_records[protocol.REPLY_METRICS]
    assert metrics[protocol.NOISE_MULTIPLIER] == sigma


def test_a_calibration_file_that_is_not_json_is_recomputed(
    clinic_file: Path, tmp_path: Path
) -> None:
    clean = ask(node_config(clinic_file, tmp_path / "clean", accountant="rdp"), CALIBRATED)
    state = tmp_path / "state"
    state.mkdir()
    (state / CALIBRATION_CACHE_FILE).write_bytes(b"\x00\xff{[")
    reply = ask(node_config(clinic_file, state, accountant="rdp"), CALIBRATED)
    assert not reply.has_error()
    sigma = protocol.NOISE_MULTIPLIER
    assert (
        reply.content.metric_records[protocol.REPLY_METRICS][sigma]
        == clean.content.metric_records[protocol.REPLY_METRICS][sigma]
    )


def test_a_model_that_does_not_fit_is_refused_before_any_charge(
    clinic_file: Path, tmp_path: Path
) -> None:
    """Arrays that do not fit the architecture the config names are read before the ledger
    is touched: refused by name, nothing charged (the full-disk case below is the one that
    fails after its charge)."""
    state = tmp_path / "state"
    node = ClinicNode.from_config(node_config(clinic_file, state))
    request = message("train", build_model((8,), seed=3), train_config(FAST))
    refused(answer(handle_train, request, node), "does not fit hidden-sizes", "nothing was charged")
    assert not (state / LEDGER_FILE).exists() or charges(state) == 0


def test_an_unexpected_error_is_a_named_refusal_without_its_details(
    clinic_file: Path, tmp_path: Path
) -> None:
    node = ClinicNode.from_config(node_config(clinic_file, tmp_path / "state"))

    def broken(msg: Message, _node: ClinicNode) -> Message:
        raise ZeroDivisionError("a detail that stays in the clinic's log")

    reply = answer(broken, message("train", build_model(seed=4), train_config(FAST)), node)
    reason = refused(reply, "ZeroDivisionError", "nothing was charged")
    assert "stays in the clinic" not in reason


def test_a_ledger_that_fails_while_read_back_still_gives_a_refusal(
    clinic_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the charges back after a failure is itself code that can fail (a bug, a
    damaged row): the refusal still goes out and says that the charge is not known."""
    state = tmp_path / "state"
    node = ClinicNode.from_config(node_config(clinic_file, state))
    PrivacyLedger.in_state_dir(state).close()  # a ledger exists, so it is read back

    def unreadable(cls: type[PrivacyLedger], path: Path) -> PrivacyLedger:
        raise NameError("a bug in the read-back")

    monkeypatch.setattr(PrivacyLedger, "read_only", classmethod(unreadable))

    def broken(msg: Message, _node: ClinicNode) -> Message:
        raise ZeroDivisionError("the handler's own failure")

    reply = answer(broken, message("train", build_model(seed=4), train_config(FAST)), node)
    refused(reply, "ZeroDivisionError", "could not be read back", "nothing was sent")


# --- real file systems that refuse writes: a read-only and a full tmpfs ------------------------


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of its own (root only), unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill ``folder``'s file system until at most ``leave`` bytes are free."""
    filler = folder / "filler"
    with filler.open("wb") as stream:
        try:
            while (free := os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize) > leave:
                stream.write(b"\0" * min(65_536, max(1, free - leave)))
                stream.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_a_read_only_state_directory_is_named(clinic_file: Path, disk: Path) -> None:
    config = node_config(clinic_file, disk / "state")
    assert not ask(config).has_error()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    refused(ask(config, server_round=2), "read-only")
    assert charges(disk / "state") == 1


def test_a_full_disk_before_the_charge_charges_nothing(clinic_file: Path, disk: Path) -> None:
    config = node_config(clinic_file, disk / "state")
    assert not ask(config).has_error()
    filler = fill(disk)
    reason = refused(ask(config, server_round=2), "full")
    assert "was charged" not in reason
    filler.unlink()
    assert charges(disk / "state") == 1


def test_a_full_disk_after_the_charge_says_the_round_was_charged(
    clinic_file: Path, disk: Path
) -> None:
    state = disk / "state"
    config = node_config(clinic_file, state)
    assert not ask(config, WIDE).has_error()
    filler = fill(disk, leave=64 * 1024)
    refused(ask(config, WIDE, server_round=2), "full", "was charged", "nothing was sent")
    filler.unlink()
    assert charges(state) == 2
    assert len(list((state / RELEASES_DIR).glob("train-*.npz"))) == 1  # round 2 not stored


def test_a_request_without_a_model_is_refused_before_any_charge(
    clinic_file: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    node = ClinicNode.from_config(node_config(clinic_file, state))
    request = message("train", build_model(FAST.hidden_sizes, seed=3), train_config(FAST))
    del request.content[protocol.REPLY_ARRAYS]
    refused(answer(handle_train, request, node), "no 'arrays' record", "nothing was charged")
    assert not (state / LEDGER_FILE).exists() or charges(state) == 0
