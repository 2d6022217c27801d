"""An encrypted, authenticated archive of a clinic's state dir, and its restore.

A clinic's state dir is its whole privacy history: the ledger and its signed audit log
(``ledger.db``), the key pair that signs the log (and the public halves of rotated-out
keys), the calibration cache, ``public-sizes.json``, stored releases. Losing it loses the
lifetime budget; restoring a wrong one silently rolls the budget back or swaps the key an
auditor trusts. So :func:`backup_state_dir` copies everything but transient files
(``-wal``/``-shm``/``-journal``, ``.lock``/``.pid`` files, hidden temporaries of the atomic
writer), each SQLite database as a consistent snapshot through SQLite's online backup API
(a file copy while the node writes could tear a page), and :func:`restore_state_dir`
authenticates the whole archive before it writes a byte, then refuses to replace any state
dir that holds a state unless asked (``replace=True``, which keeps the replaced dir aside).

Archive format (integers unsigned; the 40-byte header is the AEAD's associated data, so
changing any of its bytes, like any byte after it, fails authentication)::

    offset  size  field
    0       8     magic b"OFBACKUP"
    8       1     format version, 1
    9       1     scrypt log2(N)   (10..18)
    10      1     scrypt r         (1..8)
    11      1     scrypt p         (1..4)
    12      16    salt
    28      12    nonce
    40      rest  AES-256-GCM ciphertext with its 16-byte tag; key = scrypt(passphrase,
                  salt, N, r, p), 32 bytes

The plaintext is a gzip-compressed tar holding ``manifest.json`` (format, creation time,
source dir, key fingerprint, and every file's size and SHA-256) and the state dir's files
under ``state/``. It is built and read in memory, so an archive holds at most 2 GiB.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import sqlite3
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from oralfed.privacy.audit_targets import log_database
from oralfed.privacy.keys import (
    NEXT_KEY_FILE,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    AuditKeyError,
    key_fingerprint,
    private_key_from_pem,
    public_key_from_pem,
)
from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import write_bytes_atomically

__all__ = [
    "ARCHIVE_FORMAT",
    "DEFAULT_KDF",
    "MAGIC",
    "BackupError",
    "BackupOutcome",
    "RestoreOutcome",
    "ScryptParams",
    "backup_state_dir",
    "passphrase_from_file",
    "restore_state_dir",
]

MAGIC: Final = b"OFBACKUP"
VERSION: Final = 1
ARCHIVE_FORMAT: Final = "oralfed-clinic-backup/1"
_HEADER_SIZE: Final = 40
_SALT_SIZE: Final = 16
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
# AES-GCM in `cryptography` takes at most 2**31 - 1 bytes at once.
_MAX_PLAINTEXT: Final = 2**31 - 1 - _TAG_SIZE
_MANIFEST: Final = "manifest.json"
_STATE: Final = "state"
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_TRANSIENT_SUFFIXES: Final = ("-wal", "-shm", "-journal", ".lock", ".pid")
_SECRET_FILES: Final = frozenset({PRIVATE_KEY_FILE, NEXT_KEY_FILE})


class BackupError(OralFedError):
    """A backup that cannot be written, or an archive that cannot be restored; nothing was
    written (the message says which file and why)."""

    exit_code: ClassVar[ExitCode] = ExitCode.DEPLOYMENT


@dataclass(frozen=True)
class ScryptParams:
    """scrypt's cost: N = 2**log2_n, block size r, parallelism p (memory 128·r·N bytes)."""

    log2_n: int = 15
    r: int = 8
    p: int = 1

    def check(self) -> None:
        """Refuse costs outside the bounds the format allows (a corrupt header must not
        make a restore allocate more than 256 MiB before authentication can fail)."""
        if not (10 <= self.log2_n <= 18 and 1 <= self.r <= 8 and 1 <= self.p <= 4):
            raise BackupError(
                f"scrypt parameters log2(N)={self.log2_n}, r={self.r}, p={self.p} are outside "
                "the archive format's bounds (log2(N) 10..18, r 1..8, p 1..4)"
            )

    def derive(self, passphrase: str, salt: bytes) -> bytes:
        kdf = Scrypt(salt=salt, length=32, n=2**self.log2_n, r=self.r, p=self.p)
        return kdf.derive(passphrase.encode("utf-8"))


DEFAULT_KDF: Final = ScryptParams()


@dataclass(frozen=True)
class BackupOutcome:
    """What an archive holds: its files (databases as snapshots) and what was left out."""

    archive: Path
    files: tuple[str, ...]
    databases: tuple[str, ...]
    skipped: tuple[str, ...]  # transient files, links and other non-files
    key_fingerprint: str | None


