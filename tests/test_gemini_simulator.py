"""The Gemini Live simulator is only useful if it is strict and faithful: check it is, over real
sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from simulators.audio import silence, speech_like
from simulators.gemini_simulator import (
    BAD_KEY,
    CALL_TURN_ENDS,
    CALL_TURN_TRAILS,
    DEADLINE,
    INVALID_ARGUMENT,
    TRAILING_MS,
    TURNAROUND_SECONDS,
    GeminiSimulator,
    GeminiValidator,
    client_rules,
)
from simulators.script import Script, Turn
from utils import audioop

VALIDATOR = GeminiValidator()
KEY = {"x-goog-api-key": "test-gemini-key"}

SETUP: dict[str, Any] = {
    "setup": {
        "model": "models/gemini-3.8-live",
        "generationConfig": {
            "responseModalities": ["AUDIO"],
            "temperature": 0.8,
            "maxOutputTokens": 1024,
            "speechConfig": {
                "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}},
                "languageCode": "en-US",
            },
        },
        "systemInstruction": {"parts": [{"text": "You are Ava of Acme."}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "end_conversation_successfully",
                        "description": "End the call.",
                        "behavior": "BLOCKING",
                        "parameters": {
                            "type": "OBJECT",
                            "properties": {"summary": {"type": "STRING"}},
                            "required": ["summary"],
                        },
                    },
                    {
                        "name": "lookup_order",
                        "description": "Find an order.",
                        "behavior": "BLOCKING",
                        "parameters": {"type": "OBJECT", "properties": {"order": {"type": "STRING"}}},
                    },
                    {
                        "name": "slow_lookup",
                        "description": "A slow Data Action.",
                        "behavior": "NON_BLOCKING",
                        "parametersJsonSchema": {"type": "object", "properties": {"q": {"type": "string"}}},
                    },
                ]
            }
        ],
        "realtimeInputConfig": {
            "automaticActivityDetection": {
                "startOfSpeechSensitivity": "START_SENSITIVITY_LOW",
                "endOfSpeechSensitivity": "END_SENSITIVITY_HIGH",
                "prefixPaddingMs": 20,
                "silenceDurationMs": 500,
            },
            "activityHandling": "START_OF_ACTIVITY_INTERRUPTS",
        },
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
        "sessionResumption": {},
        "contextWindowCompression": {"triggerTokens": 25600, "slidingWindow": {"targetTokens": 12800}},
    }
}


def setup_with(**changes: Any) -> dict[str, Any]:
    message = copy.deepcopy(SETUP)
    for key, value in changes.items():
        if value is None:
            message["setup"].pop(key)
        else:
            message["setup"][key] = value
    return message


def snake_setup() -> dict[str, Any]:
    """The good setup with one key in proto snake_case, as the SDK itself sends some."""
    message = copy.deepcopy(SETUP)
    message["setup"]["generation_config"] = message["setup"].pop("generationConfig")
    return message


def problems(message: Any) -> list[str]:
    return VALIDATOR.client_problems(json.dumps(message), message) + client_rules(message)


def pcm16k(ulaw: bytes) -> bytes:
    return audioop.ratecv(audioop.ulaw2lin(ulaw, 2), 2, 1, 8000, 16000, None)[0]


def audio_message(pcm: bytes, rate: int = 16000) -> str:
    data = base64.b64encode(pcm).decode()
    return json.dumps({"realtimeInput": {"audio": {"mimeType": f"audio/pcm;rate={rate}", "data": data}}})


CALLER_TURN = pcm16k(speech_like(0.8, seed=3) + silence(0.9))
BARGE_IN = pcm16k(speech_like(0.7, seed=5) + silence(0.9))


# -- the validator alone ---------------------------------------------------------------------


def test_validator_accepts_the_telephony_setup_and_ordinary_messages():
    assert problems(SETUP) == []
    assert problems(json.loads(audio_message(b"\x00\x01" * 160))) == []
    assert problems({"realtimeInput": {"text": "The caller keyed: 4 1 #"}}) == []
    assert (
        problems(
            {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Hi"}]}], "turnComplete": True}}
        )
        == []
    )
    response = {
        "id": "function-call-1",
        "name": "lookup_order",
        "response": {"output": {"status": "shipped"}},
    }
    assert problems({"toolResponse": {"functionResponses": [response]}}) == []


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (snake_setup(), "$.setup.generation_config: snake_case on the wire, send generationConfig"),
        (
            setup_with(realtimeInputConfig={"automatic_activity_detection": {"disabled": False}}),
            "$.setup.realtimeInputConfig.automatic_activity_detection: snake_case",
        ),
        (setup_with(voice="Kore"), "Extra inputs are not permitted"),
        (setup_with(systemInstruction="You are Ava."), "systemInstruction"),
        (setup_with(generationConfig={"responseModalities": ["audio"]}), "not the proto name 'AUDIO'"),
        (setup_with(generationConfig={"responseModalities": ["SPEECH"]}), "unknown enum value"),
        (setup_with(generationConfig={"responseModalities": ["TEXT"]}), 'must be ["AUDIO"]'),
        (setup_with(generationConfig={"responseMimeType": "text/plain"}), "not supported by the Live API"),
        (setup_with(model="gemini-3.8-live"), "models/<id>"),
        (setup_with(proactivity={"proactiveAudio": False}), "proactive audio is always on"),
        (setup_with(generationConfig={"enableAffectiveDialog": True}), "enableAffectiveDialog"),
        (setup_with(generationConfig={"thinkingConfig": {"thinkingLevel": "LOW"}}), "thinkingConfig"),
        (
            setup_with(
                generationConfig={
                    "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "sage"}}}
                }
            ),
            "not a Gemini prebuilt voice",
        ),
        (setup_with(sessionResumption={"transparent": True}), "not on the Gemini API"),
        (setup_with(explicitVadSignal=True), "not on the Gemini API"),
        (setup_with(tools=[{"functionDeclarations": [{"name": "bad name!"}]}]), "not a valid function name"),
        (
            setup_with(
                tools=[
                    {
                        "functionDeclarations": [
                            {
                                "name": "f",
                                "parameters": {"type": "OBJECT"},
                                "parametersJsonSchema": {"type": "object"},
                            }
                        ]
                    }
                ]
            ),
            "mutually exclusive",
        ),
        (
            setup_with(tools=[{"functionDeclarations": [{"name": "f", "parameters": {"type": "object"}}]}]),
            "not the proto name 'OBJECT'",
        ),
        (
            {"realtimeInput": {"mediaChunks": [{"mimeType": "audio/pcm;rate=16000", "data": "AAAA"}]}},
            "mediaChunks is deprecated",
        ),
        ({"realtimeInput": {"audio": {"mimeType": "audio/pcm", "data": "AAAA"}}}, "audio/pcm;rate=N"),
        ({"realtimeInput": {"audio": {"mimeType": "audio/pcm;rate=16000", "data": "AAAA"}}}, "whole 16-bit"),
        ({"realtimeInput": {"text": "a", "audioStreamEnd": True}}, "exactly one of audio"),
        ({"realtime_input": {"text": "a"}}, "$.realtime_input: snake_case on the wire, send realtimeInput"),
        ({"setup": SETUP["setup"], "realtimeInput": {"text": "a"}}, "exactly one of setup"),
        ({"toolResponse": {"functionResponses": [{"name": "f", "response": {}}]}}, "id is required"),
        ({"clientContent": {"turns": [{"role": "system", "parts": [{"text": "x"}]}]}}, "role must be"),
        ({"response.create": {}}, "Extra inputs are not permitted"),
    ],
)
def test_validator_refuses_what_the_service_refuses(message, problem):
    found = problems(message)
    assert any(problem in p for p in found), found


def test_server_messages_are_validated_too():
    good = {"serverContent": {"turnComplete": True}, "usageMetadata": {"promptTokenCount": 1}}
    assert VALIDATOR.server_problems(json.dumps(good), good) == []
    two = {"serverContent": {"turnComplete": True}, "goAway": {"timeLeft": "1s"}}
    assert any("one message type" in p for p in VALIDATOR.server_problems(json.dumps(two), two))
    vertex = {"usageMetadata": {"candidatesTokenCount": 3}}
    assert VALIDATOR.server_problems(json.dumps(vertex), vertex)


# -- over a socket ---------------------------------------------------------------------------


async def client(sim: GeminiSimulator, url: str | None = None, **headers: str) -> ClientConnection:
    return await connect(url or sim.url, additional_headers={**KEY, **headers}, ping_interval=None)


async def receive(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        frame = await ws.recv()
    assert isinstance(frame, bytes), "server messages are binary frames"
    return json.loads(frame)


async def until(
    ws: ClientConnection, done: Callable[[dict[str, Any]], bool], stamps: list[float] | None = None
) -> list[dict[str, Any]]:
    """Every message up to and including the first for which `done(message)` holds."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not messages or not done(messages[-1]):
            messages.append(await receive(ws))
            if stamps is not None:
                stamps.append(time.monotonic())
    return messages


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> tuple[int | None, str | None]:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    rcvd = closed.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, None)


