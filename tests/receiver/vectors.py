"""Signatures built the way each provider documents them, independently of the receiver's code."""

from __future__ import annotations

import base64
import hashlib
import hmac


def shopify_signature(secret: bytes, body: bytes) -> str:
    """X-Shopify-Hmac-Sha256: base64 of HMAC-SHA256 of the raw body."""
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()


def woocommerce_signature(secret: bytes, body: bytes) -> str:
    """X-WC-Webhook-Signature: base64 of HMAC-SHA256 of the raw body."""
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()


def github_signature(secret: bytes, body: bytes) -> str:
    """X-Hub-Signature-256: "sha256=" + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def stripe_signature(secrets: list[bytes], body: bytes, timestamp: int) -> str:
    """Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>"> (one v1 per secret)."""
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}"]
    parts += [f"v1={hmac.new(s, signed, hashlib.sha256).hexdigest()}" for s in secrets]
    return ",".join(parts)


def standard_webhooks_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """webhook-signature: "v1,<base64 HMAC-SHA256 of "<id>.<ts>.<body>">", key from whsec_."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
