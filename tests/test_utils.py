"""The connector's small shared helpers that are not audio: sends without timers, and frames
released from exceptions."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

import utils
from utils import release_frames, send_within

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _reading(ws) -> None:
    async for _ in ws:
        pass


async def test_send_within_arms_no_timer_while_the_peer_reads(monkeypatch):
    armed = []
    real_timeout = asyncio.timeout

    def counting_timeout(delay):
        armed.append(delay)
        return real_timeout(delay)

    async with serve(_reading, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            monkeypatch.setattr(utils.asyncio, "timeout", counting_timeout)
            for n in range(200):
                await send_within(ws, f"message {n}", 5.0)
                await send_within(ws, b"\xff" * 800, 5.0)
            monkeypatch.undo()
    assert armed == []


async def test_send_within_gives_up_on_a_peer_that_stops_reading():
    done = asyncio.Event()

    async def accept_then_stop_reading(reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        writer.transport.pause_reading()
        await done.wait()
        writer.transport.abort()

    server = await asyncio.start_server(accept_then_stop_reading, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with connect(f"ws://127.0.0.1:{port}", close_timeout=0.1, compression=None) as ws:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(20):  # a send that waits forever fails the test here
                while True:
                    await send_within(ws, b"\xff" * 16_000, 0.3)
        low, _high = ws.transport.get_write_buffer_limits()
        assert ws.transport.get_write_buffer_size() > low  # writing is paused
        with pytest.raises(TimeoutError):  # and a small send is bounded while it is
            await send_within(ws, b"\xff", 0.3)
        ws.transport.abort()
    done.set()
    server.close()
    await server.wait_closed()


def test_release_frames_breaks_the_cycle_of_an_exception_held_by_its_own_frame():
    class Marker:
        pass

    def fail():
        marker = Marker()  # noqa: F841 - held by the frame, so by the traceback
        try:
            raise ValueError("boom")
        except ValueError as exc:
            held = exc  # the frame holds the exception that holds the frame
            raise held from None

    gc.collect()
    gc.disable()
    try:
        try:
            fail()
        except ValueError as exc:
            group = ExceptionGroup("group", [exc])
            release_frames(group)
        del group
        assert not [o for o in gc.get_objects() if isinstance(o, Marker)]
    finally:
        gc.enable()


async def test_cancel_and_wait_never_swallows_the_waiters_own_cancellation():
    import asyncio

    from utils import cancel_and_wait

    async def slow_to_stop():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # cleaning up
            raise

    async def closer(task):
        await cancel_and_wait(task)
        return "went on after being cancelled"  # the defect this guards against

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(closer(task))
    await asyncio.sleep(0.05)
    waiter.cancel()  # the caller hangs up while the close is in progress
    done, _ = await asyncio.wait([waiter], timeout=2)
    assert waiter in done and waiter.cancelled()
    await asyncio.wait([task], timeout=2)
    assert task.cancelled()


async def test_cancel_and_wait_absorbs_the_tasks_own_cancellation_and_frees_it():
    import asyncio

    from utils import cancel_and_wait

    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    await cancel_and_wait(task)  # no CancelledError here: it was the task's own
    assert task.cancelled()
