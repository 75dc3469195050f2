#!/usr/bin/env bash
# Brings up a real single-node Kubernetes cluster on this machine, without Docker, inside one network
# namespace that it creates (docs/node.md):
#
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler   (hack/testcluster/build.sh)
#   containerd + runc + CNI bridge plugin                           (Debian packages)
#   kubelet, kube-proxy (iptables mode)                             (hack/testcluster/build.sh)
#   CoreDNS and Traefik v3 (Ingress and Gateway API controller)     (hack/node/build.sh)
#   Gateway API standard CRDs, GatewayClass traefik, Gateway default/node-gateway (port 80)
#   images: pause, Redis, retrieve-operator, retrieve-runtime        (hack/node/images.sh)
#   StorageClass "local" (default) backed by static local PersistentVolumes made here
#
# Idempotent: when the node is already up it only prints how to reach it. hack/node/down.sh stops
# every process by PID and puts back what was changed on the machine. Needs root.
#
# Environment: RETRIEVE_NODE_STATE (/var/lib/retrieve-node), RETRIEVE_NODE_NETNS (retrieve-node),
# RETRIEVE_NODE_PVS (number of static PersistentVolumes, 6), RETRIEVE_NODE_SKIP_IMAGES=1 (do not
# build and import the product's images).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) -eq 0 ]] || node_die "run as root (network namespaces, mounts, containerd)"
started=$(date +%s)

# ------------------------------------------------------------------------------------ already up?
api_ready() {
  [[ -f $KUBECONFIG_ADMIN ]] && in_node "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" \
    get --raw /readyz >/dev/null 2>&1
}
print_access() {
  cat >&2 <<EOF

The node is up (network namespace $NODE_NETNS, state in $NODE_STATE).
  hack/node/kubectl get pods -A                  # kubectl inside the namespace, admin kubeconfig
  hack/node/run curl -s http://$INGRESS_ADDR/ -H 'Host: webhook-<app>.<domain>'
  export KUBECONFIG=$KUBECONFIG_ADMIN          # for tools you run with: hack/node/run <tool> ...
  (the API server is https://$NODE_IP:$API_PORT, reachable only inside the namespace)
  make node-down                                 # stop everything and put the machine back
EOF
}

K8S_BIN=$(node_k8s_bin)
if [[ -e $NODE_NETNS_PATH ]] && api_ready && node_pid_alive kubelet && node_pid_alive containerd \
  && node_pid_alive traefik; then
  node_log "already up"
  print_access
  echo "$KUBECONFIG_ADMIN"
  exit 0
fi
if [[ -e $NODE_NETNS_PATH || -d $NODE_STATE/run ]]; then
  node_log "a previous node is partly up: taking it down first"
  "$NODE_REPO/hack/node/down.sh"
fi

# ------------------------------------------------------------------------------ packages, binaries
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v openssl >/dev/null || need+=(openssl)
command -v nsenter >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  node_log "installing ${need[*]} from Debian packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts a containerd service of its own; ours runs in the namespace with its own paths.
if command -v systemctl >/dev/null && systemctl is-active -q containerd 2>/dev/null; then
  systemctl disable --now containerd >/dev/null 2>&1 || true
fi

NODE_BIN=$("$NODE_REPO/hack/node/build.sh" | tail -n 1)
IMAGES_DIR=$("$NODE_REPO/hack/node/images.sh" | tail -n 1)

# ------------------------------------------------------------------------------------ state, undo
mkdir -p "$NODE_STATE"/{run,log,pki,config,cni/net.d,cni/ipam,pv}
RUN=$NODE_STATE/run LOG=$NODE_STATE/log PKI=$NODE_STATE/pki CFG=$NODE_STATE/config

# What down.sh must put back: the three sysctls the kubelet sets, and the fixed paths it creates.
: >"$RUN/undo-sysctl"
for key in kernel.panic kernel.panic_on_oops vm.overcommit_memory; do
  echo "$key=$(sysctl -n "$key")" >>"$RUN/undo-sysctl"
done
: >"$RUN/undo-paths"
for path in /var/lib/kubelet /var/log/pods /var/log/containers /run/containerd /var/lib/cni \
  /etc/cni; do
  [[ -e $path ]] || echo "$path" >>"$RUN/undo-paths"
done
ls /run/netns 2>/dev/null | grep '^cni-' >"$RUN/netns-before" || true

# ----------------------------------------------------------------------------- network namespace
node_log "network namespace $NODE_NETNS, node address $NODE_IP"
ip netns add "$NODE_NETNS"
in_node ip link set lo up
in_node ip addr add "$NODE_IP/32" dev lo
# Test clients pose as senders from other loopback addresses (127.0.0.2, ...): lo holds 127/8.
in_node sysctl -qw net.ipv4.ip_forward=1
# Pod -> Service -> pod on the same bridge needs the bridge's traffic to pass iptables.
in_node sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null \
  || node_log "note: net.bridge.bridge-nf-call-iptables is not settable in the namespace"

# ------------------------------------------------------------------------------------------- PKI
node_log "certificates and tokens"
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=retrieve-node-ca" \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt"
sign() { # name subject [san]
  local name=$1 subj=$2 san=${3:-}
  ossl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$PKI/$name.key" -out "$PKI/$name.csr"
  local ext=$PKI/$name.ext
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=digitalSignature,keyEncipherment"
    if [[ -n $san ]]; then echo "extendedKeyUsage=serverAuth"; echo "subjectAltName=$san"
    else echo "extendedKeyUsage=clientAuth"; fi; } >"$ext"
  ossl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 30 -extfile "$ext" -out "$PKI/$name.crt"
}
sign apiserver "/CN=kube-apiserver" \
  "IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost"
