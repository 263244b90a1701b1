"""The GPT-Live backend end to end: call simulator -> connector -> GPT-Live simulator, real sockets.

The simulator validates every client event against `openai.types.live` and records every error a
client event causes: `sim.violations` stays empty in every test, and so do the Genesys side's.
GPT-Live runs at real time, so each call is a few seconds of audio.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
from typing import Any

import pytest
from conftest import API_KEY, make_settings, ws_url
from fake_genesys_api import FakeAction
from test_data_actions import ACCOUNT_SCHEMA

from audiohook_protocol import format_duration
from call_bridge import FILLER
from call_control import SUMMARY_INSTRUCTIONS
from config import ApprovalPolicy
from metrics import Metrics
from model_backend import CallSpec, ModelFailed, SessionStart
from openai_live_client import LiveSession
from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.live_simulator import APPEND_EVENTS, LiveSimulator
from simulators.script import DEFAULT_SUMMARY, Script, Turn
from text_api import TextApi

TOOL = "genesys_data_action_get_account"
SLOW_TOOL = "genesys_data_action_slow_lookup"
GREETING = "Welcome to Acme support line"  # 28 characters: 2.0 s of simulated speech
# Two seconds of bot speech with a 0.4 s pause in the middle: an utterance the simulator speaks
# exactly (an utterance of this length is this audio, unsliced).
BOT_SPEECH = speech_like(0.8, seed=5) + silence(0.4) + speech_like(0.8, seed=6)
MCP_CRM = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://mcp.example.com/crm",
    "allowed_tools": ["lookup", "delete_account"],
    "require_approval": "always",
    "server_description": "Customer records",
}


@pytest.fixture
async def connected(start_app, live):
    """A connector whose calls go to a fresh GPT-Live simulator: returns (app, simulator)."""

    async def start(script: Script | None = None, sim_options: dict | None = None, **env: str):
        sim = await live(script, **(sim_options or {}))
        env = {
            "OPENAI_API": "live",
            "OPENAI_LIVE_URL": sim.url,
            "OPENAI_API_BASE_URL": sim.api_base_url,
            **env,
        }
        app = await start_app(make_settings(**env))
        return app, sim

    return start


def new_call(app, **kwargs) -> GenesysCall:
    kwargs.setdefault("ping_interval", None)
    return GenesysCall(ws_url(app), api_key=API_KEY, **kwargs)


def started_with(sim: LiveSimulator, n: int = 0) -> dict[str, Any]:
    return sim.sessions[n].received[0]["session"]


def client_types(sim: LiveSimulator, n: int = 0) -> list[str]:
    return [e["type"] for e in sim.sessions[n].received if e["type"] != "session.input_audio.append"]


def commentary(sim: LiveSimulator) -> list[str]:
    return [e["content"] for e in sim.events_of("session.commentary.append")]


def outputs(sim: LiveSimulator) -> dict[str, str]:
    return {
        e["item"]["call_id"]: e["item"]["output"]
        for e in sim.events_of("response.item.create")
        if e["item"]["type"] == "function_call_output"
    }


def check_paced(call: GenesysCall, lead: float = 0.6) -> None:
    """Never more than `lead` seconds of bot audio ahead of its playback at Genesys."""
    frames = call.record.audio_frames
    playout_end = 0.0
    for t, size in frames:
        playout_end = max(playout_end, t) + size / 8000
        assert playout_end - t <= lead + 0.05, (t, playout_end)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)]
    assert not gaps or min(gaps) >= 0.09  # about ten binary messages a second at most


async def wait_for(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def run_until_disconnect(call: GenesysCall, audio: bytes, timeout: float = 20) -> dict:
    await call.open()
    streaming = asyncio.create_task(call.stream(audio))
    try:
        return await call.wait_disconnect(timeout)
    finally:
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)


async def test_session_start_greeting_and_audio_both_ways_through_a_genesys_pause(connected):
    script = Script(default=Turn(say="Sure, I can help with that.", seconds=2.0))
    app, sim = await connected(
        script,
        sim_options={"bot_audio": BOT_SPEECH},
        INITIAL_GREETING=GREETING,
        ENABLE_MCP_TOOLS="true",
        MCP_TOOLS_JSON=json.dumps([MCP_CRM]),
        MCP_APPROVAL_POLICY="approve",
        MCP_APPROVED_TOOLS="crm:lookup",
    )
    appends: list[tuple[float, int]] = []

    def tap(event: dict[str, Any]) -> bool:  # sees every client event as it arrives; drops none
        if event.get("type") == "session.input_audio.append":
            appends.append((time.monotonic(), len(base64.b64decode(event["audio"]))))
        return False

    sim.drop_on = tap
    caller = silence(3.0) + speech_like(1.0, seed=3) + silence(3.0)
    async with new_call(app) as call:
        await call.open()
        await call.stream(caller)
        await call.send_message("paused")
        paused_at = time.monotonic()
        await asyncio.sleep(1.6)
        resumed_at = time.monotonic()
        start = format_duration(call.audio_seconds_sent)
        await call.send_message("resumed", {"start": start, "discarded": "PT0S"})
        await call.stream(silence(0.4))
        await call.close()
    session = started_with(sim)
    assert session["model"] == "gpt-live-1"
    assert session["audio"] == {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "sage"}}
    assert "input" not in session
    assert "# Ending the call" in session["instructions"] and "Delegate" in session["instructions"]
    delegation = session["delegation"]
    assert delegation["type"] == "responses" and delegation["responses"]["model"] == "gpt-5.4-mini"
    assert "end_conversation_successfully" in delegation["responses"]["instructions"]
    tools = delegation["responses"]["tools"]
    functions = [t for t in tools if t["type"] == "function"]
    assert [t["name"] for t in functions] == [
        "end_conversation_successfully",
        "end_conversation_with_escalation",
    ]
    assert all(t["parameters"]["type"] == "object" and t["description"] for t in functions)
    # An approval GPT-Live cannot ask for: only the tool the policy approves stays, without one.
    assert [t for t in tools if t["type"] == "mcp"] == [
        {**MCP_CRM, "allowed_tools": ["lookup"], "require_approval": "never"}
    ]
    greeting = commentary(sim)
    assert len(greeting) == 1 and f'"{GREETING}"' in greeting[0]
    assert "Do not wait for the caller to speak first." in greeting[0]
    assert client_types(sim) == ["session.start", "session.commentary.append"]
    live = sim.sessions[0]
    assert live.utterances == [GREETING, "Sure, I can help with that."]
    # The bot's audio, byte for byte, its in-speech pause kept, the silence around it withheld.
    assert bytes(call.record.bot_audio) == bytes(live.audio_spoken) == BOT_SPEECH * 2
    assert live.output_frames * 800 >= len(call.record.bot_audio) + 3 * 8000
    check_paced(call)
    # The caller's audio, byte for byte and in order, with silence where Genesys sent none.
    assert live.audio_received.replace(b"\xff", b"") == caller.replace(b"\xff", b"")
    assert live.audio_dropped == 0
    during_pause = sum(n for t, n in appends if paused_at + 0.3 <= t <= resumed_at - 0.1)
    assert 0.7 * 1.2 * 8000 <= during_pause <= 1.3 * 1.2 * 8000  # at real time, not in a burst
    assert max(n for _, n in appends[1:]) <= 8000  # no append over one second after the first
    assert sim.violations == [] and call.record.violations == []


async def test_barge_in_cuts_the_bot_on_the_genesys_side_and_sends_nothing_upstream(connected):
    long_answer = "Let me tell you everything about our many wonderful offers for this season."
    script = Script(turns=[Turn(say=long_answer, seconds=5.0), Turn(say="Yes?", seconds=0.8)])
    app, sim = await connected(script)
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(0.6))
        await wait_for(lambda: call.record.audio_frames, 5)
        first_frame = call.record.audio_frames[0][0]
        await call.stream(silence(1.0))
        await call.stream(speech_like(0.2, seed=4) + silence(1.0))  # a backchannel: the bot goes on
        after_backchannel = len(call.record.events("barge_in"))
        await call.stream(speech_like(1.0, seed=7) + silence(2.5))  # the caller cuts in
        await call.close()
    barge_ins = call.record.events("barge_in")
    assert after_backchannel == 0 and len(barge_ins) == 1
    barged = barge_ins[0][0]
    assert barged - first_frame >= 2.0
    stale = [t for t, _ in call.record.audio_frames if barged < t < barged + 1.0]
    assert len(stale) <= 1  # at most one frame already on its way
    live = sim.sessions[0]
    assert len(live.interruptions) == 1 and live.utterances == [long_answer, "Yes?"]
    assert len(call.record.bot_audio) < 5 * 8000  # the rest of the long answer never came through
    assert bytes(call.record.bot_audio).endswith(bytes(live.audio_spoken)[-6400:])  # the answer to it did
    assert client_types(sim) == ["session.start"]  # nothing upstream: no truncate, no cancel
    assert sim.violations == [] and call.record.violations == []


async def test_caller_voice_the_bot_talks_on_through_is_no_barge_in(connected, monkeypatch):
    # A model that goes on speaking over the caller (a backchannel it let be): the caller's voice
    # alone must not cut it off. The simulated model is made deaf to the caller for this.
    monkeypatch.setattr("simulators.live_simulator.SPEECH_RMS", 10**6)
    greeting = "Thanks for calling Acme, where every single call matters a lot to all."  # 5.0 s
    app, sim = await connected(INITIAL_GREETING=greeting)
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(8)))
        await wait_for(lambda: call.record.audio_frames, 5)
        await asyncio.sleep(1.0)
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
        await call.stream(speech_like(1.2, seed=7) + silence(3.5))  # well over the threshold
        await call.close()
    live = sim.sessions[0]
    assert live.utterances == [greeting] and live.interruptions == []
    assert call.record.events("barge_in") == []
    assert bytes(call.record.bot_audio) == bytes(live.audio_spoken) and len(call.record.bot_audio) == 40_000
    assert sim.violations == [] and call.record.violations == []


async def test_data_actions_through_delegation_a_batch_of_three_then_a_slow_one_with_a_holding_phrase(
    connected, genesys_api
):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, result={"status": "active"})
    slow_schema = {**ACCOUNT_SCHEMA, "title": "Slow Lookup Request"}
    genesys_api.actions["slow-1"] = FakeAction(slow_schema, delay=1.5, result={"status": "closed"})
    # The first call of the batch names no tool: the core answers it at once, while the backend is
    # still announcing the others, and that must not make a partial batch go on.
    batch = [("lookup_weather", {}), (TOOL, {"accountNumber": "1111"}), (TOOL, {"accountNumber": "2222"})]
    script = Script(
        turns=[
            Turn(calls=batch),
            Turn(say="Both accounts are active.", seconds=1.0),
            Turn(call=SLOW_TOOL, arguments={"accountNumber": "3333"}),
            Turn(say="That one is closed.", seconds=1.0),
        ],
        filler=Turn(say="Still checking.", seconds=0.6),
    )
    app, sim = await connected(script, TOOL_FILLER_AFTER_MS="400", **genesys_api.env())
    variables = {"DATA_ACTION_IDS": "acct-1|slow-1", "DATA_ACTION_DESCRIPTIONS": "Find an account|Slow"}
    async with new_call(app, input_variables=variables) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(2.5))
        await call.stream(speech_like(1.0, seed=4) + silence(4.5))
        await call.close()
    tools = [t["name"] for t in started_with(sim)["delegation"]["responses"]["tools"]]
    assert TOOL in tools and SLOW_TOOL in tools
    assert sorted(genesys_api.executions, key=json.dumps) == [
        ("acct-1", {"accountNumber": "1111"}),
        ("acct-1", {"accountNumber": "2222"}),
        ("slow-1", {"accountNumber": "3333"}),
    ]
    live = sim.sessions[0]
    answered = outputs(sim)
    assert [json.loads(answered[c.call_id]) for c in live.function_calls] == [
        {"error": "there is no tool named lookup_weather"},
        {"status": "active"},
        {"status": "active"},
        {"status": "closed"},
    ]
    # Exactly one response.create per batch, each after every output of its batch.
    kinds = client_types(sim)
    creates = [i for i, k in enumerate(kinds) if k == "response.create"]
    items = [i for i, k in enumerate(kinds) if k == "response.item.create"]
    assert len(creates) == 2 and items[2] < creates[0] < items[3] < creates[1]
    assert live.continuations == ["Both accounts are active.", "That one is closed."]
    assert commentary(sim) == [FILLER] and "Still checking." in live.utterances
    # Everything said reached the caller; a pause of less than 0.8 s between two phrases is kept.
    received, spoken = bytes(call.record.bot_audio), bytes(live.audio_spoken)
    assert received.replace(b"\xff", b"") == spoken.replace(b"\xff", b"")
    assert 0 <= len(received) - len(spoken) < 6400
    assert sim.violations == [] and call.record.violations == []


async def test_keypad_digits_then_end_conversation_plays_the_farewell_and_closes_with_the_usage(connected):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "Checked the account."})],
        farewell=Turn(say="Thanks for calling, goodbye!", seconds=2.0),
    )
    app, sim = await connected(script)
    async with new_call(app) as call:
        started = time.monotonic()
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(15)))
        await asyncio.sleep(0.8)
        await call.send_dtmf("1234#", gap=0.05)
        disconnect = await call.wait_disconnect(15)
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
    assert commentary(sim) == ["The caller entered 1 2 3 4 on the keypad."]
    params = disconnect["parameters"]
    assert params["reason"] == "completed"
    variables = params["outputVariables"]
    live = sim.sessions[0]
    assert live.utterances == [script.farewell.say]
    # The farewell, every byte of it, played before the disconnect (playback end minus the lead).
    assert bytes(call.record.bot_audio) == bytes(live.audio_spoken) and len(call.record.bot_audio) == 16_000
    farewell_start = call.record.audio_frames[0][0]
    assert call.record.disconnect_at >= farewell_start + 2.0 - 0.6
    # session.close went after the farewell, and the disconnect after session.closed.
    kinds = client_types(sim)
    assert kinds[-1] == "session.close" and kinds.count("response.create") == 1
    assert live.closed_reason == "close_requested"
    assert len(sim.sessions) == 1
    close_at = next(t for t, way, e in live.timeline if way == "in" and e["type"] == "session.close")
    closed_at = next(t for t, way, e in live.timeline if way == "out" and e["type"] == "session.closed")
    assert farewell_start + 2.0 - 0.6 <= close_at < closed_at <= call.record.disconnect_at
    totals = sim.usage_totals()
    assert variables["TOTAL_BILLED_SECONDS"] == str(totals["seconds"]) and totals["seconds"] > 0
    assert variables["TOTAL_INPUT_TEXT_TOKENS"] == str(totals["input_tokens"])
    assert variables["TOTAL_INPUT_CACHED_TEXT_TOKENS"] == str(totals["cached_tokens"])
    assert variables["TOTAL_OUTPUT_TEXT_TOKENS"] == str(totals["output_tokens"])
    assert variables["TOTAL_INPUT_AUDIO_TOKENS"] == variables["TOTAL_OUTPUT_AUDIO_TOKENS"] == "0"
    assert (variables["AI_VENDOR"], variables["AI_MODEL"]) == ("openai", "gpt-live-1")
    assert variables["COMPLETION_SUMMARY"] == "Checked the account."
    assert variables["ESCALATION_REQUIRED"] == "false"
    assert json.loads(variables["CONVERSATION_SUMMARY"]) == DEFAULT_SUMMARY
    assert abs(int(variables["CONVERSATION_DURATION"]) - (call.record.disconnect_at - started)) <= 1
    assert sim.violations == [] and call.record.violations == []


async def test_escalation_whose_farewell_runs_on_from_the_acknowledgement_is_played_to_the_end(connected):
    # The model acknowledges the delegation and goes straight on with the backend's farewell,
    # without a pause: one utterance holds both.
    script = Script(
        turns=[Turn(call="end_conversation_with_escalation", arguments={"reason": "wants a person"})],
        farewell=Turn(say="I am transferring you now.", seconds=1.5),
    )
    app, sim = await connected(script, sim_options={"acknowledgement": "Let me see now"})  # 1.0 s
    async with new_call(app) as call:
        disconnect = await run_until_disconnect(call, speech_like(1.0, seed=3) + silence(12))
    params = disconnect["parameters"]
    variables = params["outputVariables"]
    assert params["reason"] == "completed"
    assert variables["ESCALATION_REQUIRED"] == "true" and variables["ESCALATION_REASON"] == "wants a person"
    live = sim.sessions[0]
    assert live.utterances == ["Let me see now", "I am transferring you now."]
    (output,) = outputs(sim).values()
    assert json.loads(output)["ok"] is True and "transferred" in json.loads(output)["next"]
    assert bytes(call.record.bot_audio) == bytes(live.audio_spoken) and len(call.record.bot_audio) == 20_000
    assert call.record.disconnect_at >= call.record.audio_frames[0][0] + 2.5 - 0.6
    assert client_types(sim)[-1] == "session.close" and live.closed_reason == "close_requested"
    assert sim.violations == [] and call.record.violations == []


async def test_azure_idle_limit_farewell_and_the_summary_through_the_responses_api(start_app, live):
    script = Script(farewell=Turn(say="Goodbye.", seconds=1.0), summary_text='{"topics": ["silence"]}')
    sim = await live(script)
    # Only the endpoint is given: the Live and Responses URLs are derived from it.
    settings = make_settings(
        AI_VENDOR="azure",
        OPENAI_API="live",
        AZURE_OPENAI_API_KEY="azure-test-key",
        AZURE_OPENAI_ENDPOINT=sim.azure_endpoint,
        OPENAI_MODEL="contoso-live",
        IDLE_TIMEOUT_SECONDS="1.5",
    )
    app = await start_app(settings)
    async with new_call(app) as call:
        started = time.monotonic()
        disconnect = await run_until_disconnect(call, silence(12))
    live_session = sim.sessions[0]
    assert live_session.auth == "api-key" and live_session.request.path == "/openai/v1/live/sessions"
    assert started_with(sim)["model"] == "contoso-live"
    variables = disconnect["parameters"]["outputVariables"]
    assert disconnect["parameters"]["reason"] == "completed"
    assert variables["COMPLETION_SUMMARY"] == "call ended: no activity for 1.5 s"
    assert 1.5 <= call.record.disconnect_at - started <= 6.0
    goodbye = commentary(sim)
    assert len(goodbye) == 1 and "goodbye" in goodbye[0].lower()
    assert live_session.utterances == ["Goodbye."]
    assert bytes(call.record.bot_audio) == bytes(live_session.audio_spoken) and call.record.bot_audio
    assert (variables["AI_VENDOR"], variables["AI_MODEL"]) == ("azure", "contoso-live")
    assert json.loads(variables["CONVERSATION_SUMMARY"]) == {"topics": ["silence"]}
    (request,) = sim.summary_requests
    assert request["model"] == "gpt-5.4-mini" and request["instructions"] == SUMMARY_INSTRUCTIONS
    assert request["max_output_tokens"] == 800 and isinstance(request["input"], str)
    totals = sim.usage_totals()
    assert variables["TOTAL_INPUT_TEXT_TOKENS"] == str(totals["input_tokens"]) != "0"
    assert variables["TOTAL_BILLED_SECONDS"] == str(totals["seconds"])
    assert sim.violations == [] and call.record.violations == []


async def test_a_dropped_socket_is_replaced_with_the_conversation_as_input(connected):
    script = Script(
        turns=[
            Turn(say="First answer.", seconds=0.8),
            Turn(say="Second answer after the outage.", seconds=0.8),
        ]
    )
    app, sim = await connected(script)
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(3.0))
        first_answer = len(call.record.bot_audio)
        sim.drop_all()
        await call.stream(silence(1.0) + speech_like(1.0, seed=4) + silence(2.5))
        await call.close()
    assert first_answer == 6400
    assert len(sim.sessions) == 2
    restored = started_with(sim, 1)
    assert restored["input"] == [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "This is what the caller said in turn 1."}],
        },
        {"role": "assistant", "content": [{"type": "output_text", "text": "First answer."}]},
    ]
    assert {k: v for k, v in restored.items() if k != "input"} == started_with(sim, 0)
    assert sim.sessions[1].utterances == ["Second answer after the outage."]
    assert bytes(call.record.bot_audio) == bytes(sim.sessions[0].audio_spoken) + bytes(
        sim.sessions[1].audio_spoken
    )
    assert call.record.disconnect is None
    assert sim.violations == [] and call.record.violations == []


async def test_the_session_is_replaced_at_a_quiet_moment_before_it_expires(connected):
    script = Script(turns=[Turn(say="Still here.", seconds=0.8)])
    app, sim = await connected(script, sim_options={"session_seconds": 6.0})
    async with new_call(app) as call:
        await call.open()
        await call.stream(silence(0.3) + speech_like(0.8, seed=3) + silence(5.0))
        await call.close()
    assert len(sim.sessions) == 2
    first, second = sim.sessions
    assert first.closed_reason == "close_requested"  # we closed it, before the service did
    assert first.utterances == ["Still here."] and second.utterances == []
    restored = started_with(sim, 1)
    assert [m["content"][0]["text"] for m in restored["input"]] == [
        "This is what the caller said in turn 1.",
        "Still here.",
    ]
    assert bytes(call.record.bot_audio) == bytes(first.audio_spoken)
    assert call.record.disconnect is None
    assert sim.violations == [] and call.record.violations == []


async def test_a_failed_summary_leaves_the_fallback_and_one_warning(connected, caplog):
    caplog.set_level(logging.WARNING)
    app, sim = await connected(Script(farewell=Turn(say="Goodbye.", seconds=0.6)), IDLE_TIMEOUT_SECONDS="1")
    sim.summary_status = 500
    async with new_call(app) as call:
        disconnect = await run_until_disconnect(call, silence(10))
    variables = disconnect["parameters"]["outputVariables"]
    assert disconnect["parameters"]["reason"] == "completed"
    assert json.loads(variables["CONVERSATION_SUMMARY"])["note"] == "summary unavailable"
    failed = [r.getMessage() for r in caplog.records if "summary" in r.getMessage()]
    assert failed == ["the conversation summary failed (HTTP 500)"]
    assert len(sim.summary_requests) == 1
    assert sim.violations == [] and call.record.violations == []


async def test_a_fatal_start_error_escalates_at_once_on_one_socket(connected):
    app, sim = await connected(OPENAI_RECONNECT_SECONDS="5")
    sim.start_error = "insufficient_quota"
    async with new_call(app) as call:
        started = time.monotonic()
        disconnect = await run_until_disconnect(call, silence(5), timeout=5)
    params = disconnect["parameters"]
    assert params["reason"] == "error" and "insufficient_quota" in params["info"]
    assert params["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    assert call.record.disconnect_at - started < 2.0  # no retry loop
    assert sim.connections == 1
    assert sim.violations == [] and call.record.violations == []


async def test_keys_and_data_actions_that_come_before_session_started_wait_for_it(
    connected, genesys_api, caplog
):
    # GPT-Live takes nothing but session.start before session.started: what the core asks for
    # in that window (the Data Actions ready late, the caller's keys) goes right after it.
    caplog.set_level(logging.INFO)
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, result={"status": "active"})
    genesys_api.schema_delay = 1.7  # both schemas: past TOOLS_READY_WAIT, so the tools come as an update
    script = Script(turns=[Turn(say="You entered your account number.", seconds=1.0)])
    app, sim = await connected(script, **genesys_api.env())
    sim.start_delay = 2.5
    updating = "data actions ready after the call started; updating the session"
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(12)))
        await wait_for(lambda: any(r.getMessage() == updating for r in caplog.records), 8)
        await call.send_dtmf("42#", gap=0.05)
        await asyncio.sleep(0.3)
        assert sim.sessions[0].start is not None and sim.sessions[0].config is None  # not started yet
        live = sim.sessions[0]
        await wait_for(lambda: "You entered your account number." in live.utterances, 10)
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
        await call.close()
    assert client_types(sim)[:3] == ["session.start", "session.update", "session.commentary.append"]
    started_at = next(t for t, way, e in live.timeline if way == "out" and e["type"] == "session.started")
    commands = [t for t, way, e in live.timeline if way == "in" and e["type"] != "session.start"]
    assert commands and min(commands) >= started_at
    (update,) = sim.events_of("session.update")
    assert TOOL in [t["name"] for t in update["session"]["delegation"]["responses"]["tools"]]
    assert commentary(sim) == ["The caller entered 4 2 on the keypad."]
    assert live.audio_dropped == 0 and live.errors == []
    assert call.record.disconnect is None
    assert sim.violations == [] and call.record.violations == []


async def test_a_backend_response_running_at_the_recycle_moment_holds_the_recycle_until_answered(
    connected, monkeypatch
):
    monkeypatch.setattr("openai_live_client.RECYCLE_RETRY_SECONDS", 0.2)
    # The session is due for replacement about 10 s in. The backend reasons 5 s before it asks
    # for a lookup and 5 s more over its result: busy from about 1.5 s to 11.5 s, and the answer
    # is spoken, the replacement done, well before the session expires at 14 s.
    script = Script(
        turns=[Turn(call="lookup_weather", arguments={})], default=Turn(say="It is sunny.", seconds=0.3)
    )
    app, sim = await connected(script, sim_options={"session_seconds": 14.0})
    sim.backend_reasoning = 5.0
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(0.8, seed=3) + silence(14.5))
        await call.close()
    assert len(sim.sessions) == 2
    first = sim.sessions[0]
    assert first.closed_reason == "close_requested"  # recycled by us, not expired
    assert first.continuations == ["It is sunny."] and first.utterances == ["It is sunny."]
    answered = [
        t
        for t, way, e in first.timeline
        if way == "out" and e["type"] == "response.event" and e["event"]["type"] == "response.completed"
    ]
    close_at = next(t for t, way, e in first.timeline if way == "in" and e["type"] == "session.close")
    assert len(answered) == 2 and close_at > answered[-1]
    assert bytes(call.record.bot_audio) == bytes(first.audio_spoken) and call.record.bot_audio
    assert call.record.disconnect is None
    assert sim.violations == [] and call.record.violations == []


async def test_a_farewell_held_back_by_a_slow_data_action_of_its_batch_is_played_in_full(
    connected, genesys_api
):
    # The farewell's response.create waits for the batch's slow lookup: the wait for the
    # farewell to begin runs from that create, not from the end_conversation call.
    slow_schema = {**ACCOUNT_SCHEMA, "title": "Slow Lookup Request"}
    genesys_api.actions["slow-1"] = FakeAction(slow_schema, delay=6.0, result={"status": "closed"})
    batch = [
        (SLOW_TOOL, {"accountNumber": "3333"}),
        ("end_conversation_successfully", {"summary": "Checked the account."}),
    ]
    script = Script(turns=[Turn(calls=batch)], farewell=Turn(say="Thanks for calling, goodbye!", seconds=2.0))
    app, sim = await connected(script, FAREWELL_TIMEOUT_SECONDS="20", **genesys_api.env())
    variables = {"DATA_ACTION_IDS": "slow-1", "DATA_ACTION_DESCRIPTIONS": "Slow"}
    async with new_call(app, input_variables=variables) as call:
        disconnect = await run_until_disconnect(call, speech_like(1.0, seed=3) + silence(18), timeout=25)
    assert disconnect["parameters"]["reason"] == "completed"
    live = sim.sessions[0]
    assert genesys_api.executions == [("slow-1", {"accountNumber": "3333"})]
    assert live.continuations == [script.farewell.say] and live.utterances == [script.farewell.say]
    assert bytes(call.record.bot_audio) == bytes(live.audio_spoken) and len(call.record.bot_audio) == 16_000
    assert call.record.disconnect_at >= call.record.audio_frames[0][0] + 2.0 - 0.6
    kinds = client_types(sim)
    assert kinds.count("response.create") == 1 and kinds[-1] == "session.close"
    assert sim.violations == [] and call.record.violations == []


async def test_a_long_tool_result_for_a_replaced_socket_reaches_it_whole_in_appends_within_the_limit(
    connected, genesys_api
):
    orders = [{"order": f"A-{n:04d}", "item": f"replacement part {n}", "state": "shipped"} for n in range(70)]
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=1.5, result={"orders": orders})
    script = Script(turns=[Turn(call=TOOL, arguments={"accountNumber": "1111"})])
    app, sim = await connected(script, **genesys_api.env())
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(0.6))
        await wait_for(lambda: genesys_api.executions, 5)
        sim.drop_all()  # the lookup answers after its socket is gone: the next one gets a note
        await call.stream(silence(4.0))
        await call.close()
    assert len(sim.sessions) == 2
    appends = [e for e in sim.sessions[1].received if e["type"] in APPEND_EVENTS]
    first = next(i for i, e in enumerate(appends) if e["content"].startswith("The tool "))
    last = next(i for i, e in enumerate(appends) if i >= first and e["type"] == "session.commentary.append")
    parts = appends[first : last + 1]
    note = f"The tool {TOOL}, called before a reconnection, returned: " + json.dumps(
        {"orders": orders}, ensure_ascii=False
    )
    assert len(note) > 4000 and len(parts) >= 4
    assert "".join(e["content"] for e in parts) == note
    assert all(len(e["content"]) <= 1000 for e in parts)
    assert {e["type"] for e in parts[:-1]} == {"session.thinking.append"}  # silent until the last
    assert sim.violations == [] and call.record.violations == []


class Outbox:
    """A socket stand-in that keeps what the session sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, event: Any) -> None:
        self.sent.append(event)