async def start_session(sim: GeminiSimulator, setup: dict[str, Any] | None = None) -> ClientConnection:
    ws = await client(sim)
    await ws.send(json.dumps(setup or SETUP))
    assert await receive(ws) == {"setupComplete": {}}
    return ws


async def speak(ws: ClientConnection, pcm: bytes, chunk_ms: int = 100) -> None:
    step = 32 * chunk_ms
    for i in range(0, len(pcm), step):
        await ws.send(audio_message(pcm[i : i + step]))


def server_content(message: dict[str, Any], key: str) -> Any:
    return (message.get("serverContent") or {}).get(key)


def turn_complete(message: dict[str, Any]) -> bool:
    return bool(server_content(message, "turnComplete"))


def kind_of(message: dict[str, Any]) -> str:
    """The message field, or for serverContent its first field that is set."""
    content = message.get("serverContent")
    if content is None:
        return next((k for k in message if k != "usageMetadata"), "usageMetadata")
    return next(k for k, v in content.items() if v)


async def until_said(ws: ClientConnection, phrase: str) -> list[dict[str, Any]]:
    """Every message until the model's output transcription has said `phrase`."""
    said: list[str] = []

    def done(message: dict[str, Any]) -> bool:
        said.extend(texts([message], "outputTranscription"))
        return phrase in "".join(said)

    return await until(ws, done)