# The API server's client certificate towards the kubelet (logs, exec, port-forward).
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
ossl genrsa -out "$PKI/sa.key" 2048
ossl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"

# One static token per component, each with its own identity (RBAC and the Node authorizer apply).
: >"$PKI/tokens.csv"
token_for() { # name user groups
  local token
  token=$(openssl rand -hex 16)
  echo "$token,$2,$2,\"$3\"" >>"$PKI/tokens.csv"
  cat >"$CFG/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: node, cluster: {server: "$API_SERVER", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: $1, user: {token: "$token"}}]
contexts: [{name: $1, context: {cluster: node, user: $1}}]
current-context: $1
EOF
  printf '%s' "$token" >"$CFG/$1.token" # no newline: Traefik reads the file as it is
}
token_for admin admin system:masters
token_for kubelet "system:node:$NODE_NAME" system:nodes
token_for kube-proxy system:kube-proxy system:node-proxier
token_for kube-scheduler system:kube-scheduler ""
token_for kube-controller-manager system:kube-controller-manager ""
token_for coredns retrieve-node:coredns ""
token_for traefik retrieve-node:traefik ""
chmod 600 "$PKI/tokens.csv" "$CFG"/*.kubeconfig "$CFG"/*.token
cp "$CFG/admin.kubeconfig" "$KUBECONFIG_ADMIN"

# -------------------------------------------------------------------------------------- daemons
start() { # name argv... (pid in run/<name>.pid, output in log/<name>.log)
  local name=$1
  shift
  setsid nsenter --net="$NODE_NETNS_PATH" -- "$@" </dev/null >"$LOG/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}
wait_for() { # what name seconds command...
  local what=$1 name=$2 deadline=$(($(date +%s) + $3))
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ! node_pid_alive "$name"; then
      tail -n 30 "$LOG/$name.log" >&2
      node_die "$name exited while waiting for $what (log: $LOG/$name.log)"
    fi
    if (($(date +%s) > deadline)); then
      tail -n 30 "$LOG/$name.log" >&2
      node_die "timed out waiting for $what (log: $LOG/$name.log)"
    fi
    sleep 0.3
  done
}
kc() { in_node "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

node_log "etcd, kube-apiserver"
start etcd "$K8S_BIN/etcd" --data-dir "$NODE_STATE/etcd" --name node \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster node=http://127.0.0.1:2380 --unsafe-no-fsync=true --log-level=warn
wait_for "etcd" etcd 30 in_node curl -sf http://127.0.0.1:2379/health

start kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
  --advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port="$API_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP --profiling=false
wait_for "kube-apiserver /readyz" kube-apiserver 60 kc get --raw /readyz

node_log "kube-controller-manager, kube-scheduler"
start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig="$CFG/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="$CFG/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="$CFG/kube-controller-manager.kubeconfig" \
  --use-service-account-credentials=true --leader-elect=false \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --service-cluster-ip-range="$SERVICE_CIDR" --bind-address=127.0.0.1 --profiling=false
start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$CFG/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig="$CFG/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="$CFG/kube-scheduler.kubeconfig" \
  --leader-elect=false --bind-address=127.0.0.1 --profiling=false

# ------------------------------------------------------------------------------------ containerd
node_log "containerd (CRI), images"
CTRD=$NODE_STATE/containerd
mkdir -p "$CTRD"
cat >"$CFG/containerd.toml" <<EOF
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
# The machine withholds CAP_SYS_RESOURCE: nothing may lower an OOM score (REAL-NODE.md).
oom_score = 0
[grpc]
  address = "$CTRD/containerd.sock"
[ttrpc]
  address = "$CTRD/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.10"
  restrict_oom_score_adj = true
  tolerate_missing_hugetlb_controller = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_STATE/cni/net.d"
EOF
# The pod network: one bridge, host-local addresses (kept under the state folder), no masquerade
# (nothing leaves the namespace), hairpin so a pod reaches itself through its Service.
cat >"$NODE_STATE/cni/net.d/10-retrieve.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "retrieve-node",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$NODE_STATE/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
start containerd containerd --config "$CFG/containerd.toml"
ctr_() { ctr --address "$CTRD/containerd.sock" "$@"; }
wait_for "containerd" containerd 30 ctr_ version
for archive in "$IMAGES_DIR"/*.tar; do
  ctr_ -n k8s.io images import --all-platforms "$archive" >/dev/null
done
node_log "images: $(ctr_ -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

# --------------------------------------------------------------------------------------- kubelet
node_log "kubelet"
KUBELET_ROOT=$NODE_STATE/kubelet
mkdir -p "$KUBELET_ROOT" "$NODE_STATE/kubelet-pki"
echo "nameserver $NODE_IP" >"$CFG/resolv.conf"
cat >"$CFG/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
# cgroup v1 here (REAL-NODE.md); 1.35 refuses it unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTRD/containerd.sock
# The kubelet sets kernel.panic, kernel.panic_on_oops and vm.overcommit_memory (down.sh restores).
protectKernelDefaults: false
oomScoreAdj: 0
failSwapOn: false
clusterDNS: [$NODE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $CFG/resolv.conf
podLogsDir: $NODE_STATE/pods-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
# Imported images are never pulled again: image GC must not remove them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
serializeImagePulls: false
EOF
start kubelet "$K8S_BIN/kubelet" --config="$CFG/kubelet.yaml" \
  --kubeconfig="$CFG/kubelet.kubeconfig" --root-dir="$KUBELET_ROOT" \
  --cert-dir="$NODE_STATE/kubelet-pki" --node-ip="$NODE_IP" --hostname-override="$NODE_NAME"
wait_for "node $NODE_NAME Ready" kubelet 90 \
  kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s

node_log "kube-proxy"
cat >"$CFG/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
clientConnection: {kubeconfig: $CFG/kube-proxy.kubeconfig}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Leave the kernel's conntrack settings alone (some are machine-wide).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy "$K8S_BIN/kube-proxy" --config="$CFG/kube-proxy.yaml"
wait_for "kube-proxy /healthz" kube-proxy 30 in_node curl -sf http://127.0.0.1:10256/healthz

# ---------------------------------------- Gateway API CRDs, cluster objects, CoreDNS/Traefik RBAC
GATEWAY_CRDS=$("$NODE_REPO/hack/gateway-api/crds.sh" | tail -n 1)
kc apply --server-side -f "$GATEWAY_CRDS" >/dev/null
kc wait --for=condition=Established crd/gateways.gateway.networking.k8s.io \
  crd/httproutes.gateway.networking.k8s.io --timeout=60s >/dev/null
kc apply -f "$NODE_REPO/hack/node/manifests/cluster.yaml" >/dev/null

node_log "CoreDNS on $NODE_IP:53"
cat >"$CFG/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:8180
    ready 127.0.0.1:8181
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $CFG/coredns.kubeconfig coredns
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
    loadbalance
}
EOF
start coredns "$NODE_BIN/coredns" -conf "$CFG/Corefile"
wait_for "CoreDNS /ready" coredns 30 in_node curl -sf http://127.0.0.1:8181/ready

node_log "Traefik on $INGRESS_ADDR (Ingress class traefik, Gateway API when its CRDs exist)"
# allowEmptyServices: while no receiver pod is ready (e.g. Redis restarting, so every /readyz
# answers 503), Traefik answers 503 -- which senders retry -- instead of dropping the route and
# answering 404, which a sender may take as "this URL is gone".
# The token by its file path (Traefik's FileOrContent), never on the command line (`ps` shows it).
start traefik "$NODE_BIN/traefik" --log.level=INFO --log.noColor=true --ping=true \
  --global.checkNewVersion=false \
  --global.sendAnonymousUsage=false \
  --entryPoints.web.address="$INGRESS_ADDR" --entryPoints.traefik.address=127.0.0.1:9000 \
  --providers.kubernetesingress=true \
  --providers.kubernetesingress.endpoint="$API_SERVER" \
  --providers.kubernetesingress.token="$CFG/traefik.token" \
  --providers.kubernetesingress.certAuthFilePath="$PKI/ca.crt" \
  --providers.kubernetesingress.ingressEndpoint.ip="$NODE_IP" \
  --providers.kubernetesingress.allowEmptyServices=true \
  --providers.kubernetesgateway=true \
  --providers.kubernetesgateway.endpoint="$API_SERVER" \
  --providers.kubernetesgateway.token="$CFG/traefik.token" \
  --providers.kubernetesgateway.certAuthFilePath="$PKI/ca.crt" \
  --providers.kubernetesgateway.statusAddress.ip="$NODE_IP"
wait_for "Traefik /ping" traefik 30 in_node curl -sf http://127.0.0.1:9000/ping

# ------------------------------------------------------------------------------------- storage
# Static local PersistentVolumes, made here (no provisioner to build and run): the chart's Redis
# claim binds to one of them when its pod is scheduled (WaitForFirstConsumer).
node_log "StorageClass local and ${RETRIEVE_NODE_PVS:-6} local PersistentVolumes"
{
  for i in $(seq 1 "${RETRIEVE_NODE_PVS:-6}"); do
    dir=$NODE_STATE/pv/pv$i
    mkdir -p "$dir"
    chmod 0777 "$dir" # pods run as arbitrary uids; fsGroup is not applied to local volumes
    cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-pv$i, labels: {retrieve-node/pv: "true"}}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  local: {path: $dir}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}]
EOF
  done
} | kc apply -f - >/dev/null

node_log "up in $(($(date +%s) - started)) s"
print_access
echo "$KUBECONFIG_ADMIN"
