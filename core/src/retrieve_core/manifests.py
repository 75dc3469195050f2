"""Loading the same YAML manifests a user would `kubectl apply`, with no cluster (dev mode).

A bad manifest gives an error that names the file, the object and the field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .config import ApplicationConfig, IntegrationConfig, SecretStore
from .constants import API_GROUP_VERSION, KIND_APPLICATION, KIND_INTEGRATION
from .models import IntegrationSpec, RetrieveApplicationSpec, effective_integration_id

DEFAULT_NAMESPACE = "default"


class ManifestError(ValueError):
    """An invalid manifest: the message names the file, the object and the field."""


def format_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    parts = []
    for item in error.errors():
        location = ".".join([prefix, *(str(p) for p in item["loc"])])
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        parts.append(f"{location}: {message}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Manifest:
    source: str
    document: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.document.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.document.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str((self.document.get("metadata") or {}).get("namespace") or DEFAULT_NAMESPACE)

    @property
    def label(self) -> str:
        return f"{self.source}: {self.kind} {self.namespace}/{self.name}"


def iter_manifests(paths: Iterable[Path]) -> Iterator[Manifest]:
    for path in paths:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
        for index, document in enumerate(documents):
            if document is None:
                continue
            if not isinstance(document, dict):
                raise ManifestError(f"{path}: document {index + 1} is not a mapping")
            if document.get("kind") == "List":
                for item in document.get("items") or []:
                    yield Manifest(str(path), item)
                continue
            yield Manifest(str(path), document)


def manifest_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ManifestError(f"{directory}: not a directory")
    return sorted(p for p in directory.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def _require_name(manifest: Manifest) -> None:
    if not manifest.name:
        raise ManifestError(f"{manifest.label}: metadata.name is required")


def _check_api_version(manifest: Manifest) -> None:
    if manifest.document.get("apiVersion") != API_GROUP_VERSION:
        raise ManifestError(
            f"{manifest.label}: apiVersion must be {API_GROUP_VERSION}, "
            f"not {manifest.document.get('apiVersion')!r}"
        )


def _secret_data(manifest: Manifest) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for key, value in (manifest.document.get("data") or {}).items():
        try:
            data[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ManifestError(f"{manifest.label}: data.{key}: not valid base64") from exc
    for key, value in (manifest.document.get("stringData") or {}).items():
        data[str(key)] = str(value).encode()
    return data


@dataclass(frozen=True)
class LoadedConfig:
    applications: tuple[ApplicationConfig, ...]
    secrets: SecretStore


def load_directory(directory: Path) -> LoadedConfig:
    return load_manifests(iter_manifests(manifest_files(directory)))


def load_manifests(manifests: Iterable[Manifest]) -> LoadedConfig:
    apps: dict[tuple[str, str], tuple[Manifest, RetrieveApplicationSpec]] = {}
    integrations: list[tuple[Manifest, IntegrationSpec]] = []
    secrets = SecretStore()
    for manifest in manifests:
        if manifest.kind == KIND_APPLICATION:
            _check_api_version(manifest)
            _require_name(manifest)
            try:
                spec = RetrieveApplicationSpec.model_validate(manifest.document.get("spec") or {})
            except ValidationError as exc:
                raise ManifestError(f"{manifest.label}: {format_validation_error(exc)}") from exc
            key = (manifest.namespace, manifest.name)
            if key in apps:
                raise ManifestError(f"{manifest.label}: defined twice")
            apps[key] = (manifest, spec)
        elif manifest.kind == KIND_INTEGRATION:
            _check_api_version(manifest)
            _require_name(manifest)
            try:
                ispec = IntegrationSpec.model_validate(manifest.document.get("spec") or {})
            except ValidationError as exc:
                raise ManifestError(f"{manifest.label}: {format_validation_error(exc)}") from exc
            integrations.append((manifest, ispec))
        elif manifest.kind == "Secret":
            _require_name(manifest)
            secrets.put_secret(manifest.namespace, manifest.name, _secret_data(manifest))
        # Other kinds (Namespace, ConfigMap, ...) are allowed in the folder and ignored.

    by_app: dict[tuple[str, str], list[IntegrationConfig]] = {key: [] for key in apps}
    seen_ids: dict[str, str] = {}
    for manifest, ispec in integrations:
        app_key = (manifest.namespace, ispec.application)
        if app_key not in apps:
            raise ManifestError(
                f"{manifest.label}: spec.application: RetrieveApplication "
                f"{manifest.namespace}/{ispec.application} not found"
            )
        integration_id = effective_integration_id(manifest.namespace, manifest.name, ispec)
        if integration_id in seen_ids:
            raise ManifestError(
                f"{manifest.label}: spec.integrationId: {integration_id} is already used by "
                f"{seen_ids[integration_id]}"
            )
        seen_ids[integration_id] = f"Integration {manifest.namespace}/{manifest.name}"
        if ispec.verify:
            for ref in ispec.verify.secret_refs:
                if secrets.get(manifest.namespace, ref) is None:
                    raise ManifestError(
                        f"{manifest.label}: spec.verify.secretRefs: Secret "
                        f"{manifest.namespace}/{ref.name} with key {ref.key!r} not found"
                    )
        by_app[app_key].append(IntegrationConfig(id=integration_id, name=manifest.name, spec=ispec))

    applications = tuple(
        ApplicationConfig(
            namespace=namespace, name=name, spec=spec, integrations=tuple(by_app[(namespace, name)])
        )
        for (namespace, name), (_, spec) in sorted(apps.items())
    )
    return LoadedConfig(applications=applications, secrets=secrets)
