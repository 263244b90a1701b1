"""The Gemini Live backend end to end: call simulator -> connector -> Gemini simulator, over real
sockets on 127.0.0.1. The Gemini simulator validates every client message with google-genai's
types (camelCase only): `sim.violations` stays empty, like the call simulator's."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import time
from typing import Any

import pytest
from conftest import API_KEY, make_settings, ws_url
from fake_genesys_api import FakeAction
from test_data_actions import ACCOUNT_SCHEMA

from call_bridge import FILLER
from call_control import FAREWELL, SUMMARY_INSTRUCTIONS
from gemini_client import FAREWELL_NEXT_TURN_SECONDS, RESUME_ATTEMPTS
from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.gemini_simulator import (
    BAD_KEY,
    CALL_TURN_CONTINUES,
    CALL_TURN_ENDS,
    CALL_TURN_TRAILS,
    QUOTA,
    GeminiSimulator,
    SimConnection,
)
from simulators.script import DEFAULT_SUMMARY, Script, Turn
from transcoding import CallerToGemini, GeminiToCaller

GEMINI_KEY = "test-gemini-key"
TOOL = "genesys_data_action_get_account"
TOKEN_VARIABLES = {
    "TOTAL_INPUT_TEXT_TOKENS": "input_text",
    "TOTAL_INPUT_CACHED_TEXT_TOKENS": "input_cached_text",
    "TOTAL_INPUT_AUDIO_TOKENS": "input_audio",
    "TOTAL_INPUT_CACHED_AUDIO_TOKENS": "input_cached_audio",
    "TOTAL_OUTPUT_TEXT_TOKENS": "output_text",
    "TOTAL_OUTPUT_AUDIO_TOKENS": "output_audio",
}


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
async def connector(start_app, gemini):
    """A connector whose calls go to a fresh Gemini simulator: returns (app, simulator)."""

    async def start(script: Script | None = None, sim_options: dict[str, Any] | None = None, **env: str):
        sim = await gemini(script, **(sim_options or {}))
        settings = make_settings(
            AI_VENDOR="gemini",
            GEMINI_API_KEY=GEMINI_KEY,
            GEMINI_LIVE_URL=sim.url,
            GEMINI_API_BASE_URL=sim.api_base_url,
            **env,
        )
        return await start_app(settings), sim

    return start


@pytest.fixture
def model_turns(monkeypatch) -> list[bytearray]:
    """The PCM of every model turn the simulators send, in order (a turn ends at turnComplete or
    interrupted): what the caller's audio is compared with."""
    turns: list[bytearray] = [bytearray()]
    send = SimConnection.send

    async def tapped(self: SimConnection, message: dict[str, Any], audio: bool = False) -> None:
        content = message.get("serverContent") or {}
        for part in (content.get("modelTurn") or {}).get("parts", []):
            turns[-1] += _b64(part["inlineData"]["data"])
        if (content.get("turnComplete") or content.get("interrupted")) and turns[-1]:
            turns.append(bytearray())
        await send(self, message, audio)

    monkeypatch.setattr(SimConnection, "send", tapped)
    return turns


def _b64(data: str) -> bytes:
    import base64

    return base64.b64decode(data)


def heard(turns: list[bytearray]) -> bytes:
    """What the caller should get: each turn converted with fresh state (state per turn)."""
    return b"".join(GeminiToCaller().convert(bytes(turn)) for turn in turns if turn)


def new_call(app, **kwargs: Any) -> GenesysCall:
    kwargs.setdefault("ping_interval", None)
    return GenesysCall(ws_url(app), api_key=API_KEY, **kwargs)


def turn(speak: float, wait: float, seed: int = 20) -> bytes:
    return speech_like(speak, seed=seed) + silence(wait)


