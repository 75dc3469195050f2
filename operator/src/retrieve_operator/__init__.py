"""The Retrieve Kubernetes operator (kopf): CRDs, RBAC and reconcilers."""
