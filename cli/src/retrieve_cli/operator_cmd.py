"""`retrieve operator`: run the kopf operator with the project's handlers.

Peering (one active operator among replicas) has three modes:

- ``--peering NAME`` (what the chart runs): mandatory. kopf reconciles nothing until the
  ClusterKopfPeering (or, with ``-n``, the KopfPeering in each namespace) of that name exists,
  and says nothing while it waits; so this command checks for it at start and logs, every
  ``REMINDER_SECONDS`` until it appears, which object is missing and how to fix it.
- ``--standalone``: no peering; for a single operator.
- neither (run by hand): kopf joins the peering object ``retrieve-operator`` if the chart made
  one (so a local operator and the chart's never act at once) and runs alone when there is none.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from retrieve_operator.settings import DEFAULT_PEERING_NAME

log = logging.getLogger("retrieve.operator")

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
REMINDER_SECONDS = 30.0


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    importlib.import_module("retrieve_operator.handlers")  # registers the handlers
    clusterwide = args.all_namespaces or not args.namespaces
    namespaces: tuple[str, ...] = () if clusterwide else tuple(args.namespaces)
    peering: str | None = None if args.standalone else args.peering
    if args.standalone:
        log.info("peering: none (--standalone); run one such operator only")
    elif peering is None:
        log.info(
            "peering: joins %s %r if it exists (the chart creates it), else runs alone",
            "ClusterKopfPeering" if clusterwide else "KopfPeering",
            DEFAULT_PEERING_NAME,
        )
    asyncio.run(
        _operate(
            kopf.operator(
                clusterwide=clusterwide,
                namespaces=namespaces,
                # None (not False) lets kopf detect the mode: see the module docstring.
                standalone=True if args.standalone else None,
                peering_name=peering,
                liveness_endpoint=args.liveness or None,
            ),
            peering,
            namespaces,
        )
    )
    return 0


async def _operate(
    operator: Awaitable[Any], peering: str | None, namespaces: Sequence[str]
) -> None:
    watch = (
        asyncio.create_task(watch_mandatory_peering(peering, namespaces))
        if peering is not None
        else None
    )
    try:
        await operator
    finally:
        if watch is not None:
            watch.cancel()


def peering_fix(name: str, namespaces: Sequence[str]) -> str:
    """How to create the missing peering object(s), or do without."""
    if namespaces:
        objects = " ".join(
            f"kubectl apply -f - <<< '{{apiVersion: kopf.dev/v1, kind: KopfPeering, "
            f"metadata: {{name: {name}, namespace: {namespace}}}}}';"
            for namespace in namespaces
        )
    else:
        objects = (
            f"kubectl apply -f - <<< '{{apiVersion: kopf.dev/v1, kind: ClusterKopfPeering, "
            f"metadata: {{name: {name}}}}}'"
        )
    return (
        f"create it (the chart does: operator.peering.enabled) with: {objects} "
        "or run `retrieve operator` without --peering (joins a peering object if one exists, "
        "else runs alone) or with --standalone"
    )


async def watch_mandatory_peering(name: str, namespaces: Sequence[str]) -> None:
    """Logs what the operator waits for while its mandatory peering object is missing."""
    warned = False
    while True:
        try:
            missing = await asyncio.to_thread(missing_peerings, name, namespaces)
        except Exception as exc:  # the check is advice: kopf reports its own API errors
            log.debug("could not check the peering object %r: %s", name, exc)
            return
        if not missing:
            if warned:
                log.info("peering object %r found: the operator resumes", name)
            return
        log.warning(
            "waiting for the kopf peering object %s: the operator reconciles nothing until it "
            "exists; %s",
            ", ".join(missing),
            peering_fix(name, namespaces),
        )
        warned = True
        await asyncio.sleep(REMINDER_SECONDS)


def missing_peerings(name: str, namespaces: Sequence[str]) -> list[str]:
    """The peering objects (as `Kind name` or `Kind namespace/name`) that do not exist; a
    missing kind (kopf's peering CRDs not installed) is named as such."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:  # where kopf looks first: the pod's ServiceAccount, then $KUBECONFIG
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    with client.ApiClient(configuration) as api_client:
        api = client.CustomObjectsApi(api_client)
        kind, plural = (
            ("KopfPeering", "kopfpeerings")
            if namespaces
            else ("ClusterKopfPeering", "clusterkopfpeerings")
        )
        missing: list[str] = []
        scopes: Sequence[str | None] = namespaces or [None]
        for namespace in scopes:
            where = f"{namespace}/{name}" if namespace else name
            try:
                if namespace:
                    api.get_namespaced_custom_object(
                        PEERING_GROUP, PEERING_VERSION, namespace, plural, name
                    )
                else:
                    api.get_cluster_custom_object(PEERING_GROUP, PEERING_VERSION, plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                # A 404 without a Status body: the kind itself is not served.
                served = '"kind":"Status"' in str(exc.body or "").replace(" ", "")
                missing.append(
                    f"{kind} {where!r}"
                    if served
                    else f"{kind} {where!r} (its CRD {plural}.{PEERING_GROUP} is not installed "
                    "either: kubectl apply -f crds/kopf.dev_peerings.yaml)"
                )
        return missing