async def wait_for(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def run_until_disconnect(call: GenesysCall, audio: bytes, timeout: float = 30.0) -> dict[str, Any]:
    await call.open()
    streaming = asyncio.create_task(call.stream(audio))
    try:
        return await call.wait_disconnect(timeout)
    finally:
        streaming.cancel()


def sent_caller_audio(call: GenesysCall, audio: bytes) -> bytes:
    return audio[: round(call.audio_seconds_sent * 8000)]


def received_by_gemini(sim: GeminiSimulator) -> bytes:
    """The caller audio Gemini received over every connection, in order."""
    return b"".join(bytes(c.audio_received) for c in sim.connections)


def texts_sent(sim: GeminiSimulator) -> list[str]:
    return [
        m["realtimeInput"]["text"] for m in sim.messages_of("realtimeInput") if "text" in m["realtimeInput"]
    ]


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def check_paced(call: GenesysCall) -> None:
    frames = call.record.audio_frames
    assert frames and max(n for _, n in frames) <= 64_000
    start, total = frames[0][0], 0
    for t, n in frames:
        total += n
        assert total / 8000 - (t - start) <= 1.0 + 0.05  # at most one second ahead of playback
    assert min(b[0] - a[0] for a, b in itertools.pairwise(frames)) >= 0.09  # about ten a second


def check_usage(variables: dict[str, str], sim: GeminiSimulator) -> None:
    totals = sim.usage_totals(include_summary=True)
    for name, key in TOKEN_VARIABLES.items():
        assert variables[name] == str(totals[key]), name
    assert int(variables["TOTAL_INPUT_TEXT_TOKENS"]) > 0 and int(variables["TOTAL_OUTPUT_AUDIO_TOKENS"]) > 0


def resumptions(app, result: str) -> float:
    line = f'connector_gemini_resumptions_total{{result="{result}"}} '
    text = app.metrics.render().decode()
    return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)), 0.0)


# -- setup and audio -----------------------------------------------------------------------------


async def test_the_setup_carries_the_call_and_the_greeting_is_a_user_turn(connector, genesys_api, caplog):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA)
    mcp = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/crm"}
    app, sim = await connector(
        GEMINI_VOICE="Puck",
        GEMINI_VAD_START_SENSITIVITY="high",
        GEMINI_VAD_END_SENSITIVITY="low",
        GEMINI_VAD_PREFIX_PADDING_MS="40",
        GEMINI_VAD_SILENCE_MS="600",
        INITIAL_GREETING="Welcome to Acme support",
        ENABLE_MCP_TOOLS="true",
        MCP_TOOLS_JSON=json.dumps([mcp]),
        **genesys_api.env(),
    )
    async with new_call(app, language="es-es", input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(3.0)))
        await wait_for(lambda: call.record.audio_frames)
        streaming.cancel()
        await call.close()
    (setup,) = [m["setup"] for m in sim.messages_of("setup")]
    assert setup["model"] == "models/gemini-3.8-live"
    generation = setup["generationConfig"]
    assert generation["responseModalities"] == ["AUDIO"]
    assert generation["speechConfig"] == {
        "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}},
        "languageCode": "es-ES",
    }
    assert "Speak es-es" in setup["systemInstruction"]["parts"][0]["text"]
    declarations = {d["name"]: d for d in setup["tools"][0]["functionDeclarations"]}
    assert {name: d["behavior"] for name, d in declarations.items()} == {
        "end_conversation_successfully": "BLOCKING",
        "end_conversation_with_escalation": "BLOCKING",
        TOOL: "NON_BLOCKING",
    }
    assert declarations[TOOL]["parametersJsonSchema"]["required"] == ["accountNumber"]
    assert len(setup["tools"]) == 1  # the MCP entry is not sent
    assert [w for w in warnings(caplog) if "MCP" in w] == [
        "Gemini Live does not support remote MCP tools: 1 MCP entry dropped for this call"
    ]
    assert setup["realtimeInputConfig"] == {
        "automaticActivityDetection": {
            "startOfSpeechSensitivity": "START_SENSITIVITY_HIGH",
            "endOfSpeechSensitivity": "END_SENSITIVITY_LOW",
            "prefixPaddingMs": 40,
            "silenceDurationMs": 600,
        }
    }
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
    assert setup["sessionResumption"] == {}
    assert setup["contextWindowCompression"]["slidingWindow"]["targetTokens"] > 0
    # The greeting: a user turn that completes, then the bot speaks first.
    (greeting,) = sim.messages_of("clientContent")
    assert greeting["clientContent"]["turnComplete"] is True
    (user,) = greeting["clientContent"]["turns"]
    assert user["role"] == "user" and "Welcome to Acme support" in user["parts"][0]["text"]
    assert sim.function_calls == [] and sim.violations == [] and call.record.violations == []
    kinds = [next(iter(m)) for m in sim.client_messages if "audio" not in m.get("realtimeInput", {})]
    assert kinds[:2] == ["setup", "clientContent"]  # nothing before the setup was confirmed


