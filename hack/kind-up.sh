#!/usr/bin/env bash
# Creates a kind cluster running Retrieve end to end: images built and loaded, the Gateway API CRDs,
# Traefik (Ingress and Gateway API controller, from its Helm chart), the CRD chart and the operator
# chart, the examples applied, and a webhook sent through the Ingress, then through an HTTPRoute.
# Idempotent: run it again after a code change to rebuild and roll out. See docs/kind.md.
#
# Environment: KIND_CLUSTER_NAME (retrieve), KIND_NODE_IMAGE (kind's default),
# TRAEFIK_CHART_VERSION (41.3.0, Traefik v3.7.11), RETRIEVE_NAMESPACE (retrieve-system),
# IMAGE_TAG (dev), SKIP_IMAGES=1 to reuse images already loaded, ROUTE=gateway|ingress (which
# route yourapp keeps at the end; default gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/gateway-api/version.env
source hack/gateway-api/version.env
# shellcheck source=hack/lib/examples.sh
source hack/lib/examples.sh

CLUSTER=${KIND_CLUSTER_NAME:-retrieve}
CONTEXT="kind-${CLUSTER}"
NAMESPACE=${RETRIEVE_NAMESPACE:-retrieve-system}
TAG=${IMAGE_TAG:-dev}
OPERATOR_IMAGE="retrieve-operator:${TAG}"
RUNTIME_IMAGE="retrieve-runtime:${TAG}"
TRAEFIK_CHART_VERSION=${TRAEFIK_CHART_VERSION:-41.3.0}
TRAEFIK_REPO=https://traefik.github.io/charts
GATEWAY_API_MANIFEST="https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml"
ROUTE=${ROUTE:-gateway}
APP_NAMESPACE=shop
HOST=webhook-yourapp.retrievetl.com
INTEGRATION_ID=507f1f77bcf86cd799439011

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'kind-up: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "$CONTEXT" "$@"; }

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH (see docs/kind.md, Prerequisites)"
done
docker info >/dev/null 2>&1 || die "docker is not running (or this user may not use it)"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "kind cluster $CLUSTER exists: reusing it"
else
  log "creating kind cluster $CLUSTER"
  create=(kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s)
  if [[ -n ${KIND_NODE_IMAGE:-} ]]; then create+=(--image "$KIND_NODE_IMAGE"); fi
  "${create[@]}"
fi

if [[ ${SKIP_IMAGES:-0} != 1 ]]; then
  log "building $OPERATOR_IMAGE and $RUNTIME_IMAGE"
  docker build -f images/Dockerfile --target operator -t "$OPERATOR_IMAGE" .
  docker build -f images/Dockerfile --target runtime -t "$RUNTIME_IMAGE" .
  log "loading the images into the kind node"
  kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"
fi

log "installing the Gateway API CRDs ($GATEWAY_API_VERSION, standard channel)"
k apply --server-side -f "$GATEWAY_API_MANIFEST"

# Traefik as the Ingress controller (IngressClass traefik) and the Gateway API controller
# (GatewayClass traefik, controller traefik.io/gateway-controller, Gateway traefik-gateway with a
# listener "web" on its web entry point that admits routes from every namespace). Its pod runs on
# the node labelled ingress-ready=true with host ports 80/443, where kind-config.yaml maps the
# host's ports.
log "installing Traefik (chart $TRAEFIK_CHART_VERSION) as Ingress and Gateway controller"
helm --kube-context "$CONTEXT" upgrade --install traefik traefik \
  --repo "$TRAEFIK_REPO" --version "$TRAEFIK_CHART_VERSION" \
  --namespace traefik --create-namespace --wait --timeout 5m \
  -f - <<'YAML'
deployment: {replicas: 1}
service: {type: ClusterIP}
ports:
  web: {hostPort: 80}
  websecure: {hostPort: 443}
nodeSelector: {ingress-ready: "true"}
tolerations:
  - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}
ingressClass: {enabled: true, isDefaultClass: false, name: traefik}
providers:
  kubernetesIngress: {enabled: true, allowEmptyServices: true}  # 503, not 404, while no receiver is ready
  kubernetesGateway: {enabled: true}
gatewayClass: {enabled: true, name: traefik}
gateway:
  enabled: true
  name: traefik-gateway
  listeners:
    web:
      port: 8000
      protocol: HTTP
      namespacePolicy: {from: All}
YAML
k -n traefik rollout status deployment/traefik --timeout=180s

