# shellcheck shell=bash
# examples/ on a cluster, shared by hack/kind-up.sh and hack/node/install.sh: a sink from the
# runtime image (hack/manifests/sink.yaml, `retrieve sink`) as the examples' destination, their
# destinations pointed at it instead of 127.0.0.1, and the wait until everything is Ready.
# The caller defines k() (kubectl for its cluster), RUNTIME_IMAGE and APP_NAMESPACE.

examples_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

examples_sink_and_destinations() {
  sed "s#RUNTIME_IMAGE#$RUNTIME_IMAGE#" "$examples_lib_dir/../manifests/sink.yaml" |
    k -n "$APP_NAMESPACE" apply -f -
  k -n "$APP_NAMESPACE" patch integration shopify-orders --type merge -p '{"spec": {"destinations": [
    {"name": "warehouse", "http": {"url": "http://sink:9099/orders", "method": "POST", "timeoutSeconds": 10}}]}}'
  k -n "$APP_NAMESPACE" patch integration legacy-xml-orders --type merge -p '{"spec": {"destinations": [
    {"name": "erp", "http": {"url": "http://sink:9099/erp/orders", "method": "POST", "timeoutSeconds": 5}}]}}'
}

examples_wait_ready() {
  k -n "$APP_NAMESPACE" wait --for=condition=Ready retrieveapplication/yourapp --timeout=300s
  k -n "$APP_NAMESPACE" wait --for=condition=Ready integration --all --timeout=300s
  k -n "$APP_NAMESPACE" rollout status deployment/yourapp-receiver --timeout=300s
  k -n "$APP_NAMESPACE" rollout status deployment/yourapp-worker --timeout=300s
  k -n "$APP_NAMESPACE" rollout status deployment/sink --timeout=120s
  k -n "$APP_NAMESPACE" get rapp,rint,deploy,svc,ingress >&2
}