def bare_session() -> tuple[LiveSession, Outbox]:
    outbox = Outbox()
    session = LiveSession(
        outbox,  # type: ignore[arg-type]
        label="OpenAI",
        model="gpt-live-1",
        backend_model="gpt-5.4-mini",
        approval=ApprovalPolicy(),
        metrics=Metrics(),
        clock=time.monotonic,
        text_api=TextApi(),
        api_base_url="http://127.0.0.1:9/v1",
        headers={},
        summary_model="gpt-5.4-mini",
    )
    call = make_settings(OPENAI_API="live").call_config(None, {})
    session.begin(SessionStart(spec=CallSpec(call=call, instructions="Be brief."), socket=1))
    return session, outbox


def test_before_session_started_only_an_error_answering_session_start_refuses_the_session():
    session, outbox = bare_session()
    start_id = outbox.sent[0]["event_id"]
    other = {
        "type": "error",
        "client_event_id": "lv1c9",
        "error": {"type": "invalid_request_error", "code": "x"},
    }
    session.handle(other)  # an error about some other event is no refusal
    assert not session.started
    answering = {**other, "client_event_id": start_id}
    with pytest.raises(ModelFailed):
        session.handle(answering)


async def test_the_callers_turn_keeps_its_place_before_the_answer_its_transcript_trails(connected):
    script = Script(default=Turn(say="Hello there, how can I help?", seconds=1.0), caller_transcripts=["Hi."])
    app, sim = await connected(script)
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(speech_like(0.4, seed=3) + silence(6.0)))
        await wait_for(lambda: sim.sessions and sim.sessions[0].utterances)  # answered
        await asyncio.sleep(2.0)  # the answer played, the caller's transcript came after it began
        sim.sessions[0].drop()
        await wait_for(lambda: len(sim.sessions) == 2 and sim.sessions[1].received)
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
    start = next(e for e in sim.sessions[1].received if e["type"] == "session.start")
    roles = [item["role"] for item in start["session"].get("input", start.get("input", []))]
    assert roles == ["user", "assistant"]
