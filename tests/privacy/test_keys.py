"""The audit signing key: one pair under concurrent first use, never a silent new key, and
rotation only on command, recorded in the log and followed by `audit verify`."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine

from oralfed.privacy import key_rotation
from oralfed.privacy.audit_log import KEY_ROTATED, AuditLog, read_database_log
from oralfed.privacy.audit_targets import export_log, verify_target
from oralfed.privacy.key_chain import rotation_payload
from oralfed.privacy.keys import (
    NEXT_KEY_FILE,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    AuditKeyError,
    key_fingerprint,
    load_or_create_signing_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
)
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.errors import ExitCode
from tests.conftest import run_cli
from tests.privacy.conftest import ROUND

PROCESSES = 50


def _first_use(state_dir: Path, barrier: Barrier, results: multiprocessing.Queue) -> None:
    barrier.wait(timeout=60)
    try:
        results.put(key_fingerprint(load_or_create_signing_key(state_dir).public_key()))
    except Exception as error:  # reported to the test, which fails naming it
        results.put(f"{type(error).__name__}: {error}")


def test_fifty_processes_first_using_a_state_dir_share_one_key_pair(tmp_path: Path) -> None:
    state_dir = tmp_path / "clinic"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PROCESSES)
    results: multiprocessing.Queue = context.Queue()
    processes = [
        context.Process(target=_first_use, args=(state_dir, barrier, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    fingerprints = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    assert len(set(fingerprints)) == 1, set(fingerprints)
    (fingerprint,) = set(fingerprints)
    assert sorted(p.name for p in state_dir.iterdir()) == [PRIVATE_KEY_FILE, PUBLIC_KEY_FILE]
    assert key_fingerprint(load_public_key(state_dir / PUBLIC_KEY_FILE)) == fingerprint


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_lost_private_key_is_refused_and_nothing_is_created(clinic: Path) -> None:
    (clinic / PRIVATE_KEY_FILE).unlink()
    before = _snapshot(clinic)
    with pytest.raises(AuditKeyError, match="missing") as refused:
        load_or_create_signing_key(clinic)
    assert "oralfed clinic restore" in str(refused.value)
    assert "oralfed clinic rotate-key" in str(refused.value)
    assert refused.value.exit_code == ExitCode.AUDIT
    with pytest.raises(AuditKeyError):
        PrivacyLedger.in_state_dir(clinic)  # the ledger opens no state dir without its key
    assert _snapshot(clinic) == before


def test_a_public_key_of_another_pair_is_refused(clinic: Path) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    (clinic / PUBLIC_KEY_FILE).write_bytes(public_key_pem(other))
    with pytest.raises(AuditKeyError, match="mixed up"):
        load_or_create_signing_key(clinic)


def test_a_private_key_alone_gets_its_public_half(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / PRIVATE_KEY_FILE).write_bytes(private_key_pem(key))
    loaded = load_or_create_signing_key(tmp_path)
    assert key_fingerprint(loaded.public_key()) == key_fingerprint(key.public_key())
    assert load_public_key(tmp_path / PUBLIC_KEY_FILE).public_bytes_raw() == (
        key.public_key().public_bytes_raw()
    )


def _charge(state_dir: Path, round_number: int) -> None:
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.charge("clinic-01", ROUND, run_id="run-2", round=round_number)


def _problems(state_dir: Path, public_key: Path | None = None) -> list[tuple[int | None, str]]:
    report = verify_target(state_dir=state_dir, public_key=public_key)
    return [(failure.seq, failure.problem) for failure in report.result.failures]


def test_rotation_is_recorded_and_verify_follows_the_key_chain(capsys, clinic: Path) -> None:
    old = load_public_key(clinic / PUBLIC_KEY_FILE)
    code, out, err = run_cli(capsys, "clinic", "rotate-key", "--state-dir", clinic)
    assert code == 0, err
    new = load_public_key(clinic / PUBLIC_KEY_FILE)
    assert key_fingerprint(new) != key_fingerprint(old)
    retired = clinic / f"audit_signing_key.pub.{key_fingerprint(old)[:16]}.pem"
    assert load_public_key(retired).public_bytes_raw() == old.public_bytes_raw()
    rotation = read_database_log(clinic / "ledger.db")[-1]
    assert rotation.kind == KEY_ROTATED and rotation.signer == key_fingerprint(old)
    assert rotation.payload_data()["new_signer"] == key_fingerprint(new)
    _charge(clinic, 3)  # signed by the new key

    code, out, err = run_cli(capsys, "audit", "verify", "--state-dir", clinic)
    assert code == 0, err
    assert "1 rotation(s)" in out
    report = verify_target(state_dir=clinic)
    assert report.result.key_chain == (key_fingerprint(old), key_fingerprint(new))
    assert _problems(clinic, public_key=retired) == []  # the old key hands over forwards
    export_log(clinic, clinic.parent / "log.json")
    assert verify_target(export_file=clinic.parent / "log.json").ok

    # An entry signed by a key in no chain is foreign, before and after the rotation alike.
    intruder = AuditLog(
        create_engine(f"sqlite:///{clinic / 'ledger.db'}"), Ed25519PrivateKey.generate()
    )
    intruder.append("test.event", {"forged": True})
    assert _problems(clinic) == [(6, "foreign-key")]


def test_a_lost_key_is_replaced_only_by_an_explicit_rotation(capsys, clinic: Path) -> None:
    old = load_public_key(clinic / PUBLIC_KEY_FILE)
    (clinic / PRIVATE_KEY_FILE).unlink()
    code, out, err = run_cli(capsys, "clinic", "rotate-key", "--state-dir", clinic)
    assert code == 0, err
    assert "signed by the new key" in out
    _charge(clinic, 3)
    assert _problems(clinic) == []  # the new key vouches for the lost one's entries
    # The lost key never handed over: an auditor trusting only it cannot pass the rotation.
    retired = clinic / f"audit_signing_key.pub.{key_fingerprint(old)[:16]}.pem"
    assert [problem for _, problem in _problems(clinic, public_key=retired)] == [
        "foreign-key",
        "foreign-key",
    ]


def test_a_rotation_forged_without_the_key_stays_foreign(clinic: Path) -> None:
    """Someone with write access but no key announces their own key as the successor."""
    current = load_public_key(clinic / PUBLIC_KEY_FILE)
    forger = Ed25519PrivateKey.generate()
    log = AuditLog(create_engine(f"sqlite:///{clinic / 'ledger.db'}"), forger)
    log.append(
        KEY_ROTATED,
        rotation_payload(current, forger, signed_by_previous=False, reason="forged"),
    )
    log.append("test.event", {"by": "forger"})
    assert _problems(clinic) == [(4, "foreign-key"), (5, "foreign-key")]


def test_an_interrupted_rotation_blocks_signing_until_it_is_finished(
    capsys, clinic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(Exception):
        pass

    def crash(*_args: object) -> None:
        raise Crash

    monkeypatch.setattr(key_rotation, "write_public_key", crash)  # dies after the commit
    with pytest.raises(Crash):
        key_rotation.rotate_signing_key(clinic, reason="test")
    monkeypatch.undo()
    assert (clinic / NEXT_KEY_FILE).exists()
    with pytest.raises(AuditKeyError, match="interrupted"):
        load_or_create_signing_key(clinic)
    code, out, err = run_cli(capsys, "clinic", "rotate-key", "--state-dir", clinic)
    assert code == 0, err
    assert "finished an interrupted rotation" in out
    assert not (clinic / NEXT_KEY_FILE).exists()
    assert sum(e.kind == KEY_ROTATED for e in read_database_log(clinic / "ledger.db")) == 1
    _charge(clinic, 3)
    assert _problems(clinic) == []


def test_a_staged_key_whose_rotation_never_committed_is_discarded(capsys, clinic: Path) -> None:
    (clinic / NEXT_KEY_FILE).write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    code, out, err = run_cli(capsys, "clinic", "rotate-key", "--state-dir", clinic)
    assert code == 0, err
    assert "finished" not in out
    _charge(clinic, 3)
    assert _problems(clinic) == []


def test_rotating_a_dir_without_a_log_or_key_is_a_clear_error(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "clinic", "rotate-key", "--state-dir", tmp_path)
    assert code == ExitCode.AUDIT and "holds neither" in err


def test_rotating_without_any_key_is_refused_and_changes_nothing(capsys, clinic: Path) -> None:
    for name in (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE):
        (clinic / name).unlink()
    before = _snapshot(clinic)
    code, _, err = run_cli(capsys, "clinic", "rotate-key", "--state-dir", clinic)
    assert code == ExitCode.AUDIT and "no audit key" in err and "backup" in err
    assert _snapshot(clinic) == before