log "installing the CRDs (chart retrieve-crds) and the operator (chart retrieve)"
helm --kube-context "$CONTEXT" upgrade --install retrieve-crds charts/retrieve-crds --wait
helm --kube-context "$CONTEXT" upgrade --install retrieve charts/retrieve \
  --namespace "$NAMESPACE" --create-namespace --set gatewayApi.enabled=true \
  --set image.repository=retrieve-operator --set "image.tag=$TAG" \
  --set runtimeImage.repository=retrieve-runtime --set "runtimeImage.tag=$TAG" \
  --wait --timeout 5m
# The same image tag is reused across runs: restart so a rebuilt image is picked up.
k -n "$NAMESPACE" rollout restart deployment/retrieve-operator
k -n "$NAMESPACE" rollout status deployment/retrieve-operator --timeout=180s

log "applying examples/ and a sink that prints what the destinations receive"
k apply -f examples/
# kind specifics on top of the examples: the Ingress class; Traefik (a pod in 10.244.0.0/16) is
# the trusted proxy whose X-Forwarded-For names the sender, behind the Ingress and the Gateway
# alike; curl on this machine reaches the node through Docker's network (172.16.0.0/12), so that
# range may send; and the destinations point at the sink instead of 127.0.0.1.
k -n "$APP_NAMESPACE" patch retrieveapplication yourapp --type merge -p '{
  "spec": {
    "webhook": {"ingressClassName": "traefik", "gateway": null},
    "trustedProxies": ["10.244.0.0/16"],
    "allowedList": ["127.0.0.1", "::1", "shopify.com", "203.0.113.0", "198.51.100.0/24", "172.16.0.0/12"]
  }
}'
examples_sink_and_destinations

log "waiting for the application and its integrations to be Ready"
examples_wait_ready

BODY='{"event": "order.created", "order": {"id": 1, "email": "a@example.com", "total_price": "9.99"}}'
CURL=(curl -sS -X POST -H "Host: ${HOST}" -H 'Content-Type: application/json'
  --data "$BODY" "http://localhost/integration/${INTEGRATION_ID}")

send() {  # a route takes a few seconds to be programmed
  local answer=""
  for _ in $(seq 1 30); do
    if answer=$("${CURL[@]}" -w ' HTTP %{http_code}' 2>&1) && [[ $answer == *"HTTP 200" ]]; then break; fi
    sleep 2
  done
  echo "$answer"
  [[ $answer == *"HTTP 200" ]] || die "the webhook was not accepted through the $1; see: kubectl --context $CONTEXT -n $APP_NAMESPACE logs deploy/yourapp-receiver"
}

log "sending one webhook through the Ingress (yourapp-webhook, class traefik)"
send Ingress

if [[ $ROUTE == gateway ]]; then
  log "switching yourapp to the Gateway: an HTTPRoute attached to traefik/traefik-gateway"
  k -n "$APP_NAMESPACE" patch retrieveapplication yourapp --type merge -p '{
    "spec": {"webhook": {"ingressClassName": null,
      "gateway": {"parentRefs": [{"name": "traefik-gateway", "namespace": "traefik", "sectionName": "web"}]}}}
  }'
  # Ready again once Traefik has accepted the route (status.parents: Accepted, ResolvedRefs).
  ready='{.status.conditions[?(@.type=="Ready")].reason}: {.status.conditions[?(@.type=="Ready")].message}'
  for _ in $(seq 1 60); do
    state=$(k -n "$APP_NAMESPACE" get retrieveapplication yourapp -o jsonpath="$ready")
    [[ $state == Reconciled:* ]] && break
    sleep 2
  done
  echo "$state"
  [[ $state == Reconciled:* ]] || die "the HTTPRoute was not accepted: $state"
  k -n "$APP_NAMESPACE" get httproute yourapp-webhook
  log "sending one webhook through the Gateway (HTTPRoute yourapp-webhook)"
  send Gateway
fi

cat <<TXT

Retrieve is running on kind cluster "$CLUSTER" (context $CONTEXT), routed by the ${ROUTE^} through
Traefik. Send a webhook with:

  curl -sS -X POST -H 'Host: ${HOST}' -H 'Content-Type: application/json' \\
    --data '${BODY}' \\
    http://localhost/integration/${INTEGRATION_ID}

Watch it flow:
  kubectl --context $CONTEXT -n $APP_NAMESPACE get rapp,rint,ingress,httproute   # Received / Queue / Dead
  kubectl --context $CONTEXT -n $APP_NAMESPACE logs deploy/sink     # what the destination got
  kubectl --context $CONTEXT -n $APP_NAMESPACE logs deploy/yourapp-worker

Switch routes: docs/kind.md ("Ingress or Gateway"). Tear down with: make kind-down
TXT
