# Shared settings of the single-node cluster (sourced by up.sh, down.sh, kubectl, run).
# Everything the node runs lives in the network namespace $NODE_NETNS and under $NODE_STATE.
# shellcheck shell=bash

NODE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NODE_NETNS=${RETRIEVE_NODE_NETNS:-retrieve-node}
NODE_NETNS_PATH=/run/netns/$NODE_NETNS
NODE_STATE=${RETRIEVE_NODE_STATE:-/var/lib/retrieve-node}
NODE_NAME=retrieve-node
# The node's address: on the namespace's loopback (kubelet refuses 127.0.0.0/8), private to it.
NODE_IP=10.250.0.1
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
API_PORT=6443
API_SERVER=https://$NODE_IP:$API_PORT
CLUSTER_DOMAIN=cluster.local
# The Ingress (and Gateway) entry point: Traefik on the node address, port 80.
INGRESS_ADDR=$NODE_IP:80
KUBECONFIG_ADMIN=$NODE_STATE/kubeconfig

node_log() { printf '[node] %s\n' "$*" >&2; }
node_die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }

# Run a command inside the node's network namespace (nsenter keeps the machine's /sys and cgroup
# mounts, which `ip netns exec` would remount).
in_node() { nsenter --net="$NODE_NETNS_PATH" -- "$@"; }

# The control-plane and node binaries (hack/testcluster/build.sh prints their folder).
node_k8s_bin() {
  if [[ -n ${RETRIEVE_TESTCLUSTER_BIN:-} && -x ${RETRIEVE_TESTCLUSTER_BIN}/kubelet ]]; then
    echo "$RETRIEVE_TESTCLUSTER_BIN"
  else
    "$NODE_REPO/hack/testcluster/build.sh" | tail -n 1
  fi
}

# A process started by up.sh is alive when its pid file names a live process with that binary.
# (No pipe into `grep -q` here: under pipefail its early exit can fail the pipeline with SIGPIPE.)
node_pid_alive() {
  local name=$1 pidfile=$NODE_STATE/run/$1.pid pid cmdline
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ -r /proc/$pid/cmdline ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$name"* ]]
}
