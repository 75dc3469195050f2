"""Names that are part of the public contract (API group, labels, reasons) live in one place."""

from __future__ import annotations

from typing import Final

API_GROUP: Final = "retrievetl.com"
API_VERSION: Final = "v1alpha1"
API_GROUP_VERSION: Final = f"{API_GROUP}/{API_VERSION}"

KIND_APPLICATION: Final = "RetrieveApplication"
KIND_INTEGRATION: Final = "Integration"
PLURAL_APPLICATION: Final = "retrieveapplications"
PLURAL_INTEGRATION: Final = "integrations"
SHORT_APPLICATION: Final = "rapp"
SHORT_INTEGRATION: Final = "rint"

# Labels put on every child object (Kubernetes recommended labels).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
PRODUCT_NAME: Final = "retrieve"
MANAGED_BY: Final = "retrieve-operator"

ANNOTATION_REPLAY: Final = f"{API_GROUP}/replay-dead-letters"

# Condition types and reasons (CamelCase, per the Kubernetes API conventions).
CONDITION_READY: Final = "Ready"
REASON_RECONCILED: Final = "Reconciled"
REASON_APPLICATION_NOT_FOUND: Final = "ApplicationNotFound"
REASON_DUPLICATE_INTEGRATION_ID: Final = "DuplicateIntegrationId"
REASON_WEBHOOK_DISABLED: Final = "WebhookDisabled"
REASON_SECRET_NOT_FOUND: Final = "SecretNotFound"
REASON_REWRITE_TEST_FAILED: Final = "RewriteTestFailed"
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_INTEGRATION_DISABLED: Final = "IntegrationDisabled"
# spec.webhook.gateway: the HTTPRoute and what the Gateway said of it (status.parents).
REASON_GATEWAY_API_DISABLED: Final = "GatewayAPIDisabled"
REASON_GATEWAY_API_NOT_INSTALLED: Final = "GatewayAPINotInstalled"
REASON_ROUTE_PENDING: Final = "RoutePending"
REASON_ROUTE_NOT_ACCEPTED: Final = "RouteNotAccepted"
REASON_ROUTE_REFS_NOT_RESOLVED: Final = "RouteRefsNotResolved"
# spec.schedule: True while the last `retrieve poll` run failed.
CONDITION_POLL_FAILING: Final = "PollFailing"
REASON_POLL_FAILED: Final = "PollFailed"
REASON_POLL_SUCCEEDED: Final = "PollSucceeded"

# The receiver's answers (DESIGN.md, "Receiver HTTP contract"). Acceptance tests match them.
MSG_NOT_AUTHORIZED: Final = "This domain/IP ({sender}) isn't authorized on Retrieve"
MSG_NOT_FOUND: Final = "Integration {id} not found"
MSG_DISABLED: Final = "Integration {id} is disabled"
MSG_INVALID_JSON: Final = "Invalid JSON payload: {detail}"
MSG_INVALID_XML: Final = "Invalid XML payload: {detail}"
MSG_INVALID_SIGNATURE: Final = "Invalid webhook signature"
MSG_TOO_LARGE: Final = "Payload too large (limit {limit} bytes)"
MSG_QUEUE_UNAVAILABLE: Final = "Queue unavailable, retry later"
MSG_METHOD_NOT_ALLOWED: Final = "Method {method} not allowed"
MSG_RATE_LIMITED: Final = "Rate limit exceeded, retry later"
# Not in DESIGN.md's table (SECURITY.md, "Content-Encoding"): 415 for a coding not decoded.
MSG_UNSUPPORTED_ENCODING: Final = (
    "Unsupported Content-Encoding {coding} (accepted: gzip, deflate, identity)"
)

DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
DEFAULT_LOG_PAYLOAD_BYTES: Final = 64 * 1024
DEFAULT_LOG_MAX_RECORDS: Final = 10_000
DEFAULT_LOG_MAX_AGE_SECONDS: Final = 7 * 24 * 3600

ENV_ALLOWED_LIST: Final = "RETRIEVE_ALLOWED_LIST"
ENV_DNS_SERVERS: Final = "RETRIEVE_DNS_SERVERS"
ENV_REDIS_URL: Final = "RETRIEVE_REDIS_URL"
ENV_ADMIN_HOSTS: Final = "RETRIEVE_ADMIN_HOSTS"
ENV_HEADER_TIMEOUT: Final = "RETRIEVE_HEADER_TIMEOUT_SECONDS"
ENV_BODY_TIMEOUT: Final = "RETRIEVE_BODY_TIMEOUT_SECONDS"
ENV_IDLE_TIMEOUT: Final = "RETRIEVE_IDLE_TIMEOUT_SECONDS"
ENV_MAX_CONNECTIONS: Final = "RETRIEVE_MAX_CONNECTIONS"
ENV_LEAN_HTTP: Final = "RETRIEVE_LEAN_HTTP"
ENV_ADMIN_MAX_CONNECTIONS: Final = "RETRIEVE_ADMIN_MAX_CONNECTIONS"
ENV_REJECTED_PAYLOAD_BYTES: Final = "RETRIEVE_REJECTED_PAYLOAD_BYTES"
ENV_REDIS_TIMEOUT: Final = "RETRIEVE_REDIS_TIMEOUT_SECONDS"
ENV_LOG_WRITE_TIMEOUT: Final = "RETRIEVE_LOG_WRITE_TIMEOUT_SECONDS"
