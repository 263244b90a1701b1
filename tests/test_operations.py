"""Operations: drain on signals, capacity, /metrics, JSON logs, and secrets that never get out."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import urllib.request
import weakref

import pytest
from conftest import API_KEY, CLIENT_SECRET, OPENAI_KEY, ROOT, make_settings, settled, ws_url
from fake_genesys_api import CLIENT_SECRET as GENESYS_OAUTH_SECRET
from fake_genesys_api import FakeAction
from test_data_actions import ACCOUNT_RESULT, ACCOUNT_SCHEMA
from websockets.exceptions import InvalidStatus

from log_setup import SecretMasker, configure_logging
from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.script import Script, Turn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


async def status(port: int, path: str) -> int:
    return await asyncio.to_thread(http_status, port, path)


class Connector:
    """`python oai_middleware.py` as its own process, as operators run it."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "GENESYS_API_KEY": API_KEY,
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_MODEL": "gpt-realtime-2.1-mini",
            **env,
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Connector:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "oai_middleware.py"),
            env=self.env,
            cwd=ROOT / "tests",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(15):
            while True:
                try:
                    if await status(self.port, "/health") == 200:
                        return self
                except OSError:
                    pass
                await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exit_code(self, timeout: float = 20) -> tuple[int, str]:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            _, stderr = await self.proc.communicate()
        return self.proc.returncode, stderr.decode()

    def call(self, **kwargs) -> GenesysCall:
        kwargs.setdefault("ping_interval", None)
        return GenesysCall(f"ws://127.0.0.1:{self.port}/audiohook", api_key=API_KEY, **kwargs)


async def test_sigterm_drains_then_ends_calls_with_a_disconnect_and_exits_0(realtime):
    sim = await realtime(Script(default=Turn(say="Hello.", seconds=0.5)))
    async with Connector(OPENAI_REALTIME_URL=sim.url, SHUTDOWN_DRAIN_SECONDS="2") as connector:
        call = connector.call()
        async with call:
            await call.open()
            streaming = asyncio.create_task(call.stream(speech_like(1.0) + silence(10)))
            await asyncio.sleep(1.0)
            connector.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert await status(connector.port, "/ready") == 503
            assert await status(connector.port, "/health") == 200
            with pytest.raises(InvalidStatus) as refused:
                await connector.call().connect()
            assert refused.value.response.status_code == 503
            signalled = time.monotonic()
            disconnect = await call.wait_disconnect(10)
            streaming.cancel()
        code, stderr = await connector.exit_code()
    assert 1.5 <= call.record.disconnect_at - signalled + 0.3 <= 4.0  # after the drain period
    params = disconnect["parameters"]
    assert params["reason"] == "error" and params["info"] == "server shutting down"
    variables = params["outputVariables"]
    assert len(variables) == 14 and variables["ESCALATION_REQUIRED"] == "true"
    assert call.record.closed_at is not None and call.record.violations == []
    assert code == 0, stderr
    assert "draining: 1 calls in progress" in stderr and "Traceback" not in stderr


async def test_a_second_signal_cuts_the_drain_short_but_still_disconnects(realtime):
    sim = await realtime()
    async with Connector(OPENAI_REALTIME_URL=sim.url, SHUTDOWN_DRAIN_SECONDS="60") as connector:
        call = connector.call()
        async with call:
            await call.open()
            streaming = asyncio.create_task(call.stream(silence(20)))
            await asyncio.sleep(0.5)
            connector.signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            connector.signal(signal.SIGINT)
            disconnect = await call.wait_disconnect(5)
            streaming.cancel()
        code, stderr = await connector.exit_code()
    assert disconnect["parameters"]["info"] == "server shutting down"
    assert code == 0, stderr


async def test_an_idle_connector_exits_at_once_on_sigterm():
    async with Connector(OPENAI_REALTIME_URL="ws://127.0.0.1:9/v1/realtime") as connector:
        started = time.monotonic()
        connector.signal(signal.SIGTERM)
        code, stderr = await connector.exit_code()
    assert code == 0 and time.monotonic() - started < 3.0, stderr


async def test_capacity_limit_refuses_with_503_and_keeps_probes_answered(start_app):
    from conftest import recording_factory

    app = await start_app(make_settings(MAX_CONCURRENT_CALLS="2"), handler_factory=recording_factory())
    first, second = (GenesysCall(ws_url(app), api_key=API_KEY, ping_interval=None) for _ in range(2))
    async with first, second:
        await first.open()
        await second.open()
        assert await status(app.port, "/ready") == 503
        assert await status(app.port, "/health") == 200
        with pytest.raises(InvalidStatus) as refused:
            await GenesysCall(ws_url(app), api_key=API_KEY).connect()
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "5"
        await first.close()
    await settled(app)
    assert await status(app.port, "/ready") == 200
    third = GenesysCall(ws_url(app), api_key=API_KEY, ping_interval=None)
    async with third:
        await third.open()
        await third.close()