def texts(messages: list[dict[str, Any]], key: str) -> list[str]:
    return [server_content(m, key)["text"] for m in messages if server_content(m, key)]


def audio_bytes(messages: list[dict[str, Any]]) -> tuple[bytes, set[str]]:
    data = b""
    mimes = set()
    for m in messages:
        for part in (server_content(m, "modelTurn") or {}).get("parts", []):
            mimes.add(part["inlineData"]["mimeType"])
            data += base64.b64decode(part["inlineData"]["data"])
    return data, mimes


@pytest.mark.parametrize(
    "bad",
    [
        snake_setup(),
        setup_with(unknownField=True),
        setup_with(systemInstruction="a bare string"),
    ],
)
async def test_off_spec_setups_close_with_1007_and_are_recorded(gemini, bad):
    sim = await gemini()
    ws = await client(sim)
    await ws.send(json.dumps(bad))
    assert await closed_with(ws) == (1007, INVALID_ARGUMENT)
    assert sim.violations


async def test_media_chunks_and_messages_before_setup_close_with_1007(gemini):
    sim = await gemini()
    ws = await start_session(sim)
    await ws.send(
        json.dumps({"realtimeInput": {"mediaChunks": [{"mimeType": "audio/pcm;rate=16000", "data": ""}]}})
    )
    assert await closed_with(ws) == (1007, INVALID_ARGUMENT)
    ws = await client(sim)
    await ws.send(json.dumps({"realtimeInput": {"text": "hello"}}))
    assert await closed_with(ws) == (1007, INVALID_ARGUMENT)
    assert any("mediaChunks" in v for v in sim.violations)
    assert any("before setup" in v for v in sim.violations)
    assert [c.close_code for c in sim.connections] == [1007, 1007]


async def test_wrong_model_bad_key_and_quota_close_with_the_real_codes(gemini):
    sim = await gemini()
    ws = await client(sim)
    await ws.send(json.dumps(setup_with(model="models/gemini-2.0-flash-live-001")))
    code, reason = await closed_with(ws)
    assert code == 1008 and reason.startswith("models/gemini-2.0-flash-live-001 is not found for API version")
    sim.bad_key = True
    ws = await client(sim)
    await ws.send(json.dumps(SETUP))
    assert await closed_with(ws) == (1007, BAD_KEY)
    sim.bad_key, sim.quota_exceeded = False, True
    ws = await client(sim)
    await ws.send(json.dumps(SETUP))
    code, reason = await closed_with(ws)
    assert code == 1011 and "exceeded your current quota" in reason
    assert sim.violations == []


async def test_the_upgrade_needs_a_key_header_and_refuses_on_demand(gemini):
    sim = await gemini()
    with pytest.raises(InvalidStatus) as refused:
        await connect(sim.url, ping_interval=None)
    assert refused.value.response.status_code == 403
    ws = await connect(sim.url + "?key=leaky", ping_interval=None)
    await ws.send(json.dumps(SETUP))
    assert await receive(ws) == {"setupComplete": {}}
    await ws.close()
    assert any("?key=" in v for v in sim.violations)
    sim.refuse_next = 1
    with pytest.raises(InvalidStatus) as unavailable:
        await client(sim)
    assert unavailable.value.response.status_code == 503
    await (await client(sim)).close()
    assert sim.attempts == 4


