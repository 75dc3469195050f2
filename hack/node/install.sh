#!/usr/bin/env bash
# Installs Retrieve on the node (hack/node/up.sh) as a user does: `helm install` of the CRD chart
# and the operator chart with default values plus the locally built image tags, `kubectl apply -f
# examples/`, a sink as the examples' destination, then waits until the application and its
# integrations are Ready and the Ingress answers through Traefik (docs/node.md).
#
# Environment: RETRIEVE_NAMESPACE (retrieve-system), IMAGE_TAG (dev), HELM_EXTRA (extra helm args).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../lib/examples.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/examples.sh"
cd "$NODE_REPO"

NAMESPACE=${RETRIEVE_NAMESPACE:-retrieve-system}
TAG=${IMAGE_TAG:-dev}
RUNTIME_IMAGE=localhost/retrieve-runtime:$TAG
APP_NAMESPACE=shop
run() { hack/node/run "$@"; }
k() { run kubectl "$@"; }

node_log "helm install retrieve-crds, retrieve (images localhost/retrieve-*:$TAG, localhost/redis)"
run helm upgrade --install retrieve-crds charts/retrieve-crds --wait
# shellcheck disable=SC2086
run helm upgrade --install retrieve charts/retrieve --namespace "$NAMESPACE" --create-namespace \
  --set image.repository=localhost/retrieve-operator --set "image.tag=$TAG" \
  --set runtimeImage.repository=localhost/retrieve-runtime --set "runtimeImage.tag=$TAG" \
  --set redis.image.repository=localhost/redis --set redis.image.tag=7-bookworm \
  ${HELM_EXTRA:-} --wait --timeout 5m

node_log "kubectl apply -f examples/, and a sink as their destination"
k apply -f examples/00-namespace.yaml
# The optional console Secret (docs/user-guide.md): `kubectl retrieve logs` and the web console need
# its token. Made before the application, so that the receivers start with it; kept on re-runs.
if ! k -n "$APP_NAMESPACE" get secret yourapp-console >/dev/null 2>&1; then
  k -n "$APP_NAMESPACE" create secret generic yourapp-console \
    --from-literal=token="$(openssl rand -hex 16)" >/dev/null
fi
k apply -f examples/
# What this node needs on top of the examples: Traefik (a process on the node, which reaches pods
# from the bridge's gateway address) is the trusted proxy whose X-Forwarded-For names the sender,
# and the destinations point at a sink instead of 127.0.0.1.
k -n "$APP_NAMESPACE" patch retrieveapplication yourapp --type merge \
  -p "{\"spec\": {\"trustedProxies\": [\"$POD_GATEWAY\"]}}"
examples_sink_and_destinations

node_log "waiting for the application, its integrations, receivers and workers"
examples_wait_ready

HOST=webhook-yourapp.retrievetl.com
node_log "one webhook through Traefik (Host: $HOST)"
answer=""
for _ in $(seq 1 30); do # Traefik programs a new Ingress within a few seconds. The sender is 127.0.0.1,
  # on the examples' whitelist (without --interface, curl would send from the node address).
  answer=$(run curl -sS --interface 127.0.0.1 -X POST -H "Host: $HOST" -H 'Content-Type: application/json' \
    --data '{"event": "order.created", "order": {"id": 1, "email": "a@example.com", "total_price": "9.99"}}' \
    -w ' HTTP %{http_code}' "http://$INGRESS_ADDR/integration/507f1f77bcf86cd799439011" 2>&1) || true
  [[ $answer == *"HTTP 200" ]] && break
  sleep 1
done
echo "$answer" >&2
[[ $answer == *"HTTP 200" ]] || node_die "the webhook was not accepted through the Ingress"
node_log "installed: hack/node/kubectl -n $APP_NAMESPACE logs deploy/sink shows the deliveries"