@dataclass(frozen=True)
class RestoreOutcome:
    """A restored state dir, the archive's origin, and where a replaced dir was kept."""

    state_dir: Path
    files: tuple[str, ...]
    key_fingerprint: str | None
    created_at: str
    source: str
    replaced: Path | None


def passphrase_from_file(path: Path) -> str:
    """The passphrase in ``path``'s first line (its line break is not part of it)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise BackupError(f"{path}: cannot read the passphrase file ({error.strerror})") from None
    except UnicodeDecodeError:
        raise BackupError(f"{path}: the passphrase file is not UTF-8 text") from None
    lines = text.splitlines()
    return lines[0] if lines else ""


def backup_state_dir(
    state_dir: Path, out: Path, passphrase: str, *, kdf: ScryptParams = DEFAULT_KDF
) -> BackupOutcome:
    """Write an encrypted archive of ``state_dir`` to ``out`` (mode 0600, atomically).

    ``out`` must be a new file outside the state dir (an older archive is never
    overwritten, and an archive inside the dir would be archived again).
    """
    _check_passphrase(passphrase)
    kdf.check()
    log_database(state_dir)  # a state dir that holds a log, or AuditError naming it
    if out.exists():
        raise BackupError(f"{out}: already exists; write a new archive under another name")
    if out.resolve().is_relative_to(state_dir.resolve()):
        raise BackupError(f"{out}: is inside the state dir {state_dir}; write it elsewhere")
    files: dict[str, bytes] = {}
    databases: list[str] = []
    skipped: list[str] = []
    directories: list[str] = []
    for path, kind in _walk(state_dir):
        name = path.relative_to(state_dir).as_posix()
        if kind == "dir":
            directories.append(name)
        elif kind == "file":
            content, is_database = _snapshot(path)
            files[name] = content
            if is_database:
                databases.append(name)
        else:
            skipped.append(name)
    fingerprint = _key_fingerprint(files, source=str(state_dir))
    manifest = {
        "format": ARCHIVE_FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": str(state_dir.resolve()),
        "key_fingerprint": fingerprint,
        "directories": directories,
        "files": {
            name: {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
            for name, content in files.items()
        },
    }
    plaintext = _tar(manifest, files, directories)
    if len(plaintext) > _MAX_PLAINTEXT:
        raise BackupError(
            f"{state_dir}: its archive would be {len(plaintext)} bytes, more than the "
            f"{_MAX_PLAINTEXT} one archive holds"
        )
    salt, nonce = secrets.token_bytes(_SALT_SIZE), secrets.token_bytes(_NONCE_SIZE)
    header = _header(kdf, salt, nonce)
    ciphertext = AESGCM(kdf.derive(passphrase, salt)).encrypt(nonce, plaintext, header)
    try:
        write_bytes_atomically(out, header + ciphertext, mode=0o600, exclusive=True)
    except FileExistsError:
        raise BackupError(
            f"{out}: already exists; write a new archive under another name"
        ) from None
    except OSError as error:
        raise BackupError(f"{out}: cannot write the archive ({error.strerror})") from None
    return BackupOutcome(out, tuple(files), tuple(databases), tuple(skipped), fingerprint)


def restore_state_dir(
    archive: Path, state_dir: Path, passphrase: str, *, replace: bool = False
) -> RestoreOutcome:
    """Bring ``archive`` back as ``state_dir``, all or nothing.

    The archive is authenticated and checked whole before anything is written: a wrong
    passphrase or one changed byte is a :class:`BackupError` and the disk is untouched. A
    state dir that already holds files is refused, naming its key pair if it differs from
    the archive's: restoring over it would swap the key its auditors trust, or roll its
    ledger back to the archive's and forget what was charged since. With ``replace`` it is
    renamed aside (``<dir>.replaced-<time>``, key files and all) instead. The files are
    written to a temporary dir beside ``state_dir`` that is then renamed into place.
    """
    manifest, files = _open_archive(archive, passphrase)
    fingerprint = _key_fingerprint(files, source=str(archive))
    existing = _existing_state(state_dir)
    if existing and not replace:
        raise BackupError(_occupied_message(state_dir, fingerprint))
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=state_dir.parent, prefix=f".{state_dir.name}.restore-"))
    try:
        for name in manifest["directories"]:
            (staging / name).mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            write_bytes_atomically(staging / name, content, mode=_mode(name))
        replaced = _move_into_place(staging, state_dir, existing)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(f"{state_dir}: cannot restore into it ({error.strerror})") from None
    return RestoreOutcome(
        state_dir,
        tuple(files),
        fingerprint,
        str(manifest["created_at"]),
        str(manifest["source"]),
        replaced,
    )


def _check_passphrase(passphrase: str) -> None:
    if not passphrase:
        raise BackupError("the backup passphrase is empty")


def _walk(state_dir: Path) -> Iterator[tuple[Path, str]]:
    """Every entry below ``state_dir`` in a stable order, as dir, file, or skip (transient
    files, hidden entries, symbolic links, sockets and the like)."""
    for root, dirs, names in os.walk(state_dir):
        base = Path(root)
        if base != state_dir:
            yield base, "dir"
        kept = []
        for name in sorted(dirs):
            if name.startswith(".") or (base / name).is_symlink():
                yield base / name, "skip"
            else:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(names):
            yield base / name, "file" if _is_kept_file(base / name) else "skip"


def _is_kept_file(path: Path) -> bool:
    """A regular file that is not transient (one that vanished while listed is not kept)."""
    if path.name.startswith(".") or path.name.endswith(_TRANSIENT_SUFFIXES):
        return False
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _snapshot(path: Path) -> tuple[bytes, bool]:
    """The file's bytes; for a SQLite database, a consistent snapshot of it."""
    try:
        with path.open("rb") as stream:
            head = stream.read(len(_SQLITE_MAGIC))
            if head != _SQLITE_MAGIC:
                return head + stream.read(), False
    except OSError as error:
        raise BackupError(f"{path}: cannot read it ({error.strerror})") from None
    try:
        source = sqlite3.connect(path, timeout=30)
        copy = sqlite3.connect(":memory:")
        try:
            source.backup(copy)
            return copy.serialize(), True
        finally:
            source.close()
            copy.close()
    except sqlite3.Error as error:
        raise BackupError(f"{path}: cannot take a snapshot of this database ({error})") from None


