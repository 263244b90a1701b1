"""Fuzzing: the live server with random and mutated AudioHook traffic, and the bridge with random
and mutated Realtime server events.

The CI budget is small (see `settings` below). For a long campaign:

    HYPOTHESIS_PROFILE=campaign python -m pytest tests/test_fuzz.py -q

which runs 20,000 examples per test (tune with HYPOTHESIS_MAX_EXAMPLES).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import threading
import uuid

import pytest
from conftest import API_KEY, make_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bridge_unit import attached
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from model_backend import ModelFailed
from oai_middleware import App
from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.realtime_simulator import RealtimeSimulator
from simulators.script import Script, Turn

settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "campaign",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

MONO = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}


class ServerThread:
    """The whole connector (and a Realtime simulator) on an event loop of its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim = self.run(
            RealtimeSimulator(Script(default=Turn(say="Hi.", seconds=0.4)), validate_server=True).start()
        )
        self.app = App(make_settings(OPENAI_REALTIME_URL=self.sim.url), auth_failure_delay=0.0)
        self.run(self.app.start())
        self.url = f"ws://127.0.0.1:{self.app.port}/audiohook"

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.run(self.app.stop())
        self.run(self.sim.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def server():
    s = ServerThread()
    yield s
    s.close()


# -- AudioHook traffic -----------------------------------------------------------------------

_json_leaf = (
    st.none() | st.booleans() | st.integers(-5, 70_000) | st.floats(allow_nan=False) | st.text(max_size=12)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def templates(session_id: str, org: str) -> dict[str, dict]:
    return {
        "open": {
            "organizationId": org,
            "conversationId": str(uuid.uuid4()),
            "participant": {"id": str(uuid.uuid4()), "ani": "+1", "aniName": "", "dnis": "+2"},
            "media": [MONO],
            "inputVariables": {"OPENAI_VOICE": "marin"},
        },
        "ping": {},
        "close": {"reason": "end"},
        "dtmf": {"digit": "5"},
        "error": {"code": 429, "message": "slow down", "retryAfter": "PT0.1S"},
        "paused": {},
        "resumed": {"start": "PT1S", "discarded": "PT0.5S"},
        "discarded": {"start": "PT1S", "discarded": "PT0.5S"},
        "update": {"language": "de-DE"},
        "playback_started": {},
        "playback_completed": {},
    }


MESSAGE_TYPES = tuple(templates("x", "y"))


@st.composite
def mutated_message(draw):
    """A message that is valid, or valid but for one or two mutations."""
    type_ = draw(st.sampled_from(MESSAGE_TYPES))
    mutations = draw(
        st.lists(
            st.sampled_from(
                [
                    "seq",
                    "serverseq",
                    "id",
                    "version",
                    "type",
                    "drop",
                    "param",
                    "extra",
                    "parameters",
                    "raw",
                    "deep",
                ]
            ),
            max_size=2,
        )
    )
    values = draw(st.lists(_json, min_size=4, max_size=4))
    return type_, mutations, values


def build(type_: str, mutations: list[str], values: list, seq: int, session_id: str, org: str) -> str | bytes:
    msg = {
        "version": "2",
        "id": session_id,
        "type": type_,
        "seq": seq,
        "serverseq": 0,
        "position": "PT0S",
        "parameters": copy.deepcopy(templates(session_id, org)[type_]),
    }
    for n, mutation in enumerate(mutations):
        value = values[n]
        if mutation == "raw":
            return json.dumps(value) if not isinstance(value, str) else value
        if mutation == "deep":  # nested deeper than the parser goes, under the size limit
            depth = 1000 + hash(str(value)) % 31_000
            return "[" * depth + "]" * depth
        if mutation == "drop":
            msg.pop(sorted(msg)[hash(str(value)) % len(msg)], None)
        elif mutation == "param" and isinstance(msg.get("parameters"), dict) and msg["parameters"]:
            msg["parameters"][sorted(msg["parameters"])[0]] = value
        elif mutation == "extra":
            msg[f"x{n}"] = value
        else:
            msg[mutation] = value
    return json.dumps(msg)


@st.composite
def conversations(draw):
    """A session: maybe a correct open first, then a few mutated messages and binary frames."""
    start_with_open = draw(st.booleans())
    steps = draw(
        st.lists(
            st.one_of(mutated_message(), st.binary(max_size=4000).map(lambda b: ("binary", b))),
            min_size=1,
            max_size=5,
        )
    )
    return start_with_open, steps


SERVER_TYPES = {"opened", "closed", "pong", "pause", "resume", "updated", "event", "disconnect"}


async def fuzz_session(url: str, start_with_open: bool, steps: list) -> None:
    session_id, org = str(uuid.uuid4()), str(uuid.uuid4())
    sim = GenesysCall(url, api_key=API_KEY, session_id=session_id, organization_id=org, ping_interval=None)
    async with connect(url, additional_headers=sim.headers(), open_timeout=5, max_size=2**20) as ws:
        seq = 0
        if start_with_open:
            seq += 1
            await ws.send(build("open", [], [None] * 4, seq, session_id, org))
        for step in steps:
            if step[0] == "binary":
                await ws.send(step[1])
                continue
            seq += 1
            await ws.send(build(step[0], step[1], step[2], seq, session_id, org))
        # End the session like Genesys would, and check everything that comes back.
        seq += 1
        await ws.send(
            json.dumps(
                {
                    "version": "2",
                    "id": session_id,
                    "type": "close",
                    "seq": seq,
                    "serverseq": 0,
                    "parameters": {"reason": "end"},
                }
            )
        )
        expected_seq = 1
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    raw = await ws.recv()
                    if isinstance(raw, bytes):
                        assert len(raw) <= 64_000
                        continue
                    msg = json.loads(raw)
                    assert (
                        msg["type"] in SERVER_TYPES
                        and msg["seq"] == expected_seq
                        and isinstance(msg["parameters"], dict)
                    )
                    assert msg["version"] == "2" and msg["id"] == session_id
                    expected_seq += 1
                    if msg["type"] == "closed":
                        return


async def healthy_call(url: str, done: threading.Event) -> GenesysCall:
    """A normal call that talks every few seconds for as long as the fuzzing lasts."""
    call = GenesysCall(url, api_key=API_KEY, ping_interval=0.5)
    async with call:
        await call.open()
        while not done.is_set() and call.record.disconnect is None:
            await call.stream(speech_like(0.8, seed=3) + silence(2.2))
        await call.close()
    return call


@settings(settings.get_profile(PROFILE))
@given(conversations())
def _fuzz_sessions(server, conversation):
    asyncio.run(fuzz_session(server.url, *conversation))


def test_random_and_mutated_audiohook_traffic_never_hurts_the_server_or_a_healthy_call(server):
    done = threading.Event()
    healthy = server.submit(healthy_call(server.url, done))
    try:
        _fuzz_sessions(server)
    finally:
        done.set()
    call = healthy.result(timeout=60)
    assert call.record.violations == [] and call.record.closed_at is not None
    assert call.record.disconnect is None  # it was never cut off
    assert len(call.record.bot_audio) > 0 and max(call.record.pong_rtts) < 0.05

    async def drained():
        async with asyncio.timeout(15):
            while server.app.sessions:
                await asyncio.sleep(0.05)

    server.run(drained())
    assert server.sim.violations == []


_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


HEADER_NAMES = (
    "Audiohook-Session-Id",
    "Audiohook-Organization-Id",
    "Audiohook-Correlation-Id",
    "X-API-KEY",
    "Signature-Input",
    "Signature",
)


@settings(settings.get_profile(PROFILE))
@given(
    # Any of them missing, malformed, right, or sent more than once.
    st.lists(
        st.tuples(
            st.sampled_from(HEADER_NAMES),
            _header_text | st.just(str(uuid.uuid4())) | st.just(API_KEY),
        ),
        max_size=9,
    ),
    st.sampled_from(["/audiohook", "/audiohook/x?y=z", "/audiohook/%00", "/other", "/ready", "/"]),
)
def _fuzz_headers(server, headers, path):
    async def attempt():
        url = f"ws://127.0.0.1:{server.app.port}{path}"
        try:
            async with connect(url, additional_headers=headers, open_timeout=5) as ws:
                await ws.close()
        except InvalidStatus as exc:
            assert exc.response.status_code in (400, 401, 404, 503, 200), exc.response.status_code
        except InvalidHandshake:
            pass

    asyncio.run(attempt())


def test_random_upgrade_headers_get_a_clear_answer_and_never_a_500(server):
    _fuzz_headers(server)


# -- Realtime server events ------------------------------------------------------------------

_b64 = st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode())
_ids = st.sampled_from(["resp_1", "resp_2", "item_1", "item_2", "call_1", None, 7, ""])

EVENT_TEMPLATES = [
    {"type": "session.created", "session": {"expires_at": 9999999999}},
    {"type": "session.updated", "session": {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": 10, "item_id": "item_u"},
    {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "item_u"},
    {"type": "conversation.item.added", "item": {"id": "item_1", "type": "message", "role": "assistant"}},
    {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": "item_u",
        "transcript": "hi",
    },
    {"type": "response.created", "response": {"id": "resp_1", "conversation_id": "conv_1", "metadata": None}},
    {"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_1", "delta": "////"},
    {"type": "response.output_audio_transcript.done", "item_id": "item_1", "transcript": "hello"},
    {
        "type": "response.function_call_arguments.done",
        "call_id": "call_1",
        "name": "end_conversation_successfully",
        "arguments": "{}",
    },
    {
        "type": "response.output_item.added",
        "item": {"id": "mcp_1", "type": "mcp_call", "server_label": "crm", "name": "x"},
    },
    {
        "type": "response.output_item.done",
        "item": {"id": "a_1", "type": "mcp_approval_request", "server_label": "crm", "name": "x"},
    },
    {"type": "response.mcp_call.completed", "item_id": "mcp_1"},
    {"type": "mcp_list_tools.failed", "item_id": "l_1"},
    {
        "type": "response.done",
        "response": {
            "id": "resp_1",
            "status": "completed",
            "usage": {"input_token_details": {"text_tokens": 3}},
            "output": [],
        },
    },
    {
        "type": "response.done",
        "response": {"id": "resp_s", "status": "failed", "status_details": {"error": {"code": "x"}}},
    },
    {
        "type": "rate_limits.updated",
        "rate_limits": [{"name": "tokens", "limit": 1, "remaining": 1, "reset_seconds": 1}],
    },
    {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": "conversation_already_has_active_response",
            "message": "x",
        },
    },
    {
        "type": "error",
        "error": {
            "type": "server_error",
            "code": None,
            "message": "Audio content of 1ms is already shorter than 2ms",
        },
    },
]


def _mutate(event: dict, path_choice: int, value) -> dict:
    """Replace one value somewhere inside the event (not its type), or drop it."""
    event = copy.deepcopy(event)
    slots = []

    def walk(node):
        if isinstance(node, dict):
            for key in node:
                if node is event and key == "type":
                    continue
                slots.append((node, key))
                walk(node[key])
        elif isinstance(node, list):
            for index in range(len(node)):
                slots.append((node, index))
                walk(node[index])

    walk(event)
    if slots:
        parent, key = slots[path_choice % len(slots)]
        if value == "<drop>" and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = value
    return event


_event = st.one_of(
    st.sampled_from(EVENT_TEMPLATES),
    st.builds(
        _mutate, st.sampled_from(EVENT_TEMPLATES), st.integers(0, 50), _json | _ids | _b64 | st.just("<drop>")
    ),
    st.builds(
        lambda t, extra: {"type": t, **extra},
        st.sampled_from([e["type"] for e in EVENT_TEMPLATES] + ["nonsense"]),
        st.dictionaries(st.text(max_size=10), _json, max_size=3),
    ),
)


@settings(settings.get_profile(PROFILE))
@given(st.lists(_event, min_size=1, max_size=25))
def test_random_and_mutated_realtime_events_never_break_the_bridge(events):
    async def feed():
        bridge, session, _socket = attached(make_settings(ENABLE_MCP_TOOLS="false"))
        for event in events:
            try:
                session.handle(event)
            except ModelFailed:
                pass
        # The bridge still works: audio flows and variables are well formed.
        bridge.on_audio(b"\xff" * 160)
        variables = bridge.output_variables()
        assert len(variables) == 14 and all(isinstance(v, str) for v in variables.values())
        json.loads(variables["CONVERSATION_SUMMARY"])

    asyncio.run(feed())