async def test_a_caller_turn_gets_24khz_audio_faster_than_real_time_with_transcripts_and_usage(gemini):
    script = Script(
        turns=[Turn(say="Your order shipped yesterday and arrives on Monday.", seconds=1.5)],
        caller_transcripts=["where is order forty two"],
    )
    sim = await gemini(script, speed=8.0)
    ws = await start_session(sim)
    await speak(ws, CALLER_TURN)
    stamps: list[float] = []
    messages = await until(
        ws, lambda m: bool((m.get("sessionResumptionUpdate") or {}).get("resumable")), stamps
    )
    kinds = [kind_of(m) for m in messages]
    assert "".join(texts(messages, "inputTranscription")) == "where is order forty two"
    assert (
        "".join(texts(messages, "outputTranscription"))
        == "Your order shipped yesterday and arrives on Monday. "
    )
    chunks = [(t, m) for t, m in zip(stamps, messages, strict=True) if server_content(m, "modelTurn")]
    audio, mimes = audio_bytes([m for _, m in chunks])
    assert mimes == {"audio/pcm;rate=24000"}
    assert abs(len(audio) - 1.5 * 24000 * 2) <= 2 * 48  # 1.5 s of 24 kHz PCM16, whole samples
    assert len({len(audio_bytes([m])[0]) for _, m in chunks}) > 2, "uneven chunks"
    assert chunks[-1][0] - chunks[0][0] < 1.5, "generated faster than real time"
    order = [
        "sessionResumptionUpdate",
        "inputTranscription",
        "modelTurn",
        "generationComplete",
        "turnComplete",
    ]
    assert [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order)
    assert messages[kinds.index("sessionResumptionUpdate")]["sessionResumptionUpdate"] == {}  # generating
    final = messages[-1]["sessionResumptionUpdate"]
    assert final["resumable"] is True and final["newHandle"].startswith("Cg")
    usage = messages[kinds.index("turnComplete")]["usageMetadata"]
    prompt = {d["modality"]: d["tokenCount"] for d in usage["promptTokensDetails"]}
    assert prompt["TEXT"] > 0 and prompt["AUDIO"] > 0
    out_tokens = round(len(audio) / 2 / 24000 * 25)  # 25 tokens a second of audio
    assert usage["responseTokensDetails"] == [{"modality": "AUDIO", "tokenCount": out_tokens}]
    assert sim.usage_sent == [usage]
    totals = sim.usage_totals()
    assert totals["output_audio"] == out_tokens and totals["input_audio"] == prompt["AUDIO"]
    assert totals["input_cached_text"] == totals["input_cached_audio"] == totals["output_text"] == 0
    await ws.close()
    session = sim.sessions[0]
    assert bytes(session.audio_received) == CALLER_TURN and session.state.user_turns == 1
    assert sim.connections[0].close_code == 1000
    assert {direction for _, direction, _ in session.timeline} == {"in", "out"}
    assert not any(server_content(m, "modelTurn") or "realtimeInput" in m for _, _, m in session.timeline)
    assert sim.violations == []


async def test_barge_in_interrupts_the_model_and_the_caller_is_answered(gemini):
    script = Script(
        turns=[Turn(say="A long answer that the caller will talk over.", seconds=3.0), Turn(say="Sure.")]
    )
    sim = await gemini(script, speed=2.0)
    ws = await start_session(sim)
    await speak(ws, CALLER_TURN)
    await until(ws, lambda m: bool(server_content(m, "modelTurn")))
    await speak(ws, BARGE_IN)
    messages = await until_said(ws, "Sure.")
    kinds = [kind_of(m) for m in messages]
    interrupted = kinds.index("interrupted")
    assert kinds[interrupted + 1] == "turnComplete" and "usageMetadata" in messages[interrupted + 1]
    assert "generationComplete" not in kinds[:interrupted], "an interrupted turn has no generationComplete"
    assert len(sim.interruptions) == 1 and sim.interruptions[0].reason == "speech"
    assert sim.interruptions[0].cancelled_ids == ()
    assert sim.sessions[0].state.user_turns == 2
    await ws.close()
    assert sim.violations == []


