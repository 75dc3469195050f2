"""Request bodies to payloads: JSON, form-encoded, XML (DESIGN.md, "Receiver HTTP contract").

Errors carry the contract's message with a short detail, never a stack trace. XML refuses any
DOCTYPE, so entity expansion (billion laughs) and external entities (XXE) cannot happen.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple
from urllib.parse import parse_qsl
from xml.parsers import expat

import xmltodict
from pydantic_core import from_json

from retrieve_core.constants import MSG_INVALID_JSON, MSG_INVALID_XML
from retrieve_core.job import PayloadFormat

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 10_000
MAX_DETAIL = 120
MAX_NUMBER_SHOWN = 40

# Only a number with an exponent (a digit then e/E) or with 309 integer digits can be past a
# double's range (about 1.8e308): a body without either needs no walk for infinities. Checked
# on the body's shape (digits -> "0", e/E -> "e", the rest -> "."), two substring searches in
# C: a regular expression scanning every byte took 15 us of a 1 KiB request (py-spy under
# bench/receiver_bench.py).
_NUMBER_SHAPE = bytes(48 if 48 <= b <= 57 else 101 if b in b"eE" else 46 for b in range(256))
_DIGIT_RUN = b"0" * 309


def _may_hold_huge_number(body: bytes) -> bool:
    shape = body.translate(_NUMBER_SHAPE)
    return b"0e" in shape or _DIGIT_RUN in shape


class PayloadError(ValueError):
    """A body that does not parse; `message` is the contract's answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _json_error(detail: str) -> PayloadError:
    return PayloadError(MSG_INVALID_JSON.format(detail=detail[:MAX_DETAIL]))


def _xml_error(detail: str) -> PayloadError:
    return PayloadError(MSG_INVALID_XML.format(detail=detail[:MAX_DETAIL]))


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_xml_type(mime: str) -> bool:
    return mime in ("application/xml", "text/xml") or mime.endswith("+xml")


def _decode(body: bytes) -> str:
    # A UTF-8 byte order mark is tolerated; anything that is not UTF-8 is refused.
    return body.decode("utf-8-sig")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """`json`'s float parser, refusing what a double cannot hold (it would become Infinity,
    which is not JSON: the job could not be written as JSON again)."""
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= MAX_NUMBER_SHOWN else text[:MAX_NUMBER_SHOWN] + "..."
        raise ValueError(f"number {shown} is out of range")
    return value


def _has_infinity(value: Any) -> bool:
    """Whether a parsed value holds a non-finite float anywhere (iterative: no recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class Payload(NamedTuple):
    format: PayloadFormat
    value: Any
    verbatim_json: bytes | None = None
    """The body itself when a job can carry it as it came (see `parse_json_body`)."""


def parse_json(body: bytes) -> Any:
    return parse_json_body(body).value


def parse_json_body(body: bytes) -> Payload:
    """Parse a JSON body; `verbatim_json` is set when it parsed on the fast path.

    The fast path is pydantic-core's parser (Rust, the one the worker reads jobs with): 3x
    faster than `json`, same values (arbitrary-size ints, correctly rounded floats). A body it
    takes is valid UTF-8 JSON that parses the same again, so the job embeds it verbatim
    instead of encoding the value again. It is stricter than `json` (a byte order mark, a lone
    surrogate escape, nesting past 254 levels): whatever it refuses goes through `json`, which
    decides, with the messages senders know. It reads a number past a double's range as
    infinity: a body that may hold one is checked, and goes through `json` if it does, which
    refuses it.
    """
    try:
        value = from_json(body, allow_inf_nan=False)
    except ValueError:
        pass
    else:
        if not _may_hold_huge_number(body) or not _has_infinity(value):
            return Payload("json", value, body)
    return Payload("json", _parse_json_slowly(body))


def _parse_json_slowly(body: bytes) -> Any:
    try:
        text = _decode(body)
    except UnicodeDecodeError as exc:
        raise _json_error(f"body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise _json_error("empty body")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise _json_error(f"{exc.msg}: line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise _json_error("nested too deeply") from None
    except ValueError as exc:
        raise _json_error(str(exc)) from None


def parse_form(body: bytes) -> dict[str, Any]:
    """`a=1&b=2&b=3` -> {"a": "1", "b": ["2", "3"]}."""
    try:
        text = _decode(body)
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        raise _json_error("form body is not valid UTF-8") from None
    except ValueError as exc:
        raise _json_error(f"invalid form body: {exc}") from None
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key not in result:
            result[key] = value
        elif isinstance(result[key], list):
            result[key].append(value)
        else:
            result[key] = [result[key], value]
    return result


class _DoctypeRefused(ValueError):
    pass


def _refuse_doctype(*_args: object) -> None:
    raise _DoctypeRefused("DOCTYPE and entity declarations are not allowed")


def _refuse_external_entity(
    context: str, base: str | None, system_id: str | None, public_id: str | None
) -> int:
    raise _DoctypeRefused("external entities are not allowed")


class _SafeExpat:
    """What xmltodict needs of `pyexpat`, with DOCTYPE refused before anything is expanded."""

    ExpatError = expat.ExpatError

    @staticmethod
    def ParserCreate(  # the pyexpat name xmltodict calls
        encoding: str | None = None, namespace_separator: str | None = None
    ) -> Any:
        parser = expat.ParserCreate(encoding, namespace_separator)
        parser.StartDoctypeDeclHandler = _refuse_doctype
        parser.EntityDeclHandler = _refuse_doctype
        parser.ExternalEntityRefHandler = _refuse_external_entity
        return parser


def parse_xml(body: bytes) -> Any:
    if not body.strip():
        raise _xml_error("empty body")
    try:
        return xmltodict.parse(body, expat=_SafeExpat, disable_entities=True)
    except _DoctypeRefused as exc:
        raise _xml_error(str(exc)) from None
    except expat.ExpatError as exc:
        raise _xml_error(expat.errors.messages.get(exc.code, str(exc)) + _where(exc)) from None
    except (ValueError, UnicodeError) as exc:
        raise _xml_error(str(exc)) from None


def _where(exc: expat.ExpatError) -> str:
    return f" at line {exc.lineno} column {exc.offset + 1}"


def parse_payload(xml_route: bool, content_type: str | None, body: bytes) -> Payload:
    """Parse a body by route and Content-Type.

    `/xml` is always XML. On the JSON route a form-encoded body is parsed to an object, an XML
    Content-Type is parsed as XML, and anything else as JSON.
    """
    if xml_route:
        return Payload("xml", parse_xml(body))
    mime = media_type(content_type)
    if mime == FORM_TYPE:
        return Payload("form", parse_form(body))
    if is_xml_type(mime):
        return Payload("xml", parse_xml(body))
    return parse_json_body(body)
