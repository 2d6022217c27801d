"""`oralfed clinic backup` / `restore`: an authenticated round trip that `audit verify`
accepts, and every wrong passphrase, changed byte or occupied state dir a clear refusal that
writes nothing."""

from __future__ import annotations

import io
import sqlite3
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oralfed.deploy.clinic_backup import (
    MAGIC,
    BackupError,
    ScryptParams,
    backup_state_dir,
    restore_state_dir,
)
from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.keys import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.errors import ExitCode
from tests.conftest import run_cli

PASSPHRASE = "correct horse battery staple"
ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)
CHEAP_KDF = ScryptParams(log2_n=10, r=8, p=1)  # the format's least cost, for many restores


def _clinic(state_dir: Path, dataset: str = "clinic-01") -> Path:
    """A clinic state dir as a node leaves it: ledger, keys, caches, releases, and
    transient files that no backup should carry."""
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset(dataset, epsilon_cap=5.0, delta=1e-5)
        for round_number in (1, 2):
            ledger.charge(dataset, ROUND, run_id="run-1", round=round_number)
    (state_dir / "public-sizes.json").write_text('{"clinic.csv": 120}\n')
    (state_dir / "calibration-cache.json").write_text("{}\n")
    (state_dir / "releases").mkdir()
    (state_dir / "releases" / "query-1.json").write_text('{"released": true}\n')
    (state_dir / "supernode.pid").write_text("12345\n")
    (state_dir / ".ledger.db.tmp123").write_text("half-written")
    return state_dir


@pytest.fixture
def clinic(tmp_path: Path) -> Path:
    return _clinic(tmp_path / "clinic")


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase.txt"
    path.write_text(PASSPHRASE + "\n")
    return path