async def test_a_blocking_call_waits_for_its_response_then_the_turn_continues(gemini):
    script = Script(
        turns=[
            Turn(call="lookup_order", arguments={"order": "42"}),
            Turn(say="It shipped yesterday.", seconds=0.5),
            Turn(call="end_conversation_successfully", arguments={"summary": "order status"}),
        ],
        farewell=Turn(say="Thank you for calling. Goodbye!", seconds=0.5),
    )
    sim = await gemini(script, speed=8.0)
    ws = await start_session(sim)
    await speak(ws, CALLER_TURN)
    messages = await until(ws, lambda m: "toolCall" in m)
    calls = messages[-1]["toolCall"]["functionCalls"]
    assert [(c["name"], c["args"]) for c in calls] == [("lookup_order", {"order": "42"})]
    assert calls[0]["id"].startswith("function-call-")
    standalone = await receive(ws)
    assert list(standalone) == ["usageMetadata"], "a generation ending on a blocking call bills what it used"
    with pytest.raises(TimeoutError):
        await receive(ws, timeout=0.3)  # the model waits
    response = {"id": calls[0]["id"], "name": "lookup_order", "response": {"output": {"status": "shipped"}}}
    await ws.send(json.dumps({"toolResponse": {"functionResponses": [response]}}))
    messages = await until(ws, turn_complete)
    assert "".join(texts(messages, "outputTranscription")) == "It shipped yesterday. "
    assert [kind_of(m) for m in messages][-2:] == ["generationComplete", "turnComplete"]
    # The farewell call: its continuation is the script's farewell.
    await speak(ws, CALLER_TURN)
    call = (await until(ws, lambda m: "toolCall" in m))[-1]["toolCall"]["functionCalls"][0]
    await ws.send(
        json.dumps(
            {
                "toolResponse": {
                    "functionResponses": [{"id": call["id"], "name": call["name"], "response": {}}]
                }
            }
        )
    )
    messages = await until(ws, turn_complete)
    assert "".join(texts(messages, "outputTranscription")) == "Thank you for calling. Goodbye! "
    await ws.close()
    assert [(c.name, c.blocking) for c in sim.function_calls] == [
        ("lookup_order", True),
        ("end_conversation_successfully", True),
    ]
    assert [r["id"] for r in sim.tool_responses] == [calls[0]["id"], call["id"]]
    assert sim.violations == []


@pytest.mark.parametrize("order", [CALL_TURN_ENDS, CALL_TURN_TRAILS])
async def test_a_turn_can_end_with_its_blocking_call_and_the_continuation_come_as_a_new_turn(gemini, order):
    script = Script(
        turns=[Turn(say="Let me look that up.", seconds=1.0, call="lookup_order", arguments={"order": "42"})],
        default=Turn(say="It shipped yesterday.", seconds=0.5),
    )
    sim = await gemini(script, speed=8.0, blocking_call_turn=order)
    ws = await start_session(sim)
    await speak(ws, CALLER_TURN)
    messages = await until(ws, turn_complete)
    kinds = [kind_of(m) for m in messages]
    at = kinds.index("toolCall")
    assert kinds[-2:] == ["generationComplete", "turnComplete"], "the turn ends with the call"
    assert abs(len(audio_bytes(messages)[0]) - 1.0 * 48000) <= 64  # all of what it said before
    trailing = TRAILING_MS * 48 if order == CALL_TURN_TRAILS else 0  # 24 kHz PCM16: 48 bytes a ms
    assert len(audio_bytes(messages[at:])[0]) == trailing
    assert "".join(texts(messages, "outputTranscription")) == "Let me look that up. "
    assert await receive(ws) == {"sessionResumptionUpdate": {}}, "not resumable while the call runs"
    with pytest.raises(TimeoutError):
        await receive(ws, timeout=0.3)  # the continuation waits for the response
    call = messages[at]["toolCall"]["functionCalls"][0]
    response = {"id": call["id"], "name": "lookup_order", "response": {"output": {"status": "shipped"}}}
    await ws.send(json.dumps({"toolResponse": {"functionResponses": [response]}}))
    sent = time.monotonic()
    stamps: list[float] = []
    messages = await until(ws, turn_complete, stamps)
    first_audio = next(t for t, m in zip(stamps, messages, strict=True) if server_content(m, "modelTurn"))
    assert first_audio - sent >= TURNAROUND_SECONDS - 0.05, "a new turn takes the model a moment"
    assert "".join(texts(messages, "outputTranscription")) == "It shipped yesterday. "
    assert [kind_of(m) for m in messages][-2:] == ["generationComplete", "turnComplete"]
    await ws.close()
    assert [(c.name, c.blocking) for c in sim.function_calls] == [("lookup_order", True)]
    assert sim.violations == []
    with pytest.raises(ValueError):
        GeminiSimulator(blocking_call_turn="sometimes")


async def test_unknown_top_level_fields_and_snake_case_names_on_demand(gemini):
    sim = await gemini(Script(default=Turn(say="Hi there.", seconds=0.3)), speed=8.0)
    sim.unknown_field_on_audio = "futureField"
    sim.snake_case_fields = True
    ws = await client(sim)
    await ws.send(json.dumps(SETUP))
    assert await receive(ws) == {"setup_complete": {}}
    await speak(ws, CALLER_TURN)
    messages = await until(ws, lambda m: bool((m.get("server_content") or {}).get("turnComplete")))
    audio = [m for m in messages if "modelTurn" in (m.get("server_content") or {})]
    assert audio and all(set(m) == {"server_content", "future_field"} for m in audio)
    assert "usage_metadata" in messages[-1]
    await ws.close()
    assert sim.violations == [], "what is validated is the canonical form"


