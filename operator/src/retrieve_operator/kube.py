"""The operator's only Kubernetes I/O (besides kopf's own watching and progress storage).

An aiohttp client on the credentials kopf's login helpers extract (kubeconfig, in-cluster
ServiceAccount, auth plugins via the kubernetes client library). Children are written with
server-side apply (field manager ``retrieve-operator``, ``force=true``): the request says the
whole desired state, the API server merges it, a no-op apply changes nothing (no new
resourceVersion, no watch event), and fields we stopped setting are removed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import kopf

from retrieve_core.config import CONFIG_MAP_KEY
from retrieve_core.constants import (
    API_GROUP_VERSION,
    KIND_APPLICATION,
    KIND_INTEGRATION,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PLURAL_APPLICATION,
    PLURAL_INTEGRATION,
)

from .gateway import GATEWAY_API_VERSION, HTTPROUTE_KIND, HTTPROUTE_PLURAL

FIELD_MANAGER: Final = "retrieve-operator"
APPLY_CONTENT_TYPE: Final = "application/apply-patch+yaml"  # JSON is YAML
MERGE_CONTENT_TYPE: Final = "application/merge-patch+json"
POOL_SIZE: Final = 32  # connections to the API server per client
# kopf's own client: a long-lived connection per watch stream (fewer than 16), the rest for its
# annotations and Events. kopf's default pool is unbounded: a burst of thousands of patches
# and Events opened as many TLS connections (memory here, CPU in the API server).
KOPF_POOL_SIZE: Final = 64

log = logging.getLogger(__name__)

PLURALS: Final[Mapping[tuple[str, str], str]] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Secret"): "secrets",
    ("apps/v1", "Deployment"): "deployments",
    ("networking.k8s.io/v1", "Ingress"): "ingresses",
    ("batch/v1", "CronJob"): "cronjobs",
    (GATEWAY_API_VERSION, HTTPROUTE_KIND): HTTPROUTE_PLURAL,
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    (API_GROUP_VERSION, KIND_APPLICATION): PLURAL_APPLICATION,
    (API_GROUP_VERSION, KIND_INTEGRATION): PLURAL_INTEGRATION,
}


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


class KubeError(Exception):
    """An API request failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def retriable(self) -> bool:
        """Worth retrying later: throttling, server trouble, no connection, a conflict."""
        return self.status in (0, 409, 429) or self.status >= 500


class InvalidObject(KubeError):
    """The API server refused an object as invalid (400/422): the spec needs a change."""


class NamespaceTerminating(KubeError):
    """The namespace is being deleted: nothing can be created there any more."""


class KindNotServed(KubeError):
    """The API server does not serve this kind (e.g. an HTTPRoute before the Gateway API CRDs
    are installed)."""


def _error(status: int, message: str, payload: Mapping[str, Any] | None) -> KubeError:
    causes = ((payload or {}).get("details") or {}).get("causes") or []
    if status == 403 and any(c.get("reason") == "NamespaceTerminating" for c in causes):
        return NamespaceTerminating(status, message)
    # A 404 that names no object (only an apply, which creates, can see one): the path itself
    # is unknown, no such resource type yet ("404 page not found" for a group not served at
    # all, "the server could not find the requested resource" for a kind of a served group).
    details = (payload or {}).get("details") or {}
    if status == 404 and not details.get("kind"):
        return KindNotServed(status, message)
    # Server-side apply reports an object it cannot convert (a bad quantity...) as a 500.
    if status in (400, 422) or (status == 500 and "failed to convert new object" in message):
        return InvalidObject(status, message)
    return KubeError(status, message)


@dataclass(frozen=True)
class Applied:
    body: dict[str, Any]
    created: bool

    @property
    def version(self) -> str:
        """Changes when the object's content changes: generation where there is one."""
        meta = self.body.get("metadata") or {}
        return str(meta.get("generation") or meta.get("resourceVersion") or "")


def _login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    info = kopf.login_via_client(logger=log, settings=settings)
    if info is None:  # pragma: no cover - the kubernetes client is a dependency
        raise kopf.LoginError("no Kubernetes credentials found")
    return info


def kopf_session(settings: kopf.OperatorSettings) -> kopf.AiohttpSession:
    """kopf's client (watches, its annotations, Events) on the credentials kopf would find
    itself, with a bounded connection pool. kopf closes it on a new login."""
    info = _login(settings)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        auth = info.as_aiohttp_basic_auth()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=KOPF_POOL_SIZE, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        auth=auth,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
        aiohttp_session=session,
    )


