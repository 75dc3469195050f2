"""`<integration>-poll` CronJobs for Integrations with a `spec.schedule` (pure builders).

Each runs `retrieve poll <integration id> --from-cluster` on the schedule, in the worker's image,
ServiceAccount, security context and environment, so a poll reads the same `<app>-config` and
Redis as the workers and its items go through the same enqueue path.

The CronJobs are children of the RetrieveApplication (owner reference and labels like every
other child), not of the Integration: the application's reconcile pass builds every child from
one validated config, and prunes poll CronJobs it no longer wants by label (schedule removed,
Integration deleted or no longer served). Deleting the application removes them with the rest.
"""

from __future__ import annotations

import hashlib
from typing import Final

from retrieve_core.config import IntegrationConfig
from retrieve_core.constants import API_GROUP

from .builders import DeployedApplication, Manifest, labels, owner_reference
from .pod_spec import runtime_pod_spec

CRONJOB_API_VERSION: Final = "batch/v1"
CRONJOB_KIND: Final = "CronJob"
POLL_COMPONENT: Final = "poll"
LABEL_INTEGRATION_ID: Final = f"{API_GROUP}/integration-id"
# A CronJob's Jobs are named `<cronjob>-<minutes since epoch>`: the API server refuses CronJob
# names over 52 characters so that those fit in 63.
MAX_CRONJOB_NAME: Final = 52
SUCCESSFUL_JOBS_HISTORY: Final = 3
FAILED_JOBS_HISTORY: Final = 3
STARTING_DEADLINE_SECONDS: Final = 300
ACTIVE_DEADLINE_SECONDS: Final = 3600


def poll_cronjob_name(integration: str) -> str:
    name = f"{integration}-poll"
    if len(name) <= MAX_CRONJOB_NAME:
        return name
    digest = hashlib.sha256(integration.encode()).hexdigest()[:8]
    return f"{integration[: MAX_CRONJOB_NAME - 14].rstrip('-')}-{digest}-poll"


def poll_selector(app: str) -> dict[str, str]:
    """Labels every poll CronJob of `app` carries (for listing them)."""
    return labels(app, POLL_COMPONENT)


def build_poll_cronjob(app: DeployedApplication, integration: IntegrationConfig) -> Manifest:
    schedule = integration.spec.schedule
    if schedule is None:
        raise ValueError(f"build_poll_cronjob: integration {integration.name} has no schedule")
    cronjob_labels = {**poll_selector(app.name), LABEL_INTEGRATION_ID: integration.id}
    pod = runtime_pod_spec(
        app,
        app.config.spec.worker,
        subcommand="poll",
        args=[integration.id, "--from-cluster"],
        service_account="worker",
        # A failed run is not retried at once: the next scheduled run asks for its window again.
        restart_policy="Never",
    )
    return {
        "apiVersion": CRONJOB_API_VERSION,
        "kind": CRONJOB_KIND,
        "metadata": {
            "name": poll_cronjob_name(integration.name),
            "namespace": app.namespace,
            "labels": cronjob_labels,
            "ownerReferences": [owner_reference(app)],
        },
        "spec": {
            "schedule": schedule.cron,
            "concurrencyPolicy": "Forbid",
            "suspend": not integration.spec.enabled,
            "startingDeadlineSeconds": STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": SUCCESSFUL_JOBS_HISTORY,
            "failedJobsHistoryLimit": FAILED_JOBS_HISTORY,
            "jobTemplate": {
                "metadata": {"labels": cronjob_labels},
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
                    "template": {"metadata": {"labels": cronjob_labels}, "spec": pod},
                },
            },
        },
    }


def build_poll_cronjobs(app: DeployedApplication) -> list[Manifest]:
    """One CronJob per served Integration with a schedule."""
    return [
        build_poll_cronjob(app, integration)
        for integration in app.config.integrations
        if integration.spec.schedule is not None
    ]


def stale_poll_cronjobs(app: DeployedApplication, existing: list[str]) -> list[str]:
    """Names of `existing` poll CronJobs (listed by `poll_selector`) the app no longer wants."""
    wanted = {m["metadata"]["name"] for m in build_poll_cronjobs(app)}
    return sorted(name for name in existing if name not in wanted)
