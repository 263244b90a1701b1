"""The Realtime simulator is only useful if it is strict and faithful: check it is."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from simulators.audio import silence, speech_like
from simulators.realtime_simulator import RealtimeValidator
from simulators.script import Script, Turn

VALIDATOR = RealtimeValidator()

GOOD_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
        },
    },
}


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (
            {"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"]}},
            "unknown field $.session.modalities",
        ),
        (
            {"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}},
            "unknown field",
        ),
        (
            {"type": "session.update", "session": {"type": "realtime", "temperature": 0.8}},
            "unknown field $.session.temperature",
        ),
        ({"type": "session.update", "session": {"modalities": ["audio"]}}, "session.update"),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm"}}}},
            },
            "needs rate 24000",
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"format": "g711_ulaw"}}},
            },
            "session.update",
        ),
        ({"type": "input_audio_buffer.append", "audio": "AAAA", "extra": 1}, "unknown field $.extra"),
        (
            {"type": "response.create", "response": {"modalities": ["audio"]}},
            "unknown field $.response.modalities",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "c", "output": {"a": 1}},
            },
            "conversation.item.create",
        ),
        ({"type": "response.audio.delta"}, "unknown client event type"),
        ({"type": "output_audio_buffer.cleared"}, "unknown client event type"),
    ],
)
def test_validator_rejects_beta_shapes_unknown_fields_and_bad_values(event, problem):
    problems = VALIDATOR.problems(event)
    assert problems and any(problem in p for p in problems), problems


def test_validator_accepts_the_ga_telephony_update():
    assert VALIDATOR.problems(GOOD_UPDATE) == []


async def client(sim, **headers):
    headers.setdefault("Authorization", "Bearer sk-test")
    return await connect(sim.url + "?model=gpt-realtime", additional_headers=headers)


async def next_event(ws, type_: str, timeout: float = 5.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == type_:
                return event


async def test_handshake_needs_a_bearer_token_and_refuses_the_beta_header(realtime):
    sim = await realtime()
    with pytest.raises(InvalidStatus) as excinfo:
        await connect(sim.url + "?model=m")
    assert excinfo.value.response.status_code == 401
    ws = await client(sim, **{"OpenAI-Beta": "realtime=v1"})
    error = await next_event(ws, "error")
    assert error["error"]["code"] == "beta_api_shape_disabled"
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd.code == 4000


async def test_session_created_has_the_documented_defaults_and_update_merges(realtime):
    sim = await realtime()
    ws = await client(sim)
    created = await next_event(ws, "session.created")
    session = created["session"]
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 200
    assert session["id"].startswith("sess_") and session["expires_at"] > 0
    await ws.send(json.dumps(GOOD_UPDATE))
    updated = await next_event(ws, "session.updated")
    assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    await ws.close()
    assert sim.violations == []


async def test_invalid_client_events_are_answered_with_error_and_recorded(realtime):
    sim = await realtime()
    ws = await client(sim)
    await ws.send(
        json.dumps(
            {"type": "session.update", "event_id": "evt_1", "session": {"type": "realtime", "voice": "x"}}
        )
    )
    error = await next_event(ws, "error")
    assert error["error"]["event_id"] == "evt_1"
    assert sim.violations and "unknown field $.session.voice" in sim.violations[0]
    await ws.close()


async def test_sampled_append_checks_still_check_the_first_append_and_every_other_event(realtime):
    sim = await realtime()
    sim.check_appends_every = 3
    ws = await client(sim)
    bad_append = {"type": "input_audio_buffer.append", "audio": "", "extra": 1}
    for _ in range(4):  # appends 1 and 4 are checked
        await ws.send(json.dumps(bad_append))
    await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "voice": "x"}}))
    await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
    await next_event(ws, "input_audio_buffer.cleared")
    assert [v.split(":")[0] for v in sim.violations] == [
        "input_audio_buffer.append",
        "input_audio_buffer.append",
        "session.update",
    ]
    await ws.close()


async def test_vad_turn_produces_the_ga_event_sequence_and_the_session_stays_strict(realtime):
    sim = await realtime(Script(turns=[Turn(say="Hello caller.", seconds=0.5)]), speed=20)
    ws = await client(sim)
    await ws.send(json.dumps(GOOD_UPDATE))
    audio = speech_like(0.6) + silence(0.8)
    for i in range(0, len(audio), 1600):
        await ws.send(
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio[i : i + 1600]).decode()}
            )
        )
    types = []
    async with asyncio.timeout(5):
        while not types or types[-1] != "response.done":
            types.append(json.loads(await ws.recv())["type"])
    order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
        "response.output_item.added",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.done",
    ]
    positions = [types.index(t) for t in order]
    assert positions == sorted(positions)
    await ws.close()
    assert sim.violations == []
    assert bytes(sim.sessions[0].audio_received) == audio


async def test_protocol_errors_are_the_real_ones(realtime):
    sim = await realtime(Script(default=Turn(say="A long answer.", seconds=3.0)), speed=1)
    ws = await client(sim)
    await ws.send(json.dumps(GOOD_UPDATE))
    await ws.send(json.dumps({"type": "response.cancel"}))
    assert (await next_event(ws, "error"))["error"]["code"] == "response_cancel_not_active"
    await ws.send(json.dumps({"type": "response.create"}))
    await next_event(ws, "response.output_audio.delta")
    await ws.send(json.dumps({"type": "response.create"}))
    assert (await next_event(ws, "error"))["error"]["code"] == "conversation_already_has_active_response"
    item_id = sim.sessions[0].items[-1].id
    await ws.send(
        json.dumps(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 60_000,
            }
        )
    )
    assert "already shorter than 60000ms" in (await next_event(ws, "error"))["error"]["message"]
    await ws.send(json.dumps({"type": "response.cancel"}))
    done = await next_event(ws, "response.done")
    assert (
        done["response"]["status"] == "cancelled"
        and done["response"]["status_details"]["reason"] == "client_cancelled"
    )
    await ws.send(
        json.dumps(
            {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 10}
        )
    )
    truncated = await next_event(ws, "conversation.item.truncated")
    assert truncated["audio_end_ms"] == 10
    await ws.close()
    assert sim.violations == []


async def test_session_time_limit_closes_with_1001(realtime):
    sim = await realtime(session_seconds=0.3)
    ws = await client(sim)
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(3):
            while True:
                await ws.recv()
    assert closed.value.rcvd.code == 1001 and "60 minutes" in closed.value.rcvd.reason


async def test_refusals_and_drops_on_demand(realtime):
    sim = await realtime()
    sim.refuse_next = 1
    with pytest.raises(InvalidStatus):
        await client(sim)
    ws = await client(sim)
    await next_event(ws, "session.created")
    sim.drop_all()
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(3):
            await ws.recv()
