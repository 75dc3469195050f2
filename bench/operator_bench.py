"""Operator benchmark: N applications x M integrations against the real test API server.

Starts etcd + kube-apiserver + kube-controller-manager (tests/support/kube_cluster.py), applies
the CRDs, runs ``kopf run -A --standalone -m retrieve_operator.handlers`` as a subprocess, creates
the applications and integrations in one go, and measures:

- the time until every Integration has a webhookURL and Ready=True (and every application
  Ready=True for its current generation);
- the time until a change to every application (a new whitelist entry) is observed;
- the time to repair drift (a receiver Deployment scaled by hand);
- the operator's peak RSS (VmHWM) and CPU time, and the control plane's RSS.

    python bench/operator_bench.py [--apps 50] [--integrations 10] [--namespaces 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from retrieve_cli.redis_process import PrivateRedis  # noqa: E402
from retrieve_core.models import derive_integration_id  # noqa: E402
from tests.support.kube_cluster import KubeTestCluster  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

GROUP_VERSION = "retrievetl.com/v1alpha1"


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
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
    return time.monotonic() - started


def items(cluster: KubeTestCluster, kind: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", kind, "-A", "-o", "json", timeout=120).stdout
    return list(json.loads(out)["items"])


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
    with PrivateRedis() as redis:
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

    with KubeTestCluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        for crd in ("retrieveapplications.retrievetl.com", "integrations.retrievetl.com"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}")
        for n in range(args.namespaces):
            cluster.kubectl("create", "namespace", f"bench-{n}")

        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "RETRIEVE_RUNTIME_IMAGE": "registry.example/retrieve-runtime:bench",
            "RETRIEVE_REDIS_URL": "redis://redis.bench:6379/0",
        }
        log_path = Path(tmp) / "operator.log"
        command = [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "-A",
            "--standalone",
            "-m",
            "retrieve_operator.handlers",
        ]
        with (
            log_path.open("wb") as log,
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) as operator,
        ):
            try:
                time.sleep(3)  # let the operator start its watches
                cpu_before = cpu_seconds(operator.pid)
                started = time.monotonic()
                apply(cluster, manifests(args.apps, args.integrations, args.namespaces))
                applied = time.monotonic() - started

                def all_integrations_ready() -> bool:
                    objs = items(cluster, "integrations")
                    return len(objs) == total and all(
                        ready(o) and (o.get("status") or {}).get("webhookURL") for o in objs
                    )

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
                    out = cluster.kubectl(
                        "get",
                        "deployment",
                        "app0-receiver",
                        "-n",
                        "bench-0",
                        "-o",
                        "jsonpath={.spec.replicas}",
                    ).stdout
                    return out.strip() == "1"

                drift = wait_for(repaired, "drift repaired", 120)
                propagation = measure_propagation(cluster, args.propagation_rounds)
                memory = proc_status(operator.pid)
                control_plane = cluster.rss_bytes()
            finally:
                operator.terminate()
                operator.wait(timeout=60)
        errors = [
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if "ERROR" in line and "storage is (re)initializing" not in line
        ]

    mib = 1024 * 1024
    print(f"applications x integrations: {args.apps} x {args.integrations} = {total}")
    print(f"kubectl apply of all objects:           {applied:6.1f} s")
    print(f"until all Integrations URL + Ready:     {to_ready:6.1f} s (apps ready: {apps_ready})")
    print(f"operator CPU during creation:           {cpu_create:6.1f} s")
    print(f"until every application update seen:   {to_update:6.1f} s")
    print(f"drift repair (scaled receiver):         {drift:6.1f} s")
    print(
        f"whitelist change -> receiver enforcing:  median {statistics.median(propagation):.2f} s, "
        f"max {max(propagation):.2f} s over {len(propagation)} changes"
    )
    rss, peak = memory["VmRSS"] / mib, memory["VmHWM"] / mib
    print(f"operator RSS now / peak:                {rss:6.1f} / {peak:.1f} MiB")
    for name, used in sorted(control_plane.items()):
        print(f"{name + ' RSS:':40}{used / mib:6.1f} MiB")
    print(f"operator ERROR log lines:               {len(errors)}")
    for line in errors[:10]:
        print("  " + line[:300])


if __name__ == "__main__":
    main()