async def test_caller_audio_reaches_gemini_as_one_16_khz_stream_and_bot_audio_the_caller_paced(
    connector, model_turns
):
    script = Script(turns=[Turn(say="Here is a fairly long answer for you.", seconds=1.5)])
    app, sim = await connector(script, INITIAL_GREETING="Hello there")
    sim.connect_delay = 1.0  # the caller talks before Gemini is ready: buffered, then in order
    audio = silence(2.2) + turn(1.0, 3.4, seed=11)
    async with new_call(app) as call:
        await call.open()
        await call.stream(audio)
        await asyncio.sleep(0.3)
        await call.close()
    assert len(sim.sessions) == 1
    assert bytes(sim.sessions[0].audio_received) == CallerToGemini().convert(audio)  # byte-exact
    assert {
        m["realtimeInput"]["audio"]["mimeType"]
        for m in sim.messages_of("realtimeInput")
        if "audio" in m["realtimeInput"]
    } == {"audio/pcm;rate=16000"}
    # Two turns (the greeting, the answer), each converted with its own state.
    assert [len(t) for t in model_turns if t] and len([t for t in model_turns if t]) == 2
    assert bytes(call.record.bot_audio) == heard(model_turns)
    assert len(call.record.bot_audio) == pytest.approx(
        8000 * (round(len("Hello there") / 14, 2) + 1.5), abs=16
    )
    check_paced(call)
    assert sim.violations == [] and call.record.violations == []


async def test_barge_in_flushes_at_once_and_nothing_is_sent_to_gemini(connector):
    script = Script(
        turns=[
            Turn(say="A long answer that the caller will interrupt.", seconds=6.0),
            Turn(say="Yes?", seconds=0.8),
        ]
    )
    app, sim = await connector(script)
    async with new_call(app) as call:
        await call.open()
        await call.stream(turn(1.0, 0.6))
        await wait_for(lambda: call.record.audio_frames)
        first_frame = call.record.audio_frames[0][0]
        await asyncio.sleep(max(0.0, first_frame + 1.5 - time.monotonic()))
        await call.stream(turn(1.0, 2.5, seed=21))
        await call.close()
    (barge_in,) = call.record.events("barge_in")
    barged = barge_in[0]
    stale = [t for t, _ in call.record.audio_frames if barged <= t < barged + 1.0]
    assert len(stale) <= 1  # at most one frame was already on the wire
    assert [i.reason for i in sim.interruptions] == ["speech"]
    later = [n for t, n in call.record.audio_frames if t >= barged + 1.0]
    assert sum(later) == pytest.approx(0.8 * 8000, abs=16)  # then the next answer, whole
    # Gemini is told nothing: no truncate or cancel exists, it assumes real-time playback.
    assert [next(iter(m)) for m in sim.client_messages if "realtimeInput" not in m] == ["setup"]
    assert sim.violations == [] and call.record.violations == []


# -- tools, keys and the end of the call -------------------------------------------------------------


async def test_a_slow_data_action_runs_non_blocking_with_a_holding_phrase_then_when_idle(
    connector, genesys_api, model_turns
):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=2.0, result={"status": "active"})
    script = Script(
        turns=[Turn(call=TOOL, arguments={"accountNumber": "12345"})],
        default=Turn(say="Your account is active.", seconds=0.6),
        filler=Turn(say="Still checking.", seconds=0.6),
    )
    app, sim = await connector(script, TOOL_FILLER_AFTER_MS="500", **genesys_api.env())
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        await call.stream(turn(1.0, 5.0))
        await call.close()
    assert [(c.name, c.blocking) for c in sim.function_calls] == [(TOOL, False)]
    assert genesys_api.executions == [("acct-1", {"accountNumber": "12345"})]
    assert texts_sent(sim) == [FILLER]  # the holding phrase, as real-time text
    (response,) = sim.tool_responses
    assert response == {
        "id": sim.function_calls[0].id,
        "name": TOOL,
        "response": {"output": {"status": "active"}},
        "scheduling": "WHEN_IDLE",
    }
    # The holding phrase, then the result spoken once the model was idle: both whole, in order.
    assert bytes(call.record.bot_audio) == heard(model_turns)
    assert len(call.record.bot_audio) == pytest.approx(2 * 0.6 * 8000, abs=16)
    assert sim.interruptions == []
    assert sim.violations == [] and call.record.violations == []


