"""Field mapping with JMESPath (DESIGN.md, "Job and workflow contract").

`fieldMapping: {target: expression}` turns each record into a new object whose `target` is the
value of `expression` evaluated against the record. No mapping leaves records unchanged. The
records are the rewrite function's `data` (a list gives one record per item, anything else one
record) or, with no rewrite, the payload itself (same rule).

A number an expression computes (`to_number("1e999")`, `to_number('NaN')`, `sum` of huge
numbers) can be Infinity or NaN, which JSON does not have: a mapping that yields one fails with a
`MappingError` naming the field, instead of delivering `Infinity` (not JSON) or a silent null.
Only expressions that call a function are checked: the others select values of the record, whose
numbers are finite (the receiver refuses any other, and a rewrite's output is JSON).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from jmespath.visitor import TreeInterpreter

# `ParsedResult.search` builds a TreeInterpreter per call (a measurable part of a job's CPU);
# the interpreter keeps no state between calls, so one serves every expression.
_INTERPRETER = TreeInterpreter()


class MappingError(ValueError):
    """A field mapping that does not compile, or an expression that fails on a record."""


@dataclass(frozen=True)
class FieldMapping:
    fields: tuple[tuple[str, ParsedResult], ...]
    computed: frozenset[str] = frozenset()
    """Targets whose expression calls a function, so may compute a number that is not finite."""

    def __bool__(self) -> bool:
        return bool(self.fields)

    def apply(self, record: Any) -> Any:
        """One output object per record; the record itself when the mapping is empty."""
        if not self.fields:
            return record
        out: dict[str, Any] = {}
        for target, expression in self.fields:
            try:
                value = out[target] = _INTERPRETER.visit(expression.parsed, record)
            except JMESPathError as exc:
                raise MappingError(f"field mapping {target!r} failed: {exc}") from exc
            if target in self.computed and (bad := _non_finite(value)) is not None:
                raise MappingError(
                    f"field mapping {target!r} gave {_JSON_NAMES.get(bad, 'NaN')}, a number JSON "
                    "cannot carry (past a double's range, or not a number)"
                )
        return out


_JSON_NAMES = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _non_finite(value: Any) -> float | None:
    """The first Infinity or NaN in a JSON value, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, list):
        items: Any = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        return None
    for item in items:
        if (bad := _non_finite(item)) is not None:
            return bad
    return None


def _calls_a_function(node: Mapping[str, Any]) -> bool:
    if node.get("type") == "function_expression":
        return True
    return any(_calls_a_function(child) for child in node.get("children", ()))


@lru_cache(maxsize=1024)
def _compile(items: tuple[tuple[str, str], ...]) -> FieldMapping:
    compiled: list[tuple[str, ParsedResult]] = []
    computed: set[str] = set()
    for target, expression in items:
        try:
            compiled.append((target, jmespath.compile(expression)))
        except JMESPathError as exc:
            detail = " ".join(str(exc).split())
            raise MappingError(
                f"field mapping {target!r}: invalid JMESPath expression {expression!r}: {detail}"
            ) from exc
    for target, parsed in compiled:
        if _calls_a_function(parsed.parsed):
            computed.add(target)
    return FieldMapping(tuple(compiled), frozenset(computed))


def compile_mapping(mapping: Mapping[str, str]) -> FieldMapping:
    """Compiles (once, cached) a `{target: expression}` mapping; MappingError names the field."""
    return _compile(tuple(mapping.items()))


def split_records(data: Any) -> list[Any]:
    """A list is one record per item; anything else is a single record."""
    return list(data) if isinstance(data, list) else [data]


def map_records(mapping: FieldMapping, data: Any) -> list[Any]:
    """The records of `data` (see `split_records`), each mapped."""
    return [mapping.apply(record) for record in split_records(data)]


def apply_mapping(mapping: FieldMapping, data: Any) -> Any:
    """Maps `data` keeping its shape: a list maps item by item, anything else as one record."""
    if isinstance(data, list):
        return [mapping.apply(record) for record in data]
    return mapping.apply(data)
