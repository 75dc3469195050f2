"""Which children a pass must write: the digest of the desired state, and the children as last
seen (plan.with_digest, plan.seen_child) — what lets a restarted operator converge without
writing an unchanged object."""

from __future__ import annotations

import json
from typing import Any

import pytest

from retrieve_operator.plan import (
    ANNOTATION_DESIRED_DIGEST,
    child_key,
    covers,
    index_child,
    seen_child,
    with_digest,
)
from retrieve_operator.reconcile import World

pytestmark = pytest.mark.unit


def config_map(**data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "yourapp-config", "namespace": "shop", "labels": {"a": "b"}},
        "data": data,
    }


def as_served(desired: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What the API server answers for an applied object: our fields and its own."""
    meta = {
        **desired["metadata"],
        "uid": "u-1",
        "resourceVersion": "42",
        "managedFields": [{"manager": "retrieve-operator", "fieldsV1": {"f:data": {}}}],
    }
    return {**desired, **extra, "metadata": meta}


def test_the_same_desired_state_gets_the_same_digest_and_a_change_a_new_one() -> None:
    first = with_digest(config_map(key="1"))
    again = with_digest(config_map(key="1"))
    changed = with_digest(config_map(key="2"))
    digest = first["metadata"]["annotations"][ANNOTATION_DESIRED_DIGEST]
    assert again["metadata"]["annotations"][ANNOTATION_DESIRED_DIGEST] == digest
    assert changed["metadata"]["annotations"][ANNOTATION_DESIRED_DIGEST] != digest
    assert first["data"] == {"key": "1"}


def test_an_object_applied_with_the_desired_state_covers_it() -> None:
    desired = with_digest(config_map(key="1"))
    assert covers(as_served(desired), desired)


def test_a_field_we_stopped_setting_makes_the_object_out_of_date() -> None:
    # Applied with two keys; now only one is wanted: the object still has every wanted field,
    # but its digest is the old one, so the pass applies (and the API server drops `old`).
    applied = as_served(with_digest(config_map(key="1", old="x")))
    desired = with_digest(config_map(key="1"))
    assert not covers(applied, desired)


def test_an_object_from_before_the_digest_is_applied_once() -> None:
    served = as_served(config_map(key="1"))
    assert not covers(served, with_digest(config_map(key="1")))


def test_drift_by_someone_else_makes_the_object_out_of_date() -> None:
    desired = with_digest(config_map(key="1"))
    drifted = as_served(desired)
    drifted["data"] = {"key": "edited"}
    assert not covers(drifted, desired)


def test_a_child_is_kept_as_seen_without_its_managed_fields() -> None:
    served = as_served(with_digest(config_map(key="1")), status={"x": 1})
    key, text = seen_child(served)
    assert key == ("v1", "ConfigMap", "shop", "yourapp-config")
    kept = json.loads(text)
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["resourceVersion"] == "42"
    assert kept["status"] == {"x": 1}
    assert key == child_key(served)
    assert covers(kept, with_digest(config_map(key="1")))


def test_the_children_index_gives_each_child_as_last_seen() -> None:
    served = as_served(with_digest(config_map(key="1")))
    indexed = index_child(served)
    key = ("v1", "ConfigMap", "shop", "yourapp-config")
    assert list(indexed) == [key]
    world = World(applications={}, integrations_by_app={}, integrations_by_id={},
                  children={k: [v] for k, v in indexed.items()})  # fmt: skip
    seen = world.child(key)
    assert seen is not None
    assert "managedFields" not in seen["metadata"]
    assert covers(seen, with_digest(config_map(key="1")))
    assert world.child(("v1", "ConfigMap", "shop", "other-config")) is None


def http_route(*sections: str) -> dict[str, Any]:
    parents = [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "sectionName": s}
        for s in sections
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "yourapp-webhook", "namespace": "shop"},
        "spec": {"parentRefs": parents, "hostnames": ["webhook-yourapp.example"]},
    }


def test_an_http_route_on_two_listeners_of_one_gateway_covers_its_desired_state() -> None:
    # parentRefs name the Gateway once per listener: not told apart by name.
    desired = with_digest(http_route("web", "websecure"))
    assert covers(as_served(desired), desired)


def test_an_http_route_that_lost_one_of_two_listeners_is_out_of_date() -> None:
    desired = with_digest(http_route("web", "websecure"))
    drifted = as_served(desired, spec={**desired["spec"]})
    drifted["spec"]["parentRefs"] = desired["spec"]["parentRefs"][:1]
    assert not covers(drifted, desired)
    swapped = as_served(desired, spec={**desired["spec"]})
    swapped["spec"]["parentRefs"] = [
        {**p, "sectionName": "web"} for p in desired["spec"]["parentRefs"]
    ]
    assert not covers(swapped, desired)


def test_items_with_unique_names_match_by_name_whatever_else_the_list_holds() -> None:
    desired = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    served = {
        "env": [{"name": "B", "value": "2"}, {"name": "INJECTED"}, {"name": "A", "value": "1"}, {}]
    }
    assert covers(served, desired)
    assert not covers({"env": [{"name": "A", "value": "1"}]}, desired)
