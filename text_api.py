"""The process's pooled HTTP client for the model vendors' text calls (the call summary for the
backends that make it outside the voice session: GPT-Live through the Responses API, Gemini
through `generateContent`). One `aiohttp` session for every call, bounded connections, a timeout
on every request, and errors as one exception type with a short reason safe to log."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

log = logging.getLogger("text-api")

MAX_CONNECTIONS = 50
MAX_BODY_BYTES = 1_000_000


class TextApiError(Exception):
    """A text call failed; `str()` is a short reason (no body, no key)."""


class TextApi:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post_json(self, url: str, headers: dict[str, str], body: dict[str, Any], timeout: float) -> Any:
        """POST a JSON body; the parsed JSON answer of a 2xx, else TextApiError."""
        if self._session is None:
            raise TextApiError("the text client is not started")
        try:
            async with self._session.post(
                url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                if not 200 <= response.status < 300:
                    raise TextApiError(f"HTTP {response.status}")
                raw = await _read_body(response)
        except TimeoutError:
            raise TextApiError(f"no answer within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise TextApiError(f"the request failed ({type(exc).__name__})") from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise TextApiError("the answer is not JSON") from None


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, up to EOF: one `read(n)` returns only what has arrived so far, and a
    chunked, compressed or proxied answer arrives in pieces. Bounded as it is read (decompressed)."""
    raw = bytearray()
    async for piece in response.content.iter_any():
        raw += piece
        if len(raw) > MAX_BODY_BYTES:
            raise TextApiError("the answer is too large")
    return bytes(raw)
