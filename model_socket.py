"""One WebSocket to a model vendor, JSON both ways, with a single writer task draining a bounded
queue: commands never block the reader, and frames leave in the order they were queued."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from utils import cancel_and_wait, send_within

log = logging.getLogger("model")

SEND_TIMEOUT = 10.0
MAX_PENDING_FRAMES = 1000  # this many unsent frames: the vendor stopped reading


class ModelSocket:
    def __init__(self, ws: ClientConnection, vendor: str) -> None:
        self.ws = ws
        self.vendor = vendor  # for log lines
        self._pending: deque[str] = deque()
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write(), name=f"{vendor}-writer")

    @classmethod
    async def open(
        cls,
        url: str,
        headers: dict[str, str],
        timeout: float,
        *,
        vendor: str,
        ping_interval: float | None = 20.0,
    ) -> ModelSocket:
        async with asyncio.timeout(timeout):
            ws = await connect(
                url,
                additional_headers=headers,
                max_size=None,
                compression=None,
                open_timeout=timeout,
                close_timeout=2,
                ping_interval=ping_interval,
                ping_timeout=ping_interval,
            )
        return cls(ws, vendor)

    def send(self, frame: dict[str, Any] | str) -> None:
        """Queue a frame. A queue this full means the vendor stopped reading: drop the socket."""
        if len(self._pending) >= MAX_PENDING_FRAMES:
            log.warning(
                "%s is not reading (%d frames pending); dropping the connection",
                self.vendor,
                len(self._pending),
            )
            self._pending.clear()
            self.ws.transport.abort()
            return
        self._pending.append(frame if isinstance(frame, str) else json.dumps(frame))
        self._wake.set()

    async def recv(self) -> dict[str, Any]:
        """The next JSON object (text or binary frame). Raises ConnectionClosed when the socket
        is gone; a frame that is not a JSON object is skipped with a WARNING."""
        while True:
            raw = await self.ws.recv()
            try:
                message = json.loads(raw)
            except (ValueError, RecursionError):
                log.warning("%s sent a frame that is not JSON; ignored", self.vendor)
                continue
            if isinstance(message, dict):
                return message
            log.warning("%s sent a frame that is not a JSON object; ignored", self.vendor)

    async def _write(self) -> None:
        while True:
            while self._pending:
                frame = self._pending.popleft()
                try:
                    await send_within(self.ws, frame, SEND_TIMEOUT)
                except TimeoutError:
                    log.warning(
                        "a send to %s blocked for %ss; dropping the connection", self.vendor, SEND_TIMEOUT
                    )
                    self.ws.transport.abort()
                    return
                except Exception:  # the socket is gone (ConnectionClosed) or broken: the reader says so
                    return
            self._wake.clear()
            await self._wake.wait()

    async def close(self, code: int = 1000) -> None:
        await cancel_and_wait(self._writer)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await self.ws.close(code)
