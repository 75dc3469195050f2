"""Operator benchmark: N applications x M integrations against the real test API server.

Starts etcd + kube-apiserver (with an audit log of every write) + kube-controller-manager
(harness/kube_control_plane.py) and a Redis for the status poll, applies the CRDs, runs ``kopf run
-A --standalone -m retrieve_operator.handlers`` as a subprocess, creates the applications and
integrations in one go, and measures:

- the time until every Integration has a webhookURL and Ready=True (and every application
  Ready=True for its current generation), counted from the end of the apply;
- the time until a change to every application (a new whitelist entry) is observed;
- the time to repair drift (a receiver Deployment scaled by hand);
- the time from `kubectl apply` of a whitelist change to a receiver enforcing it;
- a restart of the operator: the time until every object's resume handler has run, and the
  write calls (create/update/patch/delete, from the audit log) the operator made from its start
  until the restart settled (resumes done, then one status interval more), by verb and resource;
- the operator's peak RSS (VmHWM) and CPU time, the control plane's RSS, ERROR log lines.

    python bench/operator_bench.py [--apps 50] [--integrations 10] [--namespaces 10]
    python bench/operator_bench.py --apps 500 --integrations 10 --namespaces 50   # 5,000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from harness.kube_control_plane import KubeTestCluster  # noqa: E402
from retrieve_cli.redis_server import RedisServer, free_port  # noqa: E402
from retrieve_core.models import derive_integration_id  # noqa: E402

GROUP_VERSION = "retrievetl.com/v1alpha1"
STATUS_INTERVAL_SECONDS = 15.0
# Writes only, with who made them: the operator is told apart by its user agents (kopf's own
# client, and the reconciler's "retrieve-operator").
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""
OPERATOR_USER_AGENTS = ("kopf/", "retrieve-operator")


def proc_status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> float:
    """Seconds until `check` holds; a check that costs more (listing 5,000 objects) is made
    less often, so the bench does not load the API server more than the operator does."""
    started = time.monotonic()
    while True:
        before = time.monotonic()
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(max(0.5, time.monotonic() - before))


def items(cluster: KubeTestCluster, plural: str) -> list[dict[str, Any]]:
    return list(cluster.api_get(f"/apis/{GROUP_VERSION}/{plural}", timeout=120)["items"])


def operator_writes(audit_log: Path, offset: int) -> tuple[Counter[str], int]:
    """The operator's write calls in the audit log after byte `offset`, as
    "VERB resource[/subresource]" -> count; and the log's size now."""
    calls: Counter[str] = Counter()
    with audit_log.open("rb") as log:
        log.seek(offset)
        data = log.read()
    for line in data.splitlines():
        event = json.loads(line)
        if not str(event.get("userAgent", "")).startswith(OPERATOR_USER_AGENTS):
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "?") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        calls[f"{event['verb'].upper()} {resource}"] += 1
    return calls, offset + len(data)


def count_lines(path: Path, text: str) -> int:
    return sum(1 for line in path.read_text(errors="replace").splitlines() if text in line)


def error_lines(path: Path) -> list[str]:
    return [
        line
        for line in path.read_text(errors="replace").splitlines()
        if "ERROR" in line and "storage is (re)initializing" not in line
    ]


@contextmanager
def running_operator(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "kopf", "run", "-A", "--standalone", "-m",
               "retrieve_operator.handlers"]  # fmt: skip
    with (
        log_path.open("wb") as log,
        subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) as operator,
    ):
        try:
            yield operator
        finally:
            operator.terminate()
            operator.wait(timeout=60)


def ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def manifests(
    apps: int, integrations: int, namespaces: int, extra: str = ""
) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    allowed = ["shopify.com", "203.0.113.0"] + ([extra] if extra else [])
    for a in range(apps):
        namespace = f"bench-{a % namespaces}"
        app = f"app{a}"
        documents.append(
            {
                "apiVersion": GROUP_VERSION,
                "kind": "RetrieveApplication",
                "metadata": {"name": app, "namespace": namespace},
                "spec": {
                    "webhook": {"enabled": True, "domain": "bench.example"},
                    "allowedList": allowed,
                    "receiver": {"replicas": 1},
                    "worker": {"replicas": 1},
                },
            }
        )
        if extra:
            continue
        for i in range(integrations):
            documents.append(
                {
                    "apiVersion": GROUP_VERSION,
                    "kind": "Integration",
                    "metadata": {"name": f"{app}-int{i}", "namespace": namespace},
                    "spec": {
                        "application": app,
                        "destinations": [
                            {"name": "sink", "http": {"url": "https://sink.example/in"}}
                        ],
                    },
                }
            )
    return documents


