"""JMESPath field mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xmltodict
import yaml

from retrieve_core.mapping import (
    MappingError,
    apply_mapping,
    compile_mapping,
    map_records,
    split_records,
)
from retrieve_core.models import IntegrationSpec

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_nested_fields_and_to_number_are_mapped() -> None:
    mapping = compile_mapping(
        {"id": "order.id", "email": "order.customer.email", "total": "to_number(order.total)"}
    )
    record = {"order": {"id": 7, "customer": {"email": "a@example.com"}, "total": "12.50"}}
    assert mapping.apply(record) == {"id": 7, "email": "a@example.com", "total": 12.5}


def test_a_missing_field_maps_to_null() -> None:
    assert compile_mapping({"x": "a.b.c"}).apply({"a": {}}) == {"x": None}


def test_list_projections_collect_values() -> None:
    mapping = compile_mapping({"skus": "items[].sku", "count": "length(items)"})
    record = {"items": [{"sku": "A"}, {"sku": "B"}]}
    assert mapping.apply(record) == {"skus": ["A", "B"], "count": 2}


def test_no_mapping_leaves_records_unchanged() -> None:
    mapping = compile_mapping({})
    record = {"anything": [1, 2]}
    assert mapping.apply(record) is record
    assert not mapping


def test_a_bad_expression_is_an_error_that_names_the_field() -> None:
    with pytest.raises(MappingError, match=r"field mapping 'total': invalid JMESPath expression"):
        compile_mapping({"id": "id", "total": "to_number(total_price"})


def test_an_expression_failing_on_a_record_names_the_field() -> None:
    mapping = compile_mapping({"n": "abs(name)"})
    with pytest.raises(MappingError, match="field mapping 'n' failed"):
        mapping.apply({"name": "text"})


def test_compiled_mappings_are_cached() -> None:
    assert compile_mapping({"a": "b"}) is compile_mapping({"a": "b"})


def test_records_are_list_items_or_the_single_object() -> None:
    assert split_records([{"a": 1}, {"a": 2}]) == [{"a": 1}, {"a": 2}]
    assert split_records({"a": 1}) == [{"a": 1}]
    mapping = compile_mapping({"b": "a"})
    assert map_records(mapping, [{"a": 1}, {"a": 2}]) == [{"b": 1}, {"b": 2}]
    assert map_records(mapping, {"a": 3}) == [{"b": 3}]
    assert apply_mapping(mapping, {"a": 3}) == {"b": 3}


def test_the_legacy_xml_example_maps_one_item_and_many_items() -> None:
    manifest = yaml.safe_load((EXAMPLES / "30-legacy-xml-orders.yaml").read_text())
    mapping = compile_mapping(IntegrationSpec.model_validate(manifest["spec"]).field_mapping)
    one = xmltodict.parse(
        "<webhook><event>order.created</event><order><id>12</id><order_number>A-12</order_number>"
        "<email>x@example.com</email><total_price>3.5</total_price>"
        "<items><item><sku>S1</sku></item></items></order></webhook>"
    )
    many = xmltodict.parse(
        "<webhook><event>e</event><order><id>13</id><total_price>1</total_price>"
        "<items><item><sku>S1</sku></item><item><sku>S2</sku></item></items></order></webhook>"
    )
    assert mapping.apply(one) == {
        "event": "order.created",
        "order_id": 12,
        "order_number": "A-12",
        "customer_email": "x@example.com",
        "total": 3.5,
        "skus": ["S1"],
    }
    assert mapping.apply(many)["skus"] == ["S1", "S2"]


@pytest.mark.parametrize(
    ("expression", "record", "shown"),
    [
        ("to_number(x)", {"x": "1.0e400"}, "Infinity"),
        ("to_number(x)", {"x": "-Infinity"}, "-Infinity"),
        ("to_number(x)", {"x": "NaN"}, "NaN"),
        ("sum(xs)", {"xs": [1.5e308, 1.5e308]}, "Infinity"),
        ("avg(xs)", {"xs": [1.5e308, 1.5e308]}, "Infinity"),
        ("{total: to_number(x)}", {"x": ".5e999"}, "Infinity"),
        ("[to_number(x)]", {"x": "-.5e999"}, "-Infinity"),
    ],
)
def test_a_mapping_that_computes_a_non_finite_number_fails_naming_the_field(
    expression: str, record: dict[str, object], shown: str
) -> None:
    """Before: the mapped record held `inf` and was delivered as `Infinity`, which is not JSON."""
    mapping = compile_mapping({"id": "id", "total": expression})
    with pytest.raises(MappingError) as failed:
        mapping.apply({"id": 7, **record})
    assert str(failed.value) == (
        f"field mapping 'total' gave {shown}, a number JSON cannot carry "
        "(past a double's range, or not a number)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("-0.0", -0.0), ("1.0e308", 1e308), ("4.9e-324", 5e-324), ("1.0e-400", 0.0), ("12", 12)],
)
def test_finite_edge_numbers_map_and_encode_as_json(text: str, expected: float) -> None:
    mapped = compile_mapping({"n": "to_number(s)"}).apply({"s": text})
    assert mapped == {"n": expected}
    assert json.loads(json.dumps(mapped, allow_nan=False)) == mapped


def test_selected_values_are_not_walked_only_computed_ones() -> None:
    """Expressions without a function select values of the record, which are finite."""
    mapping = compile_mapping({"all": "@", "n": "to_number(s)"})
    assert mapping.computed == frozenset({"n"})
