"""A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) on loopback.

Started by one piece of code for the tests' fixtures (``tests/support/kube_fixtures.py``, the
``kube`` tier) and the operator benchmark (``bench/operator_bench.py``).

The binaries are built from Go modules by ``hack/testcluster/build.sh`` (cached under
``$RETRIEVE_TESTCLUSTER_CACHE``, default ``~/.cache/retrieve-testcluster``); set
``RETRIEVE_TESTCLUSTER_BIN`` to a directory holding them to skip the build script entirely.

Everything listens on free ports on 127.0.0.1 and lives in one temporary directory that
:meth:`KubeTestCluster.stop` removes (set ``RETRIEVE_TESTCLUSTER_KEEP=1`` to keep it for
debugging). No scheduler and no kubelet run: pods are never scheduled, but controllers
(Deployment -> ReplicaSet, garbage collection, ServiceAccounts, ...) do run.

One file of ~550 lines on purpose: a CA, serving and client certificates, tokens, three
processes with their flags and readiness waits make one control plane, started in one place.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
TESTCLUSTER_DIR: Final = REPO_ROOT / "hack" / "testcluster"
BUILD_SCRIPT: Final = TESTCLUSTER_DIR / "build.sh"
VERSIONS_FILE: Final = TESTCLUSTER_DIR / "versions.env"

BIN_ENV: Final = "RETRIEVE_TESTCLUSTER_BIN"
KEEP_ENV: Final = "RETRIEVE_TESTCLUSTER_KEEP"
BINARIES: Final = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
# 254 Services; a bench with more passes a larger range (ServiceCIDR allows up to a /12).
SERVICE_CLUSTER_IP_RANGE: Final = "10.0.0.0/24"
SA_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse the ``KEY=value`` lines of ``versions.env`` (shared with build.sh)."""
    versions: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        versions[key.strip()] = value.strip().strip("\"'")
    return versions


_VERSIONS: Final = read_versions()
K8S_VERSION: Final[str] = _VERSIONS["K8S_VERSION"]
ETCD_VERSION: Final[str] = _VERSIONS["ETCD_VERSION"]
HELM_VERSION: Final[str] = _VERSIONS["HELM_VERSION"]


class KubeClusterError(RuntimeError):
    """The test control plane could not be built, started or used."""