async def test_a_wrong_tool_response_closes_with_1007(gemini):
    sim = await gemini(Script(turns=[Turn(call="lookup_order", arguments={"order": "7"})]))
    ws = await start_session(sim)
    await speak(ws, CALLER_TURN)
    call = (await until(ws, lambda m: "toolCall" in m))[-1]["toolCall"]["functionCalls"][0]
    await ws.send(
        json.dumps(
            {
                "toolResponse": {
                    "functionResponses": [{"id": call["id"], "name": "slow_lookup", "response": {}}]
                }
            }
        )
    )
    assert await closed_with(ws) == (1007, INVALID_ARGUMENT)
    assert any("is 'lookup_order', not 'slow_lookup'" in v for v in sim.violations)


async def test_a_non_blocking_call_leaves_the_model_free_and_when_idle_waits_for_the_current_answer(gemini):
    script = Script(
        turns=[
            Turn(say="Let me check.", seconds=0.4, call="slow_lookup", arguments={"q": "42"}),
            Turn(say="Meanwhile, anything else?", seconds=1.0),
            Turn(say="Found it.", seconds=0.4),
        ]
    )
    sim = await gemini(script, speed=4.0)
    ws = await start_session(sim)
    await speak(ws, CALLER_TURN)
    messages = await until(ws, turn_complete)
    kinds = [kind_of(m) for m in messages]
    assert kinds.index("modelTurn") < kinds.index("toolCall") < kinds.index("generationComplete")
    call = messages[kinds.index("toolCall")]["toolCall"]["functionCalls"][0]
    assert (await receive(ws))["sessionResumptionUpdate"] == {}, "not resumable while a call is pending"
    await speak(ws, CALLER_TURN)  # the model is free: it answers the caller
    await until(ws, lambda m: bool(server_content(m, "modelTurn")))
    response = {
        "id": call["id"],
        "name": "slow_lookup",
        "response": {"output": "found"},
        "scheduling": "WHEN_IDLE",
    }
    await ws.send(json.dumps({"toolResponse": {"functionResponses": [response]}}))
    messages = await until_said(ws, "Found it.")
    kinds = [kind_of(m) for m in messages]
    assert "interrupted" not in kinds
    assert "".join(texts(messages, "outputTranscription")).endswith("anything else? Found it. ")
    assert kinds.index("turnComplete") < len(kinds) - 1, "the result is spoken after the current answer"
    await until(ws, lambda m: bool((m.get("sessionResumptionUpdate") or {}).get("resumable")))
    await ws.close()
    assert [(c.name, c.blocking) for c in sim.function_calls] == [("slow_lookup", False)]
    assert sim.violations == []


async def test_speech_during_a_blocking_call_cancels_it_and_a_late_response_is_harmless(gemini):
    sim = await gemini(Script(turns=[Turn(call="lookup_order", arguments={"order": "9"}), Turn(say="Yes?")]))
    ws = await start_session(sim)
    await speak(ws, CALLER_TURN)
    call = (await until(ws, lambda m: "toolCall" in m))[-1]["toolCall"]["functionCalls"][0]
    await speak(ws, BARGE_IN)
    messages = await until(ws, lambda m: "toolCallCancellation" in m)
    assert messages[-1] == {"toolCallCancellation": {"ids": [call["id"]]}}
    assert [kind_of(m) for m in messages][-2] == "interrupted"
    assert turn_complete(await receive(ws))
    late = {"id": call["id"], "name": "lookup_order", "response": {"output": "too late"}}
    await ws.send(json.dumps({"toolResponse": {"functionResponses": [late]}}))
    messages = await until_said(ws, "Yes?")
    await ws.close()
    assert sim.cancellations == [[call["id"]]]
    assert sim.interruptions[0].cancelled_ids == (call["id"],)
    assert sim.violations == []


async def test_go_away_then_deadline_then_resumption_restores_the_conversation(gemini):
    script = Script(
        first=Turn(say="Hello, first answer.", seconds=0.4), turns=[Turn(say="Second answer.", seconds=0.4)]
    )
    sim = await gemini(script, speed=8.0, connection_seconds=2.0, go_away_before=1.0)
    ws = await start_session(sim)
    await speak(ws, CALLER_TURN)
    messages = await until(ws, lambda m: "goAway" in m)
    assert messages[-1] == {"goAway": {"timeLeft": "1s"}}
    handles = [
        u["newHandle"] for m in messages if (u := m.get("sessionResumptionUpdate")) and u.get("resumable")
    ]
    assert handles and "".join(texts(messages, "outputTranscription")) == "Hello, first answer. "
    assert await closed_with(ws) == (1011, DEADLINE)
    ws = await start_session(sim, setup_with(sessionResumption={"handle": handles[-1]}))
    await speak(ws, CALLER_TURN)
    messages = await until(ws, turn_complete)
    assert "".join(texts(messages, "outputTranscription")) == "Second answer. ", "not the first answer again"
    await ws.close()
    assert len(sim.sessions) == 1 and len(sim.sessions[0].connections) == 2
    assert [r.handle for r in sim.resumptions] == [handles[-1]]
    assert sim.sessions[0].state.user_turns == 2
    assert [c.close_code for c in sim.connections] == [1011, 1000]
    assert sim.violations == []


