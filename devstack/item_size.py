"""DynamoDB's item-size rules, which decide read and write units (moto reports no capacity):
used by the benchmarks to count write units and by tests that keep items under 1 KB."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def attribute_size(value: dict[str, Any]) -> int:
    """Bytes of one attribute value in DynamoDB JSON (``{"S": ...}``), by DynamoDB's rules."""
    ((kind, data),) = value.items()
    if kind == "S":
        return len(data.encode("utf-8", "surrogatepass"))
    if kind == "B":
        return len(data)
    if kind == "N":
        digits = len(str(data).lstrip("-").replace(".", "").lstrip("0")) or 1
        return (digits + 1) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(attribute_size(v) + 1 for v in data)
    if kind == "M":
        return 3 + sum(len(k.encode()) + attribute_size(v) + 1 for k, v in data.items())
    if kind in ("SS", "NS", "BS"):
        return sum(attribute_size({kind[0]: v}) for v in data)
    return 0


def item_size(item: dict[str, Any], names: Iterable[str] | None = None) -> int:
    """Bytes of ``item`` (its attribute names and values), or of those of ``names`` it has."""
    keep = item.keys() if names is None else [n for n in names if n in item]
    return sum(len(name.encode()) + attribute_size(item[name]) for name in keep)
