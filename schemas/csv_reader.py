"""A CSV reader with bounded memory: a cell of any size is measured, never held whole.

Python's ``csv`` module refuses a cell over ``csv.field_size_limit()`` (131,072 characters)
with ``_csv.Error`` in the middle of a file, after which its records are out of step, and
raising the limit lets one cell take all memory. So clinic files are tokenised here, in
chunks, by the same rules as ``csv``'s default (Excel) dialect, non-strict: ``,`` between
cells, ``"`` around a cell that holds commas, quotes or line breaks, ``""`` for a quote in
it, a quote inside an unquoted cell taken as written, any of ``\\r\\n``, ``\\n`` or ``\\r``
ending a record, blank lines skipped. A cell longer than :data:`CELL_LIMIT` characters is
counted to its end but not kept; the importer rejects its row, naming the row and the
column. A row's cells beyond the header are counted and only the first few kept. Memory is
thus bounded by a chunk and one row of cells of at most the limit, whatever the file holds.

The bytes are hashed as they are read (the import's fingerprint) and decoded as UTF-8 (a
leading byte-order mark is dropped); a byte that is not UTF-8 refuses the file naming its
line.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum, auto
from pathlib import Path
from typing import BinaryIO, Final

from oralfed.schemas.errors import ExitCode, OralFedError

__all__ = ["CELL_LIMIT", "CsvFileError", "CsvRecord", "CsvSource"]

# The most characters one cell may hold: csv's own default, so no file that imported
# before is refused now; a notes column longer than this is a row the contract cannot use.
CELL_LIMIT: Final = 131_072
_CHUNK: Final = 1 << 16  # bytes; a chunk's text is thus shorter than CELL_LIMIT
_UNQUOTED = re.compile(r"[^,\r\n]*")
_QUOTED = re.compile(r'[^"]*')
_NEWLINES = re.compile(r"[\r\n]*")
_LINE_END = re.compile(r"[\r\n]")


class CsvFileError(OralFedError):
    """A CSV file that cannot be read as text at all (not UTF-8); names the file and line."""

    exit_code = ExitCode.INVALID_DATA


@dataclass
class CsvRecord:
    """One record: its cells (a cell over the limit is kept as ``""``), how many it had,
    the cells over the limit by index with their length, and whether its last cell opened
    a quote that the file never closed (then the rest of the file is that cell)."""

    cells: list[str] = field(default_factory=list)
    width: int = 0
    too_long: dict[int, int] = field(default_factory=dict)
    unterminated: bool = False


class _State(Enum):
    RECORD = auto()  # between records
    FIELD = auto()  # at the start of a cell
    UNQUOTED = auto()
    QUOTED = auto()
    QUOTE = auto()  # a quote inside a quoted cell: its end, or the first of ""


class CsvSource:
    """The records of one CSV file, read in chunks; ``fingerprint`` once all are read.

    ``keep`` is how many cells of a record are kept (the rest are only counted); the
    importer sets it from the header's width after the first record.
    """

    def __init__(self, path: Path, stream: BinaryIO, keep: int) -> None:
        self.path = path
        self.keep = keep
        self._stream = stream
        self._hash = hashlib.sha256()
        self._newlines = 0  # line breaks in the bytes read before the current chunk

    @property
    def fingerprint(self) -> str:
        return self._hash.hexdigest()

    def records(self) -> Iterator[CsvRecord]:
        state = _State.RECORD
        record = CsvRecord()
        cell: list[str] = []
        length = 0
        for text, last in self._texts():
            pos, end = 0, len(text)
            while True:
                if state is _State.RECORD:
                    pos = _run(_NEWLINES, text, pos).end()
                    if pos == end:
                        break
                    line_end = _LINE_END.search(text, pos)
                    if line_end is not None and '"' not in text[pos : line_end.start()]:
                        # The common record: one line inside this chunk, nothing quoted,
                        # so shorter than a chunk and thus than the limit.
                        cells = text[pos : line_end.start()].split(",")
                        yield CsvRecord(cells[: self.keep], len(cells))
                        pos = line_end.start()
                        continue
                    state = _State.FIELD
                if pos == end:  # the chunk ends inside a record
                    if not last:
                        break
                    record.unterminated = state is _State.QUOTED
                    self._save(record, cell, length)
                    yield record
                    return
                char = text[pos]
                if state is _State.QUOTED:
                    match = _run(_QUOTED, text, pos)
                    length = _add(cell, length, match.group())
                    pos = match.end()
                    if pos < end:  # at the closing (or doubled) quote
                        pos += 1
                        state = _State.QUOTE
                    continue
                if state is _State.QUOTE and char == '"':
                    length = _add(cell, length, '"')
                    pos += 1
                    state = _State.QUOTED
                    continue
                if state is _State.FIELD and char == '"':
                    pos += 1
                    state = _State.QUOTED
                    continue
                if char in ",\r\n":
                    self._save(record, cell, length)
                    cell, length = [], 0
                    pos += 1
                    if char == ",":
                        state = _State.FIELD
                    else:
                        yield record
                        record, state = CsvRecord(), _State.RECORD
                    continue
                match = _run(_UNQUOTED, text, pos)  # FIELD, UNQUOTED, or text after a quote
                length = _add(cell, length, match.group())
                pos = match.end()
                state = _State.UNQUOTED

    def _save(self, record: CsvRecord, cell: list[str], length: int) -> None:
        index = record.width
        record.width += 1
        if length > CELL_LIMIT:
            record.too_long[index] = length
        if index < self.keep:
            record.cells.append("" if length > CELL_LIMIT else "".join(cell))

    def _texts(self) -> Iterator[tuple[str, bool]]:
        """The file's text in chunks, each with whether it is the last; hashes the bytes."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        first = True
        while True:
            block = self._stream.read(_CHUNK)
            self._hash.update(block)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                offset = max(0, error.start - pending)
                line = self._newlines + block[:offset].count(b"\n") + 1
                raise CsvFileError(
                    f"{self.path}: is not UTF-8 text (invalid byte "
                    f"0x{error.object[error.start]:02x} on line {line}); export the file as UTF-8"
                ) from None
            self._newlines += block.count(b"\n")
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            yield text, not block
            if not block:
                return


def _run(pattern: re.Pattern[str], text: str, pos: int) -> re.Match[str]:
    """The run of ``pattern`` (which matches the empty string too) at ``pos``."""
    match = pattern.match(text, pos)
    assert match is not None
    return match


def _add(cell: list[str], length: int, piece: str) -> int:
    """Append ``piece`` to the cell while it is within the limit; its new length."""
    length += len(piece)
    if length <= CELL_LIMIT:
        cell.append(piece)
    return length
