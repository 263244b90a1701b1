"""Helpers the connector's hot paths share: sends that need no timer, exceptions that would keep
a call in memory, and the level of μ-law audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
import warnings
from typing import TYPE_CHECKING

from websockets.protocol import State

if TYPE_CHECKING:
    from websockets.asyncio.connection import Connection

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # audioop-lts provides it from Python 3.13 on

ULAW_SILENCE = b"\xff"

FRAME_OVERHEAD = 14  # the largest WebSocket frame header, mask included


async def send_within(ws: Connection, data: str | bytes, timeout: float) -> None:
    """`ws.send(data)`, raising TimeoutError when it has waited `timeout` seconds.

    websockets only waits in a send when the connection is not open, or when writing is paused:
    the transport's buffer went over its high-water mark (the peer is not reading) and has not
    come back under its low-water mark yet. Only then is a timer armed. A timer on every send,
    one per audio frame, cost about a tenth of the connector's CPU at 500 calls.
    """
    if ws.state is State.OPEN:
        size = len(data) if isinstance(data, bytes) or data.isascii() else 4 * len(data)
        low, high = ws.transport.get_write_buffer_limits()
        buffered = ws.transport.get_write_buffer_size()
        if buffered <= low and buffered + size + FRAME_OVERHEAD <= high:
            await ws.send(data)
            return
    async with asyncio.timeout(timeout):
        await ws.send(data)


async def cancel_and_wait(task: asyncio.Task[object], timeout: float | None = None) -> None:
    """Cancel `task` and wait (at most `timeout` seconds) until it has ended.

    The task's own cancellation is absorbed (`asyncio.wait` returns it as a result); a
    cancellation of the task that waits here propagates: `contextlib.suppress(CancelledError)`
    around `await task` would swallow that one too and leave the waiter running after it was
    told to stop.
    """
    task.cancel()
    await asyncio.wait([task], timeout=timeout)
    if task.cancelled():
        # Taking the result consumes the stored cancellation: its traceback holds the task's
        # frames, and through them whatever owned the task, in a cycle only a full garbage
        # collection would free.
        with contextlib.suppress(asyncio.CancelledError):
            task.result()
    elif task.done():
        task.exception()  # retrieved: an error of its own was reported where it happened


def release_frames(exc: BaseException) -> None:
    """Clear the finished frames held by an exception's tracebacks, and by those chained to it.

    asyncio.TaskGroup (3.11 to 3.13.0) raises its error group and a cancellation from a frame
    that also holds them, a reference cycle through every frame of the call: without this, a
    finished call stays in memory until a full garbage collection, which pauses every call.
    """
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)  # frames still running are left alone
        pending += [current.__context__, current.__cause__]
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions


def ulaw_rms(data: bytes) -> int:
    """Root-mean-square level of μ-law audio on the 16-bit scale (silence is 0)."""
    return audioop.rms(audioop.ulaw2lin(data, 2), 2) if data else 0
