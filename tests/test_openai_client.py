"""The OpenAI protocol pieces: session.update shape, client events, usage, the response gate, transcript."""

from __future__ import annotations

import base64
import json

import pytest

from model_backend import Transcript, Usage, Utterance
from openai_client import (
    RealtimeConfig,
    Request,
    ResponseGate,
    append_audio,
    assistant_text,
    function_output,
    lock_turns,
    realtime_url,
    realtime_usage,
    response_cancel,
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
        response_create("cx1r1"),
        response_create("cx1r2", "farewell", instructions="Say bye."),
        response_create("cx1s3", "summary", instructions="Summarize.", out_of_band=True, text_only=True),
        response_cancel("resp_1"),
        function_output("call_1", '{"ok": true}'),
        user_text("The caller keyed 1234#", "cx1k4"),
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
        realtime_usage(
            {
                "input_token_details": {
                    "text_tokens": 119,
                    "audio_tokens": 13,
                    "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0},
                },
                "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
            }
        )
    )
    usage.add(realtime_usage({"input_token_details": {"text_tokens": 1}}))
    usage.add(realtime_usage(None))
    usage.add(realtime_usage({"output_token_details": {"audio_tokens": "7"}}))
    assert usage.as_variables() == {
        "TOTAL_INPUT_TEXT_TOKENS": "120",
        "TOTAL_INPUT_CACHED_TEXT_TOKENS": "64",
        "TOTAL_INPUT_AUDIO_TOKENS": "13",
        "TOTAL_INPUT_CACHED_AUDIO_TOKENS": "0",
        "TOTAL_OUTPUT_TEXT_TOKENS": "30",
        "TOTAL_OUTPUT_AUDIO_TOKENS": "91",
        "TOTAL_BILLED_SECONDS": "0",
    }


def request(n: int, purpose: str = "answer") -> Request:
    request_id = f"cx1r{n}"
    return Request(request_id, purpose, response_create(request_id, purpose))


def test_own_phrases_never_call_tools_and_every_create_carries_its_request_id():
    farewell = response_create("cx1r7", "farewell", instructions="bye")
    assert farewell["event_id"] == "cx1r7" and farewell["response"]["metadata"]["request"] == "cx1r7"
    assert farewell["response"]["tool_choice"] == "none"
    assert "tool_choice" not in response_create("cx1r8")["response"]


def test_gate_sends_one_response_at_a_time_and_matches_responses_by_request_id():
    gate = ResponseGate()
    first, second = request(1, "greeting"), request(2)
    assert gate.request(first, 0.0) is first
    assert gate.request(second, 0.0) is None  # waits: the first is in flight
    assert gate.created("resp_vad", None) is None  # a server response: ours is still in flight
    assert gate.in_flight is first
    assert gate.created("resp_1", "cx1r1") is first
    assert gate.done("resp_other", 0.0) is None
    assert gate.done("resp_1", 0.0) is None  # the plain one was dropped: VAD's answer saw it
    assert not gate.busy


def test_gate_keeps_an_instructed_request_that_lost_the_race_and_drops_a_refused_one():
    gate = ResponseGate()
    farewell = request(1, "farewell")
    assert gate.request(farewell, 0.0) is farewell
    gate.created("resp_vad", None)
    assert gate.refused("cx1r1", "conversation_already_has_active_response", 0.1) is None
    assert gate.done("resp_vad", 0.2) is farewell  # re-queued, sent after the VAD answer
    gate.created("resp_f", "cx1r1")
    gate.done("resp_f", 0.3)
    digits = request(2)
    assert gate.request(digits, 0.4) is digits
    assert gate.refused("cx1r2", "invalid_value", 0.5) is None  # refused for good: not wedged
    assert not gate.busy
    later = request(3)
    assert gate.request(later, 0.6) is later


def test_gate_holds_requests_while_the_caller_speaks():
    gate = ResponseGate()
    gate.speech_started()
    assert gate.request(request(1), 0.0) is None
    assert gate.speech_stopped(0.5) is None  # plain: turn detection answers the caller
    gate.speech_started()
    farewell = request(2, "farewell")
    assert gate.request(farewell, 1.0) is None
    assert gate.speech_stopped(1.5) is farewell  # instructed: sent once the caller stops


def test_gate_gives_up_a_request_never_answered():
    gate = ResponseGate()
    gate.request(request(1, "greeting"), 0.0)
    queued = request(2, "filler")
    gate.request(queued, 0.1)
    assert gate.expire(1.0) is None
    assert gate.expire(10.0) is queued
    assert gate.reset() is True and not gate.busy


def test_transcript_keeps_conversation_order_and_what_was_heard():
    t = Transcript()
    t.caller("u1")
    answer = Utterance("a1")
    t.bot(answer)
    answer.text, answer.received_bytes = "one two three four", 8000
    t.caller("u1", "hello")  # transcription arrives after the answer
    answer.heard_ms = 500  # a barge-in: the caller heard half of it
    assert t.turns() == [("user", "hello"), ("assistant", "one two")]
    assert t.as_text() == "Caller: hello\nAssistant: one two"
    events = [user_text("hello", "cx2h1"), assistant_text("one two", "cx2h2")]
    for e in events:
        valid(e)