async def test_resuming_while_the_old_socket_is_open_or_with_an_unknown_handle_is_refused(gemini):
    sim = await gemini(Script(turns=[Turn(say="Hi.", seconds=0.3)]), speed=8.0)
    old = await start_session(sim)
    await speak(old, CALLER_TURN)
    update = (await until(old, lambda m: bool((m.get("sessionResumptionUpdate") or {}).get("resumable"))))[-1]
    handle = update["sessionResumptionUpdate"]["newHandle"]
    ws = await client(sim)
    await ws.send(json.dumps(setup_with(sessionResumption={"handle": handle})))
    assert (await closed_with(ws))[0] == 1011
    assert any("still open" in v for v in sim.violations)
    ws = await client(sim)
    await ws.send(json.dumps(setup_with(sessionResumption={"handle": "Cgunknown"})))
    assert await closed_with(ws) == (1007, INVALID_ARGUMENT)
    assert sim.failed_resumptions == ["Cgunknown"]
    await old.close()
    ws = await start_session(sim, setup_with(sessionResumption={"handle": handle}))
    await ws.close()
    assert len(sim.resumptions) == 1
    sim.expire_handles()
    ws = await client(sim)
    await ws.send(json.dumps(setup_with(sessionResumption={"handle": handle})))
    assert await closed_with(ws) == (1007, INVALID_ARGUMENT), "a stale handle"


async def test_text_input_follows_the_documented_heuristic(gemini):
    script = Script(turns=[Turn(say="You keyed four one.", seconds=0.3)])
    sim = await gemini(script, speed=8.0)
    sim.assume_playback = False  # turnComplete right after generationComplete: a faster test
    ws = await start_session(sim)
    greeting = 'Greet the caller with "Welcome to Acme, how can I help?"'
    await ws.send(
        json.dumps(
            {
                "clientContent": {
                    "turns": [{"role": "user", "parts": [{"text": greeting}]}],
                    "turnComplete": True,
                }
            }
        )
    )
    with pytest.raises(TimeoutError):
        await receive(ws, timeout=0.3)  # 3.x runs inference at the next realtime input
    await ws.send(json.dumps({"realtimeInput": {"text": " "}}))
    messages = await until(ws, turn_complete)
    assert "".join(texts(messages, "outputTranscription")) == "Welcome to Acme, how can I help? "
    for text, said in [
        ("The caller keyed on the keypad: 4 1", "You keyed four one. "),
        ("(system) The call is ending now, say goodbye.", "Thank you for calling. Goodbye! "),
        ("Say you are checking.", "One moment, please. "),
    ]:
        await ws.send(json.dumps({"realtimeInput": {"text": text}}))
        messages = await until(ws, turn_complete)
        assert "".join(texts(messages, "outputTranscription")) == said
    await ws.close()
    assert sim.violations == []