def _mode(name: str) -> int:
    """A restored file's mode: private keys for the owner only, the rest readable by all."""
    return 0o600 if PurePosixPath(name).name in _SECRET_FILES else 0o644


def _tar(manifest: dict[str, Any], files: dict[str, bytes], directories: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, _MANIFEST, json.dumps(manifest, indent=2).encode("utf-8"), 0o644)
        for name in directories:
            info = tarfile.TarInfo(f"{_STATE}/{name}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, content in files.items():
            _add(tar, f"{_STATE}/{name}", content, _mode(name))
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(content), mode
    tar.addfile(info, io.BytesIO(content))


def _header(kdf: ScryptParams, salt: bytes, nonce: bytes) -> bytes:
    return MAGIC + bytes([VERSION, kdf.log2_n, kdf.r, kdf.p]) + salt + nonce


def _open_archive(archive: Path, passphrase: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and files of an authenticated archive; :class:`BackupError` otherwise."""
    _check_passphrase(passphrase)
    try:
        if archive.stat().st_size > _HEADER_SIZE + _MAX_PLAINTEXT + _TAG_SIZE:
            raise BackupError(f"{archive}: too large to be an OralFed clinic backup")
        data = archive.read_bytes()
    except OSError as error:
        raise BackupError(f"{archive}: cannot read the archive ({error.strerror})") from None
    if len(data) < _HEADER_SIZE + _TAG_SIZE or not data.startswith(MAGIC):
        raise BackupError(f"{archive}: not an OralFed clinic backup")
    header = data[:_HEADER_SIZE]
    if header[8] != VERSION:
        raise BackupError(
            f"{archive}: a backup of format version {header[8]}; this release reads {VERSION}"
        )
    kdf = ScryptParams(log2_n=header[9], r=header[10], p=header[11])
    kdf.check()
    salt, nonce = header[12:28], header[28:_HEADER_SIZE]
    try:
        plaintext = AESGCM(kdf.derive(passphrase, salt)).decrypt(nonce, data[_HEADER_SIZE:], header)
    except InvalidTag:
        raise BackupError(
            f"{archive}: authentication failed: the passphrase is wrong, or the archive was "
            "changed or damaged; nothing was restored"
        ) from None
    return _unpack(archive, plaintext)


def _unpack(archive: Path, plaintext: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read the tar an authentic archive holds, checking it against its manifest (a writer
    of another release could disagree; an attacker cannot, the archive is authenticated)."""

    def refuse(reason: str) -> BackupError:
        return BackupError(f"{archive}: {reason}; nothing was restored")

    members: dict[str, bytes] = {}
    directories: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(plaintext), mode="r:gz") as tar:
            for info in tar:
                name = _member_name(info.name)
                if name is None:
                    raise refuse(f"the archive holds an unexpected entry {info.name!r}")
                if info.isdir():
                    directories.add(name)
                elif info.isfile():
                    extracted = tar.extractfile(info)
                    assert extracted is not None  # a regular file always has content
                    members[name] = extracted.read()
                else:
                    raise refuse(f"the archive holds {info.name!r}, which is not a file")
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, OSError) as error:
        raise refuse(f"its content is not a readable archive ({error})") from None
    try:
        manifest = json.loads(members.pop(_MANIFEST))
        listed = manifest["files"]
        if manifest["format"] != ARCHIVE_FORMAT or set(listed) != set(members):
            raise ValueError("it does not list the files the archive holds")
        if set(manifest["directories"]) != directories:
            raise ValueError("it does not list the folders the archive holds")
        for name, content in members.items():
            if hashlib.sha256(content).hexdigest() != listed[name]["sha256"]:
                raise ValueError(f"{name} does not have the content it lists")
    except (KeyError, TypeError, ValueError) as error:
        raise refuse(f"its manifest does not describe it ({error})") from None
    return manifest, members


