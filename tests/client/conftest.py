"""Fixtures of the clinic-side tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import oralfed.client.data as clinic_data


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The clinic files actually imported (validated), in order; the process's memory of
    earlier imports is emptied first, as in a new process."""
    imported: list[Path] = []
    real_import = clinic_data.import_file

    def counted(path: Path) -> clinic_data.ImportResult:
        imported.append(path)
        return real_import(path)

    monkeypatch.setattr(clinic_data, "import_file", counted)
    clinic_data._load_cached.cache_clear()
    return imported
