"""`retrieve operator`: run the kopf operator with the project's handlers."""

from __future__ import annotations

import argparse
import asyncio
import importlib


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    importlib.import_module("retrieve_operator.handlers")  # registers the handlers
    clusterwide = args.all_namespaces or not args.namespaces
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide,
            namespaces=() if clusterwide else tuple(args.namespaces),
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0