def _member_name(name: str) -> str | None:
    """The state-dir path of a tar entry (or the manifest's name); None for anything a
    restore must not write: absolute paths, ``..``, entries outside ``state/``."""
    if name == _MANIFEST:
        return name
    parts = PurePosixPath(name).parts
    if len(parts) < 2 or parts[0] != _STATE or ".." in parts:
        return None
    return PurePosixPath(*parts[1:]).as_posix()


def _key_fingerprint(files: dict[str, bytes], *, source: str) -> str | None:
    """The fingerprint of the key pair among ``files``; :class:`BackupError` if the two
    halves disagree (such a pair signs entries its own public key calls foreign)."""
    public = private = None
    try:
        if PUBLIC_KEY_FILE in files:
            public = public_key_from_pem(files[PUBLIC_KEY_FILE], source=PUBLIC_KEY_FILE)
        if PRIVATE_KEY_FILE in files:
            private = private_key_from_pem(files[PRIVATE_KEY_FILE], source=PRIVATE_KEY_FILE)
    except AuditKeyError as error:
        raise BackupError(f"{source}: {error}") from None
    fingerprints = {key_fingerprint(k) for k in (public, private and private.public_key()) if k}
    if len(fingerprints) > 1:
        raise BackupError(
            f"{source}: {PUBLIC_KEY_FILE} and {PRIVATE_KEY_FILE} are halves of different keys"
        )
    return next(iter(fingerprints), None)


def _existing_state(state_dir: Path) -> bool:
    """Whether ``state_dir`` holds anything a restore would replace."""
    if state_dir.is_symlink() or (state_dir.exists() and not state_dir.is_dir()):
        raise BackupError(f"{state_dir}: exists and is not a directory")
    return state_dir.is_dir() and any(state_dir.iterdir())


def _occupied_message(state_dir: Path, archived: str | None) -> str:
    """Why a restore into ``state_dir`` is refused: above all, a key pair it would replace."""
    try:
        current = _key_fingerprint(_key_files(state_dir), source=str(state_dir))
        other = None if current is None or current == archived else f"key {current[:16]}…"
    except BackupError:
        other = "two halves of different keys"
    if other is not None:
        shown = f"{archived[:16]}…" if archived else "none"
        what = (
            f"holds another key pair ({other}; the archive's is {shown}): restoring would "
            "replace the key its auditors trust"
        )
    else:
        what = (
            "already holds a clinic state: restoring replaces its ledger by the archive's, "
            "which forgets everything recorded after the backup was taken"
        )
    return (
        f"{state_dir}: {what}. Nothing was changed; to restore anyway, pass --replace (the "
        "current dir is kept aside, key files and all), or restore into a new dir"
    )


def _key_files(state_dir: Path) -> dict[str, bytes]:
    return {
        name: (state_dir / name).read_bytes()
        for name in (PUBLIC_KEY_FILE, PRIVATE_KEY_FILE)
        if (state_dir / name).is_file()
    }


def _move_into_place(staging: Path, state_dir: Path, existing: bool) -> Path | None:
    """Rename ``staging`` to ``state_dir``; an existing one is renamed aside first."""
    if not existing:
        if state_dir.is_dir():
            state_dir.rmdir()  # empty: nothing is lost
        staging.rename(state_dir)
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = state_dir.with_name(f"{state_dir.name}.replaced-{stamp}")
    state_dir.rename(aside)
    try:
        staging.rename(state_dir)
    except OSError:
        aside.rename(state_dir)
        raise
    return aside
