"""Every file OralFed writes goes through here: complete or not at all, never half.

A reader (a clinic process watching a folder, an auditor copying a report, a crash in the
middle of a write) must never see a truncated report, model, key or CSV. Each writer puts
the bytes in a temporary file beside the destination, fsyncs it, and renames it over the
destination (``os.replace`` is atomic on POSIX); ``exclusive=True`` links it instead, so an
existing file is never replaced (keys are created once).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from oralfed.schemas.json_safe import json_safe

__all__ = ["write_bytes_atomically", "write_json_atomically", "write_text_atomically"]


def write_bytes_atomically(
    destination: Path, content: bytes, *, mode: int | None = None, exclusive: bool = False
) -> None:
    """Write ``content`` to ``destination`` whole or not at all.

    ``mode`` sets the permission bits before any byte is written (a private key is never
    readable by others, not even for a moment). With ``exclusive`` an existing destination
    raises ``FileExistsError`` and is left untouched.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    try:
        if mode is not None:
            os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        if exclusive:
            os.link(temporary, destination)
        else:
            os.replace(temporary, destination)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_text_atomically(destination: Path, text: str, *, mode: int | None = None) -> None:
    """UTF-8 text, written as it is (no newline translation)."""
    write_bytes_atomically(destination, text.encode("utf-8"), mode=mode)


def write_json_atomically(destination: Path, value: Any) -> None:
    """Indented JSON of ``value``, non-finite numbers as ``null`` (see ``json_safe``)."""
    write_text_atomically(destination, dumps(value, indent=2) + "\n")


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON (never ``NaN``/``Infinity``, which other parsers refuse)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False, ensure_ascii=False)