def locate_binaries() -> Path:
    """Return the directory holding the control-plane binaries, building them if needed.

    ``$RETRIEVE_TESTCLUSTER_BIN`` wins; otherwise ``hack/testcluster/build.sh`` runs (a no-op
    when its cache is warm; a cold build takes tens of minutes) and its last stdout line is used.
    """
    env_dir = os.environ.get(BIN_ENV)
    if env_dir:
        bin_dir = Path(env_dir)
    else:
        try:
            # stderr is inherited so that build progress shows up in the test log.
            result = subprocess.run(
                ["bash", str(BUILD_SCRIPT)],
                stdout=subprocess.PIPE,
                text=True,
                check=False,
            )
        except OSError as exc:
            raise KubeClusterError(f"cannot run {BUILD_SCRIPT}: {exc}") from exc
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            raise KubeClusterError(
                f"{BUILD_SCRIPT} failed with exit code {result.returncode} "
                f"(see its stderr above); stdout:\n{result.stdout[-2000:]}"
            )
        bin_dir = Path(lines[-1])
    missing = [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise KubeClusterError(f"missing binaries in {bin_dir}: {', '.join(missing)}")
    return bin_dir


def _free_ports(count: int) -> list[int]:
    """Reserve ``count`` distinct free TCP ports on 127.0.0.1 (released just before use)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child if the test process dies without calling stop()."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no log>"
    return data[-limit:].decode("utf-8", errors="replace")


class _Process:
    """One control-plane process, its output going to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        try:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, limit: int = 4000) -> str:
        self._log.flush()
        return _tail(self.log_path, limit)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM this process (by its own pid), then SIGKILL after ``grace`` seconds."""
        try:
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        self.popen.kill()
                    self.popen.wait(timeout=grace)
        finally:
            self._log.close()


class KubeTestCluster:
    """etcd + kube-apiserver + kube-controller-manager on loopback, for one test session.

    Use as a context manager or call :meth:`start` / :meth:`stop`. After start:
    ``kubeconfig`` (admin, token auth), ``server`` (https URL), ``bin_dir``, ``token``.
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        startup_timeout: float = 60.0,
        keep_dir: bool | None = None,
        apiserver_args: Sequence[str] = (),
        service_cluster_ip_range: str = SERVICE_CLUSTER_IP_RANGE,
    ) -> None:
        self.service_cluster_ip_range = service_cluster_ip_range
        self._bin_dir = bin_dir
        # More kube-apiserver flags, e.g. an audit policy (--audit-policy-file, --audit-log-path).
        self.apiserver_args = tuple(apiserver_args)
        self.startup_timeout = startup_timeout
        self.keep_dir = (
            keep_dir if keep_dir is not None else os.environ.get(KEEP_ENV, "") not in ("", "0")
        )
        self.token = secrets.token_hex(16)
        self._dir: Path | None = None
        self._kubeconfig: Path | None = None
        self._server: str | None = None
        self._procs: list[_Process] = []
        self.ports: dict[str, int] = {}

    # -- public properties ------------------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            raise KubeClusterError("binaries not located yet: call start() first")
        return self._bin_dir

    @property
    def workdir(self) -> Path:
        if self._dir is None:
            raise KubeClusterError("cluster not started")
        return self._dir

    @property
    def kubeconfig(self) -> Path:
        if self._kubeconfig is None:
            raise KubeClusterError("cluster not started")
        return self._kubeconfig

    @property
    def server(self) -> str:
        if self._server is None:
            raise KubeClusterError("cluster not started")
        return self._server

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self._procs}

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> KubeTestCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the control plane; on any failure stop what was started and raise."""
        if self._dir is not None:
            raise KubeClusterError("cluster already started")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process this object started (reverse order) and remove the temp dir.

        Safe to call more than once and after a failed start().
        """
        errors: list[str] = []
        while self._procs:
            proc = self._procs.pop()
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{proc.name} (pid {proc.pid}): {exc}")
        if self._dir is not None:
            if self.keep_dir:
                print(f"[kube_cluster] keeping {self._dir}", file=sys.stderr)
            else:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._kubeconfig = None
        self._server = None
        if errors:
            raise KubeClusterError("could not stop: " + "; ".join(errors))

    def _start(self) -> None:
        if self._bin_dir is None:
            self._bin_dir = locate_binaries()
        d = Path(tempfile.mkdtemp(prefix="retrieve-kube-"))
        self._dir = d
        deadline = time.monotonic() + self.startup_timeout

        etcd_port, peer_port, api_port, kcm_port = _free_ports(4)
        self.ports = {"etcd": etcd_port, "etcd-peer": peer_port, "apiserver": api_port}
        self.ports["kube-controller-manager"] = kcm_port

        # Service-account signing key pair and static admin token.
        sa_key, sa_pub = d / "sa.key", d / "sa.pub"
        self._run_quiet(["openssl", "genrsa", "-out", str(sa_key), "2048"])
        self._run_quiet(["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)])
        tokens = d / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin,"system:masters"\n', encoding="utf-8")
        tokens.chmod(0o600)

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                f"--data-dir={d / 'etcd'}",
                "--name=default",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait(etcd, deadline, "etcd /health", lambda: self._etcd_healthy(etcd_url))

        self._server = f"https://127.0.0.1:{api_port}"
        pki = d / "pki"
        apiserver = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--profiling=false",
                *self.apiserver_args,
            ],
        )
        self._wait(apiserver, deadline, "kube-apiserver /readyz", lambda: self._api_ok("/readyz"))

        self._kubeconfig = d / "kubeconfig"
        self._write_kubeconfig(self._kubeconfig, "admin", self.token)
        kcm = self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self._kubeconfig}",
                f"--authentication-kubeconfig={self._kubeconfig}",
                f"--authorization-kubeconfig={self._kubeconfig}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={pki / 'apiserver.crt'}",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--profiling=false",
            ],
        )
        kcm_health = f"https://127.0.0.1:{kcm_port}/healthz"
        self._wait(
            kcm, deadline, "kube-controller-manager /healthz", lambda: _get(kcm_health)[0] == 200
        )
        self._wait(
            kcm,
            deadline,
            "namespace default and ServiceAccount default/default",
            lambda: self._api_ok("/api/v1/namespaces/default/serviceaccounts/default"),
        )

    # -- helpers for tests ------------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster (admin unless ``kubeconfig`` is given)."""
        argv = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        return self._run_tool(argv, input, check, timeout, env=None)

    def helm(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster, with its config/cache/data in the temp dir."""
        home = self.workdir / "helm"
        env = {
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
        }
        argv = [str(self.bin_dir / "helm"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        return self._run_tool(argv, input, check, timeout, env=env)

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, duration: str = "24h"
    ) -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount ``namespace/name``.

        The ServiceAccount must exist. The token comes from the TokenRequest API
        (``kubectl create token``), signed with this cluster's service-account key.
        """
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        if not token:
            raise KubeClusterError(f"empty token for serviceaccount {namespace}/{name}")
        path = self.workdir / f"kubeconfig-sa-{namespace}-{name}"
        self._write_kubeconfig(
            path, f"system:serviceaccount:{namespace}:{name}", token, namespace=namespace
        )
        return path

    def api_get(self, path: str, timeout: float = 60.0) -> Any:
        """GET an API path as admin and decode its JSON (cheaper than kubectl for big lists)."""
        status, body = _get(f"{self.server}{path}", self.token, timeout=timeout)
        if status != 200:
            raise KubeClusterError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each running control-plane process (Linux /proc)."""
        out: dict[str, int] = {}
        for proc in self._procs:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[proc.name] = int(line.split()[1]) * 1024
        return out

    # -- internals --------------------------------------------------------------------------
    def _spawn(self, name: str, args: Sequence[str]) -> _Process:
        proc = _Process(name, [str(self.bin_dir / name), *args], self.workdir / f"{name}.log")
        self._procs.append(proc)
        return proc

    def _wait(self, proc: _Process, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        while True:
            if not proc.alive():
                raise KubeClusterError(
                    f"{proc.name} exited with code {proc.popen.returncode} while waiting for "
                    f"{what}; last output:\n{proc.tail()}"
                )
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise KubeClusterError(
                    f"timed out after {self.startup_timeout:.0f}s waiting for {what}; "
                    f"last output of {proc.name}:\n{proc.tail()}"
                )
            time.sleep(0.25)

    @staticmethod
    def _etcd_healthy(url: str) -> bool:
        status, body = _get(f"{url}/health")
        return status == 200 and json.loads(body).get("health") == "true"

    def _api_ok(self, path: str) -> bool:
        return _get(f"{self.server}{path}", self.token)[0] == 200

    def _write_kubeconfig(
        self, path: Path, user: str, token: str, *, namespace: str = "default"
    ) -> None:
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "retrieve-test",
                    "cluster": {"server": self.server, "insecure-skip-tls-verify": True},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "retrieve-test",
                    "context": {"cluster": "retrieve-test", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "retrieve-test",
            "preferences": {},
        }
        # JSON is valid YAML, so every kubeconfig reader accepts this.
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        path.chmod(0o600)

    @staticmethod
    def _run_quiet(argv: Sequence[str]) -> None:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise KubeClusterError(f"{' '.join(argv)} failed:\n{result.stderr}")

    @staticmethod
    def _run_tool(
        argv: list[str],
        input_: str | None,
        check: bool,
        timeout: float,
        env: dict[str, str] | None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **env} if env is not None else None
        result = subprocess.run(
            argv,
            input=input_,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubeClusterError(
                f"{' '.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
            )
        return result


_INSECURE_TLS = ssl.create_default_context()
_INSECURE_TLS.check_hostname = False
_INSECURE_TLS.verify_mode = ssl.CERT_NONE


def _get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url`` (self-signed TLS accepted); return (status, body), 0 on connection errors."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_INSECURE_TLS) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""
