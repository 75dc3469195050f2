"""`Content-Encoding` of webhook bodies: identity, gzip or deflate; anything else is refused.

aiohttp's own decompression is off (`auto_decompress=False` in the app's handler arguments):
the receiver reads the bytes as sent, so the body limit counts them, signatures are computed
over them (SECURITY.md, "Signatures"), and only then `decode_body` inflates them, bounded by the
same limit. A body that does not match its coding is the sender's error (a 400 with the
contract's message), never a 500.
"""

from __future__ import annotations

import zlib
from typing import Final

from aiohttp import hdrs
from multidict import CIMultiDictProxy

IDENTITY: Final = "identity"
SUPPORTED: Final = ("gzip", "deflate")
MAX_SHOWN = 40

# wbits of zlib: gzip framing only; zlib framing (HTTP's "deflate"); raw deflate (what many
# senders mean by "deflate", tolerated as aiohttp and browsers do).
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_ZLIB_WBITS: Final = zlib.MAX_WBITS
_RAW_WBITS: Final = -zlib.MAX_WBITS


class UnsupportedCoding(ValueError):
    """A `Content-Encoding` the receiver does not decode; `coding` is safe to show (bounded)."""

    def __init__(self, coding: str) -> None:
        shown = coding if len(coding) <= MAX_SHOWN else coding[:MAX_SHOWN] + "..."
        super().__init__(shown)
        self.coding = shown


class CodingMismatch(ValueError):
    """A body that is not what its `Content-Encoding` says."""


def content_coding(headers: CIMultiDictProxy[str]) -> str | None:
    """The body's coding to undo (`gzip` or `deflate`), None for none; raises UnsupportedCoding.

    One coding at most: a list (`gzip, gzip`) is refused rather than inflated layer by layer.
    """
    values = headers.getall(hdrs.CONTENT_ENCODING, ())
    if not values:
        return None
    joined = ",".join(values)
    coding = joined.strip().lower()
    if coding in ("", IDENTITY):
        return None
    if coding == "x-gzip":  # RFC 9110, 8.4.1.3: to be treated as gzip
        return "gzip"
    if coding in SUPPORTED:
        return coding
    raise UnsupportedCoding(joined.strip())


def decode_body(body: bytes, coding: str, limit: int) -> bytes:
    """`body` inflated; OverflowError past `limit` bytes (never inflated further), or
    CodingMismatch when the bytes are not that coding (corrupt, truncated, trailing data)."""
    if coding == "gzip":
        wbits = _GZIP_WBITS
    elif body[:1] and body[0] & 0x0F == 8:  # a zlib header: CM = 8 (deflate)
        wbits = _ZLIB_WBITS
    else:
        wbits = _RAW_WBITS
    out: list[bytes] = []
    size = 0
    data = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            while data:
                chunk = inflater.decompress(data, limit + 1 - size)
                size += len(chunk)
                if size > limit:
                    raise OverflowError
                out.append(chunk)
                if inflater.eof:
                    break
                data = inflater.unconsumed_tail
                if not chunk and data:  # no progress although input remains
                    raise CodingMismatch(f"body is not valid {coding}")
        except zlib.error:
            raise CodingMismatch(f"body is not valid {coding}") from None
        if not inflater.eof:
            raise CodingMismatch(f"{coding} stream truncated")
        data = inflater.unused_data
        # gzip allows several members one after the other; deflate is one stream.
        if not data or coding != "gzip":
            break
    if data:
        raise CodingMismatch(f"data after the end of the {coding} stream")
    return b"".join(out)
