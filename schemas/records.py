"""Typed reads of the values in Flower records (``ConfigRecord``, ``MetricRecord``).

A record value is typed as everything Flower can carry (numbers, strings, bytes, lists of
them), so the coordinator and the clinics read each value through these functions as the
one type the protocol sends for its key: a value of another kind is an error that names
the key, instead of a confusing ``int()`` or ``float()`` failure further on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

__all__ = ["record_floats", "record_value"]

Scalar = TypeVar("Scalar", int, float, str)


def record_value(
    record: Mapping[str, object], key: str, kind: type[Scalar], default: Scalar | None = None
) -> Scalar:
    """``record[key]`` as an ``int``, ``float`` or ``str`` (``kind``).

    A missing key is a ``KeyError`` unless a ``default`` is given. Numbers convert as the
    built-ins do (``int(2.0)``, ``float(3)``; a bool is a number), and so do strings for
    numeric kinds (a malformed one is a ``ValueError`` naming the key); a ``str`` must be a
    string. Anything else (bytes, lists) is a ``TypeError`` naming the key.
    """
    value = record[key] if default is None or key in record else default
    if isinstance(value, int | float | str) and (kind is not str or isinstance(value, str)):
        try:
            return kind(value)
        except ValueError as error:
            raise ValueError(
                f"record value {key!r} is not a valid {kind.__name__}: {error}"
            ) from None
    raise TypeError(f"record value {key!r} is {type(value).__name__}, expected {kind.__name__}")


def record_floats(record: Mapping[str, object], key: str) -> list[float]:
    """``record[key]``, a list of numbers, as floats (a ``TypeError`` naming the key else)."""
    value = record[key]
    if not isinstance(value, list):
        raise TypeError(
            f"record value {key!r} is {type(value).__name__}, expected a list of numbers"
        )
    numbers: list[float] = []
    for item in value:
        if not isinstance(item, int | float):
            raise TypeError(
                f"record value {key!r} holds {type(item).__name__}, expected numbers only"
            )
        numbers.append(float(item))
    return numbers