async def test_a_cancelled_call_stops_with_no_holding_phrase_no_result_and_no_second_run(
    connector, genesys_api, caplog
):
    caplog.set_level(logging.INFO)
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=2.5, result={"status": "active"})
    script = Script(
        turns=[Turn(call=TOOL, arguments={"accountNumber": "12345"})],
        default=Turn(say="Yes, what else?", seconds=0.6),
    )
    # 3.1 runs every call as BLOCKING: the caller speaking over it makes the model cancel it. The
    # holding phrase would be due at 2 s, after the cancellation.
    app, sim = await connector(
        script, GEMINI_MODEL="gemini-3.1-flash-live-preview", TOOL_FILLER_AFTER_MS="2000", **genesys_api.env()
    )
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        await call.stream(turn(1.0, 0.8))
        await wait_for(lambda: genesys_api.executions)
        await call.stream(turn(1.0, 3.5, seed=22))  # past the action's end
        await call.close()
    (cancelled,) = sim.cancellations
    assert cancelled == [sim.function_calls[0].id]
    assert sim.tool_responses == []  # no result was sent
    texts = [m for m in sim.messages_of("realtimeInput") if "text" in m["realtimeInput"]]
    assert texts == []  # no holding phrase for a call the model gave up
    assert genesys_api.executions == [("acct-1", {"accountNumber": "12345"})]
    assert any("cancelled 1 running tool call" in r.getMessage() for r in caplog.records)
    assert len(call.record.bot_audio) == pytest.approx(0.6 * 8000, abs=16)  # the caller's turn answered
    assert sim.violations == [] and call.record.violations == []


async def test_keyed_digits_reach_gemini_as_real_time_text(connector, model_turns):
    app, sim = await connector(Script(default=Turn(say="Thanks.", seconds=0.5)))
    async with new_call(app) as call:
        await call.open()
        await call.stream(silence(0.5))
        await call.send_dtmf("1234#", gap=0.05)
        await call.stream(silence(1.5))
        await call.send_dtmf("98", gap=0.05)
        await call.stream(silence(3.0))
        await call.close()
    assert texts_sent(sim) == [
        "The caller entered 1 2 3 4 on the keypad.",
        "The caller entered 9 8 on the keypad.",
    ]
    assert sim.messages_of("clientContent") == []
    assert bytes(call.record.bot_audio) == heard(model_turns) and len(call.record.bot_audio) > 7900
    assert sim.violations == [] and call.record.violations == []


