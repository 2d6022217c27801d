"""One JSON encoding of values that JSON cannot hold, used by every report and record.

``NaN`` and ``±Infinity`` are not JSON: Python writes them, most other parsers (browsers,
``jq``, PostgreSQL's ``json``) refuse them. OralFed writes them as ``null`` (“no value”), the
one reading that every consumer understands; paths, enums and dates become their strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
from enum import Enum
from pathlib import PurePath
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and every container made JSON-native."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, PurePath | datetime | date):
        return value.isoformat() if isinstance(value, datetime | date) else str(value)
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return json_safe(value.item())
    return str(value)