def post_status(port: int, path: str, source: str) -> int:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=5, source_address=(source, 0)
    )
    try:
        connection.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def measure_propagation(cluster: KubeTestCluster, rounds: int) -> list[float]:
    """Seconds from `kubectl apply` of a whitelist change to a running receiver enforcing it.

    A real `retrieve receiver --from-cluster` serves app0 (bench-0) and reads the ConfigMap the
    operator writes; each round toggles 127.0.0.2 in and out of the app's allowedList.
    """
    integration = derive_integration_id("bench-0", "app0-int0")
    path = f"/integration/{integration}"
    port, admin = free_port(), free_port()
    timings: list[float] = []
    with RedisServer() as redis:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "retrieve_cli.main", "--log-level", "WARNING", "receiver",
             "--from-cluster", "--namespace", "bench-0", "--app", "app0", "--redis-url",
             redis.url, "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin)],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        )  # fmt: skip
        try:
            wait_for(lambda: _ready(admin), "receiver ready", 60)
            for round_ in range(rounds * 2):
                admit = round_ % 2 == 0
                extra = "127.0.0.2" if admit else "192.0.2.1"
                document = manifests(1, 0, 1, extra=extra)[0]
                started = time.monotonic()
                apply(cluster, [document])

                def enforced(admit: bool = admit) -> bool:
                    status = post_status(port, path, "127.0.0.2")
                    return status != 403 if admit else status == 403

                wait_for(enforced, "whitelist change enforced", 60)
                timings.append(time.monotonic() - started)
        finally:
            receiver.terminate()
            receiver.wait(30)
    return timings


