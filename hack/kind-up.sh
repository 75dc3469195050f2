#!/usr/bin/env bash
# Creates a kind cluster running Retrieve end to end: images built and loaded, ingress-nginx,
# the CRD chart and the operator chart, the examples applied, and a webhook sent through the
# Ingress. Idempotent: run it again after a code change to rebuild and roll out. See docs/kind.md.
#
# Environment: KIND_CLUSTER_NAME (retrieve), KIND_NODE_IMAGE (kind's default),
# INGRESS_NGINX_VERSION (controller-v1.15.1), RETRIEVE_NAMESPACE (retrieve-system),
# IMAGE_TAG (dev), SKIP_IMAGES=1 to reuse images already loaded.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER_NAME:-retrieve}
CONTEXT="kind-${CLUSTER}"
NAMESPACE=${RETRIEVE_NAMESPACE:-retrieve-system}
TAG=${IMAGE_TAG:-dev}
OPERATOR_IMAGE="retrieve-operator:${TAG}"
RUNTIME_IMAGE="retrieve-runtime:${TAG}"
INGRESS_NGINX_VERSION=${INGRESS_NGINX_VERSION:-controller-v1.15.1}
INGRESS_NGINX_MANIFEST="https://raw.githubusercontent.com/kubernetes/ingress-nginx/${INGRESS_NGINX_VERSION}/deploy/static/provider/kind/deploy.yaml"
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

log "installing ingress-nginx ($INGRESS_NGINX_VERSION)"
k apply -f "$INGRESS_NGINX_MANIFEST"
k -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=180s
k -n ingress-nginx wait --for=condition=Ready pod \
  --selector=app.kubernetes.io/component=controller --timeout=180s

log "installing the CRDs (chart retrieve-crds) and the operator (chart retrieve)"
helm --kube-context "$CONTEXT" upgrade --install retrieve-crds charts/retrieve-crds --wait
helm --kube-context "$CONTEXT" upgrade --install retrieve charts/retrieve \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository=retrieve-operator --set "image.tag=$TAG" \
  --set runtimeImage.repository=retrieve-runtime --set "runtimeImage.tag=$TAG" \
  --wait --timeout 5m
# The same image tag is reused across runs: restart so a rebuilt image is picked up.
k -n "$NAMESPACE" rollout restart deployment/retrieve-operator
k -n "$NAMESPACE" rollout status deployment/retrieve-operator --timeout=180s

log "applying examples/ and a sink that prints what the destinations receive"
k apply -f examples/
k -n "$APP_NAMESPACE" apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: sink, labels: {app: sink}}
spec:
  replicas: 1
  selector: {matchLabels: {app: sink}}
  template:
    metadata: {labels: {app: sink}}
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: sink
          image: ${RUNTIME_IMAGE}
          args: [sink, --host, 0.0.0.0, --port, "9099"]
          ports: [{containerPort: 9099}]
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata: {name: sink}
spec:
  selector: {app: sink}
  ports: [{port: 9099, targetPort: 9099}]
YAML
# kind specifics on top of the examples: the Ingress class; ingress-nginx (a pod in
# 10.244.0.0/16) is the trusted proxy whose X-Forwarded-For names the sender; curl on this machine
# reaches the node through Docker's network (172.16.0.0/12), so that range may send; and the
# destinations point at the sink instead of 127.0.0.1.
k -n "$APP_NAMESPACE" patch retrieveapplication yourapp --type merge -p '{
  "spec": {
    "webhook": {"ingressClassName": "nginx"},
    "trustedProxies": ["10.244.0.0/16"],
    "allowedList": ["127.0.0.1", "::1", "shopify.com", "203.0.113.0", "198.51.100.0/24", "172.16.0.0/12"]
  }
}'
k -n "$APP_NAMESPACE" patch integration shopify-orders --type merge -p '{"spec": {"destinations": [
  {"name": "warehouse", "http": {"url": "http://sink:9099/orders", "method": "POST", "timeoutSeconds": 10}}]}}'
k -n "$APP_NAMESPACE" patch integration legacy-xml-orders --type merge -p '{"spec": {"destinations": [
  {"name": "erp", "http": {"url": "http://sink:9099/erp/orders", "method": "POST", "timeoutSeconds": 5}}]}}'

log "waiting for the application and its integrations to be Ready"
k -n "$APP_NAMESPACE" wait --for=condition=Ready retrieveapplication/yourapp --timeout=300s
k -n "$APP_NAMESPACE" wait --for=condition=Ready integration --all --timeout=300s
k -n "$APP_NAMESPACE" rollout status deployment/yourapp-receiver --timeout=180s
k -n "$APP_NAMESPACE" get rapp,rint,deploy,svc,ingress

BODY='{"event": "order.created", "order": {"id": 1, "email": "a@example.com", "total_price": "9.99"}}'
CURL=(curl -sS -X POST -H "Host: ${HOST}" -H 'Content-Type: application/json'
  --data "$BODY" "http://localhost/integration/${INTEGRATION_ID}")

log "sending one webhook through the Ingress"
answer=""
for _ in $(seq 1 30); do  # the Ingress takes a few seconds to be programmed
  if answer=$("${CURL[@]}" -w ' HTTP %{http_code}' 2>&1) && [[ $answer == *"HTTP 200" ]]; then break; fi
  sleep 2
done
echo "$answer"
[[ $answer == *"HTTP 200" ]] || die "the webhook was not accepted; see: kubectl --context $CONTEXT -n $APP_NAMESPACE logs deploy/yourapp-receiver"

cat <<TXT

Retrieve is running on kind cluster "$CLUSTER" (context $CONTEXT). Send a webhook with:

  curl -sS -X POST -H 'Host: ${HOST}' -H 'Content-Type: application/json' \\
    --data '${BODY}' \\
    http://localhost/integration/${INTEGRATION_ID}

Watch it flow:
  kubectl --context $CONTEXT -n $APP_NAMESPACE get rint             # Received / Queue / Dead
  kubectl --context $CONTEXT -n $APP_NAMESPACE logs deploy/sink     # what the destination got
  kubectl --context $CONTEXT -n $APP_NAMESPACE logs deploy/yourapp-worker

Tear down with: make kind-down
TXT
