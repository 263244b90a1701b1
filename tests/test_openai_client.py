"""The OpenAI protocol pieces: session.update shape, client events, usage, the response gate, transcript."""

from __future__ import annotations

import base64
import json

import pytest

from openai_client import (
    RealtimeConfig,
    ResponseGate,
    Transcript,
    Usage,
    append_audio,
    function_output,
    history_events,
    lock_turns,
    realtime_url,
    response_create,
    session_update,
    truncate,
    user_text,
)
from simulators.realtime_simulator import RealtimeValidator

VALIDATOR = RealtimeValidator()


def valid(event) -> None:
    assert VALIDATOR.problems(event) == []


CONFIG = RealtimeConfig(model="gpt-realtime-2.1-mini", voice="marin", instructions="Be brief.")


@pytest.mark.parametrize(
    "cfg",
    [
        CONFIG,
        RealtimeConfig(
            model="gpt-realtime",
            voice="sage",
            instructions="x",
            turn_detection="server_vad",
            vad_threshold=0.7,
            vad_silence_ms=600,
            vad_prefix_padding_ms=200,
            transcription_model=None,
            noise_reduction=None,
            max_output_tokens=512,
            tools=(
                {
                    "type": "function",
                    "name": "f",
                    "description": "d",
                    "parameters": {"type": "object", "properties": {}},
                },
            ),
        ),
        RealtimeConfig(
            model="gpt-realtime-2",
            voice="cedar",
            instructions="",
            vad_eagerness="high",
            transcription_language="de",
            noise_reduction="far_field",
            tools=(
                {
                    "type": "mcp",
                    "server_label": "crm",
                    "server_url": "https://mcp.example.com/mcp",
                    "allowed_tools": ["lookup"],
                    "require_approval": "never",
                    "headers": {"X-Tenant": "t"},
                },
            ),
        ),
    ],
)
def test_session_update_is_the_ga_shape_and_validates_strictly(cfg):
    event = session_update(cfg, event_id="session-update-1")
    valid(event)
    session = event["session"]
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": cfg.voice}
    assert session["tool_choice"] == "auto"
    assert "temperature" not in json.dumps(event) and "modalities" not in {
        k for k in session if k != "output_modalities"
    }


def test_turn_detection_and_input_settings_follow_the_config():
    semantic = session_update(CONFIG, event_id="e")["session"]["audio"]["input"]
    assert semantic["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }
    assert semantic["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert semantic["noise_reduction"] == {"type": "near_field"}
    server = RealtimeConfig(
        model="m",
        voice="sage",
        instructions="",
        turn_detection="server_vad",
        transcription_model=None,
        noise_reduction=None,
    )
    audio_input = session_update(server, event_id="e")["session"]["audio"]["input"]
    assert audio_input["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }
    assert audio_input["transcription"] is None and audio_input["noise_reduction"] is None


def test_lock_turns_stops_speech_from_cutting_or_creating_responses():
    event = lock_turns(CONFIG, event_id="lock-1")
    valid(event)
    td = event["session"]["audio"]["input"]["turn_detection"]
    assert td["interrupt_response"] is False and td["create_response"] is False
    assert "voice" not in json.dumps(event)


def test_client_events_validate():
    raw = append_audio(b"\xff\x7f\x00")
    event = json.loads(raw)
    assert base64.b64decode(event["audio"]) == b"\xff\x7f\x00"
    for e in (
        event,
        truncate("item_1", 1234.7),
        response_create(),
        response_create(instructions="Say bye.", purpose="farewell"),
        response_create(instructions="Summarize.", purpose="summary", out_of_band=True, text_only=True),
        function_output("call_1", '{"ok": true}'),
        user_text("The caller keyed 1234#"),
    ):
        valid(e)
    assert truncate("i", -5)["audio_end_ms"] == 0


def test_realtime_url_sets_the_model_query():
    assert (
        realtime_url("wss://api.openai.com/v1/realtime", "gpt-realtime")
        == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )
    assert realtime_url("ws://h/v1/realtime?model=old&x=1", "new") == "ws://h/v1/realtime?x=1&model=new"


def test_usage_sums_every_field_and_tolerates_missing_ones():
    usage = Usage()
    usage.add(
        {
            "input_token_details": {
                "text_tokens": 119,
                "audio_tokens": 13,
                "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0},
            },
            "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
        }
    )
    usage.add({"input_token_details": {"text_tokens": 1}})
    usage.add(None)
    usage.add({"output_token_details": {"audio_tokens": "7"}})
    assert usage.as_variables() == {
        "TOTAL_INPUT_TEXT_TOKENS": "120",
        "TOTAL_INPUT_CACHED_TEXT_TOKENS": "64",
        "TOTAL_INPUT_AUDIO_TOKENS": "13",
        "TOTAL_INPUT_CACHED_AUDIO_TOKENS": "0",
        "TOTAL_OUTPUT_TEXT_TOKENS": "30",
        "TOTAL_OUTPUT_AUDIO_TOKENS": "91",
    }


def test_gate_sends_one_response_at_a_time():
    gate = ResponseGate()
    first = response_create(instructions="greet", purpose="greeting")
    assert gate.request(first) is first
    assert gate.request(response_create()) is None  # waits: the first is in flight
    gate.created("resp_1")
    assert gate.busy
    assert gate.done("resp_other") is None
    queued = gate.done("resp_1")
    assert queued == response_create()
    gate.created("resp_2")
    assert gate.done("resp_2") is None and not gate.busy


def test_gate_drops_a_plain_request_when_the_server_starts_a_response_itself():
    gate = ResponseGate()
    gate.created("resp_vad")  # server VAD started one
    assert gate.request(response_create()) is None
    gate.done("resp_vad")  # the queued plain request goes out now
    gate.created("resp_ours")
    gate.done("resp_ours")
    gate.created("resp_vad2")
    gate.request(response_create())
    gate.created("resp_vad3")  # another server response while ours is queued: drop ours
    assert gate.done("resp_vad3") is None


def test_gate_keeps_an_instructed_request_and_retries_after_rejection():
    gate = ResponseGate()
    farewell = response_create(instructions="bye", purpose="farewell")
    assert gate.request(farewell) is farewell
    gate.rejected()  # conversation_already_has_active_response
    gate.created("resp_vad")
    assert gate.done("resp_vad") is farewell
    assert gate.reset() is True and not gate.busy


def test_transcript_keeps_conversation_order_and_cuts_unheard_text():
    t = Transcript()
    t.add_item("u1", "user")
    t.add_item("a1", "assistant")
    t.set_text("a1", "assistant", "one two three four")
    t.set_text("u1", "user", "hello")  # transcription arrives after the answer
    t.cut("a1", 0.5)
    assert t.turns() == [("user", "hello"), ("assistant", "one two")]
    assert t.as_text() == "Caller: hello\nAssistant: one two"
    events = history_events(t)
    for e in events:
        valid(e)
    assert [e["item"]["role"] for e in events] == ["user", "assistant"]