def _ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def apply(cluster: KubeTestCluster, documents: list[dict[str, Any]]) -> None:
    chunk = 200
    for start in range(0, len(documents), chunk):
        body = {"apiVersion": "v1", "kind": "List", "items": documents[start : start + chunk]}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body), timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--integrations", type=int, default=10)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--propagation-rounds", type=int, default=5)
    args = parser.parse_args()
    total = args.apps * args.integrations
    mib = 1024 * 1024
    # Stopped from outside: unwind, so the operator, the control plane and Redis are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory() as tmp_dir, RedisServer() as redis:
        tmp = Path(tmp_dir)
        policy, audit_log = tmp / "audit-policy.yaml", tmp / "audit.log"
        policy.write_text(AUDIT_POLICY)
        audit_log.touch()
        audit = [f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}"]
        # One receiver Service (a ClusterIP) per application: more than a /24 holds.
        with KubeTestCluster(
            apiserver_args=audit, service_cluster_ip_range="10.96.0.0/16"
        ) as cluster:
            cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
            for crd in ("retrieveapplications.retrievetl.com", "integrations.retrievetl.com"):
                cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}")
            for n in range(args.namespaces):
                cluster.kubectl("create", "namespace", f"bench-{n}")

            env = {
                **os.environ,
                "KUBECONFIG": str(cluster.kubeconfig),
                "RETRIEVE_RUNTIME_IMAGE": "registry.example/retrieve-runtime:bench",
                "RETRIEVE_REDIS_URL": redis.url,
                "RETRIEVE_STATUS_INTERVAL_SECONDS": str(STATUS_INTERVAL_SECONDS),
                "RETRIEVE_OPERATOR_METRICS_PORT": "0",
            }
            first_log, second_log = tmp / "operator.log", tmp / "operator-restarted.log"

            def all_integrations_ready() -> bool:
                objs = items(cluster, "integrations")
                return len(objs) == total and all(
                    ready(o) and (o.get("status") or {}).get("webhookURL") for o in objs
                )

            with running_operator(env, first_log) as operator:
                time.sleep(3)  # let the operator start its watches
                cpu_before = cpu_seconds(operator.pid)
                started = time.monotonic()
                apply(cluster, manifests(args.apps, args.integrations, args.namespaces))
                applied = time.monotonic() - started

                started = time.monotonic()
                wait_for(all_integrations_ready, f"{total} Integrations Ready", args.timeout)
                to_ready = time.monotonic() - started
                apps_ready = all(ready(a) for a in items(cluster, "retrieveapplications"))
                cpu_create = cpu_seconds(operator.pid) - cpu_before

                started = time.monotonic()
                apply(cluster, manifests(args.apps, 0, args.namespaces, extra="198.51.100.0/24"))

                def all_apps_updated() -> bool:
                    objs = items(cluster, "retrieveapplications")
                    return all(ready(o) for o in objs)

                wait_for(all_apps_updated, "every application's update observed", args.timeout)
                to_update = time.monotonic() - started

                cluster.kubectl(
                    "scale", "deployment", "app0-receiver", "-n", "bench-0", "--replicas=7"
                )
                started = time.monotonic()

                def repaired() -> bool:
                    out = cluster.kubectl("get", "deployment", "app0-receiver", "-n", "bench-0",
                                          "-o", "jsonpath={.spec.replicas}").stdout  # fmt: skip
                    return out.strip() == "1"

                drift = wait_for(repaired, "drift repaired", 120)
                propagation = measure_propagation(cluster, args.propagation_rounds)
                memory = proc_status(operator.pid)

                # Settled before the restart: the status refresh has written every
                # Integration's counters (else the restarted operator writes them first).
                def counted() -> bool:
                    return all("queueDepth" in (o.get("status") or {})
                               for o in items(cluster, "integrations"))  # fmt: skip

                wait_for(counted, "every Integration's counters in its status", args.timeout)

            # The restart: what the operator writes, from its start until it has resumed
            # every object and one status interval has passed.
            _, offset = operator_writes(audit_log, 0)
            with running_operator(env, second_log) as operator:
                started = time.monotonic()
                resumed = "Resuming is processed"
                wait_for(lambda: count_lines(second_log, resumed) >= args.apps + total,
                         "every object resumed", args.timeout)  # fmt: skip
                to_resume = time.monotonic() - started
                time.sleep(STATUS_INTERVAL_SECONDS + 5)
                restart_writes, _ = operator_writes(audit_log, offset)
                still_ready = all_integrations_ready()
                memory_restarted = proc_status(operator.pid)
                control_plane = cluster.rss_bytes()
        errors = error_lines(first_log) + error_lines(second_log)

    print(f"applications x integrations: {args.apps} x {args.integrations} = {total}")
    print(f"kubectl apply of all objects:           {applied:6.1f} s")
    print(f"until all Integrations URL + Ready:     {to_ready:6.1f} s after the apply "
          f"(apps ready: {apps_ready})")  # fmt: skip
    print(f"operator CPU during creation:           {cpu_create:6.1f} s")
    print(f"until every application update seen:   {to_update:6.1f} s")
    print(f"drift repair (scaled receiver):         {drift:6.1f} s")
    print(
        f"whitelist change -> receiver enforcing:  median {statistics.median(propagation):.2f} s, "
        f"max {max(propagation):.2f} s over {len(propagation)} changes"
    )
    rss, peak = memory["VmRSS"] / mib, memory["VmHWM"] / mib
    print(f"operator RSS now / peak:                {rss:6.1f} / {peak:.1f} MiB")
    print(f"restart: every object resumed after     {to_resume:6.1f} s "
          f"(all still Ready: {still_ready}); peak RSS "
          f"{memory_restarted['VmHWM'] / mib:.1f} MiB")  # fmt: skip
    print(f"restart: operator writes until settled:  {sum(restart_writes.values())}")
    for call, count in sorted(restart_writes.items()):
        print(f"  {call:38}{count:6d}")
    for name, used in sorted(control_plane.items()):
        print(f"{name + ' RSS:':40}{used / mib:6.1f} MiB")
    print(f"operator ERROR log lines:               {len(errors)}")
    for line in errors[:10]:
        print("  " + line[:300])
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
