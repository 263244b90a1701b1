"""Faults: every one ends in a defined state (the call goes on, or a `disconnect` with the output
variables), and leaves no session, task or socket behind."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path

import pytest
from conftest import (
    API_KEY,
    connector_garbage,
    live_tasks,
    make_settings,
    save_garbage,
    settled,
    stop_saving_garbage,
    ws_url,
)
from fake_genesys_api import FakeAction
from test_data_actions import ACCOUNT_SCHEMA
from websockets.asyncio.client import connect

from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.script import Script, Turn


def _inodes_on_port(port: int) -> set[str]:
    """Socket inodes whose local or remote TCP port is `port` (from /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port or int(remote.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def open_sockets(exclude_port: int | None = None) -> int:
    """Sockets this process holds, leaving out those to or from `exclude_port`."""
    excluded = _inodes_on_port(exclude_port) if exclude_port else set()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.stat(f"/proc/self/fd/{fd}").st_mode):
                continue
            if os.readlink(f"/proc/self/fd/{fd}")[len("socket:[") : -1] not in excluded:
                count += 1
        except OSError:
            pass
    return count


def connector_tasks() -> set:
    """Live tasks, leaving out the in-process fake Genesys API's own request handlers."""
    return {t for t in live_tasks() if "aiohttp/web_protocol.py" not in t.get_coro().cr_code.co_filename}


class Baseline:
    """Sessions, tasks, sockets and cyclic garbage before a call, to compare with after it.

    The Genesys API client's keep-alive pool is process-wide by design, so with `genesys_port`
    its sockets (and the fake API's handlers) are not counted as left behind by the call.
    """

    def __init__(self, app, genesys_port: int | None = None) -> None:
        self.app = app
        self.port = genesys_port
        self.tasks = connector_tasks()
        self.sockets = open_sockets(self.port)
        save_garbage()

    async def check(self) -> None:
        await settled(self.app, timeout=10)
        try:
            async with asyncio.timeout(5):
                while connector_tasks() - self.tasks or open_sockets(self.port) > self.sockets:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            left = connector_tasks() - self.tasks
            raise AssertionError(
                f"left behind: tasks {left}, sockets {open_sockets(self.port)} > {self.sockets}"
            ) from None
        assert not self.app.sessions
        # A call kept alive by a reference cycle costs memory until a full collection pauses
        # every call at once; a finished call must be freed by reference counting alone.
        assert connector_garbage() == {}


@pytest.fixture(autouse=True)
def _garbage_saving_ends():
    yield
    stop_saving_garbage()  # also when a test fails before its check


def new_call(app, **kwargs) -> GenesysCall:
    kwargs.setdefault("ping_interval", None)
    return GenesysCall(ws_url(app), api_key=API_KEY, **kwargs)


def drop_after_chunks(sim, count: int) -> None:
    """Cut the first OpenAI socket once it has streamed `count` audio chunks."""
    chunks = []

    def tap(session, response, chunk):
        chunks.append(chunk)
        if len(chunks) == count and session is sim.sessions[0]:
            session.drop()
        return chunk

    sim.delta_tap = tap


def drop_once(sim, when) -> None:
    """Cut the OpenAI socket the first time `when(event)` matches a client event."""
    fired = []

    def matcher(event):
        if not fired and when(event):
            fired.append(True)
            return True
        return False

    sim.drop_on = matcher


async def test_openai_drops_during_connect_and_the_call_goes_on(bridged):
    app, sim = await bridged(Script(default=Turn(say="Hello.", seconds=0.6)))
    drop_once(sim, lambda e: e["type"] == "session.update")
    base = Baseline(app)
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(2.5))
        await call.close()
    assert len(sim.sessions) == 2 and len(call.record.bot_audio) == 4800
    assert call.record.disconnect is None and call.record.violations == [] and sim.violations == []
    await base.check()


async def test_openai_drops_mid_response_and_the_call_goes_on(bridged):
    script = Script(
        turns=[Turn(say="A long answer.", seconds=4.0)], default=Turn(say="Back again.", seconds=0.6)
    )
    app, sim = await bridged(script, sim_options={"speed": 1.0})
    drop_after_chunks(sim, 5)
    base = Baseline(app)
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(2.0))
        await call.stream(speech_like(1.0, seed=4) + silence(2.5))
        await call.close()
    assert len(sim.sessions) == 2
    assert sim.sessions[1].received[0]["type"] == "session.update"
    assert len(call.record.bot_audio) >= 4800  # the answer on the new socket came through
    assert call.record.disconnect is None and call.record.violations == [] and sim.violations == []
    await base.check()


async def test_openai_drops_during_a_tool_call_and_the_result_still_reaches_the_model(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=1.5, result={"status": "gold"})
    script = Script(
        turns=[Turn(call="genesys_data_action_get_account", arguments={"accountNumber": "12345"})],
        default=Turn(say="You are a gold member.", seconds=0.6),
    )
    app, sim = await bridged(script, TOOL_FILLER_AFTER_MS="0", **genesys_api.env())
    base = Baseline(app, genesys_api.port)
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(speech_like(1.0, seed=3) + silence(5.0)))
        async with asyncio.timeout(5):
            while not genesys_api.executions:
                await asyncio.sleep(0.02)
        sim.drop_all()  # while the action runs
        await streaming
        await call.close()
    late = [
        e["item"]["content"][0]["text"]
        for e in sim.sessions[1].received
        if e["type"] == "conversation.item.create" and e["item"].get("role") == "system"
    ]
    assert late == [
        'The tool genesys_data_action_get_account, called before a reconnection, returned: {"status": "gold"}'
    ]
    assert not [
        e
        for e in sim.sessions[1].received
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]
    assert len(call.record.bot_audio) == 4800  # the model answered with the result
    assert call.record.violations == [] and sim.violations == []
    await base.check()


