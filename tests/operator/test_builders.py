"""The desired children of an application, built with no cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from retrieve_core.config import CONFIG_MAP_KEY, ApplicationConfig, IntegrationConfig
from retrieve_core.models import IntegrationSpec, RetrieveApplicationSpec
from retrieve_operator import builders
from retrieve_operator.builders import DeployedApplication, RuntimeDefaults

pytestmark = pytest.mark.unit

UID = "0b0e5b8e-1111-4222-8333-944445555666"
RUNTIME = RuntimeDefaults(image="registry.example/retrieve-runtime:1.2.3")


def _app(
    spec: dict[str, Any] | None = None,
    *,
    runtime: RuntimeDefaults = RUNTIME,
    integrations: tuple[IntegrationConfig, ...] = (),
) -> DeployedApplication:
    base: dict[str, Any] = {
        "webhook": {"enabled": True, "domain": "retrievetl.com"},
        "allowedList": ["shopify.com", "203.0.113.0"],
        "redis": {"url": "redis://redis:6379/0"},
    }
    base.update(spec or {})
    config = ApplicationConfig(
        namespace="shop",
        name="yourapp",
        spec=RetrieveApplicationSpec.model_validate(base),
        integrations=integrations,
    )
    return DeployedApplication(config=config, uid=UID, runtime=runtime)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"]}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize(
    ("builder", "kind", "name", "component"),
    [
        (builders.build_config_map, "ConfigMap", "yourapp-config", "config"),
        (builders.build_receiver_deployment, "Deployment", "yourapp-receiver", "receiver"),
        (builders.build_receiver_service, "Service", "yourapp-receiver", "receiver"),
        (builders.build_worker_deployment, "Deployment", "yourapp-worker", "worker"),
        (builders.build_ingress, "Ingress", "yourapp-webhook", "ingress"),
    ],
)
def test_every_child_has_its_name_labels_and_a_controller_owner_reference(
    builder: Any, kind: str, name: str, component: str
) -> None:
    manifest = builder(_app())
    assert manifest["kind"] == kind
    meta = manifest["metadata"]
    assert meta["name"] == name
    assert meta["namespace"] == "shop"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "retrieve",
        "app.kubernetes.io/instance": "yourapp",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "retrieve-operator",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "retrievetl.com/v1alpha1",
            "kind": "RetrieveApplication",
            "name": "yourapp",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    # kopf's own annotations never leak onto children.
    assert not any("kopf" in key for key in meta.get("annotations", {}))


def test_config_map_holds_the_application_config_and_no_secret_values() -> None:
    integration = IntegrationConfig(
        id="507f1f77bcf86cd799439011",
        name="shopify-orders",
        spec=IntegrationSpec.model_validate(
            {
                "application": "yourapp",
                "verify": {"preset": "shopify", "secretRefs": [{"name": "shop-hmac", "key": "k"}]},
            }
        ),
    )
    app = _app(integrations=(integration,))
    manifest = builders.build_config_map(app)
    text = manifest["data"][CONFIG_MAP_KEY]
    assert ApplicationConfig.from_json(text) == app.config
    assert json.loads(text)["integrations"][0]["spec"]["verify"]["secretRefs"] == [
        {"name": "shop-hmac", "key": "k"}
    ]
    assert manifest["metadata"]["annotations"] == {
        "retrievetl.com/config-hash": builders.config_hash(app.config)
    }


def test_config_hash_changes_with_the_config_only() -> None:
    assert builders.config_hash(_app().config) == builders.config_hash(_app().config)
    other = _app({"allowedList": ["198.51.100.0/24"]})
    assert builders.config_hash(_app().config) != builders.config_hash(other.config)


def test_receiver_runs_retrieve_receiver_with_its_environment_and_ports() -> None:
    deployment = builders.build_receiver_deployment(_app({"receiver": {"replicas": 3}}))
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "retrieve",
        "app.kubernetes.io/instance": "yourapp",
        "app.kubernetes.io/component": "receiver",
    }
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "receiver"
    container = _container(deployment)
    assert container["image"] == "registry.example/retrieve-runtime:1.2.3"
    assert container["command"] == ["retrieve", "receiver"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "admin", "containerPort": 8081, "protocol": "TCP"},
    ]
    env = _env(container)
    assert env["RETRIEVE_NAMESPACE"] == {"name": "RETRIEVE_NAMESPACE", "value": "shop"}
    assert env["RETRIEVE_APPLICATION"]["value"] == "yourapp"
    assert env["RETRIEVE_CONFIG_MAP"]["value"] == "yourapp-config"
    assert env["RETRIEVE_REDIS_URL"] == {
        "name": "RETRIEVE_REDIS_URL",
        "value": "redis://redis:6379/0",
    }
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert template["spec"]["serviceAccountName"] == "retrieve-receiver"


def test_config_changes_do_not_change_the_pod_templates() -> None:
    before, after = (
        _app(),
        _app({"allowedList": ["198.51.100.0/24"], "trustedProxies": ["10.0.0.0/8"]}),
    )
    for build in (builders.build_receiver_deployment, builders.build_worker_deployment):
        assert build(before)["spec"]["template"] == build(after)["spec"]["template"]


def test_image_change_changes_the_pod_template() -> None:
    before = builders.build_receiver_deployment(_app())
    after = builders.build_receiver_deployment(_app({"receiver": {"image": "mine/receiver:2"}}))
    assert _container(after)["image"] == "mine/receiver:2"
    assert before["spec"]["template"] != after["spec"]["template"]


def test_probes_use_the_admin_port() -> None:
    for build in (builders.build_receiver_deployment, builders.build_worker_deployment):
        container = _container(build(_app()))
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert container["startupProbe"]["httpGet"]["port"] == "admin"


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    for build in (builders.build_receiver_deployment, builders.build_worker_deployment):
        pod = build(_app())["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = pod["containers"][0]["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["runAsNonRoot"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        # A read-only root file system still gets a writable /tmp.
        assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_redis_url_from_a_secret_becomes_a_secret_key_ref() -> None:
    app = _app({"redis": {"secretKeyRef": {"name": "redis-auth", "key": "url"}}})
    env = _env(_container(builders.build_worker_deployment(app)))
    assert env["RETRIEVE_REDIS_URL"] == {
        "name": "RETRIEVE_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "url"}},
    }
    assert "value" not in env["RETRIEVE_REDIS_URL"]


def test_the_operators_default_redis_is_used_when_the_application_sets_none() -> None:
    runtime = RuntimeDefaults(image="x:1", redis_url="redis://retrieve-redis.retrieve:6379/0")
    app = _app({"redis": {}}, runtime=runtime)
    env = _env(_container(builders.build_receiver_deployment(app)))
    assert env["RETRIEVE_REDIS_URL"]["value"] == "redis://retrieve-redis.retrieve:6379/0"


@pytest.mark.parametrize(
    "resources",
    [
        {"limits": {"cpu": "lots"}},
        {"requests": {"memory": "1GB"}},
        {"limits": "2"},
        {"limts": {"cpu": "1"}},
    ],
)
def test_resources_the_api_server_would_refuse_are_refused(resources: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"spec\.worker\.resources"):
        _app({"worker": {"resources": resources}})


def test_valid_resource_quantities_are_accepted() -> None:
    resources = {"limits": {"cpu": "1.5", "memory": "512Mi"}, "requests": {"cpu": 0.25}}
    app = _app({"receiver": {"resources": resources}})
    assert _container(builders.build_receiver_deployment(app))["resources"] == resources


def test_an_application_without_any_redis_is_refused() -> None:
    with pytest.raises(ValueError, match=r"spec\.redis"):
        _app({"redis": {}})


def test_worker_runs_retrieve_worker_with_its_concurrency_and_scheduling() -> None:
    app = _app(
        {
            "worker": {
                "replicas": 4,
                "concurrency": 32,
                "image": "mine/worker:1",
                "resources": {"requests": {"cpu": "100m"}},
                "nodeSelector": {"pool": "workers"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            }
        }
    )
    deployment = builders.build_worker_deployment(app)
    assert deployment["spec"]["replicas"] == 4
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["retrieve", "worker"]
    assert "--concurrency=32" in container["args"]
    assert container["image"] == "mine/worker:1"
    assert container["resources"] == {"requests": {"cpu": "100m"}}
    assert container["ports"] == [{"name": "admin", "containerPort": 8081, "protocol": "TCP"}]
    assert pod["nodeSelector"] == {"pool": "workers"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["serviceAccountName"] == "retrieve-worker"
    assert "affinity" not in pod


def test_image_pull_policy_is_set_only_when_configured() -> None:
    assert "imagePullPolicy" not in _container(builders.build_worker_deployment(_app()))
    runtime = RuntimeDefaults(image="x:1", image_pull_policy="Always")
    container = _container(builders.build_worker_deployment(_app(runtime=runtime)))
    assert container["imagePullPolicy"] == "Always"


def test_receiver_service_selects_receiver_pods_on_ports_http_and_admin() -> None:
    service = builders.build_receiver_service(_app())
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "retrieve",
        "app.kubernetes.io/instance": "yourapp",
        "app.kubernetes.io/component": "receiver",
    }
    # `admin` is the port the chart's ServiceMonitor scrapes /metrics on.
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "admin", "port": 8081, "targetPort": "admin", "protocol": "TCP"},
    ]


def test_ingress_routes_the_webhook_host_integration_path_to_the_receiver() -> None:
    ingress = builders.build_ingress(_app())
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "webhook-yourapp.retrievetl.com"
    assert rule["http"]["paths"] == [
        {
            "path": "/integration",
            "pathType": "Prefix",
            "backend": {"service": {"name": "yourapp-receiver", "port": {"name": "http"}}},
        }
    ]
    assert "tls" not in ingress["spec"]
    assert "ingressClassName" not in ingress["spec"]
    assert "annotations" not in ingress["metadata"]


def test_ingress_gets_class_tls_and_the_cert_manager_issuer_when_set() -> None:
    app = _app(
        {
            "webhook": {
                "enabled": True,
                "domain": "example.org",
                "ingressClassName": "nginx",
                "tls": {"secretName": "yourapp-webhook-tls", "clusterIssuer": "letsencrypt"},
            }
        }
    )
    ingress = builders.build_ingress(app)
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["webhook-yourapp.example.org"], "secretName": "yourapp-webhook-tls"}
    ]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}


def test_tls_without_an_issuer_has_no_cert_manager_annotation() -> None:
    app = _app(
        {"webhook": {"enabled": True, "domain": "example.org", "tls": {"secretName": "own-tls"}}}
    )
    ingress = builders.build_ingress(app)
    assert ingress["spec"]["tls"][0]["secretName"] == "own-tls"
    assert "annotations" not in ingress["metadata"]


def test_enabled_webhook_builds_every_child_and_removes_nothing() -> None:
    app = _app()
    kinds = [(m["kind"], m["metadata"]["name"]) for m in builders.build_children(app)]
    assert kinds == [
        ("ConfigMap", "yourapp-config"),
        ("Deployment", "yourapp-worker"),
        ("Service", "yourapp-receiver"),
        ("Deployment", "yourapp-receiver"),
        ("Ingress", "yourapp-webhook"),
    ]
    assert builders.absent_children(app) == []


@pytest.mark.parametrize(
    "webhook", [{"enabled": False, "domain": "retrievetl.com"}, {"enabled": False}]
)
def test_disabled_webhook_keeps_config_and_workers_and_removes_ingress_and_receiver(
    webhook: dict[str, Any],
) -> None:
    app = _app({"webhook": webhook})
    assert app.config.hosts == ()
    kinds = [(m["kind"], m["metadata"]["name"]) for m in builders.build_children(app)]
    assert kinds == [("ConfigMap", "yourapp-config"), ("Deployment", "yourapp-worker")]
    assert sorted(builders.absent_children(app)) == [
        ("apps/v1", "Deployment", "yourapp-receiver"),
        ("networking.k8s.io/v1", "Ingress", "yourapp-webhook"),
        ("v1", "Service", "yourapp-receiver"),
    ]
    with pytest.raises(ValueError, match="disabled"):
        builders.build_ingress(app)


@pytest.mark.parametrize("webhook", [{"enabled": True}, {}])
def test_an_enabled_webhook_needs_its_domain(webhook: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"spec\.webhook\.domain is required while the webhook is"):
        RetrieveApplicationSpec.model_validate({"webhook": webhook, "allowedList": []})


def test_builders_are_pure_and_return_fresh_dicts() -> None:
    app = _app()
    first = builders.build_receiver_deployment(app)
    first["spec"]["replicas"] = 99
    assert builders.build_receiver_deployment(app)["spec"]["replicas"] == 2


def test_importing_the_operator_does_not_shadow_the_standard_library_operator_module() -> None:
    code = "import operator, retrieve_operator, retrieve_operator.handlers; operator.itemgetter"
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_receiver_reads_the_console_token_from_an_optional_secret_and_drains_on_stop() -> None:
    container = _container(builders.build_receiver_deployment(_app()))
    token = _env(container)["RETRIEVE_CONSOLE_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": "yourapp-console",
        "key": "token",
        "optional": True,
    }
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


def test_config_map_passes_notifications_and_destination_batches_through_to_the_runtime() -> None:
    integration = IntegrationConfig(
        id="BULK1",
        name="bulk-orders",
        spec=IntegrationSpec.model_validate(
            {
                "application": "yourapp",
                "destinations": [
                    {
                        "name": "erp",
                        "http": {
                            "url": "https://erp.example/bulk",
                            "batch": {"maxRecords": 100, "maxWaitMs": 500},
                        },
                    }
                ],
            }
        ),
    )
    hook = {
        "name": "ops",
        "url": "https://hooks.example/T0/B0",
        "format": "slack",
        "events": ["deadLetter", "rejectedBurst"],
        "headersFrom": [{"name": "Authorization", "secretKeyRef": {"name": "hook", "key": "t"}}],
    }
    app = _app({"notifications": [hook]}, integrations=(integration,))

    text = builders.build_config_map(app)["data"][CONFIG_MAP_KEY]

    config = ApplicationConfig.from_json(text)
    assert config == app.config
    [notification] = config.spec.notifications
    assert (notification.name, notification.format) == ("ops", "slack")
    assert ("hook", "t") in config.secret_refs()  # the runtime watches that Secret
    batch = config.integrations[0].spec.destinations[0].http.batch
    assert batch is not None
    assert (batch.max_records, batch.max_wait_ms) == (100, 500)


def test_one_receiver_process_keeps_the_pod_template_free_of_a_processes_flag() -> None:
    container = _container(builders.build_receiver_deployment(_app()))
    assert not [a for a in container["args"] if a.startswith("--processes")]
    assert container["resources"] == {}


def test_several_receiver_processes_are_passed_on_and_request_one_cpu_each() -> None:
    app = _app({"receiver": {"processes": 3, "resources": {"limits": {"memory": "512Mi"}}}})
    container = _container(builders.build_receiver_deployment(app))
    assert "--processes=3" in container["args"]
    assert container["resources"] == {"limits": {"memory": "512Mi"}, "requests": {"cpu": "3"}}


def test_a_cpu_request_of_the_users_wins_over_the_per_process_default() -> None:
    resources = {"requests": {"cpu": "500m", "memory": "256Mi"}}
    app = _app({"receiver": {"processes": 2, "resources": resources}})
    container = _container(builders.build_receiver_deployment(app))
    assert "--processes=2" in container["args"]
    assert container["resources"] == resources