async def test_end_conversation_plays_the_continuation_to_the_end_then_disconnects_with_usage(
    connector, model_turns
):
    script = Script(
        turns=[
            Turn(say="Your order arrives on Friday.", seconds=1.0),
            Turn(call="end_conversation_successfully", arguments={"summary": "Told the caller: Friday."}),
        ],
        farewell=Turn(say="Thanks for calling, goodbye!", seconds=2.0),
        summary_text=json.dumps({**DEFAULT_SUMMARY, "topics": ["delivery date"]}),
    )
    app, sim = await connector(script)
    # The caller talks over the goodbye: it is neither cut nor answered.
    audio = turn(1.0, 2.5) + turn(1.0, 0.8, seed=21) + turn(1.5, 10.0, seed=22)
    async with new_call(app) as call:
        started = time.monotonic()
        disconnect = await run_until_disconnect(call, audio)
    params = disconnect["parameters"]
    assert params["reason"] == "completed"
    variables = params["outputVariables"]
    assert len(variables) == 14 and all(isinstance(v, str) for v in variables.values())
    assert variables["AI_VENDOR"] == "gemini" and variables["AI_MODEL"] == "gemini-3.8-live"
    assert variables["COMPLETION_SUMMARY"] == "Told the caller: Friday."
    assert variables["ESCALATION_REQUIRED"] == "false"
    check_usage(variables, sim)  # every usageMetadata, the summary's included
    assert abs(int(variables["CONVERSATION_DURATION"]) - (call.record.disconnect_at - started)) <= 1
    # The call-control result tells the model to say goodbye: its continuation is the farewell.
    (response,) = sim.tool_responses
    assert response == {
        "id": sim.function_calls[0].id,
        "name": "end_conversation_successfully",
        "response": {"output": {"ok": True, "next": FAREWELL}},
    }
    assert texts_sent(sim) == [] and sim.interruptions == []
    # Every byte of it reached the caller, and the disconnect waited for its playback.
    assert bytes(call.record.bot_audio) == heard(model_turns)
    assert len(call.record.bot_audio) == pytest.approx(3.0 * 8000, abs=16)
    total, farewell_start = 0, None
    for t, size in call.record.audio_frames:
        if total >= 8000 and farewell_start is None:
            farewell_start = t
        total += size
    assert farewell_start is not None and call.record.disconnect_at >= farewell_start + 2.0 - 0.6
    assert call.record.events("barge_in") == []
    # The summary: generateContent on the text model, from the transcriptions.
    assert json.loads(variables["CONVERSATION_SUMMARY"])["topics"] == ["delivery date"]
    (request,) = sim.summary_requests
    assert request["model"] == "gemini-2.5-flash"
    assert request["body"]["systemInstruction"] == {"parts": [{"text": SUMMARY_INSTRUCTIONS}]}
    (content,) = request["body"]["contents"]
    transcript = content["parts"][0]["text"]
    assert content["role"] == "user"
    assert "Caller: This is what the caller said in turn 1." in transcript
    assert "Assistant: Your order arrives on Friday." in transcript
    assert sim.violations == [] and call.record.violations == []


@pytest.mark.parametrize(
    ("order", "said_first"),
    [
        (CALL_TURN_CONTINUES, 0.4),  # 3.x: the turn that made the call goes on after our result
        (CALL_TURN_ENDS, 0.0),  # the turn ends with the call, the farewell is the next one
        (CALL_TURN_ENDS, 0.4),
        (CALL_TURN_TRAILS, 0.4),  # the end of what it said comes after the call, then it ends
    ],
    ids=["same-turn", "next-turn", "next-turn-after-speech", "next-turn-after-trailing-audio"],
)
async def test_the_farewell_is_heard_in_full_before_the_disconnect_whichever_turn_says_it(
    connector, model_turns, caplog, order, said_first
):
    ending = Turn(call="end_conversation_successfully", arguments={"summary": "wrapped up"})
    if said_first:
        ending = dataclasses.replace(ending, say="Let me wrap this up for you.", seconds=said_first)
    script = Script(turns=[ending], farewell=Turn(say="Thanks for calling, goodbye!", seconds=2.0))
    app, sim = await connector(script, sim_options={"blocking_call_turn": order})
    async with new_call(app) as call:
        disconnect = await run_until_disconnect(call, turn(1.0, 12.0))
    assert disconnect["parameters"]["reason"] == "completed"
    assert disconnect["parameters"]["outputVariables"]["COMPLETION_SUMMARY"] == "wrapped up"
    # Everything the model said, the whole farewell last, reached the caller before `disconnect`.
    frames = call.record.audio_frames
    assert bytes(call.record.bot_audio) == heard(model_turns)
    assert sum(n for t, n in frames if t <= call.record.disconnect_at) == pytest.approx(
        (said_first + 2.0) * 8000, abs=16
    )
    # ... and played: the disconnect came once it had, not at the core's FAREWELL_TIMEOUT_SECONDS.
    played_until = frames[0][0] + (said_first + 2.0) - 1.0  # the pacer leads by at most a second
    assert played_until <= call.record.disconnect_at <= played_until + 1.0 + FAREWELL_NEXT_TURN_SECONDS + 1.0
    assert not any("did not finish" in w for w in warnings(caplog))
    assert [c.name for c in sim.function_calls] == ["end_conversation_successfully"]
    assert texts_sent(sim) == [] and sim.interruptions == []
    assert sim.violations == [] and call.record.violations == []