async def test_openai_drops_during_the_farewell_and_the_call_still_ends_completed(bridged):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "done"})],
        farewell=Turn(say="Goodbye and thank you.", seconds=3.0),
    )
    app, sim = await bridged(script, sim_options={"speed": 1.0}, FAREWELL_TIMEOUT_SECONDS="6")
    drop_after_chunks(sim, 3)
    base = Baseline(app)
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(speech_like(1.0, seed=3) + silence(12)))
        disconnect = await call.wait_disconnect(15)
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "completed"
    variables = disconnect["parameters"]["outputVariables"]
    assert variables["COMPLETION_SUMMARY"] == "done" and len(variables) == 14
    assert call.record.violations == [] and sim.violations == []
    await base.check()


async def test_a_genesys_socket_dropped_without_close_releases_openai_and_everything(bridged):
    app, sim = await bridged(Script(default=Turn(say="Hello there.", seconds=2.0)))
    base = Baseline(app)
    call = new_call(app)
    await call.connect()
    await call.open()
    await call.stream(speech_like(1.0, seed=3) + silence(0.8))
    call.ws.transport.abort()
    await call.aclose()
    await base.check()
    async with asyncio.timeout(5):
        while sim.sessions[0].close_code is None:
            await asyncio.sleep(0.05)
    assert sim.violations == []


async def test_a_genesys_client_that_stops_reading_ends_cleanly_with_a_reason(bridged, caplog):
    app, _sim = await bridged(Script(default=Turn(say="Hello.", seconds=1.0)))
    base = Baseline(app)
    sim_call = new_call(app)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # a tiny window, never read
    raw.connect(("127.0.0.1", app.port))
    ws = await connect(ws_url(app), sock=raw, additional_headers=sim_call.headers(), max_queue=1)
    seq = 0

    async def send(type_, params=None):
        nonlocal seq
        seq += 1
        await ws.send(
            json.dumps(
                {
                    "version": "2",
                    "id": sim_call.session_id,
                    "type": type_,
                    "seq": seq,
                    "serverseq": 0,
                    "parameters": params or {},
                }
            )
        )

    await send(
        "open",
        {
            "organizationId": sim_call.organization_id,
            "conversationId": sim_call.conversation_id,
            "participant": {"id": sim_call.participant_id, "ani": "", "aniName": "", "dnis": ""},
            "media": [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}],
        },
    )
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - the server gives up on us: any close will do
        async with asyncio.timeout(30):
            while True:
                await send("ping")  # every ping asks for a pong we never read
    ws.transport.abort()
    assert time.monotonic() - started < 30
    await base.check()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("ending the session: ") for m in messages)


async def test_a_429_storm_from_genesys_only_slows_bot_audio(bridged):
    app, sim = await bridged(Script(default=Turn(say="Still here.", seconds=0.8)))
    base = Baseline(app)
    async with new_call(app) as call:
        await call.open()
        for _ in range(40):
            await call.send_message(
                "error", {"code": 429, "message": "Too many requests", "retryAfter": "PT0.05S"}
            )
            await call.ping()
        await call.stream(speech_like(1.0, seed=3) + silence(2.5))
        await call.close()
    assert len(call.record.pong_rtts) == 40 and max(call.record.pong_rtts) < 0.05
    assert len(call.record.bot_audio) == 6400 and call.record.disconnect is None
    assert call.record.violations == [] and sim.violations == []
    await base.check()


@pytest.mark.parametrize("url", ["ws://127.0.0.1:9/v1/realtime", "wss://openai.invalid/v1/realtime"])
async def test_openai_unreachable_at_open_ends_with_a_disconnect(start_app, url):
    app = await start_app(make_settings(OPENAI_REALTIME_URL=url, OPENAI_RECONNECT_SECONDS="1"))
    base = Baseline(app)
    async with new_call(app) as call:
        await call.open()
        disconnect = await call.wait_disconnect(10)
    params = disconnect["parameters"]
    assert params["reason"] == "error" and params["info"] == "OpenAI unreachable"
    assert params["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    await base.check()


async def test_a_failing_or_hanging_data_action_never_hangs_the_call(bridged, genesys_api):
    genesys_api.actions["slow"] = FakeAction(dict(ACCOUNT_SCHEMA, title="Slow"), delay=5.0)
    genesys_api.actions["broken"] = FakeAction(dict(ACCOUNT_SCHEMA, title="Broken"), mode="500")
    script = Script(
        turns=[
            Turn(call="genesys_data_action_slow", arguments={"accountNumber": "1234"}),
            Turn(call="genesys_data_action_broken", arguments={"accountNumber": "1234"}),
        ],
        default=Turn(say="Sorry, that did not work.", seconds=0.5),
    )
    app, sim = await bridged(
        script, TOOL_FILLER_AFTER_MS="0", GENESYS_HTTP_TIMEOUT_SECONDS="1", **genesys_api.env()
    )
    base = Baseline(app, genesys_api.port)
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "slow,broken"}) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(2.5) + speech_like(1.0, seed=4) + silence(2.0))
        await call.close()
    outputs = [
        json.loads(e["item"]["output"])
        for e in sim.events_of("conversation.item.create")
        if e["item"]["type"] == "function_call_output"
    ]
    assert outputs == [
        {"error": "the Genesys API did not answer in time"},
        {"error": "the data service failed (HTTP 500); the action may or may not have run"},
    ]
    assert len(call.record.bot_audio) == 2 * 4000
    assert call.record.violations == [] and sim.violations == []
    await base.check()