async def test_generate_content_stub_answers_the_summary_and_validates_the_request(gemini):
    script = Script(summary_text='{"topics": ["orders"]}')
    sim = await gemini(script)
    url = f"{sim.api_base_url}/v1beta/models/gemini-2.5-flash:generateContent"
    body = {
        "systemInstruction": {"parts": [{"text": "Summarise the call as JSON."}]},
        "contents": [{"role": "user", "parts": [{"text": "Caller: where is my order?"}]}],
        "generationConfig": {"responseMimeType": "application/json", "temperature": 0.2},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers=KEY) as response:
            assert response.status == 200
            answer = await response.json()
        assert answer["candidates"][0]["content"]["parts"][0]["text"] == script.summary_text
        assert answer["candidates"][0]["finishReason"] == "STOP"
        assert answer["usageMetadata"]["candidatesTokensDetails"][0]["modality"] == "TEXT"
        assert answer["modelVersion"] == "gemini-2.5-flash"
        assert sim.violations == []
        async with http.post(
            url, json={"system_instruction": body["systemInstruction"]}, headers=KEY
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"]["status"] == "INVALID_ARGUMENT"
        async with http.post(url, json=body) as response:
            assert response.status == 403
        sim.summary_status = 503
        async with http.post(url, json=body, headers=KEY) as response:
            assert response.status == 503
    assert any("contents is required" in v for v in sim.violations)
    assert any("x-goog-api-key" in v for v in sim.violations)
    assert (
        sim.usage_totals(include_summary=True)["output_text"]
        == answer["usageMetadata"]["candidatesTokenCount"]
    )


async def test_faults_on_demand(gemini):
    sim = await gemini(Script(default=Turn(say="Hi there.", seconds=0.3)), speed=8.0)
    sim.close_with = (1011, "Internal error occurred.")
    ws = await client(sim)
    await ws.send(json.dumps(SETUP))
    assert await receive(ws) == {"setupComplete": {}}
    assert await closed_with(ws) == (1011, "Internal error occurred.")
    sim.malformed_next = "not_json"
    sim.force_mime = "audio/pcm;rate=16000"
    ws = await start_session(sim)
    await speak(ws, CALLER_TURN)
    async with asyncio.timeout(5):
        first = await ws.recv()
    with pytest.raises(ValueError):
        json.loads(first)
    messages = await until(ws, turn_complete)
    audio, mimes = audio_bytes(messages)
    assert mimes == {"audio/pcm;rate=16000"} and abs(len(audio) - 0.3 * 32000) <= 64
    sim.drop_all()
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(3):
            while True:
                await ws.recv()
    sim.drop_on = lambda m: "clientContent" in m
    ws = await start_session(sim)
    await ws.send(json.dumps({"clientContent": {"turns": [], "turnComplete": False}}))
    assert await closed_with(ws) == (None, None), "no close frame: the TCP connection was cut"
    assert [c.close_code for c in sim.connections] == [1011, 1006, 1006]
    assert sim.violations == []


async def test_sampled_audio_checks_still_check_the_first_and_every_nth_and_binary_frames_count(gemini):
    sim = await gemini()
    sim.check_audio_every = 3
    ws = await start_session(sim)
    good = json.loads(audio_message(b"\x00\x00" * 320))
    snake = {
        "realtimeInput": {
            "audio": {"mime_type": "audio/pcm;rate=16000", "data": good["realtimeInput"]["audio"]["data"]}
        }
    }
    await ws.send(json.dumps(good).encode())  # checked (the first); binary frames are accepted
    await ws.send(json.dumps(snake))  # not checked
    await ws.send(json.dumps(snake))  # not checked
    await ws.send(json.dumps(snake))  # checked
    assert await closed_with(ws) == (1007, INVALID_ARGUMENT)
    assert len(sim.connections[0].received) == 5
    assert len(sim.violations) == 1 and "snake_case" in sim.violations[0]


async def test_a_2_5_model_answers_client_content_at_once_and_sends_transcription_apart(gemini):
    script = Script(turns=[Turn(say="One two three.", seconds=0.3)])
    sim = await gemini(script, speed=8.0)
    declarations = SETUP["setup"]["tools"][0]["functionDeclarations"]
    tools = [
        {"functionDeclarations": [{k: v for k, v in d.items() if k != "behavior"} for d in declarations]}
    ]
    ws = await start_session(
        sim, setup_with(model="models/gemini-2.5-flash-native-audio-preview-12-2025", tools=tools)
    )
    turn = {"role": "user", "parts": [{"text": "The caller pressed keypad keys 1 2 3"}]}
    await ws.send(json.dumps({"clientContent": {"turns": [turn], "turnComplete": True}}))
    messages = await until(ws, turn_complete)
    assert "".join(texts(messages, "outputTranscription")) == "One two three. "
    assert not any(
        server_content(m, "modelTurn") and server_content(m, "outputTranscription") for m in messages
    )
    assert sim.connections[0].behaviors["lookup_order"] == "BLOCKING", "2.5 defaults to BLOCKING"
    await ws.close()
    assert sim.violations == []


async def test_manual_activity_signals_need_detection_disabled(gemini):
    sim = await gemini(Script(turns=[Turn(say="Got it.", seconds=0.3)]), speed=8.0)
    manual = setup_with(realtimeInputConfig={"automaticActivityDetection": {"disabled": True}})
    ws = await start_session(sim, manual)
    await ws.send(json.dumps({"realtimeInput": {"activityStart": {}}}))
    await speak(ws, pcm16k(speech_like(0.3)))
    await ws.send(json.dumps({"realtimeInput": {"activityEnd": {}}}))
    messages = await until(ws, turn_complete)
    assert "".join(texts(messages, "outputTranscription")) == "Got it. "
    await ws.close()
    assert sim.violations == []
    ws = await start_session(sim)
    await ws.send(json.dumps({"realtimeInput": {"activityStart": {}}}))
    assert await closed_with(ws) == (1007, INVALID_ARGUMENT)
    assert any("needs automaticActivityDetection.disabled" in v for v in sim.violations)
