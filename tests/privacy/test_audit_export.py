"""Audit exports: they carry the key that verifies them, and an edit to one is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oralfed.privacy.audit_export import read_export, write_export
from oralfed.privacy.audit_log import AuditError, read_database_log
from oralfed.privacy.audit_verify import verify_entries
from oralfed.privacy.keys import PUBLIC_KEY_FILE, load_public_key


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_export_carries_the_public_key(five_entries: Path, tmp_path: Path, fmt: str):
    entries = read_database_log(five_entries)
    key = load_public_key(five_entries.parent / PUBLIC_KEY_FILE)
    written = write_export(tmp_path / f"log.{fmt}", entries, key, fmt=fmt, source="test")
    if fmt == "csv":
        assert load_public_key(written[1]).public_bytes_raw() == key.public_bytes_raw()
        return
    exported, embedded = read_export(written[0])
    assert exported == entries
    assert verify_entries(exported, embedded).ok


def test_edited_export_is_caught(five_entries: Path, tmp_path: Path):
    key = load_public_key(five_entries.parent / PUBLIC_KEY_FILE)
    path = write_export(
        tmp_path / "log.json", read_database_log(five_entries), key, fmt="json", source="t"
    )[0]
    document = json.loads(path.read_text())
    document["entries"][1]["payload"]["value"] = 42
    path.write_text(json.dumps(document))
    exported, embedded = read_export(path)
    assert [(f.seq, f.problem) for f in verify_entries(exported, embedded).failures] == [
        (2, "changed")
    ]


def test_malformed_export_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "log.json"
    path.write_text("{not json")
    with pytest.raises(AuditError, match="not a JSON audit export"):
        read_export(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(AuditError, match="not an audit export"):
        read_export(path)
