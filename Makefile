# Developer entry points. Python tools come from .venv (hack/setup.sh creates it).
.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

VENV ?= .venv
PY := $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
IMAGE_TAG ?= dev
OPERATOR_IMAGE ?= retrieve-operator:$(IMAGE_TAG)
RUNTIME_IMAGE ?= retrieve-runtime:$(IMAGE_TAG)
# helm from PATH, else the one the test control plane build made (hack/testcluster/build.sh).
HELM ?= $(firstword $(shell command -v helm) $(wildcard $(RETRIEVE_TESTCLUSTER_BIN)/helm) \
          $(wildcard $(HOME)/.cache/retrieve-testcluster/bin-*/helm))

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.PHONY: crds
crds: ## regenerate crds/, the CRD chart's files and the chart's RBAC rules from the models
	$(PY) -m retrieve_operator.crds

.PHONY: lint
lint: ## ruff, mypy (strict), generated-file drift, helm lint
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m retrieve_operator.crds --check
	@if [[ -n "$(HELM)" ]]; then \
	  $(HELM) lint --strict charts/retrieve-crds && $(HELM) lint --strict charts/retrieve; \
	else echo "lint: helm not found, chart lint skipped (make test runs it)"; fi

.PHONY: test
test: ## every pytest tier (unit, redis, e2e, kube); PYTEST_ARGS="-m unit" to select
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: images
images: ## build the operator and receiver/worker images (needs Docker)
	docker build -f images/Dockerfile --target operator -t $(OPERATOR_IMAGE) .
	docker build -f images/Dockerfile --target runtime -t $(RUNTIME_IMAGE) .

.PHONY: node-up
node-up: ## a real single-node cluster in a network namespace, no Docker (root; docs/node.md)
	hack/node/up.sh

.PHONY: node-down
node-down: ## stop the node and put the machine back
	hack/node/down.sh

.PHONY: node-install
node-install: ## the charts and examples on the node, as a user installs them (docs/node.md)
	hack/node/install.sh

.PHONY: kind-up
kind-up: ## kind cluster with Traefik (Ingress + Gateway API), the charts and the examples (needs Docker, kind)
	IMAGE_TAG=$(IMAGE_TAG) hack/kind-up.sh

.PHONY: kind-down
kind-down: ## delete the kind cluster
	hack/kind-down.sh