async def test_concurrent_upgrades_never_exceed_the_limit(start_app):
    from conftest import recording_factory

    app = await start_app(make_settings(MAX_CONCURRENT_CALLS="3"), handler_factory=recording_factory())
    calls = [GenesysCall(ws_url(app), api_key=API_KEY, ping_interval=None) for _ in range(8)]
    results = await asyncio.gather(*(c.connect() for c in calls), return_exceptions=True)
    accepted = [c for c, r in zip(calls, results, strict=True) if r is None]
    assert len(accepted) == 3
    assert all(
        isinstance(r, InvalidStatus) and r.response.status_code == 503 for r in results if r is not None
    )
    for c in accepted:
        await c.aclose()


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def metrics_text(app) -> str:
    def fetch() -> tuple[str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/metrics", timeout=5) as r:
            return r.headers["Content-Type"], r.read().decode()

    ctype, body = await asyncio.to_thread(fetch)
    assert ctype.startswith("text/plain; version=0.0.4")
    return body


async def test_metrics_move_with_a_call(bridged):
    script = Script(
        turns=[Turn(say="A long answer the caller cuts into.", seconds=3.0)],
        default=Turn(say="Yes?", seconds=0.5),
    )
    app, sim = await bridged(script)
    await expect_refused(app)
    call = GenesysCall(ws_url(app), api_key=API_KEY, ping_interval=0.5)
    async with call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(1.4))
        during = await metrics_text(app)
        await call.stream(speech_like(0.8, seed=4) + silence(2.0))
        await call.close()
    await settled(app)
    after = await metrics_text(app)
    assert metric(during, "connector_active_calls") == 1 and metric(after, "connector_active_calls") == 0
    assert metric(after, "connector_calls_total", 'outcome="caller_hangup"') == 1
    assert metric(after, "connector_audio_frames_total", 'direction="caller_to_connector"') == 26
    assert metric(after, "connector_audio_bytes_total", 'direction="caller_to_connector"') == 5.2 * 8000
    assert metric(after, "connector_audio_bytes_total", 'direction="connector_to_caller"') == len(
        call.record.bot_audio
    )
    assert metric(after, "connector_barge_ins_total") == 1
    assert metric(after, "connector_auth_failures_total", 'reason="wrong_api_key"') == 1
    assert metric(after, "connector_time_to_opened_seconds_count") == 1
    assert metric(after, "connector_pong_latency_seconds_count") >= 5
    assert metric(after, "connector_first_bot_audio_seconds_count") >= 1
    assert sim.violations == []


async def expect_refused(app) -> None:
    with pytest.raises(InvalidStatus):
        await GenesysCall(ws_url(app), api_key="wrong").connect()


async def test_tool_calls_and_reconnects_are_counted(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA)
    script = Script(
        turns=[
            Turn(call="genesys_data_action_get_account", arguments={"accountNumber": "12345"}),
            Turn(call="end_conversation_with_escalation", arguments={"reason": "wants a person"}),
        ],
        default=Turn(say="Done.", seconds=0.4),
    )
    app, sim = await bridged(script, **genesys_api.env())
    call = GenesysCall(
        ws_url(app), api_key=API_KEY, ping_interval=None, input_variables={"DATA_ACTION_IDS": "acct-1"}
    )
    async with call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(2.0))
        sim.drop_all()
        streaming = asyncio.create_task(call.stream(silence(1.0) + speech_like(1.0, seed=4) + silence(10)))
        await call.wait_disconnect(15)
        streaming.cancel()
    await settled(app)
    text = await metrics_text(app)
    assert (
        metric(text, "connector_tool_calls_total", 'result="ok",tool="genesys_data_action_get_account"') == 1
    )
    assert (
        metric(text, "connector_tool_calls_total", 'result="ok",tool="end_conversation_with_escalation"') == 1
    )
    assert metric(text, "connector_tool_latency_seconds_count", 'tool="genesys_data_action_get_account"') == 1
    assert metric(text, "connector_openai_reconnects_total", 'reason="dropped"') == 1
    assert metric(text, "connector_calls_total", 'outcome="escalated"') == 1


