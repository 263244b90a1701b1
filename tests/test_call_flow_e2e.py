"""How calls end, end to end: call-control tools, farewell, output variables, DTMF, limits."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from conftest import API_KEY, live_tasks, settled, ws_url

from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.script import DEFAULT_SUMMARY, Script, Turn

TOKEN_VARIABLES = {
    "TOTAL_INPUT_TEXT_TOKENS": "input_text",
    "TOTAL_INPUT_CACHED_TEXT_TOKENS": "input_cached_text",
    "TOTAL_INPUT_AUDIO_TOKENS": "input_audio",
    "TOTAL_INPUT_CACHED_AUDIO_TOKENS": "input_cached_audio",
    "TOTAL_OUTPUT_TEXT_TOKENS": "output_text",
    "TOTAL_OUTPUT_AUDIO_TOKENS": "output_audio",
}


def new_call(app, **kwargs) -> GenesysCall:
    kwargs.setdefault("ping_interval", None)
    return GenesysCall(ws_url(app), api_key=API_KEY, **kwargs)


def turn(speak: float, wait: float, seed: int = 20) -> bytes:
    return speech_like(speak, seed=seed) + silence(wait)


def first_frame_after(call: GenesysCall, byte_offset: int) -> float:
    """Arrival time of the frame that starts at `byte_offset` of the bot audio received."""
    total = 0
    for t, size in call.record.audio_frames:
        if total >= byte_offset:
            return t
        total += size
    raise AssertionError(f"no bot audio after byte {byte_offset}")


async def run_until_disconnect(call: GenesysCall, audio: bytes) -> dict:
    await call.open()
    streaming = asyncio.create_task(call.stream(audio))
    disconnect = await call.wait_disconnect(30)
    streaming.cancel()
    return disconnect


async def test_success_path_plays_the_farewell_to_the_end_then_disconnects_with_all_variables(bridged):
    script = Script(
        turns=[
            Turn(say="Your order arrives on Friday.", seconds=1.0),
            Turn(
                call="end_conversation_successfully",
                arguments={"summary": "Told the caller the order arrives Friday."},
            ),
        ],
        farewell=Turn(say="Thanks for calling, goodbye!", seconds=2.0),
    )
    app, sim = await bridged(script)
    async with new_call(app) as call:
        started = time.monotonic()
        disconnect = await run_until_disconnect(call, turn(1.0, 2.5) + turn(1.0, 10.0, seed=21))
        await call.wait_closed(5)
    params = disconnect["parameters"]
    assert params["reason"] == "completed"
    variables = params["outputVariables"]
    assert len(variables) == 14 and all(isinstance(v, str) for v in variables.values())
    totals = sim.usage_totals()
    for name, key in TOKEN_VARIABLES.items():
        assert variables[name] == str(totals[key]), name
    assert int(variables["TOTAL_OUTPUT_AUDIO_TOKENS"]) > 0
    assert variables["ESCALATION_REQUIRED"] == "false" and variables["ESCALATION_REASON"] == ""
    assert variables["COMPLETION_SUMMARY"] == "Told the caller the order arrives Friday."
    assert json.loads(variables["CONVERSATION_SUMMARY"]) == DEFAULT_SUMMARY
    assert abs(int(variables["CONVERSATION_DURATION"]) - (call.record.disconnect_at - started)) <= 1
    # Every byte of the farewell reached the caller, and the disconnect waited for its playback.
    assert bytes(call.record.bot_audio) == bytes(sim.sessions[0].audio_sent)
    assert len(call.record.bot_audio) == 8000 + 16_000  # the answer, then the whole farewell
    farewell_start = first_frame_after(call, 8000)
    assert call.record.disconnect_at >= farewell_start + 2.0 - 0.6  # playback end minus the lead
    # The farewell was protected: turns locked before it, and it was never cancelled.
    received = [e["type"] for e in sim.sessions[0].received if e["type"] != "input_audio_buffer.append"]
    assert received.index("session.update", 1) < received.index("response.create")
    assert all(r.cancelled is None for r in sim.sessions[0].responses)
    summary_requests = [
        e for e in sim.events_of("response.create") if e["response"].get("conversation") == "none"
    ]
    assert len(summary_requests) == 1 and summary_requests[0]["response"]["output_modalities"] == ["text"]
    assert sim.violations == [] and call.record.violations == []
    await settled(app)


async def test_escalation_path_sets_the_escalation_variables(bridged):
    script = Script(
        turns=[
            Turn(call="end_conversation_with_escalation", arguments={"reason": "caller asked for a person"})
        ]
    )
    app, sim = await bridged(script)
    async with new_call(app) as call:
        disconnect = await run_until_disconnect(call, turn(1.0, 12.0))
    variables = disconnect["parameters"]["outputVariables"]
    assert disconnect["parameters"]["reason"] == "completed"
    assert variables["ESCALATION_REQUIRED"] == "true"
    assert variables["ESCALATION_REASON"] == "caller asked for a person"
    assert variables["COMPLETION_SUMMARY"] == ""
    farewell = [
        e
        for e in sim.events_of("response.create")
        if e["response"].get("metadata", {}).get("purpose") == "farewell"
    ]
    assert len(farewell) == 1 and "transferred" in farewell[0]["response"]["instructions"]
    assert len(call.record.bot_audio) > 0
    assert sim.violations == [] and call.record.violations == []


async def test_a_second_end_call_changes_nothing(bridged):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "done"})],
        farewell=Turn(call="end_conversation_with_escalation", arguments={"reason": "changed my mind"}),
    )
    app, sim = await bridged(script)
    async with new_call(app) as call:
        disconnect = await run_until_disconnect(call, turn(1.0, 12.0))
    variables = disconnect["parameters"]["outputVariables"]
    assert variables["ESCALATION_REQUIRED"] == "false" and variables["COMPLETION_SUMMARY"] == "done"
    outputs = [
        e["item"]["output"]
        for e in sim.events_of("conversation.item.create")
        if e["item"]["type"] == "function_call_output"
    ]
    assert outputs == ['{"ok": true}', '{"ok": true, "note": "the call is already ending"}']
    farewells = [
        e
        for e in sim.events_of("response.create")
        if e["response"].get("metadata", {}).get("purpose") == "farewell"
    ]
    assert len(farewells) == 1
    assert sim.violations == [] and call.record.violations == []


async def test_caller_barge_in_during_the_farewell_does_not_cancel_the_hang_up(bridged):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "done"})],
        farewell=Turn(say="A long goodbye that the caller talks over.", seconds=3.0),
    )
    app, sim = await bridged(script)
    async with new_call(app) as call:
        await call.open()
        await call.stream(turn(1.0, 1.2))
        streaming = asyncio.create_task(call.stream(turn(1.5, 10.0, seed=22)))  # talks over the goodbye
        disconnect = await call.wait_disconnect(15)
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "completed"
    assert call.record.events("barge_in") == []
    assert bytes(call.record.bot_audio) == bytes(sim.sessions[0].audio_sent)
    assert len(call.record.bot_audio) == 3 * 8000
    assert all(r.cancelled is None for r in sim.sessions[0].responses)
    assert sim.events_of("conversation.item.truncate") == []
    assert sim.violations == [] and call.record.violations == []


async def test_caller_hang_up_during_the_farewell_is_closed_at_once_and_leaves_nothing(bridged):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "done"})],
        farewell=Turn(say="Goodbye.", seconds=5.0),
    )
    app, sim = await bridged(script)
    tasks_before = live_tasks()
    async with new_call(app) as call:
        await call.open()
        await call.stream(turn(1.0, 1.5))
        async with asyncio.timeout(5):
            while not call.record.audio_frames:
                await asyncio.sleep(0.02)
        started = time.monotonic()
        closed = await call.close()
        assert closed is not None and time.monotonic() - started < 1.0
    assert call.record.disconnect is None
    await settled(app)
    await asyncio.sleep(0.1)
    assert live_tasks() <= tasks_before
    assert sim.violations == [] and call.record.violations == []


async def test_a_slow_summary_never_delays_the_end_of_the_call(bridged):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "done"})],
        farewell=Turn(say="Bye.", seconds=1.0),
        summary_delay=30.0,
    )
    app, sim = await bridged(script)
    async with new_call(app) as call:
        disconnect = await run_until_disconnect(call, turn(1.0, 12.0))
        last_audio = call.record.audio_frames[-1][0]
    variables = disconnect["parameters"]["outputVariables"]
    assert json.loads(variables["CONVERSATION_SUMMARY"])["note"] == "summary unavailable"
    assert variables["COMPLETION_SUMMARY"] == "done"
    assert call.record.disconnect_at - last_audio < 1.5
    assert sim.violations == [] and call.record.violations == []


async def test_a_farewell_that_never_finishes_is_cut_after_the_timeout(bridged):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "done"})],
        farewell=Turn(say="A goodbye that goes on and on.", seconds=30.0),
    )
    app, _sim = await bridged(script, sim_options={"speed": 1.0}, FAREWELL_TIMEOUT_SECONDS="2")
    async with new_call(app) as call:
        await call.open()
        await call.stream(turn(1.0, 0.6))
        asked = time.monotonic()
        streaming = asyncio.create_task(call.stream(silence(10)))
        disconnect = await call.wait_disconnect(10)
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "completed"
    assert 1.5 <= call.record.disconnect_at - asked <= 4.0
    assert call.record.violations == []


async def test_keyed_digits_reach_the_model_on_pound_and_after_a_pause(bridged):
    app, sim = await bridged(Script(default=Turn(say="Thanks.", seconds=0.5)))
    async with new_call(app) as call:
        await call.open()
        await call.stream(silence(0.5))
        await call.send_dtmf("1234#", gap=0.05)
        await call.stream(silence(1.5))
        await call.send_dtmf("98", gap=0.05)
        await call.stream(silence(3.0))
        await call.close()
    texts = [
        e["item"]["content"][0]["text"]
        for e in sim.events_of("conversation.item.create")
        if e["item"].get("role") == "user"
    ]
    assert texts == [
        "The caller entered 1 2 3 4 on the keypad.",
        "The caller entered 9 8 on the keypad.",
    ]
    assert len(sim.events_of("response.create")) == 2
    assert len(call.record.bot_audio) == 2 * 4000
    assert sim.violations == [] and call.record.violations == []


async def test_idle_limit_ends_the_call_with_a_farewell(bridged, caplog):
    caplog.set_level(logging.INFO)
    app, sim = await bridged(Script(farewell=Turn(say="Goodbye.", seconds=0.5)), IDLE_TIMEOUT_SECONDS="1.5")
    async with new_call(app) as call:
        started = time.monotonic()
        disconnect = await run_until_disconnect(call, silence(15))
    variables = disconnect["parameters"]["outputVariables"]
    assert disconnect["parameters"]["reason"] == "completed"
    assert variables["COMPLETION_SUMMARY"] == "call ended: no activity for 1.5 s"
    assert 1.5 <= call.record.disconnect_at - started <= 4.0
    assert len(call.record.bot_audio) == 4000  # the farewell was spoken
    assert any("call limit: no activity for 1.5 s" in r.getMessage() for r in caplog.records)
    assert sim.violations == [] and call.record.violations == []


async def test_duration_limit_ends_a_busy_call(bridged):
    app, sim = await bridged(
        Script(
            default=Turn(say="Yes.", seconds=0.4), farewell=Turn(say="We have to stop here.", seconds=0.5)
        ),
        MAX_CALL_DURATION_SECONDS="3",
    )
    async with new_call(app) as call:
        started = time.monotonic()
        disconnect = await run_until_disconnect(call, turn(0.8, 0.8) * 8)
    variables = disconnect["parameters"]["outputVariables"]
    assert variables["COMPLETION_SUMMARY"] == "call ended: the maximum call duration of 3 s was reached"
    assert 3.0 <= call.record.disconnect_at - started <= 6.0
    assert sim.violations == [] and call.record.violations == []


async def test_playback_completed_is_awaited_when_genesys_sends_it(bridged):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "done"})],
        farewell=Turn(say="Goodbye.", seconds=1.5),
    )
    app, _sim = await bridged(script)
    # This Genesys reports the end of playback a second after the audio ran out.
    async with new_call(app, playback_events=True, playback_delay=1.0) as call:
        disconnect = await run_until_disconnect(call, turn(1.0, 12.0))
    assert disconnect["parameters"]["reason"] == "completed"
    completed = [t for t, type_ in call.sent_log if type_ == "playback_completed"]
    assert completed and call.record.disconnect_at >= completed[-1]
    assert call.record.disconnect_at - call.record.audio_frames[-1][0] >= 1.0
    assert call.record.violations == []