def _rows(database: Path) -> list[str]:
    with sqlite3.connect(database) as connection:
        return list(connection.iterdump())


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_round_trip_into_a_new_dir_verifies(
    capsys, clinic: Path, passphrase_file: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "clinic.ofb"
    code, out, err = run_cli(
        capsys, "clinic", "backup", "--state-dir", clinic, "--out", archive,
        "--passphrase-file", passphrase_file,
    )  # fmt: skip
    assert code == 0, err
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert b"clinic-01" not in archive.read_bytes()  # encrypted (the ledger names it)
    restored = tmp_path / "restored" / "clinic"
    code, out, err = run_cli(
        capsys, "clinic", "restore", "--from", archive, "--state-dir", restored,
        "--passphrase-file", passphrase_file,
    )  # fmt: skip
    assert code == 0, err
    assert "audit log verified" in out
    code, out, err = run_cli(capsys, "audit", "verify", "--state-dir", restored)
    assert code == 0, err
    assert _rows(restored / "ledger.db") == _rows(clinic / "ledger.db")
    expected = {
        name: content
        for name, content in _tree(clinic).items()
        if name not in {"supernode.pid", ".ledger.db.tmp123", "ledger.db"}
    }
    assert {k: v for k, v in _tree(restored).items() if k != "ledger.db"} == expected
    assert stat.S_IMODE((restored / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
    with PrivacyLedger.in_state_dir(restored) as ledger:  # the restored node goes on charging
        ledger.charge("clinic-01", ROUND, run_id="run-2", round=1)
    assert run_cli(capsys, "audit", "verify", "--state-dir", restored)[0] == 0


def test_a_database_being_written_is_backed_up_with_its_journal(
    clinic: Path, tmp_path: Path
) -> None:
    """Committed rows still in the WAL (a node mid-run) are in the snapshot; a copy of the
    database file alone would lose them."""
    live = sqlite3.connect(clinic / "extra.db")
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("PRAGMA wal_autocheckpoint=0")
    live.execute("CREATE TABLE t (x INTEGER)")
    live.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    live.commit()
    try:
        assert (clinic / "extra.db-wal").stat().st_size > 0
        outcome = backup_state_dir(clinic, tmp_path / "b.ofb", PASSPHRASE, kdf=CHEAP_KDF)
    finally:
        live.close()
    assert "extra.db" in outcome.databases and "extra.db-wal" in outcome.skipped
    restore_state_dir(tmp_path / "b.ofb", tmp_path / "new", PASSPHRASE)
    with sqlite3.connect(tmp_path / "new" / "extra.db") as copy:
        assert copy.execute("SELECT count(*) FROM t").fetchone() == (100,)


@pytest.fixture
def archive(clinic: Path, tmp_path: Path) -> Path:
    path = tmp_path / "clinic.ofb"
    backup_state_dir(clinic, path, PASSPHRASE, kdf=CHEAP_KDF)
    return path


def test_a_wrong_passphrase_writes_nothing(capsys, archive: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not the passphrase\n")
    target = tmp_path / "target"
    code, _, err = run_cli(
        capsys, "clinic", "restore", "--from", archive, "--state-dir", target,
        "--passphrase-file", wrong,
    )  # fmt: skip
    assert code == ExitCode.DEPLOYMENT
    assert "authentication failed" in err and "nothing was restored" in err
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("offset", [0, 9, 20, 40, -1, -200])
def test_a_flipped_byte_writes_nothing(archive: Path, tmp_path: Path, offset: int) -> None:
    data = bytearray(archive.read_bytes())
    data[offset] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(BackupError):
        restore_state_dir(archive, tmp_path / "target", PASSPHRASE)
    assert not (tmp_path / "target").exists()


def test_restore_over_another_key_pair_is_refused_unless_replaced(
    capsys, archive: Path, passphrase_file: Path, tmp_path: Path
) -> None:
    other = _clinic(tmp_path / "other", dataset="clinic-02")
    before = _tree(other)
    restore = ("clinic", "restore", "--from", archive, "--state-dir", other)
    code, _, err = run_cli(capsys, *restore, "--passphrase-file", passphrase_file)
    assert code == ExitCode.DEPLOYMENT
    assert "another key pair" in err and "--replace" in err
    assert _tree(other) == before
    code, _, err = run_cli(capsys, *restore, "--passphrase-file", passphrase_file, "--replace")
    assert code == 0, err
    (aside,) = tmp_path.glob("other.replaced-*")
    assert _tree(aside) == before  # the replaced key pair is kept, with everything else
    assert (aside / PRIVATE_KEY_FILE).read_bytes() != (other / PRIVATE_KEY_FILE).read_bytes()
    assert run_cli(capsys, "audit", "verify", "--state-dir", other)[0] == 0


def test_restore_over_the_same_clinic_is_refused_unless_replaced(
    clinic: Path, archive: Path, tmp_path: Path
) -> None:
    """Same key, but restoring would roll the ledger back to the archive's charges."""
    with pytest.raises(BackupError, match="forgets everything recorded after the backup"):
        restore_state_dir(archive, clinic, PASSPHRASE)
    (clinic / PRIVATE_KEY_FILE).unlink()  # the key is lost: the backup is how to recover
    restore_state_dir(archive, clinic, PASSPHRASE, replace=True)
    assert (clinic / PRIVATE_KEY_FILE).is_file()
    with PrivacyLedger.in_state_dir(clinic) as ledger:
        ledger.charge("clinic-01", ROUND, run_id="run-2", round=1)


def test_bad_requests_are_clear_errors(
    capsys, clinic: Path, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORALFED_BACKUP_PASSPHRASE", raising=False)
    code, _, err = run_cli(capsys, "clinic", "backup", "--state-dir", clinic, "--out", archive)
    assert code == ExitCode.USAGE and "--passphrase-file" in err
    monkeypatch.setenv("ORALFED_BACKUP_PASSPHRASE", PASSPHRASE)
    code, _, err = run_cli(capsys, "clinic", "backup", "--state-dir", clinic, "--out", archive)
    assert code == ExitCode.DEPLOYMENT and "already exists" in err
    inside = ("--out", clinic / "b.ofb")
    code, _, err = run_cli(capsys, "clinic", "backup", "--state-dir", clinic, *inside)
    assert code == ExitCode.DEPLOYMENT and "inside the state dir" in err
    junk = tmp_path / "junk.ofb"
    junk.write_bytes(b"PK\x03\x04 not a backup at all" * 10)
    restore = ("clinic", "restore", "--state-dir", tmp_path / "t")
    code, _, err = run_cli(capsys, *restore, "--from", junk)
    assert code == ExitCode.DEPLOYMENT and "not an OralFed clinic backup" in err
    code, _, err = run_cli(capsys, *restore, "--from", tmp_path / "missing.ofb")
    assert code == ExitCode.DEPLOYMENT and "cannot read" in err
    code, _, err = run_cli(capsys, "clinic", "backup", "--state-dir", tmp_path, "--out", junk)
    assert code == ExitCode.AUDIT and "holds neither" in err
    assert not (tmp_path / "t").exists()
    assert (clinic / PUBLIC_KEY_FILE).is_file()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("pristine")
    _clinic(folder / "clinic")
    backup_state_dir(folder / "clinic", folder / "b.ofb", PASSPHRASE, kdf=CHEAP_KDF)
    return (folder / "b.ofb").read_bytes()


@st.composite
def corruptions(draw: st.DrawFn, size: int) -> tuple[str, int, bytes]:
    kind = draw(st.sampled_from(["flip", "truncate", "append", "splice"]))
    offset = draw(st.integers(0, size - 1))
    return kind, offset, draw(st.binary(min_size=1, max_size=64))


def _corrupt(data: bytes, kind: str, offset: int, chunk: bytes) -> bytes:
    if kind == "flip":
        return data[:offset] + bytes([data[offset] ^ (chunk[0] or 1)]) + data[offset + 1 :]
    if kind == "truncate":
        return data[:offset]
    if kind == "append":
        return data + chunk
    return data[:offset] + chunk + data[offset + len(chunk) :]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_corrupted_archive_is_refused_by_name(pristine: bytes, data: st.DataObject) -> None:
    kind, offset, chunk = data.draw(corruptions(len(pristine)))
    corrupted = _corrupt(pristine, kind, offset, chunk)
    with tempfile.TemporaryDirectory() as folder:
        archive, target = Path(folder) / "b.ofb", Path(folder) / "target"
        archive.write_bytes(corrupted)
        if corrupted == pristine:  # a splice can rewrite a byte with itself
            restore_state_dir(archive, target, PASSPHRASE)
            return
        with pytest.raises(BackupError):
            restore_state_dir(archive, target, PASSPHRASE)
        assert sorted(p.name for p in Path(folder).iterdir()) == ["b.ofb"]


def _authentic(tmp_path: Path, members: list[tarfile.TarInfo]) -> Path:
    """An archive that authenticates (right passphrase, right format) around ``members``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    salt, nonce = bytes(16), bytes(12)
    header = MAGIC + bytes([1, CHEAP_KDF.log2_n, CHEAP_KDF.r, CHEAP_KDF.p]) + salt + nonce
    key = CHEAP_KDF.derive(PASSPHRASE, salt)
    path = tmp_path / "crafted.ofb"
    path.write_bytes(header + AESGCM(key).encrypt(nonce, buffer.getvalue(), header))
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, 1 if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_member("state/../../evil")], "unexpected entry"),
        ([_member("/etc/evil")], "unexpected entry"),
        ([_member("state/link", tarfile.SYMTYPE)], "not a file"),
        ([_member("state/ledger.db")], "manifest"),
    ],
)
def test_an_authentic_archive_of_hostile_content_writes_nothing(
    tmp_path: Path, members: list[tarfile.TarInfo], message: str
) -> None:
    """Right passphrase and format, but entries a restore must never write."""
    with pytest.raises(BackupError, match=message):
        restore_state_dir(_authentic(tmp_path, members), tmp_path / "target", PASSPHRASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.ofb"]
