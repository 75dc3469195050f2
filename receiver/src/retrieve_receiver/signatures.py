"""Webhook signatures (DESIGN.md, "Sender verification, dedupe and replay protection").

Pure: a `VerifySpec` plus secret values compile into a `SignatureScheme`; `verify` checks the raw
body and headers of one request. Comparison is constant-time over the decoded MAC bytes; any of
several secrets (rotation) and, where the format allows, any of several signatures may match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from retrieve_core.models import Preset, VerifySpec

Encoding = Literal["base64", "hex"]
Kind = Literal["hmac", "stripe", "standard-webhooks"]

MAX_SIGNATURES = 8  # per header: bounds the work a forged header can cause
_PLACEHOLDER = re.compile(r"(\{(?:body|timestamp|id)\})")
_WC_PING = re.compile(rb"webhook_id=[0-9]{1,20}")

_DIGESTS = {"hmac-sha1": "sha1", "hmac-sha256": "sha256", "hmac-sha512": "sha512"}


@dataclass(frozen=True, slots=True)
class _Defaults:
    kind: Kind
    header: str
    encoding: Encoding | None
    prefix: str = ""
    signed_content: str = "{body}"
    timestamp_header: str | None = None
    id_header: str | None = None


PRESETS: Mapping[Preset, _Defaults] = {
    Preset.SHOPIFY: _Defaults("hmac", "X-Shopify-Hmac-Sha256", "base64"),
    Preset.WOOCOMMERCE: _Defaults("hmac", "X-WC-Webhook-Signature", "base64"),
    Preset.GITHUB: _Defaults("hmac", "X-Hub-Signature-256", "hex", prefix="sha256="),
    Preset.STRIPE: _Defaults(
        "stripe", "Stripe-Signature", "hex", signed_content="{timestamp}.{body}"
    ),
    Preset.STANDARD_WEBHOOKS: _Defaults(
        "standard-webhooks",
        "webhook-signature",
        "base64",
        signed_content="{id}.{timestamp}.{body}",
        timestamp_header="webhook-timestamp",
        id_header="webhook-id",
    ),
    # generic: the header is required by the model; encoding None accepts hex or base64.
    Preset.GENERIC: _Defaults("hmac", "", None),
}

# Signature headers are never copied into jobs or logs.
SIGNATURE_HEADERS = frozenset(
    [d.header.lower() for d in PRESETS.values() if d.header] + ["x-hub-signature"]
)


@dataclass(frozen=True, slots=True)
class SignatureScheme:
    kind: Kind
    header: str
    digest: str
    encoding: Encoding | None
    prefix: str
    template: tuple[str, ...]  # literal text and "{body}"/"{timestamp}"/"{id}" parts
    timestamp_header: str | None
    id_header: str | None
    tolerance_seconds: int
    keys: tuple[bytes, ...]
    woocommerce_ping: bool = False


def _split_template(template: str) -> tuple[str, ...]:
    return tuple(part for part in _PLACEHOLDER.split(template) if part)


def standard_webhooks_key(secret: bytes) -> bytes:
    """`whsec_<base64>` is the base64 of the key; anything else is used as it is."""
    text = secret.strip()
    if text.startswith(b"whsec_"):
        text = text[len(b"whsec_") :]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return secret


def compile_scheme(
    spec: VerifySpec, secrets: Sequence[bytes], id_header: str | None = None
) -> SignatureScheme:
    """A scheme from the spec (preset defaults, overridden by explicit fields) and secrets.

    `id_header` is where `{id}` comes from for the generic scheme (default `webhook-id`).
    Raises ValueError for a scheme that can never verify (so callers fail closed).
    """
    preset = PRESETS[spec.preset]
    template = spec.signed_content or preset.signed_content
    timestamp_header = spec.timestamp_header or preset.timestamp_header
    the_id_header = preset.id_header or id_header or "webhook-id"
    header = spec.header or preset.header
    if not header:
        raise ValueError("no signature header")
    parts = _split_template(template)
    if preset.kind == "hmac" and "{timestamp}" in parts and not timestamp_header:
        raise ValueError("signedContent uses {timestamp} but timestampHeader is not set")
    keys = tuple(secrets)
    if preset.kind == "standard-webhooks":
        keys = tuple(standard_webhooks_key(k) for k in keys)
    return SignatureScheme(
        kind=preset.kind,
        header=header,
        digest=_DIGESTS[spec.algorithm or "hmac-sha256"],
        encoding=spec.encoding or preset.encoding,
        prefix=preset.prefix if spec.prefix is None else spec.prefix,
        template=parts,
        timestamp_header=timestamp_header,
        id_header=the_id_header,
        tolerance_seconds=spec.tolerance_seconds,
        keys=keys,
        woocommerce_ping=spec.preset is Preset.WOOCOMMERCE,
    )


def signed_content(template: Sequence[str], body: bytes, timestamp: str, id_: str) -> bytes:
    values = {"{body}": body, "{timestamp}": timestamp.encode(), "{id}": id_.encode()}
    return b"".join(values[part] if part in values else part.encode() for part in template)


def decode_signature(value: str, encoding: Encoding | None, digest_size: int) -> bytes | None:
    value = value.strip()
    try:
        if encoding == "hex" or (
            encoding is None and len(value) == 2 * digest_size and _is_hex(value)
        ):
            return bytes.fromhex(value)
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in value)


def _fresh(timestamp: str, tolerance: int, now: float) -> bool:
    try:
        when = int(timestamp.strip())
    except ValueError:
        return False
    return abs(now - when) <= tolerance


def _matches(scheme: SignatureScheme, content: bytes, candidates: Sequence[bytes]) -> bool:
    matched = False
    for key in scheme.keys:
        expected = hmac.new(key, content, scheme.digest).digest()
        for candidate in candidates:
            # No early exit: the time taken does not say which secret or signature matched.
            matched |= hmac.compare_digest(expected, candidate)
    return matched


def _stripe_header(value: str) -> tuple[str, list[str]]:
    timestamp, signatures = "", []
    for item in value.split(","):
        name, _, text = item.strip().partition("=")
        if name == "t":
            timestamp = text
        elif name == "v1":
            signatures.append(text)
    return timestamp, signatures[:MAX_SIGNATURES]


def verify(scheme: SignatureScheme, headers: Mapping[str, str], body: bytes, now: float) -> bool:
    """True when the request carries a valid, fresh signature under any of the scheme's keys."""
    raw = headers.get(scheme.header)
    if not raw or not scheme.keys:
        return False
    digest_size = hashlib.new(scheme.digest).digest_size
    timestamp = ""
    id_ = headers.get(scheme.id_header, "") if scheme.id_header else ""
    if scheme.kind == "stripe":
        timestamp, texts = _stripe_header(raw)
        if not _fresh(timestamp, scheme.tolerance_seconds, now):
            return False
    elif scheme.kind == "standard-webhooks":
        timestamp = headers.get(scheme.timestamp_header or "", "")
        if not id_ or not _fresh(timestamp, scheme.tolerance_seconds, now):
            return False
        texts = [
            sig.partition(",")[2] for sig in raw.split()[:MAX_SIGNATURES] if sig.startswith("v1,")
        ]
    else:
        if scheme.timestamp_header:
            timestamp = headers.get(scheme.timestamp_header, "")
            if not _fresh(timestamp, scheme.tolerance_seconds, now):
                return False
        if not raw.startswith(scheme.prefix):
            return False
        texts = [raw[len(scheme.prefix) :]]
    candidates = [
        sig
        for sig in (decode_signature(t, scheme.encoding, digest_size) for t in texts)
        if sig is not None and len(sig) == digest_size
    ]
    if not candidates:
        return False
    return _matches(scheme, signed_content(scheme.template, body, timestamp, id_), candidates)


