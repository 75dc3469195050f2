"""Signature schemes of every preset, with vectors built from the providers' published formats."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import pytest
from multidict import CIMultiDict

from retrieve_core.models import VerifySpec
from retrieve_receiver.signatures import (
    SignatureScheme,
    compile_scheme,
    is_woocommerce_ping,
    verify,
)
from tests.receiver.vectors import (
    github_signature,
    shopify_signature,
    standard_webhooks_signature,
    stripe_signature,
    woocommerce_signature,
)

pytestmark = pytest.mark.unit

BODY = b'{"id": 820982911946154508, "email": "jon@example.com"}'
NOW = 1_700_000_000


def scheme(preset: str, *secrets: bytes, **fields: Any) -> SignatureScheme:
    spec = VerifySpec.model_validate(
        {"preset": preset, "secretRefs": [{"name": "s", "key": "k"}], **fields}
    )
    return compile_scheme(spec, list(secrets))


def headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in values.items()})


def test_github_published_example_vector_verifies() -> None:
    # docs.github.com, "Validating webhook deliveries": the documented test values.
    s = scheme("github", b"It's a Secret to Everybody")
    sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert verify(s, headers(X_Hub_Signature_256=sig), b"Hello, World!", NOW)
    assert not verify(s, headers(X_Hub_Signature_256=sig), b"Hello, World?", NOW)


def test_standard_webhooks_published_example_vector_verifies() -> None:
    # The Standard Webhooks specification's example: secret, id, timestamp, payload, signature.
    s = scheme("standard-webhooks", b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    h = headers(
        webhook_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        webhook_timestamp="1614265330",
        webhook_signature="v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    )
    assert verify(s, h, b'{"test": 2432232314}', 1614265330 + 10)
    assert not verify(s, h, b'{"test": 2432232315}', 1614265330 + 10)
    assert not verify(s, h, b'{"test": 2432232314}', 1614265330 + 301)  # replayed too late


@pytest.mark.parametrize(
    ("preset", "header", "sign"),
    [
        ("shopify", "X-Shopify-Hmac-Sha256", shopify_signature),
        ("woocommerce", "X-WC-Webhook-Signature", woocommerce_signature),
        ("github", "X-Hub-Signature-256", github_signature),
    ],
)
def test_body_presets_accept_valid_and_refuse_tampered_or_wrong_secret(
    preset: str, header: str, sign: Any
) -> None:
    s = scheme(preset, b"secret-1")
    good = headers(**{header.replace("-", "_"): sign(b"secret-1", BODY)})
    assert verify(s, good, BODY, NOW)
    assert not verify(s, good, BODY.replace(b"jon", b"eve"), NOW)
    assert not verify(s, headers(**{header.replace("-", "_"): sign(b"secret-2", BODY)}), BODY, NOW)
    assert not verify(s, headers(), BODY, NOW)
    assert not verify(s, headers(**{header.replace("-", "_"): "garbage!"}), BODY, NOW)


@pytest.mark.parametrize(
    ("preset", "header", "sign"),
    [
        ("shopify", "X-Shopify-Hmac-Sha256", shopify_signature),
        ("github", "X-Hub-Signature-256", github_signature),
    ],
)
def test_rotated_secrets_any_may_match(preset: str, header: str, sign: Any) -> None:
    s = scheme(preset, b"old-secret", b"new-secret")
    for secret in (b"old-secret", b"new-secret"):
        assert verify(s, headers(**{header.replace("-", "_"): sign(secret, BODY)}), BODY, NOW)
    assert not verify(s, headers(**{header.replace("-", "_"): sign(b"other", BODY)}), BODY, NOW)


def test_github_signature_needs_its_prefix() -> None:
    s = scheme("github", b"k")
    bare = github_signature(b"k", BODY).removeprefix("sha256=")
    assert not verify(s, headers(X_Hub_Signature_256=bare), BODY, NOW)


def test_stripe_checks_timestamp_and_any_v1() -> None:
    s = scheme("stripe", b"whsec_stripe")
    fresh = stripe_signature([b"whsec_stripe"], BODY, NOW - 10)
    assert verify(s, headers(Stripe_Signature=fresh), BODY, NOW)
    # several v1 entries (Stripe sends one per active secret): any may match
    several = stripe_signature([b"rolled-out", b"whsec_stripe"], BODY, NOW)
    assert verify(s, headers(Stripe_Signature=several), BODY, NOW)
    stale = stripe_signature([b"whsec_stripe"], BODY, NOW - 301)
    assert not verify(s, headers(Stripe_Signature=stale), BODY, NOW)
    assert not verify(s, headers(Stripe_Signature=fresh), BODY + b" ", NOW)
    wrong = stripe_signature([b"other"], BODY, NOW)
    assert not verify(s, headers(Stripe_Signature=wrong), BODY, NOW)
    # the timestamp is signed: moving it invalidates the signature
    moved = fresh.replace(f"t={NOW - 10}", f"t={NOW}")
    assert not verify(s, headers(Stripe_Signature=moved), BODY, NOW)
    assert not verify(s, headers(Stripe_Signature="v1=abc"), BODY, NOW)


def test_stripe_tolerance_is_configurable() -> None:
    s = scheme("stripe", b"k", toleranceSeconds=30)
    assert not verify(
        s, headers(Stripe_Signature=stripe_signature([b"k"], BODY, NOW - 60)), BODY, NOW
    )


def _generic_signed(secret: bytes, when: int) -> CIMultiDict[str]:
    content = f"v0:{when}:".encode() + BODY
    mac = hmac.new(secret, content, hashlib.sha256).hexdigest()
    return headers(X_Signature="v0=" + mac, X_Timestamp=str(when))


SWH_SECRET = "whsec_" + base64.b64encode(b"key-material-for-the-tolerance!!").decode()
TIMESTAMPED: dict[str, tuple[dict[str, Any], Callable[[int], CIMultiDict[str]], bytes]] = {
    "stripe": (
        {},
        lambda when: headers(Stripe_Signature=stripe_signature([b"whsec_stripe"], BODY, when)),
        b"whsec_stripe",
    ),
    "standard-webhooks": (
        {},
        lambda when: headers(
            webhook_id="msg_1",
            webhook_timestamp=str(when),
            webhook_signature=standard_webhooks_signature(SWH_SECRET, "msg_1", when, BODY),
        ),
        SWH_SECRET.encode(),
    ),
    "generic": (
        {
            "header": "X-Signature",
            "encoding": "hex",
            "prefix": "v0=",
            "signedContent": "v0:{timestamp}:{body}",
            "timestampHeader": "X-Timestamp",
        },
        lambda when: _generic_signed(b"generic-secret", when),
        b"generic-secret",
    ),
}


@pytest.mark.parametrize("preset", sorted(TIMESTAMPED))
@pytest.mark.parametrize("tolerance", [None, 30])
def test_timestamped_schemes_refuse_signatures_dated_too_far_either_way(
    preset: str, tolerance: int | None
) -> None:
    """SECURITY.md: timestamped schemes "refuse signatures older or newer than
    `toleranceSeconds` (default 300)" — a signature dated in the future would otherwise stay
    replayable until that date."""
    fields, signed, secret = TIMESTAMPED[preset]
    s = scheme(preset, secret, **fields, **({"toleranceSeconds": tolerance} if tolerance else {}))
    limit = tolerance or 300
    for offset in (-limit, 0, limit):
        assert verify(s, signed(NOW + offset), BODY, NOW), offset
    for offset in (-limit - 1, limit + 1, 10 * limit, 10**9):
        assert not verify(s, signed(NOW + offset), BODY, NOW), offset


def test_standard_webhooks_accepts_a_space_separated_list_and_rotation() -> None:
    old = "whsec_" + base64.b64encode(b"old-key-material-32-bytes-long!!").decode()
    new = "whsec_" + base64.b64encode(b"new-key-material-32-bytes-long!!").decode()
    s = scheme("standard-webhooks", old.encode(), new.encode())
    sig_new = standard_webhooks_signature(new, "msg_1", NOW, BODY)
    h = headers(
        webhook_id="msg_1", webhook_timestamp=str(NOW), webhook_signature=f"v1,AAAA {sig_new}"
    )
    assert verify(s, h, BODY, NOW)
    other_id = headers(webhook_id="msg_2", webhook_timestamp=str(NOW), webhook_signature=sig_new)
    assert not verify(s, other_id, BODY, NOW)
    wrong = standard_webhooks_signature(
        "whsec_" + base64.b64encode(b"x" * 32).decode(), "msg_1", NOW, BODY
    )
    h_wrong = headers(webhook_id="msg_1", webhook_timestamp=str(NOW), webhook_signature=wrong)
    assert not verify(s, h_wrong, BODY, NOW)
    v2 = headers(
        webhook_id="msg_1", webhook_timestamp=str(NOW), webhook_signature="v2," + sig_new[3:]
    )
    assert not verify(s, v2, BODY, NOW)


def test_generic_scheme_with_template_timestamp_and_hex() -> None:
    s = scheme(
        "generic",
        b"generic-secret",
        header="X-Signature",
        algorithm="hmac-sha512",
        encoding="hex",
        prefix="v0=",
        signedContent="v0:{timestamp}:{body}",
        timestampHeader="X-Timestamp",
        toleranceSeconds=60,
    )
    ts = str(NOW)
    mac = hmac.new(b"generic-secret", f"v0:{ts}:".encode() + BODY, hashlib.sha512).hexdigest()
    assert verify(s, headers(X_Signature="v0=" + mac, X_Timestamp=ts), BODY, NOW)
    assert not verify(s, headers(X_Signature="v0=" + mac, X_Timestamp=ts), BODY, NOW + 61)
    assert not verify(s, headers(X_Signature="v0=" + mac, X_Timestamp=str(NOW + 1)), BODY, NOW)
    assert not verify(s, headers(X_Signature="v0=" + mac), BODY, NOW)


def test_generic_scheme_body_placeholders_are_not_expanded_from_the_body() -> None:
    s = scheme("generic", b"k", header="X-Sig", encoding="base64", signedContent="{id}.{body}")
    body = b'{"x": "{id}"}'
    mac = base64.b64encode(hmac.new(b"k", b"evt-1." + body, hashlib.sha256).digest()).decode()
    assert verify(s, headers(X_Sig=mac, webhook_id="evt-1"), body, NOW)


def test_generic_scheme_with_unset_encoding_accepts_hex_or_base64() -> None:
    s = scheme("generic", b"k", header="X-Sig")
    digest = hmac.new(b"k", BODY, hashlib.sha256).digest()
    assert verify(s, headers(X_Sig=digest.hex()), BODY, NOW)
    assert verify(s, headers(X_Sig=base64.b64encode(digest).decode()), BODY, NOW)
    assert not verify(s, headers(X_Sig=digest.hex()[:-2]), BODY, NOW)


def test_preset_fields_can_be_overridden() -> None:
    s = scheme("shopify", b"k", header="X-Custom-Hmac")
    sig = shopify_signature(b"k", BODY)
    assert verify(s, headers(X_Custom_Hmac=sig), BODY, NOW)
    assert not verify(s, headers(X_Shopify_Hmac_Sha256=sig), BODY, NOW)


def test_no_secret_values_means_nothing_verifies() -> None:
    s = scheme("shopify")
    assert not verify(s, headers(X_Shopify_Hmac_Sha256=shopify_signature(b"", BODY)), BODY, NOW)


def test_timestamp_template_without_a_timestamp_header_is_refused_at_compile_time() -> None:
    spec = VerifySpec.model_validate(
        {
            "preset": "generic",
            "header": "X-Sig",
            "signedContent": "{timestamp}.{body}",
            "secretRefs": [{"name": "s", "key": "k"}],
        }
    )
    with pytest.raises(ValueError, match="timestampHeader"):
        compile_scheme(spec, [b"k"])


def test_woocommerce_ping_is_recognised_only_unsigned_and_exact() -> None:
    s = scheme("woocommerce", b"k")
    assert is_woocommerce_ping(s, headers(), b"webhook_id=17")
    assert not is_woocommerce_ping(s, headers(), b"webhook_id=17&x=1")
    assert not is_woocommerce_ping(s, headers(X_WC_Webhook_Signature="abc"), b"webhook_id=17")
    assert not is_woocommerce_ping(scheme("shopify", b"k"), headers(), b"webhook_id=17")


def test_real_clock_is_within_tolerance_of_a_fresh_stripe_signature() -> None:
    now = int(time.time())
    s = scheme("stripe", b"k")
    assert verify(
        s, headers(Stripe_Signature=stripe_signature([b"k"], BODY, now)), BODY, time.time()
    )