class KubeApi:
    """A small async client for the few calls the reconciler makes."""

    def __init__(
        self,
        login: kopf.ConnectionInfo,
        *,
        settings: kopf.OperatorSettings | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._info = login
        self._settings = settings or kopf.OperatorSettings()
        # Per request on the wire, not in total: with thousands of objects, requests queue for
        # one of the pool's connections, and that wait is no sign of a stuck API server.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    def login(cls, settings: kopf.OperatorSettings) -> KubeApi:
        """Credentials as kopf finds them: in-cluster ServiceAccount, else $KUBECONFIG."""
        return cls(_login(settings), settings=settings)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_SIZE, ssl=self._info.as_ssl_context()),
                headers={**self._info.as_http_headers(), "User-Agent": FIELD_MANAGER},
                timeout=self._timeout,
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        not_found_ok: bool = True,
    ) -> tuple[int, dict[str, Any] | None]:
        session = self._open()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        for attempt in range(2):
            try:
                async with session.request(
                    method,
                    self._info.server.rstrip("/") + path,
                    params=params,
                    data=data,
                    headers=headers,
                ) as response:
                    text = await response.text()
                    status = response.status
            except aiohttp.ServerDisconnectedError as exc:
                # A kept-alive connection the API server closed meanwhile: the request did not
                # get an answer; each of ours may be sent again (apply, merge patch, GET, and a
                # DELETE with a uid precondition are idempotent).
                if attempt == 0:
                    continue
                raise KubeError(0, f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise KubeError(0, f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
            if status == 401 and attempt == 0:
                await self._relogin()
                session = self._open()
                continue
            break
        if status == 404 and not_found_ok:
            return status, None
        payload: dict[str, Any] | None = None
        try:
            loaded = json.loads(text) if text else None
            payload = loaded if isinstance(loaded, dict) else None
        except ValueError:
            payload = None
        if status >= 400:
            message = str((payload or {}).get("message") or text[:500])
            raise _error(status, f"{method} {path}: {message}", payload)
        return status, payload

    async def _relogin(self) -> None:
        """Bound ServiceAccount tokens rotate: read the credentials again."""
        self._info = await asyncio.to_thread(_login, self._settings)
        old, self._session = self._session, None
        if old is not None:  # requests in flight on it finish first
            loop = asyncio.get_running_loop()
            loop.call_later(60, lambda: self._closing.add(loop.create_task(old.close())))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----------------------------------------------------------------------- writes

    async def apply(self, manifest: Mapping[str, Any]) -> Applied:
        """Server-side apply of one namespaced object."""
        meta = manifest["metadata"]
        path = object_path(
            manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
        )
        status, body = await self._request(
            "PATCH",
            path,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=manifest,
            content_type=APPLY_CONTENT_TYPE,
            not_found_ok=False,
        )
        return Applied(body=body or {}, created=status == 201)

    async def delete_managed(
        self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str
    ) -> bool:
        """Delete a child this operator made for the owner; True when something was deleted.

        An object of that name that is not ours (no owner reference to `owner_uid`, or not
        labelled as managed by this operator) is left alone.
        """
        path = object_path(api_version, kind, namespace, name)
        _, current = await self._request("GET", path)
        if current is None:
            return False
        meta = current.get("metadata") or {}
        owned = any(ref.get("uid") == owner_uid for ref in meta.get("ownerReferences") or [])
        managed = (meta.get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY
        if not (owned and managed):
            log.warning(
                "not deleting %s %s/%s: not managed by this application", kind, namespace, name
            )
            return False
        preconditions = {"uid": meta.get("uid")}
        status, _ = await self._request(
            "DELETE",
            path,
            body={
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "preconditions": preconditions,
                "propagationPolicy": "Background",
            },
        )
        return status != 404

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> bool:
        """Merge-patch the status subresource; False when the object is gone."""
        path = object_path(api_version, kind, namespace, name) + "/status"
        code, _ = await self._request(
            "PATCH", path, body={"status": dict(status)}, content_type=MERGE_CONTENT_TYPE
        )
        return code != 404

    # ----------------------------------------------------------------------- reads

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        """One object, None when it does not exist."""
        _, body = await self._request("GET", object_path(api_version, kind, namespace, name))
        return body

    async def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The keys of a Secret, None when it does not exist. Values are never kept."""
        _, body = await self._request("GET", object_path("v1", "Secret", namespace, name))
        if body is None:
            return None
        return frozenset((body.get("data") or {}).keys()) | frozenset(
            (body.get("stringData") or {}).keys()
        )

    async def list_names(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[str]:
        """Names of the objects of a kind in a namespace that carry all `labels`."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        _, body = await self._request(
            "GET", object_path(api_version, kind, namespace), params={"labelSelector": selector}
        )
        items = (body or {}).get("items") or []
        return sorted(str((item.get("metadata") or {}).get("name")) for item in items)

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One value of a Secret (e.g. an application's Redis URL), None when absent.
        The caller uses it and never logs it."""
        _, body = await self._request("GET", object_path("v1", "Secret", namespace, name))
        if body is None:
            return None
        encoded = (body.get("data") or {}).get(key)
        if encoded is not None:
            return base64.b64decode(encoded).decode()
        plain = (body.get("stringData") or {}).get(key)
        return str(plain) if plain is not None else None

    async def read_config_json(self, namespace: str, name: str) -> str | None:
        """The `config.json` of a ConfigMap, None when there is none."""
        _, body = await self._request("GET", object_path("v1", "ConfigMap", namespace, name))
        if body is None:
            return None
        value = (body.get("data") or {}).get(CONFIG_MAP_KEY)
        return str(value) if value is not None else None


def reference(api_version: str, kind: str, namespace: str, name: str, uid: str) -> dict[str, Any]:
    """A minimal body for kopf's event posting."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
    }


def post_event(obj: Mapping[str, Any], *, warning: bool, reason: str, message: str) -> None:
    """A Kubernetes Event on `obj`, posted by kopf's event queue (never blocks, never raises)."""
    try:
        kopf.event(
            obj,  # type: ignore[arg-type]  # kopf reads apiVersion/kind/metadata only
            type="Warning" if warning else "Normal",
            reason=reason,
            message=message[:1000],
        )
    except LookupError:  # outside a running operator (unit tests): nowhere to post
        log.debug("event not posted (no operator running): %s %s", reason, message)
