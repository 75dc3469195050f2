"""Pydantic JSON schemas turned into *structural* OpenAPI v3 schemas, as CRDs need them.

``$ref`` is inlined, ``anyOf [X, null]`` collapsed to ``X`` (a null is pruned by the API server,
which is what "unset" means here), ``dict[str, Any]``/``Any`` kept open with
``x-kubernetes-preserve-unknown-fields``. Descriptions are the models' own:
``Field(description=...)``, or the docstring of the field's model class, folded into one line.
Keys come in a stable order, as generated files are diffed in review.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel

Schema = dict[str, Any]

# Keywords copied as they are; anything else in a pydantic schema is an error, so a new model
# feature cannot silently produce a CRD the API server reads differently.
_KEPT: Final = frozenset(
    {
        "type",
        "description",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "enum",
        "default",
        "format",
        "required",
    }
)
_DROPPED: Final = frozenset({"title", "$defs"})


class SchemaConversionError(ValueError):
    """The pydantic schema uses a construct with no structural OpenAPI equivalent."""


# ---------------------------------------------------------------- JSON schema -> structural


def structural_schema(model: type[BaseModel]) -> Schema:
    """The model's validation schema as a structural OpenAPI v3 schema (no $ref, no anyOf)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Schema] = raw.get("$defs", {})
    return _convert(raw, defs, path=model.__name__)


def _resolve(ref: str, defs: Mapping[str, Schema], path: str) -> Schema:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise SchemaConversionError(f"{path}: unresolvable $ref {ref!r}")
    return defs[ref[len(prefix) :]]


def _convert(node: Schema, defs: Mapping[str, Schema], path: str) -> Schema:
    node = dict(node)
    if "$ref" in node:
        target = _resolve(node.pop("$ref"), defs, path)
        # Keywords beside a $ref (default, description) win over the referenced schema's.
        return _convert({**target, **node}, defs, path)
    if "anyOf" in node:
        variants = node.pop("anyOf")
        non_null = [v for v in variants if v != {"type": "null"}]
        if len(non_null) != 1:
            raise SchemaConversionError(f"{path}: anyOf {variants!r} is not `X | None`")
        if node.get("default", 0) is None:
            del node["default"]  # "unset" is expressed by leaving the field out
        return _convert({**non_null[0], **node}, defs, path)
    if node.get("default", 0) is None:
        del node["default"]

    out: Schema = {}
    for key, value in node.items():
        if key == "description":  # a class docstring wraps lines: one line for kubectl explain
            out[key] = " ".join(value.split())
        elif key in _KEPT:
            out[key] = copy.deepcopy(value)
        elif key == "exclusiveMinimum":  # JSON Schema 2020 number -> OpenAPI 3.0 boolean form
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key in ("properties", "items", "additionalProperties") or key in _DROPPED:
            continue
        else:
            raise SchemaConversionError(f"{path}: unsupported JSON schema keyword {key!r}")

    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {
            name: _convert(sub, defs, f"{path}.{name}") for name, sub in node["properties"].items()
        }
        # additionalProperties: false is the API server's pruning plus strict field validation.
    elif node.get("type") == "object":
        extra = node.get("additionalProperties", True)
        if extra is True:
            out["x-kubernetes-preserve-unknown-fields"] = True
        elif isinstance(extra, dict):
            out["additionalProperties"] = _convert(extra, defs, f"{path}.*")
    if node.get("type") == "array":
        out["items"] = _convert(node.get("items", {}), defs, f"{path}[]")
    if "type" not in out:  # Any: an arbitrary JSON value
        if set(out) - {"description", "default"}:
            raise SchemaConversionError(f"{path}: untyped schema with constraints {out!r}")
        out["x-kubernetes-preserve-unknown-fields"] = True
    return ordered(out)


_ORDER: Final[tuple[str, ...]] = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "required",
)


def ordered(schema: Schema) -> Schema:
    """Keys in a stable, readable order (generated files are diffed in review)."""
    head = {k: schema[k] for k in _ORDER if k in schema}
    tail = {k: schema[k] for k in sorted(schema) if k not in head}
    return {**head, **tail}


def reorder_all(schema: Schema) -> None:
    """Re-apply the key order after rules were added (keeps generated files stable)."""
    in_order = ordered(schema)
    schema.clear()
    schema.update(in_order)
    for sub in schema.get("properties", {}).values():
        reorder_all(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            reorder_all(schema[key])