def is_woocommerce_ping(scheme: SignatureScheme, headers: Mapping[str, str], body: bytes) -> bool:
    """WooCommerce's unsigned creation ping: a form body `webhook_id=<id>` and no signature."""
    return (
        scheme.woocommerce_ping
        and not headers.get(scheme.header)
        and _WC_PING.fullmatch(body.strip()) is not None
    )


def sign(
    scheme: SignatureScheme, body: bytes, now: float, id_: str = "", key_index: int = 0
) -> dict[str, str]:
    """The headers a sender attaches so that `verify` accepts `body` (the inverse of `verify`).

    Used by `kubectl retrieve send` to send test webhooks as the provider would. `id_` is the
    delivery id for schemes that sign it (Standard Webhooks, or a generic `{id}` template).
    """
    if not scheme.keys:
        raise ValueError("no secret to sign with")
    timestamp = str(int(now))
    content = signed_content(scheme.template, body, timestamp, id_)
    mac = hmac.new(scheme.keys[key_index], content, scheme.digest).digest()
    encoded = mac.hex() if scheme.encoding == "hex" else base64.b64encode(mac).decode()
    headers: dict[str, str] = {}
    if scheme.kind == "stripe":
        headers[scheme.header] = f"t={timestamp},v1={encoded}"
    elif scheme.kind == "standard-webhooks":
        headers[scheme.header] = f"v1,{encoded}"
        headers[scheme.timestamp_header or "webhook-timestamp"] = timestamp
    else:
        headers[scheme.header] = scheme.prefix + encoded
        if scheme.timestamp_header:
            headers[scheme.timestamp_header] = timestamp
    if (
        id_
        and scheme.id_header
        and (scheme.kind == "standard-webhooks" or "{id}" in scheme.template)
    ):
        headers[scheme.id_header] = id_
    return headers