@pytest.fixture
def captured_logs():
    """Route all logging through the connector's own handler into a buffer, as in production."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()

    def install(level: str, fmt: str, secrets=()):
        masker = SecretMasker(secrets)
        configure_logging(level, fmt, masker, stream=buffer)
        return masker

    yield install, buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)
    logging.getLogger("websockets").setLevel(logging.NOTSET)


async def test_json_log_lines_parse_and_carry_the_call_ids(bridged, captured_logs):
    install, buffer = captured_logs
    install("DEBUG", "json")
    app, _sim = await bridged(Script(default=Turn(say="Hi.", seconds=0.4)))
    call = GenesysCall(ws_url(app), api_key=API_KEY, ping_interval=None)
    async with call:
        await call.open()
        await call.stream(speech_like(0.8, seed=3) + silence(1.5))
        await call.close()
    await settled(app)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert lines and all(
        {"time", "level", "logger", "message", "session_id", "conversation_id"} <= set(e) for e in lines
    )
    opened = next(e for e in lines if e["message"].startswith("call opened"))
    assert opened["session_id"] == call.session_id and opened["conversation_id"] == call.conversation_id
    assert all(e["session_id"] == call.session_id for e in lines if e["logger"] == "bridge")


async def test_no_secret_is_ever_printed_even_at_debug(start_app, realtime, genesys_api, captured_logs):
    install, buffer = captured_logs
    mcp_auth, mcp_header = "mcp-authorization-secret-9", "tenant-header-secret-7"
    mcp = [
        {
            "type": "mcp",
            "server_label": "crm",
            "server_url": "https://mcp.example.com/mcp",
            "authorization": mcp_auth,
            "headers": {"X-Tenant": mcp_header},
            "require_approval": "never",
        }
    ]
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, result=ACCOUNT_RESULT)
    sim = await realtime(
        Script(
            turns=[Turn(call="genesys_data_action_get_account", arguments={"accountNumber": "12345"})],
            default=Turn(say="Found it.", seconds=0.4),
        )
    )
    settings = make_settings(
        OPENAI_REALTIME_URL=sim.url,
        GENESYS_AUDIOHOOK_CLIENT_SECRET=CLIENT_SECRET,
        ENABLE_MCP_TOOLS="true",
        MCP_TOOLS_JSON=json.dumps(mcp),
        LOG_LEVEL="DEBUG",
        **genesys_api.env(),
    )
    masker = install("DEBUG", "text", settings.secrets())
    logging.getLogger("websockets").setLevel(
        logging.DEBUG
    )  # it prints request headers: prove they are masked
    from oai_middleware import App

    app = App(settings, auth_failure_delay=0.01, masker=masker)
    await app.start()
    try:
        call = GenesysCall(
            ws_url(app),
            api_key=API_KEY,
            client_secret=CLIENT_SECRET,
            ping_interval=None,
            input_variables={"DATA_ACTION_IDS": "acct-1"},
        )
        async with call:
            await call.open()
            await call.stream(speech_like(1.0, seed=3) + silence(2.5))
            await call.close()
        await settled(app)
    finally:
        await app.stop()
    text = buffer.getvalue()
    secrets = {
        "GENESYS_API_KEY": API_KEY,
        "GENESYS_AUDIOHOOK_CLIENT_SECRET": CLIENT_SECRET,
        "the decoded client secret": base64.b64decode(CLIENT_SECRET).decode(),
        "OPENAI_API_KEY": OPENAI_KEY,
        "GENESYS_CLIENT_SECRET": GENESYS_OAUTH_SECRET,
        "the OAuth token": "token-1-secret",
        "MCP authorization": mcp_auth,
        "MCP header": mcp_header,
    }
    assert genesys_api.token_requests >= 1 and len(genesys_api.executions) == 1
    assert len(text.splitlines()) > 50
    for what, value in secrets.items():
        assert value not in text, f"{what} appeared in a log line"
    assert "< X-API-KEY: ***" in text  # the websockets DEBUG header dump was there, and masked


def test_masker_masks_every_form_and_learns_tokens():
    masker = SecretMasker(["abcd-key", CLIENT_SECRET, "x"])
    line = f"key abcd-key secret {CLIENT_SECRET} decoded {base64.b64decode(CLIENT_SECRET).decode()} x"
    assert masker.mask(line) == "key *** secret *** decoded *** x"
    masker.add("runtime-token-123")
    assert masker.mask("Bearer runtime-token-123") == "Bearer ***"


async def test_the_periodic_full_collection_frees_cycles_and_is_measured():
    import gc
    import platform

    from metrics import Metrics, collect_garbage, malloc_trim

    class Node:
        pass

    metrics = Metrics()
    gc.disable()  # only the periodic collection may free the cycle
    try:
        node = Node()
        node.self = node
        alive = weakref.ref(node)
        del node
        task = asyncio.create_task(collect_garbage(metrics.full_collections, interval=0.05, collect_every=1))
        count = "connector_full_collection_seconds_count"
        async with asyncio.timeout(10):  # a full collection of a big test process takes a while
            while (metrics.registry.get_sample_value(count) or 0) < 2:
                await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        gc.enable()
    assert alive() is None
    assert metrics.registry.get_sample_value("connector_full_collection_seconds_count") >= 2
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert malloc_trim() is not None
