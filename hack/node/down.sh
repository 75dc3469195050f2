#!/usr/bin/env bash
# Takes down what hack/node/up.sh started and puts the machine back as it was (docs/node.md):
# pods stopped through containerd, every daemon stopped by the PID up.sh recorded, the mounts under
# the state folder and the pods' network namespaces removed, the node's network namespace deleted
# (its interfaces and iptables rules go with it), the kubelet's cgroups removed, the sysctls and
# fixed paths the kubelet changed restored. Idempotent: safe to run when nothing is up.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) -eq 0 ]] || node_die "run as root"
RUN=$NODE_STATE/run
CTRD=$NODE_STATE/containerd

stop_pid() { # name [grace seconds]: SIGTERM by recorded PID, SIGKILL after the grace period
  local name=$1 grace=${2:-10} pidfile=$RUN/$1.pid pid i
  [[ -f $pidfile ]] || return 0
  pid=$(<"$pidfile")
  if node_pid_alive "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      [[ -d /proc/$pid ]] || break
      sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
      node_log "$name (pid $pid) ignored SIGTERM for ${grace}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$pidfile"
}

# Controllers first, so that nothing recreates the pods stopped below.
for name in traefik coredns kube-proxy kube-scheduler kube-controller-manager kubelet; do
  stop_pid "$name"
done

# Every pod sandbox and container, through containerd while it still runs.
if node_pid_alive containerd && [[ -S $CTRD/containerd.sock ]]; then
  ctr_() { timeout 20 ctr --address "$CTRD/containerd.sock" -n k8s.io "$@"; }
  for task in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for task in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks delete -f "$task" >/dev/null 2>&1 || true
  done
  for container in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers delete "$container" >/dev/null 2>&1 || true
  done
fi
stop_pid containerd 15
# containerd's shims outlive it: stop the ones that belong to this node's containerd.
for pid in $(pgrep -f "containerd-shim.*-address $CTRD/" || true); do
  kill -KILL "$pid" 2>/dev/null || true
done
for pid in $(pgrep -f "containerd-shim.*-address $CTRD/" || true); do
  while [[ -d /proc/$pid ]]; do sleep 0.1; done
done

stop_pid kube-apiserver
stop_pid etcd

# Mounts under the state folder (kubelet volumes, rootfs overlays, sandbox /dev/shm, the kubelet's
# bind mount of its root), deepest first; then the pods' network namespaces made since up.sh.
if [[ -d $NODE_STATE ]]; then
  findmnt -rn -o TARGET | grep -F "$NODE_STATE/" | sort -r | while read -r target; do
    umount -l "$target" 2>/dev/null || true
  done
  if findmnt -rn "$NODE_STATE" >/dev/null 2>&1; then umount -l "$NODE_STATE" || true; fi
fi
for ns in $(ls /run/netns 2>/dev/null | grep '^cni-' || true); do
  if [[ ! -f $RUN/netns-before ]] || ! grep -qx "$ns" "$RUN/netns-before"; then
    umount "/run/netns/$ns" 2>/dev/null || true
    rm -f "/run/netns/$ns"
  fi
done

if [[ -e $NODE_NETNS_PATH ]]; then
  ip netns del "$NODE_NETNS"
fi

# The kubelet's cgroup tree (kubepods under every v1 hierarchy), deepest first, once empty.
for root in /sys/fs/cgroup/*/; do
  [[ -d ${root}kubepods ]] || continue
  find "${root}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
done

if [[ -f $RUN/undo-sysctl ]]; then
  while IFS= read -r line; do sysctl -qw "$line" >/dev/null || true; done <"$RUN/undo-sysctl"
fi
if [[ -f $RUN/undo-paths ]]; then
  while IFS= read -r path; do
    [[ -n $path ]] || continue
    umount -R "$path" 2>/dev/null || true
    rm -rf "$path"
  done <"$RUN/undo-paths"
fi

rm -rf "$NODE_STATE"
node_log "down"
