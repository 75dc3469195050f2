"""Status schemas of the CRDs, written here: the operator writes status, no spec model has it.

Conditions follow metav1.Condition (keyed by type); unknown status fields are kept, so fields a
newer operator writes survive an older CRD.
"""

from __future__ import annotations

from collections.abc import Mapping

from .crd_structural import Schema


def _condition_list() -> Schema:
    """metav1.Condition, keyed by type (Kubernetes API conventions)."""
    return {
        "description": "Latest observations of the object's state, keyed by type "
        "(Ready is the one printer columns read).",
        "type": "array",
        "items": {
            "type": "object",
            "required": ["type", "status"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"description": "CamelCase reason.", "type": "string"},
                "message": {"description": "Human readable details.", "type": "string"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            },
        },
        "x-kubernetes-list-map-keys": ["type"],
        "x-kubernetes-list-type": "map",
    }


def _status(properties: Mapping[str, Schema], description: str) -> Schema:
    return {
        "description": description,
        "type": "object",
        "properties": {
            "observedGeneration": {
                "description": "The metadata.generation this status describes.",
                "type": "integer",
                "format": "int64",
            },
            "conditions": _condition_list(),
            **properties,
        },
        # Forward compatibility: fields a newer operator writes survive an older CRD.
        "x-kubernetes-preserve-unknown-fields": True,
    }


def _counter(description: str) -> Schema:
    return {"description": description, "type": "integer", "format": "int64", "minimum": 0}


def application_status_schema() -> Schema:
    return _status(
        {
            "webhookHost": {
                "description": "webhook-<name>.<domain>, when the webhook is enabled.",
                "type": "string",
            },
            "integrations": _counter("Number of Integrations of this application."),
        },
        "Observed state, rebuilt by the operator on each reconcile.",
    )


def integration_status_schema() -> Schema:
    return _status(
        {
            "integrationId": {"description": "The effective integration id.", "type": "string"},
            "webhookURL": {"description": "Where to POST JSON (or form) events.", "type": "string"},
            "xmlWebhookURL": {"description": "Where to POST XML events.", "type": "string"},
            "lastReceivedAt": {
                "description": "When the last request was accepted (RFC 3339).",
                "type": "string",
                "format": "date-time",
                "nullable": True,
            },
            "receivedLastHour": _counter("Requests accepted in the last hour."),
            "rejectedLastHour": _counter("Requests refused in the last hour."),
            "failedLastHour": _counter("Jobs that failed in the last hour."),
            "queueDepth": _counter(
                "Jobs waiting in the application's queue (one queue per application: every "
                "Integration of it shows the same depth)."
            ),
            "deadLetters": _counter("Dead-lettered jobs kept for replay."),
            "replayHandled": {
                "description": "The last value of the retrievetl.com/replay-dead-letters "
                "annotation that was acted on.",
                "type": "string",
            },
            # spec.schedule: the last `retrieve poll` run (read from Redis periodically).
            "lastPollAt": {
                "description": "When the last scheduled poll started (RFC 3339).",
                "type": "string",
                "format": "date-time",
                "nullable": True,
            },
            "polledItems": _counter("Items the last poll saw at the source."),
            "polledNew": _counter("Items the last poll enqueued (missed by the webhook)."),
            "lastPollError": {
                "description": "Why the last poll failed; empty when it succeeded.",
                "type": "string",
            },
        },
        "Observed state and counters (read from Redis periodically).",
    )