async def test_an_idle_limit_asks_for_the_farewell_as_text_and_waits_for_its_turn(connector):
    app, sim = await connector(Script(farewell=Turn(say="Goodbye.", seconds=0.8)), IDLE_TIMEOUT_SECONDS="1.5")
    async with new_call(app) as call:
        disconnect = await run_until_disconnect(call, silence(10))
    assert disconnect["parameters"]["reason"] == "completed"
    assert disconnect["parameters"]["outputVariables"]["COMPLETION_SUMMARY"].startswith(
        "call ended: no activity"
    )
    (text,) = texts_sent(sim)
    assert text.startswith("(The call is ending now: ") and text.endswith(") Say goodbye.")
    assert len(call.record.bot_audio) == pytest.approx(0.8 * 8000, abs=16)  # spoken to the end
    assert call.record.disconnect_at >= call.record.audio_frames[-1][0] + 0.8 - 0.6 - 0.05
    assert sim.violations == [] and call.record.violations == []


# -- connections: goAway, resumption, refusals ---------------------------------------------------


async def test_a_long_call_moves_across_connections_without_losing_audio_tools_or_usage(
    connector, genesys_api, model_turns
):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, result={"status": "active"})
    script = Script(
        turns=[
            Turn(say="Answer one.", seconds=0.6),
            Turn(call=TOOL, arguments={"accountNumber": "12345"}),
            Turn(say="Your account is active.", seconds=0.6),
            *(Turn(say=f"Answer {n}.", seconds=0.6) for n in ("three", "four", "five")),
            Turn(call="end_conversation_successfully", arguments={"summary": "long call done"}),
        ],
        farewell=Turn(say="Goodbye.", seconds=0.8),
    )
    # goAway 1 s into every connection, with 4 s left: the connector moves at a quiet moment.
    app, sim = await connector(
        script, sim_options={"connection_seconds": 5.0, "go_away_before": 4.0}, **genesys_api.env()
    )
    audio = b"".join(turn(0.6, 3.2, seed=30 + n) for n in range(7)) + silence(8.0)
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        started = time.monotonic()
        disconnect = await run_until_disconnect(call, audio, timeout=40)
    assert disconnect["parameters"]["reason"] == "completed"
    assert call.record.disconnect_at - started >= 20.0
    variables = disconnect["parameters"]["outputVariables"]
    assert variables["COMPLETION_SUMMARY"] == "long call done"
    connections = sim.connections
    assert len(connections) >= 5 and len(sim.sessions) == 1  # one conversation, resumed
    assert [c.close_code for c in connections[:-1]] == [1000] * (len(connections) - 1)  # we moved first
    assert len(sim.resumptions) == len(connections) - 1 and sim.failed_resumptions == []
    assert resumptions(app, "resumed") == len(connections) - 1 and resumptions(app, "fresh") == 0
    # No caller audio lost or doubled: one stream over every connection, in order.
    received = received_by_gemini(sim)
    sent = sent_caller_audio(call, audio)
    assert len(received) % 4 == 0 and len(received) // 4 >= len(sent) - 2 * 8000
    assert received == CallerToGemini().convert(sent[: len(received) // 4])
    # No tool ran twice, and usage is summed over every connection.
    assert genesys_api.executions == [("acct-1", {"accountNumber": "12345"})]
    assert [c.name for c in sim.function_calls] == [TOOL, "end_conversation_successfully"]
    check_usage(variables, sim)
    # Every answer reached the caller whole, and the farewell was the continuation, asked once.
    assert bytes(call.record.bot_audio) == heard(model_turns)
    assert len(call.record.bot_audio) == pytest.approx((5 * 0.6 + 0.8) * 8000, abs=64)
    assert texts_sent(sim) == []
    assert sim.violations == [] and call.record.violations == []


async def test_a_refused_resumption_starts_a_fresh_session_with_the_conversation(connector):
    script = Script(turns=[Turn(say="First answer.", seconds=0.6), Turn(say="Second answer.", seconds=0.6)])
    app, sim = await connector(script)
    async with new_call(app) as call:
        await call.open()
        await call.stream(turn(0.8, 1.8))
        handles = sim.sessions[0].handles
        assert handles
        sim.expire_handles()  # the handle is no longer known: the resume is refused
        sim.drop_all()
        await call.stream(silence(1.2) + turn(0.8, 2.0, seed=21))
        await call.close()
    assert sim.failed_resumptions == [handles[-1]]
    assert len(sim.sessions) == 2
    instructions = sim.sessions[1].setup["systemInstruction"]["parts"][0]["text"]
    assert "Caller: This is what the caller said in turn 1." in instructions
    assert "Assistant: First answer." in instructions
    assert sim.sessions[1].setup["sessionResumption"] == {}
    assert resumptions(app, "refused") == 1 and resumptions(app, "fresh") == 1
    assert call.record.disconnect is None
    assert len(call.record.bot_audio) == pytest.approx(2 * 0.6 * 8000, abs=32)  # the call went on
    assert sim.violations == [] and call.record.violations == []


@pytest.mark.parametrize("drops", [1, RESUME_ATTEMPTS], ids=["once", "every-time"])
async def test_a_resumption_dropped_before_setup_complete_is_tried_again_with_the_same_handle(
    connector, drops
):
    script = Script(turns=[Turn(say="First answer.", seconds=0.6), Turn(say="Second answer.", seconds=0.6)])
    app, sim = await connector(script)
    dropped: list[str] = []

    def drop_resumptions(message: dict[str, Any]) -> bool:
        handle = ((message.get("setup") or {}).get("sessionResumption") or {}).get("handle")
        if handle and len(dropped) < drops:
            dropped.append(handle)
            return True
        return False

    async with new_call(app) as call:
        await call.open()
        await call.stream(turn(0.8, 1.8))
        (*_, handle) = sim.sessions[0].handles
        sim.drop_on = drop_resumptions  # glitches: no answer, no refusal
        sim.drop_all()
        await call.stream(silence(1.2) + turn(0.8, 2.0, seed=21))
        await call.close()
    assert dropped == [handle] * drops
    setups = [c.received[0]["setup"]["sessionResumption"] for c in sim.connections[1:]]
    if drops < RESUME_ATTEMPTS:  # a glitch: the same handle again, the conversation resumed
        assert setups == [{"handle": handle}] * (drops + 1)
        assert len(sim.sessions) == 1 and [r.handle for r in sim.resumptions] == [handle]
        assert resumptions(app, "resumed") == 1
        assert resumptions(app, "refused") == 0 and resumptions(app, "fresh") == 0
    else:  # the handle never works: given up for a fresh session, not the call
        assert setups == [{"handle": handle}] * drops + [{}]
        assert len(sim.sessions) == 2 and sim.resumptions == []
        assert resumptions(app, "refused") == 1 and resumptions(app, "fresh") == 1
    assert call.record.disconnect is None
    assert len(call.record.bot_audio) == pytest.approx(2 * 0.6 * 8000, abs=32)  # the call went on
    assert sim.violations == [] and call.record.violations == []


async def test_a_language_update_moves_the_session_to_a_connection_set_up_for_it(connector):
    app, sim = await connector(Script(default=Turn(say="Sure.", seconds=0.5)))
    async with new_call(app, language="en-US") as call:
        await call.open()
        await call.stream(turn(0.8, 1.8))  # an answer: a handle to resume from
        await call.send_message("update", {"language": "fr-FR"})
        await call.stream(silence(1.2))
        await call.close()
    first, second = (c.setup for c in sim.connections)
    assert first["generationConfig"]["speechConfig"]["languageCode"] == "en-US"
    assert second["generationConfig"]["speechConfig"]["languageCode"] == "fr-FR"
    assert "Speak fr-FR" in second["systemInstruction"]["parts"][0]["text"]
    assert second["sessionResumption"] == {"handle": sim.sessions[0].handles[-1]}
    assert sim.connections[0].close_code == 1000 and len(sim.sessions) == 1  # moved, not dropped
    assert resumptions(app, "resumed") == 1
    assert call.record.disconnect is None
    assert sim.violations == [] and call.record.violations == []


@pytest.mark.parametrize(
    ("env", "fault", "said"),
    [
        ({}, "bad_key", BAD_KEY),
        ({"GEMINI_MODEL": "gemini-2.0-flash-live-001"}, None, "is not found for API version"),
    ],
    ids=["bad-key", "bad-model"],
)
async def test_a_bad_key_or_model_at_setup_is_one_line_and_an_escalation(connector, caplog, env, fault, said):
    app, sim = await connector(OPENAI_RECONNECT_SECONDS="5", **env)
    if fault:
        setattr(sim, fault, True)
    async with new_call(app) as call:
        started = time.monotonic()
        disconnect = await run_until_disconnect(call, silence(5.0), timeout=8)
    params = disconnect["parameters"]
    assert params["reason"] == "error" and said in params["info"]
    assert params["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    assert params["outputVariables"]["AI_VENDOR"] == "gemini"
    assert time.monotonic() - started < 2.0 and sim.attempts == 1  # no retry loop
    lines = warnings(caplog)
    assert len(lines) == 1 and said in lines[0]
    assert not any(GEMINI_KEY in r.getMessage() for r in caplog.records)
    assert call.record.violations == []


async def test_a_quota_close_mid_call_escalates_at_once(connector):
    app, sim = await connector(OPENAI_RECONNECT_SECONDS="5")
    sim.close_with = (1011, QUOTA)
    async with new_call(app) as call:
        started = time.monotonic()
        disconnect = await run_until_disconnect(call, silence(5.0), timeout=8)
    params = disconnect["parameters"]
    assert params["reason"] == "error" and "quota" in params["info"]
    assert params["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    assert time.monotonic() - started < 2.0 and sim.attempts == 1
    assert sim.violations == [] and call.record.violations == []


# -- what Gemini sends that the connector must not take ------------------------------------------


async def test_a_malformed_server_message_is_ignored_with_a_warning(connector, caplog):
    app, sim = await connector(Script(default=Turn(say="Still here.", seconds=0.6)))
    sim.malformed_next = "not_json"
    async with new_call(app) as call:
        await call.open()
        await call.stream(turn(0.8, 1.8))
        sim.malformed_next = "unknown_field"
        await call.stream(turn(0.8, 1.8, seed=21))
        await call.close()
    lines = warnings(caplog)
    assert any("Gemini sent a frame that is not JSON" in w for w in lines)
    assert any("Gemini sent a message with unknown fields (surpriseField)" in w for w in lines)
    assert len(call.record.bot_audio) == pytest.approx(2 * 0.6 * 8000, abs=32)  # the call went on
    assert call.record.disconnect is None
    assert sim.violations == [] and call.record.violations == []


@pytest.mark.parametrize("quirk", ["unknown_field", "snake_case"])
async def test_known_fields_are_read_beside_unknown_ones_and_in_snake_case(
    connector, model_turns, caplog, quirk
):
    app, sim = await connector(Script(default=Turn(say="Here you are.", seconds=0.8)))
    if quirk == "unknown_field":
        sim.unknown_field_on_audio = "futureField"  # beside every serverContent with audio
    else:
        sim.snake_case_fields = True  # server_content, setup_complete, usage_metadata ...
    async with new_call(app) as call:
        await call.open()
        await call.stream(turn(0.8, 2.4))
        await call.close()
    assert bytes(call.record.bot_audio) == heard(model_turns)
    assert len(call.record.bot_audio) == pytest.approx(0.8 * 8000, abs=16)
    unknown = [w for w in warnings(caplog) if "unknown fields" in w]
    if quirk == "unknown_field":  # once a call, however many messages carry it
        assert unknown == ["Gemini sent a message with unknown fields (futureField); they are ignored"]
    else:
        assert unknown == []
    assert sim.violations == [] and call.record.violations == []


async def test_output_audio_in_another_format_never_reaches_the_caller(connector):
    app, sim = await connector(INITIAL_GREETING="Hello")
    sim.force_mime = "audio/pcm;rate=16000"
    async with new_call(app) as call:
        disconnect = await run_until_disconnect(call, silence(5.0), timeout=8)
    assert disconnect["parameters"]["reason"] == "error"
    assert "audio/pcm;rate=24000" in disconnect["parameters"]["info"]
    assert disconnect["parameters"]["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    assert call.record.audio_frames == []
    assert sim.violations == [] and call.record.violations == []
