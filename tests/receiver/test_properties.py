"""Property tests of the body parsers and the signature verifier: any input, a contract answer.

The parsers either return a payload or raise `PayloadError` with the contract's message (never
another exception, never a long echo of the input); the verifier accepts exactly the signatures
made with one of its secrets over the exact bytes, and never raises on hostile headers.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import math
import re
import time
import unicodedata
import zlib
from typing import Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from rich.console import Console

from retrieve_cli.logs_replay import render_table
from retrieve_cli.sink import SinkRequest, print_request
from retrieve_cli.terminal import safe_text
from retrieve_core.logstore import LogRecord, LogStatus
from retrieve_core.models import VerifySpec
from retrieve_receiver.content_coding import (
    MAX_SHOWN,
    CodingMismatch,
    UnsupportedCoding,
    content_coding,
    decode_body,
)
from retrieve_receiver.parsing import (
    MAX_DETAIL,
    PayloadError,
    parse_form,
    parse_json,
    parse_payload,
    parse_xml,
)
from retrieve_receiver.signatures import SignatureScheme, compile_scheme, verify
from tests.receiver.vectors import (
    github_signature,
    shopify_signature,
    standard_webhooks_signature,
    stripe_signature,
)

pytestmark = pytest.mark.unit

JSON_PREFIX = "Invalid JSON payload: "
XML_PREFIX = "Invalid XML payload: "
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
content_types = st.sampled_from(
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "application/x-www-form-urlencoded",
        "APPLICATION/X-WWW-FORM-URLENCODED; charset=latin-1",
        "application/xml",
        "text/xml",
        "application/atom+xml",
        "text/plain",
        "multipart/form-data; boundary=x",
    ]
)


def assert_contract_error(error: PayloadError, prefix: str) -> None:
    assert error.message.startswith(prefix)
    assert len(error.message) <= len(prefix) + MAX_DETAIL


@FAST
@given(json_values)
def test_any_json_document_round_trips(value: Any) -> None:
    assert parse_json(json.dumps(value).encode()) == value


@FAST
@given(st.binary(max_size=512))
def test_any_bytes_as_json_parse_or_get_the_contract_error(body: bytes) -> None:
    try:
        parse_json(body)
    except PayloadError as exc:
        assert_contract_error(exc, JSON_PREFIX)


def _standard_parse(body: bytes) -> Any:
    """`json` with the contract's refusals: NaN/Infinity, and numbers past a double's range."""

    def refuse(name: str) -> Any:
        raise ValueError(name)

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value

    return json.loads(body.decode("utf-8-sig"), parse_constant=refuse, parse_float=finite)


@FAST
@given(
    st.one_of(
        st.binary(max_size=256),
        st.tuples(json_values, st.booleans(), st.sampled_from(["", " ", "\ufeff", "\n"])).map(
            lambda v: (v[2] + json.dumps(v[0], ensure_ascii=v[1])).encode()
        ),
    )
)
@example(b'"\\ud800"')  # a lone surrogate escape: only `json` takes it
@example(b"[" * 300 + b"]" * 300)  # deeper than the fast parser goes
@example(b"1e400")
@example(b'{"a": [1, -1' + b"0" * 400 + b".5]}")
def test_the_fast_json_parser_agrees_with_the_standard_one(body: bytes) -> None:
    """The Rust fast path must accept exactly what `json` accepts, with equal values."""
    try:
        expected = _standard_parse(body)
    except (ValueError, RecursionError):
        with pytest.raises(PayloadError):
            parse_json(body)
        return
    assert parse_json(body) == expected


@FAST
@given(
    json_values,
    st.integers(min_value=309, max_value=100_000),
    st.sampled_from(["1e{}", "-9.5E+{}", "0.1e{}", "1E0{}"]),
)
@example([1, {"a": []}], 400, "1e{}")
def test_a_number_past_a_doubles_range_is_refused_wherever_it_is(
    value: Any, exponent: int, template: str
) -> None:
    """Such a number would be Infinity in the job, which is not JSON (issue 12, defect 6)."""
    number = template.format(exponent)
    assume(not math.isfinite(float(number)))
    body = json.dumps([value, {"n": "marker"}]).replace('"marker"', number).encode()
    with pytest.raises(PayloadError) as refused:
        parse_payload(False, "application/json", body)
    assert refused.value.message == f"{JSON_PREFIX}number {number[:40]} is out of range"


@FAST
@given(st.integers(min_value=1, max_value=50_000), st.sampled_from(["[", '{"a":']))
def test_nesting_depth_never_escapes_as_recursion_error(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    body = (opener * depth + ("1" if opener != "[" else "") + closer * depth).encode()
    try:
        parse_json(body)
    except PayloadError as exc:
        assert_contract_error(exc, JSON_PREFIX)


@FAST
@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)), max_size=10))
def test_form_bodies_parse_to_the_fields_sent(pairs: list[tuple[str, str]]) -> None:
    expected: dict[str, Any] = {}
    for key, value in pairs:
        assume("\x00" not in key)
        if key not in expected:
            expected[key] = value
        elif isinstance(expected[key], list):
            expected[key].append(value)
        else:
            expected[key] = [expected[key], value]
    assert parse_form(urlencode(pairs).encode()) == expected


@FAST
@given(st.binary(max_size=512))
def test_any_bytes_as_form_parse_or_get_the_contract_error(body: bytes) -> None:
    try:
        result = parse_form(body)
    except PayloadError as exc:
        assert_contract_error(exc, JSON_PREFIX)
    else:
        assert isinstance(result, dict)


@FAST
@given(st.binary(max_size=512))
def test_any_bytes_as_xml_parse_or_get_the_contract_error(body: bytes) -> None:
    try:
        parse_xml(body)
    except PayloadError as exc:
        assert_contract_error(exc, XML_PREFIX)


xml_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\ufffe\uffff"),
    min_size=1,
    max_size=40,
).map(str.strip)


@FAST
@given(xml_text, st.from_regex(r"\A[a-z][a-z0-9]{0,8}\Z"))
def test_xml_element_text_round_trips(text: str, tag: str) -> None:
    assume(text)
    assert parse_xml(f"<{tag}>{escape(text)}</{tag}>".encode()) == {tag: text}


@FAST
@given(
    st.sampled_from(
        [
            '<!DOCTYPE r [<!ENTITY e "{v}">]><r>&e;</r>',
            '<!DOCTYPE r [<!ENTITY e SYSTEM "{v}">]><r>&e;</r>',
            '<!DOCTYPE r SYSTEM "{v}"><r/>',
            '<!DOCTYPE r [<!ENTITY % p SYSTEM "{v}"> %p;]><r/>',
            '<?xml version="1.0"?>\n<!DOCTYPE r><r>{v}</r>',
        ]
    ),
    st.text(alphabet="abcdefghij:/.", max_size=20),
)
def test_any_doctype_is_refused_before_expansion(template: str, value: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_xml(template.replace("{v}", value).encode())
    assert_contract_error(caught.value, XML_PREFIX)


@FAST
@given(st.booleans(), content_types, st.binary(max_size=256))
def test_parse_payload_never_raises_anything_but_the_contract_error(
    xml_route: bool, content_type: str | None, body: bytes
) -> None:
    try:
        fmt = parse_payload(xml_route, content_type, body).format
    except PayloadError as exc:
        prefix = XML_PREFIX if exc.message.startswith(XML_PREFIX) else JSON_PREFIX
        assert_contract_error(exc, prefix)
    else:
        assert fmt in ("json", "xml", "form")


# ---------------------------------------------------------------- signatures

secrets_ = st.binary(min_size=1, max_size=64)
bodies = st.binary(max_size=1024)


def scheme(preset: str, *secrets: bytes) -> SignatureScheme:
    spec = VerifySpec.model_validate({"preset": preset, "secretRefs": [{"name": "s", "key": "k"}]})
    return compile_scheme(spec, list(secrets))


def signed_headers(preset: str, secret: bytes, body: bytes, now: int) -> CIMultiDict[str]:
    if preset == "github":
        return CIMultiDict({"X-Hub-Signature-256": github_signature(secret, body)})
    if preset == "shopify":
        return CIMultiDict({"X-Shopify-Hmac-Sha256": shopify_signature(secret, body)})
    if preset == "stripe":
        return CIMultiDict({"Stripe-Signature": stripe_signature([secret], body, now)})
    whsec = "whsec_" + base64.b64encode(secret).decode()
    return CIMultiDict(
        {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(now),
            "webhook-signature": standard_webhooks_signature(whsec, "msg_1", now, body),
        }
    )


def stored_secret(preset: str, secret: bytes) -> bytes:
    """What the Secret holds: Standard Webhooks secrets are `whsec_<base64>`."""
    if preset == "standard-webhooks":
        return b"whsec_" + base64.b64encode(secret)
    return secret


presets = st.sampled_from(["github", "shopify", "stripe", "standard-webhooks"])


@FAST
@given(presets, secrets_, secrets_, bodies, st.data())
def test_signature_verifies_only_with_a_configured_secret_over_the_exact_bytes(
    preset: str, secret: bytes, other: bytes, body: bytes, data: st.DataObject
) -> None:
    assume(secret != other)
    now = int(time.time())
    headers = signed_headers(preset, secret, body, now)
    rotation = scheme(preset, stored_secret(preset, other), stored_secret(preset, secret))

    assert verify(rotation, headers, body, now)
    assert not verify(scheme(preset, stored_secret(preset, other)), headers, body, now)
    if body:
        index = data.draw(st.integers(0, len(body) - 1))
        flipped = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
        assert not verify(rotation, headers, flipped, now)
    assert not verify(rotation, headers, body + b" ", now)


header_values = st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))


signature_header_names = st.sampled_from(
    [
        "X-Hub-Signature-256",
        "X-Shopify-Hmac-Sha256",
        "Stripe-Signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ]
)


@FAST
@given(presets, st.dictionaries(signature_header_names, header_values, max_size=6), bodies)
def test_hostile_signature_headers_are_refused_never_raise(
    preset: str, headers: dict[str, str], body: bytes
) -> None:
    assert not verify(scheme(preset, b"whsec_c2VjcmV0"), CIMultiDict(headers), body, time.time())


# ---------------------------------------------------------------- numbers (issue 12, defect 6)

number_texts = st.builds(
    lambda sign, whole, fraction, exponent: f"{sign}{whole}{fraction}{exponent}",
    st.sampled_from(["", "-"]),
    st.one_of(
        st.just("0"),
        st.from_regex(r"\A[1-9][0-9]{0,40}\Z"),
        st.integers(min_value=300, max_value=5000).map(lambda n: "9" * n),  # past 4300 digits too
    ),
    st.one_of(st.just(""), st.from_regex(r"\A\.[0-9]{1,30}\Z")),
    st.one_of(
        st.just(""),
        st.builds(
            "{}{}{}".format,
            st.sampled_from(["e", "E"]),
            st.sampled_from(["", "+", "-"]),
            st.integers(min_value=0, max_value=100_000),
        ),
    ),
)


@FAST
@given(json_values, number_texts)
@example([], "-0")
@example([], "-0.0")
@example([], "0e99999")
@example([], "1e-99999")
@example([], "-1E-400")
@example([], "1.7976931348623157e308")
@example([], "1.7976931348623159e308")  # rounds past the largest double
def test_any_number_is_taken_as_the_same_finite_value_or_refused_with_the_contract_error(
    value: Any, number: str
) -> None:
    """Overflow, -0, huge exponents, thousands of digits: what a job holds is finite JSON."""
    body = json.dumps([value, {"n": "marker"}]).replace('"marker"', number).encode()
    try:
        parsed = parse_payload(False, "application/json", body).value
    except PayloadError as exc:
        assert_contract_error(exc, JSON_PREFIX)
        integer = number.lstrip("-").isdigit()
        # Refused only for a reason: out of a double's range, or an integer past Python's
        # 4,300-digit conversion limit.
        assert (integer and len(number.lstrip("-")) > 4300) or not math.isfinite(float(number))
        return
    taken = parsed[1]["n"]
    if number.lstrip("-").isdigit():
        assert taken == int(number)
    else:
        assert taken == float(number)
        assert math.copysign(1.0, taken) == math.copysign(1.0, float(number))  # -0.0 stays
    assert json.loads(json.dumps(parsed, allow_nan=False)) == parsed


# ---------------------------------------------------------------- content encodings


def _encode(body: bytes, coding: str, level: int) -> bytes:
    if coding == "gzip":
        return gzip.compress(body, compresslevel=level)
    wbits = zlib.MAX_WBITS if coding == "deflate" else -zlib.MAX_WBITS  # zlib or raw deflate
    compressor = zlib.compressobj(level, zlib.DEFLATED, wbits)
    return compressor.compress(body) + compressor.flush()


@FAST
@given(
    st.binary(max_size=4096) | st.integers(0, 20_000).map(lambda n: b"a" * n),
    st.sampled_from(["gzip", "deflate", "raw deflate"]),
    st.integers(min_value=0, max_value=9),
    st.integers(min_value=0, max_value=25_000),
)
def test_a_compressed_body_inflates_to_what_was_sent_or_overflows_past_the_limit(
    body: bytes, coding: str, level: int, limit: int
) -> None:
    sent = _encode(body, coding, level)
    header = "gzip" if coding == "gzip" else "deflate"
    if len(body) > limit:
        with pytest.raises(OverflowError):
            decode_body(sent, header, limit)
    else:
        assert decode_body(sent, header, limit) == body


@FAST
@given(
    st.binary(max_size=2048),
    st.sampled_from(["gzip", "deflate", "raw deflate"]),
    st.data(),
)
def test_a_damaged_compressed_body_is_a_mismatch_or_an_overflow_never_another_error(
    body: bytes, coding: str, data: st.DataObject
) -> None:
    sent = bytearray(_encode(body, coding, 6))
    damage = data.draw(st.sampled_from(["truncate", "flip", "append", "replace"]))
    if damage == "truncate":
        sent = sent[: data.draw(st.integers(0, max(len(sent) - 1, 0)))]
    elif damage == "flip" and sent:
        at = data.draw(st.integers(0, len(sent) - 1))
        sent[at] ^= data.draw(st.integers(1, 255))
    elif damage == "append":
        sent += data.draw(st.binary(min_size=1, max_size=64))
    else:
        sent = bytearray(data.draw(st.binary(max_size=256)))
    header = "gzip" if coding == "gzip" else "deflate"
    with contextlib.suppress(CodingMismatch, OverflowError):  # anything else fails the test
        decode_body(bytes(sent), header, 4096)


@FAST
@given(
    st.lists(
        st.text(st.characters(codec="latin-1", exclude_characters="\r\n\0"), max_size=60),
        min_size=1,
        max_size=3,
    )
)
@example(["gzip, gzip"])
@example(["x" * 500])
@example([" GZIP "])
@example(["identity", "gzip"])
def test_any_content_encoding_header_is_one_known_coding_or_refused_with_a_bounded_name(
    values: list[str],
) -> None:
    headers = CIMultiDictProxy(CIMultiDict(("Content-Encoding", v) for v in values))
    accepted = ("", "identity", "gzip", "x-gzip", "deflate")
    if ",".join(values).strip().lower() in accepted:
        assert content_coding(headers) in (None, "gzip", "deflate")
        return
    with pytest.raises(UnsupportedCoding) as refused:
        content_coding(headers)
    assert len(refused.value.coding) <= MAX_SHOWN + len("...")


# ---------------------------------------------------------------- stored text on a terminal

TERMINAL_HAZARDS = [
    "\x1b[2J", "\x1b]0;pwned\x07", "\x1b]8;;http://evil.example\x1b\\", "\x9b31m", "\x90q\x9c",
    "\u202e", "\u2066", "\u200b", "\ufeff", "\u2028", "\u2029", "\x85", "\r\n", "\n", "\t", "\b",
    "\x00", "\x7f", "[bold red]", "[/]", "[link=http://evil.example]", ":smile:", "\ud800",
    "\U000e0041", "│ forged │ row │",
]  # fmt: skip
hostile_text = st.lists(
    st.one_of(st.text(max_size=8), st.sampled_from(TERMINAL_HAZARDS)), max_size=6
).map("".join)
SGR = re.compile(r"\x1b\[[0-9;]*m")
BOX_LINE_STARTS = tuple("┏┃┡│└")


@FAST
@given(hostile_text, hostile_text, hostile_text)
@example("[bold]x[/]\x1b]0;t\x07", "done\n2026-01-01  10.0.0.1  FORGED", "\u202e:smile:")
def test_text_a_sender_stores_never_acts_on_the_terminal_of_retrieve_logs(
    integration_id: str, message: str, payload: str
) -> None:
    """The id of a refused request, a rewrite's message and a payload, as `retrieve logs`
    prints them: only rich's colours, no markup read, each output line part of the table."""
    record = LogRecord(
        id="r1", ts=1_700_000_000.0, source_ip="203.0.113.9", integration_id=integration_id,
        http_status=403, status=LogStatus.REJECTED, error=message, payload=payload,
    )  # fmt: skip
    stored = LogRecord.from_hash(record.to_hash())
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=2000)
    console.print(render_table([stored], payload=True))
    plain = SGR.sub("", out.getvalue())
    unsafe = {c for c in plain if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES}
    assert not unsafe
    lines = plain.rstrip("\n").split("\n")
    assert all(line.startswith(BOX_LINE_STARTS) for line in lines)
    assert len(lines) == 5  # top, header, rule, the one row, bottom: nothing split it
    for shown in (safe_text(integration_id), safe_text(message), safe_text(payload)):
        assert shown in lines[3]  # as sent, escaped, not read as markup


@FAST
@given(hostile_text, hostile_text, st.one_of(st.none(), hostile_text, json_values))
def test_what_retrieve_sink_prints_of_a_request_is_one_safe_line(
    path: str, query: str, body: Any
) -> None:
    """`retrieve sink` prints what a worker delivered: a destination's view of sender text."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_request(SinkRequest("POST", "/" + path, query, {}, body))
    printed = out.getvalue()
    assert printed.endswith("\n")
    assert "\n" not in printed[:-1]
    assert not [c for c in printed[:-1] if unicodedata.category(c) in UNSAFE_CATEGORIES]
