"""Tests against a real API server share one control plane for the whole session."""

from __future__ import annotations

from tests.support.kube_fixtures import kube_cluster, kube_namespace

__all__ = ["kube_cluster", "kube_namespace"]
