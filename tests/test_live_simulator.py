"""The GPT-Live simulator is only useful if it is strict and faithful to the spec: check it is."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from openai.types.responses import Response
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from simulators.audio import silence, speech_like
from simulators.live_simulator import LiveSimulator, LiveValidator, commentary_turn
from simulators.script import Script, Turn

VALIDATOR = LiveValidator()
PCMU = {"type": "audio/pcmu", "rate": 8000}
SILENT_FRAME = b"\xff" * 800

TOOLS = [
    {
        "type": "function",
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
    },
    {
        "type": "function",
        "name": "end_conversation_successfully",
        "parameters": {
            "type": "object",
            "properties": {"summary": {"type": "string"}},
            "required": ["summary"],
        },
    },
]

# The worked example of spec §16.
START = {
    "type": "session.start",
    "event_id": "e1",
    "session": {
        "model": "gpt-live-1",
        "instructions": "You are Ava, a friendly phone agent for Acme. Backchannel policy: moderate.",
        "audio": {"format": PCMU, "output": {"voice": "sage"}},
        "delegation": {
            "type": "responses",
            "responses": {"model": "gpt-5.5", "instructions": "Acme rules.", "tools": TOOLS},
        },
        "input": [],
    },
}
GREETING = {
    "type": "session.commentary.append",
    "event_id": "g1",
    "delegation_id": None,
    "content": 'Greet the caller: "Welcome to Acme, this is Ava." Do not wait for the caller to speak first.',
}


def start_event(**session: Any) -> dict[str, Any]:
    return {**START, "session": {**START["session"], **session}}


def append(audio: bytes) -> str:
    return json.dumps({"type": "session.input_audio.append", "audio": base64.b64encode(audio).decode()})


# -- the validator ---------------------------------------------------------------------------


WORKED_CLIENT_EVENTS = [
    START,
    {"type": "session.input_audio.append", "audio": base64.b64encode(silence(0.2)).decode()},
    GREETING,
    {"type": "session.thinking.append", "delegation_id": None, "content": "The order tool is slow."},
    {
        "type": "response.item.create",
        "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"status":"shipped"}'},
    },
    {
        "type": "response.item.create",
        "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}", "name": "lookup_order"},
    },
    {"type": "response.create"},
    {"type": "session.close", "event_id": "c1"},
]

SESSION_RESOURCE = {
    "id": "live_1",
    "expires_at": 1796166696,
    "status": "active",
    "model": "gpt-live-1",
    "audio": {"output": {"voice": "sage"}, "format": PCMU},
    "delegation": START["session"]["delegation"],
    "instructions": "…",
    "input": [],
}
USAGE = {
    "input_tokens": 120,
    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    "output_tokens": 24,
    "output_tokens_details": {"reasoning_tokens": 8},
    "total_tokens": 144,
}
COMPLETED = {
    "type": "response.completed",
    "sequence_number": 6,
    "response": {
        "id": "resp_1",
        "object": "response",
        "created_at": 1.0,
        "status": "completed",
        "model": "gpt-5.5",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": USAGE,
    },
}
WORKED_SERVER_EVENTS = [
    {"type": "session.started", "event_id": "ev1", "client_event_id": "e1", "session": SESSION_RESOURCE},
    {"type": "session.output_audio.delta", "delta": base64.b64encode(SILENT_FRAME).decode()},
    {
        "type": "session.commentary.appended",
        "event_id": "ev2",
        "client_event_id": "g1",
        "start_ms": 800,
        "end_ms": 1000,
    },
    {
        "type": "session.output_transcript.delta",
        "event_id": "ev3",
        "delta": "Welcome",
        "start_ms": 1000,
        "end_ms": 1200,
    },
    {
        "type": "session.input_transcript.delta",
        "event_id": "ev9",
        "delta": " order 42?",
        "start_ms": 4800,
        "end_ms": 5000,
    },
    {
        "type": "session.delegation.created",
        "event_id": "ev10",
        "offset_ms": 5000,
        "delegation": {"id": "dlg_1", "type": "delegation", "target": "responses", "response_id": "resp_1"},
    },
    {
        "type": "response.event",
        "event_id": "ev12",
        "delegation_id": "dlg_1",
        "event": {
            "type": "response.output_item.done",
            "sequence_number": 5,
            "output_index": 0,
            "item": {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "lookup_order",
                "arguments": '{"order":"42"}',
                "status": "completed",
            },
        },
    },
    {"type": "response.event", "event_id": "ev13", "delegation_id": "dlg_1", "event": COMPLETED},
    {
        "type": "session.usage.updated",
        "event_id": "ev20",
        "usage": {"seconds": 21},
        "context_window": {"usage_ratio": 0.011},
    },
    {
        "type": "session.closed",
        "event_id": "ev21",
        "client_event_id": "c1",
        "reason": "close_requested",
        "session": SESSION_RESOURCE,
        "usage": {"seconds": 21},
    },
]


def test_validator_accepts_the_worked_example_events_both_ways():
    for event in WORKED_CLIENT_EVENTS:
        assert VALIDATOR.problems(event) == [], event["type"]
    for event in WORKED_SERVER_EVENTS:
        assert VALIDATOR.problems(event, "server") == [], event["type"]


LONG_TEXT = "word " * 401  # 2005 characters: 502 estimated tokens


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        (start_event(turn_detection={"type": "server_vad"}), "unknown_parameter", "session.turn_detection"),
        (start_event(type="realtime"), "unknown_parameter", "session.type"),
        (start_event(voice="sage"), "unknown_parameter", "session.voice"),
        (
            start_event(audio={"input": {"format": {"type": "audio/pcmu"}}}),
            "unknown_parameter",
            "session.audio.input",
        ),
        (
            start_event(audio={"format": {"type": "audio/pcmu"}}),
            "missing_required_parameter",
            "session.audio.format.rate",
        ),
        (
            start_event(audio={"format": {"type": "audio/pcmu", "rate": 16000}}),
            "invalid_value",
            "session.audio.format.rate",
        ),
        (
            start_event(audio={"format": {"type": "audio/pcm", "rate": 8000}}),
            "invalid_value",
            "session.audio.format.rate",
        ),
        (start_event(model=None), "invalid_type", "session.model"),
        (start_event(instructions="x" * (16_385 * 4)), "invalid_value", "session.instructions"),
        (
            start_event(input=[{"role": "user", "content": [{"text": "hi"}]}] * 129),
            "invalid_value",
            "session.input",
        ),
        (
            start_event(input=[{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}]),
            "invalid_value",
            "session.input[0].content",
        ),
        (
            start_event(input=[{"role": "system", "content": [{"text": "a"}]}]),
            "invalid_value",
            "session.input[0].role",
        ),
        (
            {"type": "session.commentary.append", "content": "Say hello."},
            "missing_required_parameter",
            "delegation_id",
        ),
        (
            {"type": "session.thinking.append", "delegation_id": None, "content": LONG_TEXT},
            "invalid_value",
            "content",
        ),
        ({"type": "session.input_audio.append", "audio": "not base64!"}, "invalid_value", "audio"),
        ({"type": "input_audio_buffer.append", "audio": "AAAA"}, "invalid_value", "type"),
        ({"type": "response.create", "response": {"modalities": ["audio"]}}, "unknown_parameter", "response"),
        (
            {"type": "session.update", "session": {"instructions": "new"}},
            "unknown_parameter",
            "session.instructions",
        ),
        (
            {
                "type": "response.item.create",
                "item": {"type": "function_call_output", "call_id": "c", "output": "x", "bogus": 1},
            },
            "unknown_parameter",
            "item.bogus",
        ),
        (
            {
                "type": "session.output_audio.fixture.play",
                "audio": base64.b64encode(bytes(30 * 48_000 + 2)).decode(),
            },
            "invalid_value",
            "audio",
        ),
    ],
)
def test_validator_rejects_realtime_shapes_missing_keys_and_out_of_range_values(event, code, param):
    problems = VALIDATOR.check(event)
    assert problems, event
    assert (problems[0].code, problems[0].param) == (code, param), problems


def test_validator_checks_the_nested_responses_events_the_simulator_sends():
    bad = {**COMPLETED, "response": {**COMPLETED["response"], "usage": {**USAGE, "audio_tokens": 3}}}
    event = {"type": "response.event", "event_id": "e", "delegation_id": "d", "event": bad}
    assert [p.param for p in VALIDATOR.check(event, "server")] == ["event.response.usage.audio_tokens"]
    unknown = {"type": "response.event", "event_id": "e", "event": {"type": "response.audio_tokens"}}
    assert VALIDATOR.check(unknown, "server")[0].param == "event.type"


def test_commentary_heuristic_the_connector_texts_follow():
    script = Script(turns=[Turn(say="You entered your account number.")])
    assert commentary_turn(script, GREETING["content"]).say == "Welcome to Acme, this is Ava."
    assert commentary_turn(script, "Say a brief Goodbye now.").say == script.farewell.say
    assert (
        commentary_turn(script, "The caller entered 4 1 2 7 on the keypad.").say
        == "You entered your account number."
    )
    assert commentary_turn(script, "Tell the caller you are still working on it.").say == script.filler.say


# -- over a socket ---------------------------------------------------------------------------


async def client(sim: LiveSimulator, url: str | None = None, **headers: str) -> ClientConnection:
    if "api-key" not in headers:
        headers.setdefault("Authorization", "Bearer sk-test")
    return await connect(
        url or sim.url, additional_headers=headers, max_size=None, compression=None, open_timeout=5
    )


async def next_event(ws: ClientConnection, type_: str, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == type_:
                return event


class Inbox:
    """Everything the simulator sends, read in the background; audio frames kept with arrival times."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.frames: list[tuple[float, bytes]] = []
        self.done = False  # the connection closed
        self._new = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for raw in self.ws:  # ends quietly on a normal close
                event = json.loads(raw)
                if event["type"] == "session.output_audio.delta":
                    self.frames.append((loop.time(), base64.b64decode(event["delta"])))
                self.events.append(event)
                self._new.set()
        finally:
            self.done = True
            self._new.set()

    async def wait(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                if self.done:
                    raise AssertionError(f"connection closed while waiting ({self.ws.close_code})")
                self._new.clear()
                await self._new.wait()

    async def first(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.wait(lambda e: e["type"] == type_, timeout)

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def text(self, type_: str) -> str:
        return "".join(e["delta"] for e in self.of(type_))

    def nested(self) -> list[dict[str, Any]]:
        return [e["event"] for e in self.of("response.event")]


class Caller:
    """Streams μ-law at real time in 100 ms appends: silence unless told to speak."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending = bytearray()
        self.sent = 0

    def say(self, seconds: float, seed: int = 1) -> None:
        self.pending += speech_like(seconds, seed=seed)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = bytes(self.pending[:800])
                del self.pending[:800]
                await self.ws.send(append(frame + SILENT_FRAME[len(frame) :]))
                self.sent += 1
                due += 0.1
                await asyncio.sleep(max(0.0, due - loop.time()))


@contextlib.asynccontextmanager
async def call(
    sim: LiveSimulator, start: dict[str, Any] = START, stream: bool = True
) -> AsyncIterator[tuple[ClientConnection, Inbox, Caller]]:
    """A started session with a reader and (unless `stream` is false) real-time input running."""
    ws = await client(sim)
    await ws.send(json.dumps(start))
    await next_event(ws, "session.started")
    inbox, caller = Inbox(ws), Caller(ws)
    tasks = [asyncio.create_task(inbox.run())]
    if stream:
        tasks.append(asyncio.create_task(caller.run()))
    try:
        yield ws, inbox, caller
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ws.close()


def speaking(frame: bytes) -> bool:
    return frame != SILENT_FRAME


async def test_the_handshake_takes_bearer_or_azure_api_key_and_flags_query_and_beta_headers(live):
    sim = await live()
    with pytest.raises(InvalidStatus) as refused:
        await connect(sim.url)
    assert refused.value.response.status_code == 401
    azure = sim.azure_endpoint.replace("http", "ws") + "/openai/v1/live/sessions"
    with pytest.raises(InvalidStatus):
        await client(sim, azure, Authorization="Bearer sk-test", **{"api-key": "k"})
    ws = await client(sim, azure, **{"api-key": "k"})
    await ws.send(json.dumps(START))
    await next_event(ws, "session.started")
    await ws.close()
    assert sim.sessions[-1].auth == "api-key" and sim.sessions[-1].model == "gpt-live-1"
    assert len(sim.violations) == 2
    ws = await client(sim, sim.url + "?model=gpt-live-1", **{"OpenAI-Beta": "realtime=v1"})
    await ws.close()
    assert sim.sessions[-1].auth == "bearer"
    assert "query string" in sim.violations[2] and "OpenAI-Beta" in sim.violations[3]
    assert sim.connections == 4


async def test_nothing_comes_before_session_start_and_early_audio_is_refused_but_counted(live):
    sim = await live()
    ws = await client(sim)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await ws.recv()
    await ws.send(append(silence(0.2)))
    error = await next_event(ws, "error")
    assert error["error"]["code"] == "session_not_started"
    bare = {"type": "session.start", "event_id": "s1", "session": {"model": "gpt-live-1"}}
    await ws.send(json.dumps(bare))
    started = await next_event(ws, "session.started")
    session = started["session"]
    assert started["client_event_id"] == "s1"
    assert session["id"].startswith("live_") and session["expires_at"] > 0 and session["status"] == "active"
    assert session["audio"] == {"output": {"voice": "marin"}, "format": {"type": "audio/pcm", "rate": 24000}}
    assert session["delegation"] == {"type": "client"} and session["input"] == []
    await ws.send(json.dumps(bare))
    assert (await next_event(ws, "error"))["error"]["code"] == "session_already_started"
    frame = json.loads(await ws.recv())
    assert frame["type"] == "session.output_audio.delta" and "event_id" not in frame
    assert len(base64.b64decode(frame["delta"])) == 4800  # 100 ms of PCM16 24 kHz
    await ws.close()
    sim_session = sim.sessions[0]
    assert sim_session.audio_dropped == 1600 and sim_session.audio_received == bytearray()
    assert sim_session.input_ms == 0 and sim_session.start == bare
    assert len(sim.violations) == 2


async def test_a_slow_start_refuses_every_other_event_until_session_started(live):
    sim = await live()
    sim.start_delay = 0.5
    ws = await client(sim)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await ws.send(json.dumps(START))
    await ws.send(json.dumps(GREETING))
    await ws.send(append(silence(0.1)))
    await ws.send(json.dumps(START))
    errors = [json.loads(await ws.recv()) for _ in range(3)]
    assert [(e["type"], e.get("client_event_id"), e["error"]["code"]) for e in errors] == [
        ("error", "g1", "session_not_started"),
        ("error", None, "session_not_started"),
        ("error", "e1", "session_already_started"),
    ]
    started = await next_event(ws, "session.started")
    assert started["client_event_id"] == "e1" and loop.time() - began >= 0.5
    await ws.send(json.dumps(GREETING))
    assert (await next_event(ws, "session.commentary.appended"))["client_event_id"] == "g1"
    await ws.close()
    assert [v.split(":")[0] for v in sim.violations] == [
        "session.commentary.append",
        "session.input_audio.append",
        "session.start",
    ]
    assert sim.sessions[0].audio_dropped == 800


async def test_the_backend_reasons_between_response_created_and_its_output_on_demand(live):
    script = Script(turns=[Turn(call="lookup_order", arguments={"order": "42"})])
    sim = await live(script)
    sim.backend_reasoning = 0.6
    async with call(sim) as (_, inbox, caller):
        caller.say(1.0)
        await inbox.wait(lambda e: e["type"] == "response.event" and e["event"]["type"] == "response.created")
        loop = asyncio.get_running_loop()
        created_at = loop.time()
        await inbox.wait(
            lambda e: e["type"] == "response.event" and e["event"]["type"] == "response.output_item.added"
        )
        assert loop.time() - created_at >= 0.5
    assert sim.violations == []


async def test_an_unknown_voice_gets_invalid_value_and_no_session_started(live):
    sim = await live()
    ws = await client(sim)
    await ws.send(json.dumps(start_event(audio={"format": PCMU, "output": {"voice": "nova"}})))
    event = json.loads(await ws.recv())
    assert event["type"] == "error"
    assert (event["error"]["code"], event["error"]["param"]) == (
        "invalid_value",
        "session.audio.output.voice",
    )
    assert event["client_event_id"] == "e1" == event["error"]["client_event_id"]
    await ws.send(json.dumps(START))
    assert (await next_event(ws, "session.started"))["session"]["audio"]["output"]["voice"] == "sage"
    await ws.close()


async def test_an_invalid_event_is_answered_with_its_code_and_the_session_goes_on(live):
    sim = await live()
    async with call(sim, stream=False) as (ws, inbox, _):
        await ws.send(json.dumps({"type": "session.commentary.append", "event_id": "x1", "content": "Hi."}))
        error = await inbox.first("error")
        assert error["error"]["code"] == "missing_required_parameter"
        assert error["error"]["param"] == "delegation_id" and error["client_event_id"] == "x1"
        await ws.send(json.dumps({"type": "response.create", "event_id": "x2"}))
        await inbox.first("response.event")
    assert sim.violations == [
        "session.commentary.append: Missing required parameter: 'delegation_id'. "
        "(missing_required_parameter, param delegation_id)"
    ]


async def test_output_is_a_real_time_track_of_silence_that_freezes_2_5_s_after_input_stops(live):
    sim = await live()
    async with call(sim, stream=False) as (ws, inbox, _):
        loop = asyncio.get_running_loop()
        for _ in range(10):  # 1 s of input at real time
            await ws.send(append(silence(0.1)))
            await asyncio.sleep(0.1)
        input_stopped = loop.time()
        async with asyncio.timeout(15):
            while not inbox.frames or loop.time() - inbox.frames[-1][0] < 1.0:
                await asyncio.sleep(0.1)
        frames = inbox.frames
        assert len(frames) == 35  # 1 s of input + 2.5 s of lead, 100 ms each
        assert all(frame == SILENT_FRAME for _, frame in frames)
        assert frames[-1][0] - frames[0][0] >= 0.8 * 3.4  # paced, not a burst
        assert frames[-1][0] - input_stopped >= 1.5
        session = sim.sessions[0]
        assert session.output_frames == 35 and session.clock_ms == 3500
        await ws.send(append(silence(0.5)))
        await inbox.wait(lambda e: len(inbox.frames) >= 40)
        await ws.send(json.dumps({**GREETING, "event_id": "frozen"}))
        await asyncio.sleep(0.6)
        assert len(inbox.frames) == 40 and inbox.of("session.commentary.appended") == []
        await ws.send(json.dumps({"type": "session.close", "event_id": "bye"}))
        closed = await inbox.first("session.closed")
    error = next(e for e in inbox.of("error"))
    assert error["error"]["code"] == "context_injection_incomplete" and error["client_event_id"] == "frozen"
    assert inbox.events.index(error) < inbox.events.index(closed)
    assert closed["usage"] == {"seconds": 4} and closed["reason"] == "close_requested"
    assert session.audio_received == bytearray(silence(1.5)) and session.audio_spoken == bytearray()


async def test_a_caller_turn_is_answered_with_timeline_stamped_transcripts_and_no_done_events(live):
    answer = "Hello caller, how can I help you today?"
    more = Turn(say="I am listening.", seconds=0.6)
    script = Script(
        turns=[Turn(say=answer, seconds=1.5, more=[more])], caller_transcripts=["I need help with my order"]
    )
    sim = await live(script)
    async with call(sim) as (_, inbox, caller):
        caller.say(1.2)
        told = f"{answer} {more.say}"
        await inbox.wait(lambda e: inbox.text("session.output_transcript.delta") == told)
        await inbox.wait(lambda e: len([f for _, f in inbox.frames if speaking(f)]) >= 21)
    heard = inbox.of("session.input_transcript.delta")
    assert "".join(e["delta"] for e in heard) == "I need help with my order" and len(heard) > 1
    assert heard[0]["start_ms"] < 200 and heard[-1]["end_ms"] <= 1300
    assert all(a["end_ms"] <= b["start_ms"] for a, b in itertools.pairwise(heard))
    said = inbox.of("session.output_transcript.delta")
    assert said[0]["start_ms"] >= heard[-1]["end_ms"] + 500  # the model waits for the end of the turn
    assert all(e["end_ms"] - e["start_ms"] <= 300 for e in said)
    assert not [e for e in inbox.events if e["type"].endswith(".done") or e["type"] == "response.event"]
    session = sim.sessions[0]
    assert session.utterances == [answer, more.say] and len(session.audio_spoken) == 12_000 + 4_800
    spoken = b"".join(f for _, f in inbox.frames if speaking(f))
    assert spoken == bytes(session.audio_spoken)  # both parts end on a frame boundary
    assert sim.violations == []


async def test_talking_over_the_bot_makes_it_go_silent_with_no_event(live):
    long_answer = "Let me tell you everything about our many wonderful offers for this season and beyond."
    script = Script(turns=[Turn(say=long_answer, seconds=5.0)], default=Turn(say="Sure.", seconds=0.6))
    sim = await live(script)
    async with call(sim) as (_, inbox, caller):
        caller.say(0.8)
        await inbox.wait(lambda e: any(speaking(f) for _, f in inbox.frames))
        await asyncio.sleep(0.5)
        seen = len(inbox.events)
        caller.say(1.0, seed=2)
        session = sim.sessions[0]
        async with asyncio.timeout(5):
            while not session.interruptions:
                await asyncio.sleep(0.05)
        await inbox.wait(lambda e: session.utterances == [long_answer, "Sure."])
    after = {e["type"] for e in inbox.events[seen:]}
    assert after <= {
        "session.output_audio.delta",
        "session.input_transcript.delta",
        "session.output_transcript.delta",
        "session.usage.updated",
    }
    at_ms, heard = session.interruptions[0]
    told = "".join(e["delta"] for e in inbox.of("session.output_transcript.delta") if e["end_ms"] <= at_ms)
    assert told == heard and long_answer.startswith(heard) and len(heard) < len(long_answer)
    flags = [speaking(f) for _, f in inbox.frames]
    first_silence = flags.index(False, flags.index(True))
    assert flags[first_silence : first_silence + 5] == [False] * 5  # it went quiet and stayed quiet
    assert len(session.audio_spoken) < 5 * 8000
    assert sim.violations == []


async def test_a_responses_delegation_round_trip_with_two_calls_in_one_batch(live):
    script = Script(
        turns=[
            Turn(calls=[("lookup_order", {"order": "42"}), ("check_stock", {"sku": "A1"})]),
            Turn(say="Order 42 shipped yesterday."),
        ]
    )
    sim = await live(script, acknowledgement="Let me check that.")
    async with call(sim) as (ws, inbox, caller):
        caller.say(1.0)
        created = await inbox.first("session.delegation.created")
        await inbox.wait(
            lambda e: e["type"] == "response.event" and e["event"]["type"] == "response.completed"
        )
        nested = inbox.nested()
        assert [e["type"] for e in nested] == [
            "response.created",
            *[
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
            ]
            * 2,
            "response.completed",
        ]
        assert [e["sequence_number"] for e in nested] == list(range(10))
        assert {e["delegation_id"] for e in inbox.of("response.event")} == {created["delegation"]["id"]}
        calls = [e["item"] for e in nested if e["type"] == "response.output_item.done"]
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
            ("lookup_order", {"order": "42"}),
            ("check_stock", {"sku": "A1"}),
        ]
        assert all(e["item"]["arguments"] == "" for e in nested if e["type"] == "response.output_item.added")
        first, second = (c["call_id"] for c in calls)
        item = {
            "type": "function_call_output",
            "call_id": first,
            "output": '{"status":"shipped"}',
            "name": "lookup_order",
        }
        await ws.send(json.dumps({"type": "response.item.create", "item": item}))
        await ws.send(
            json.dumps(
                {"type": "response.item.create", "event_id": "u", "item": {**item, "call_id": "call_x"}}
            )
        )
        await ws.send(json.dumps({"type": "response.create", "event_id": "early"}))
        await inbox.wait(lambda e: len(inbox.of("error")) == 2)
        await ws.send(
            json.dumps({"type": "response.item.create", "item": {**item, "call_id": second, "output": "5"}})
        )
        await ws.send(json.dumps({"type": "response.create"}))
        await inbox.wait(
            lambda e: "Order 42 shipped yesterday." in inbox.text("session.output_transcript.delta")
        )
    assert created["delegation"]["target"] == "responses" and created["delegation"]["response_id"].startswith(
        "resp_"
    )
    errors = [(e["client_event_id"], e["error"]["code"]) for e in inbox.of("error")]
    assert errors == [("u", "invalid_value"), ("early", "function_call_outputs_required")]
    deltas = [e["delta"] for e in inbox.nested() if e["type"] == "response.output_text.delta"]
    assert deltas == ["Order 42 shipped yesterday."]
    session = sim.sessions[0]
    assert session.utterances == ["Let me check that.", "Order 42 shipped yesterday."]
    assert [(c.name, c.call_id) for c in session.function_calls] == [
        ("lookup_order", first),
        ("check_stock", second),
    ]
    assert session.function_outputs == {first: '{"status":"shipped"}', second: "5"}
    assert session.continuations == ["Order 42 shipped yesterday."]
    received = [e["response"]["usage"] for e in inbox.nested() if e["type"] == "response.completed"]
    totals = sim.usage_totals()
    assert len(received) == 2 and totals["total_tokens"] == sum(u["total_tokens"] for u in received) > 0
    assert totals["reasoning_tokens"] == 16
    assert len(sim.violations) == 2 and not [v for v in sim.violations if v.startswith("simulator sent")]


async def test_a_full_exchange_greets_ends_with_the_farewell_and_closes_with_usage(live):
    script = Script(turns=[Turn(call="end_conversation_successfully", arguments={"summary": "Done."})])
    sim = await live(script)
    async with call(sim) as (ws, inbox, caller):
        await ws.send(json.dumps(GREETING))
        appended = await inbox.first("session.commentary.appended")
        await inbox.wait(
            lambda e: inbox.text("session.output_transcript.delta") == "Welcome to Acme, this is Ava."
        )
        caller.say(0.8)
        done = await inbox.wait(
            lambda e: e["type"] == "response.event" and e["event"]["type"] == "response.output_item.done"
        )
        output = {
            "type": "function_call_output",
            "call_id": done["event"]["item"]["call_id"],
            "output": '{"ok":true}',
        }
        await ws.send(json.dumps({"type": "response.item.create", "item": output}))
        await ws.send(json.dumps({"type": "response.create"}))
        await inbox.wait(lambda e: script.farewell.say in inbox.text("session.output_transcript.delta"))
        await ws.send(json.dumps({"type": "session.close", "event_id": "c1"}))
        closed = await inbox.first("session.closed")
        async with asyncio.timeout(5):
            while not inbox.done:
                await asyncio.sleep(0.05)
    assert appended["client_event_id"] == "g1" and 0 <= appended["start_ms"] <= appended["end_ms"]
    assert ws.close_code == 1000
    session = sim.sessions[0]
    assert session.utterances == ["Welcome to Acme, this is Ava.", script.farewell.say]
    assert closed["client_event_id"] == "c1" and closed["reason"] == "close_requested"
    assert closed["session"]["status"] == "active" and closed["session"]["id"].startswith("live_")
    last_usage = inbox.of("session.usage.updated")[-1]
    assert closed["usage"] == last_usage["usage"] == {"seconds": session.seconds_reported}
    assert session.seconds_reported == round(session.clock_ms / 1000) > 0
    assert sim.usage_totals()["seconds"] == session.seconds_reported
    assert session.closed_reason == "close_requested" and session.close_code == 1000
    kinds = [
        kind for _, direction, event in session.timeline for kind in [event["type"]] if direction == "in"
    ]
    assert kinds[0] == "session.start" and "session.input_audio.append" not in kinds
    assert sim.violations == []


async def test_the_session_expires_with_session_closed_expired(live):
    sim = await live(session_seconds=0.8)
    async with call(sim) as (_, inbox, _caller):
        closed = await inbox.first("session.closed", timeout=5)
    assert closed["reason"] == "expired" and sim.sessions[0].closed_reason == "expired"


async def test_start_errors_end_the_socket_without_a_session(live):
    sim = await live()
    sim.start_error = "insufficient_quota"
    ws = await client(sim)
    await ws.send(json.dumps(START))
    error = json.loads(await ws.recv())
    assert error["type"] == "error" and error["error"]["code"] == "insufficient_quota"
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(3):
            await ws.recv()
    sim.start_error = None
    sim.error_after_start = "invalid_api_key"
    sim.force_format = {"type": "audio/pcm", "rate": 24000}
    ws = await client(sim)
    await ws.send(json.dumps(START))
    started = await next_event(ws, "session.started")
    assert started["session"]["audio"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert (await next_event(ws, "error"))["error"]["code"] == "invalid_api_key"
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(3):
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert [s.close_code for s in sim.sessions] == [1008, 1011]


async def test_session_update_keeps_the_delegation_type_and_responses_events_need_responses(live):
    sim = await live()
    async with call(sim, stream=False) as (ws, inbox, _):
        change = {"type": "session.update", "event_id": "u1", "session": {"delegation": {"type": "client"}}}
        await ws.send(json.dumps(change))
        assert (await inbox.first("error"))["error"]["code"] == "immutable_field_update"
        sparse = {"type": "responses", "responses": {"instructions": "New rules."}}
        await ws.send(json.dumps({"type": "session.update", "session": {"delegation": sparse}}))
        updated = (await inbox.first("session.updated"))["session"]["delegation"]
        assert (
            updated["responses"]["instructions"] == "New rules."
            and updated["responses"]["model"] == "gpt-5.5"
        )
    async with call(sim, start_event(delegation={"type": "client"}), stream=False) as (ws, inbox, _):
        await ws.send(json.dumps({"type": "response.create", "event_id": "r1"}))
        error = await inbox.first("error")
        assert error["error"]["code"] == "unsupported_for_delegation"
        assert error["error"]["message"] == "response.create requires Responses delegation."


async def test_sampled_append_checks_still_check_the_first_append_and_every_other_event(live):
    sim = await live()
    sim.check_appends_every = 3
    async with call(sim, stream=False) as (ws, inbox, _):
        bad = {"type": "session.input_audio.append", "audio": "", "extra": 1}
        for _ in range(4):  # appends 1 and 4 are checked
            await ws.send(json.dumps(bad))
        await ws.send(json.dumps({"type": "session.thinking.append", "content": "x"}))
        await ws.send(json.dumps({"type": "session.input_audio.mute", "event_id": "m"}))
        await inbox.first("session.input_audio.muted")
    assert [v.split(":")[0] for v in sim.violations] == [
        "session.input_audio.append",
        "session.input_audio.append",
        "session.thinking.append",
    ]


async def test_refusals_delays_and_drops_on_demand(live):
    sim = await live()
    sim.refuse_next = 1
    with pytest.raises(InvalidStatus) as refused:
        await client(sim)
    assert refused.value.response.status_code == 503
    sim.connect_delay = 0.3
    loop = asyncio.get_running_loop()
    began = loop.time()
    ws = await client(sim)
    assert loop.time() - began >= 0.3
    sim.connect_delay = 0.0
    await ws.send(json.dumps(START))
    await next_event(ws, "session.started")
    sim.drop_all()
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(3):
            while True:
                await ws.recv()
    sim.drop_on = lambda event: event.get("type") == "session.commentary.append"
    ws = await client(sim)
    await ws.send(json.dumps(START))
    await next_event(ws, "session.started")
    await ws.send(json.dumps(GREETING))
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(3):
            while True:
                await ws.recv()
    assert sim.connections == 3 and sim.events_of("session.commentary.append") == [GREETING]


async def test_the_responses_stub_answers_a_valid_summary_call_and_refuses_unknown_keys(live):
    sim = await live(Script(summary_text='{"topics": ["billing"]}'))
    body = {
        "model": "gpt-5.4-mini",
        "input": [{"role": "user", "content": "Summarize."}],
        "instructions": "JSON.",
    }
    async with aiohttp.ClientSession() as http:
        bearer = {"Authorization": "Bearer sk-test"}
        async with http.post(sim.api_base_url + "/responses", json=body, headers=bearer) as reply:
            assert reply.status == 200
            response = Response.model_validate(await reply.json())
        async with http.post(
            sim.api_base_url + "/responses", json={**body, "modalities": ["text"]}, headers=bearer
        ) as reply:
            assert reply.status == 400
            error = (await reply.json())["error"]
        async with http.post(sim.api_base_url + "/responses", json={"model": "m"}, headers=bearer) as reply:
            assert reply.status == 400 and (await reply.json())["error"]["param"] == "input"
        azure = sim.azure_endpoint + "/openai/v1/responses"
        async with http.post(azure, json=body, headers={"api-key": "k"}) as reply:
            assert reply.status == 200
        sim.summary_status = 500
        async with http.post(azure, json=body, headers={"api-key": "k"}) as reply:
            assert reply.status == 500 and "error" in await reply.json()
    assert (
        response.status == "completed"
        and response.id.startswith("resp_")
        and response.model == "gpt-5.4-mini"
    )
    assert response.output_text == '{"topics": ["billing"]}'
    assert response.usage is not None and response.usage.total_tokens > 0
    assert (error["code"], error["param"]) == ("unknown_parameter", "modalities")
    assert len(sim.summary_requests) == 3
    assert [v.split(":")[0] for v in sim.violations] == ["POST /responses"] * 2
