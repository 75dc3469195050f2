"""Field mapping with JMESPath (DESIGN.md, "Job and workflow contract").

`fieldMapping: {target: expression}` turns each record into a new object whose `target` is the
value of `expression` evaluated against the record. No mapping leaves records unchanged. The
records are the rewrite function's `data` (a list gives one record per item, anything else one
record) or, with no rewrite, the payload itself (same rule).
"""

from __future__ import annotations

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

    def __bool__(self) -> bool:
        return bool(self.fields)

    def apply(self, record: Any) -> Any:
        """One output object per record; the record itself when the mapping is empty."""
        if not self.fields:
            return record
        out: dict[str, Any] = {}
        for target, expression in self.fields:
            try:
                out[target] = _INTERPRETER.visit(expression.parsed, record)
            except JMESPathError as exc:
                raise MappingError(f"field mapping {target!r} failed: {exc}") from exc
        return out


@lru_cache(maxsize=1024)
def _compile(items: tuple[tuple[str, str], ...]) -> FieldMapping:
    compiled: list[tuple[str, ParsedResult]] = []
    for target, expression in items:
        try:
            compiled.append((target, jmespath.compile(expression)))
        except JMESPathError as exc:
            detail = " ".join(str(exc).split())
            raise MappingError(
                f"field mapping {target!r}: invalid JMESPath expression {expression!r}: {detail}"
            ) from exc
    return FieldMapping(tuple(compiled))


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
