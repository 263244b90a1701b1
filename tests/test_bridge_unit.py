"""The bridge's decisions, driven with plain event dicts (no sockets)."""

from __future__ import annotations

import base64
import json

import pytest
from conftest import make_settings

from call_bridge import CallBridge, CallFailed
from playout import Cut, Interruption


class FakeLink:
    def __init__(self) -> None:
        self.played: list[tuple[str, str, bytes]] = []
        self.cut: Interruption | None = None
        self.barge_ins = 0
        self.busy = False
        self.events: list[dict] = []

    def now(self) -> float:
        return 0.0

    def play(self, response_id, item_id, audio) -> bool:
        self.played.append((response_id, item_id, audio))
        return True

    def barge_in(self):
        self.barge_ins += 1
        return self.cut

    def audio_busy(self) -> bool:
        return self.busy

    def send_event(self, entity) -> None:
        self.events.append(entity)

    async def wait_played(self) -> None:
        return None

    async def disconnect(self, reason, info=None, output_variables=None) -> None:
        return None


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, event) -> None:
        self.sent.append(json.loads(event) if isinstance(event, str) else event)


@pytest.fixture
def bridge():
    settings = make_settings()
    b = CallBridge(FakeLink(), settings.call_config(None, {}), settings)
    b.conn = FakeConn()
    b.ready = True
    b.generation = 1
    b.format_ok = True
    return b


def delta(response_id: str, item_id: str, audio: bytes) -> dict:
    return {
        "type": "response.output_audio.delta",
        "response_id": response_id,
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(audio).decode(),
    }


def created(response_id: str, **extra) -> dict:
    return {"type": "response.created", "response": {"id": response_id, "conversation_id": "conv_1", **extra}}


def test_caller_audio_goes_out_as_appends_or_waits_in_a_bounded_buffer(bridge):
    bridge.on_audio(b"\x01\x02")
    assert bridge.conn.sent == [
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02").decode()}
    ]
    bridge.ready = False
    bridge.on_audio(b"\x03" * 50_000)
    bridge.on_audio(b"\x04" * 50_000)
    assert len(bridge._pending_audio) == 80_000 and bridge._pending_audio[-1] == 4


def test_audio_deltas_are_played_tagged_with_their_response_and_item(bridge):
    bridge.handle(created("resp_1"))
    bridge.handle(delta("resp_1", "item_1", b"\x05" * 800))
    assert bridge.link.played == [("resp_1", "item_1", b"\x05" * 800)]


def test_barge_in_truncates_at_heard_clamped_to_received_and_drops_late_deltas(bridge):
    bridge.handle(created("resp_1"))
    bridge.handle(delta("resp_1", "item_1", b"\x05" * 8000))  # 1000 ms received
    bridge.link.cut = Interruption((Cut("resp_1", "item_1", heard_ms=1400, sent_ms=1000),), 0)
    bridge.handle({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "item_u"})
    assert bridge.conn.sent[-1] == {
        "type": "conversation.item.truncate",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1000,
    }
    bridge.handle(delta("resp_1", "item_1", b"\x06" * 800))
    assert len(bridge.link.played) == 1
    assert not any(e["type"] in ("response.cancel", "response.create") for e in bridge.conn.sent)


def test_speech_while_silent_sends_no_truncate(bridge):
    bridge.handle({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "item_u"})
    assert bridge.link.barge_ins == 1 and bridge.conn.sent == []


def test_items_of_a_replaced_session_are_not_truncated(bridge):
    bridge.handle(created("resp_1"))
    bridge.handle(delta("resp_1", "item_old", b"\x05" * 800))
    bridge.generation = 2  # the socket was replaced; the pacer still plays the old audio
    bridge.link.cut = Interruption((Cut("resp_1", "item_old", heard_ms=50, sent_ms=100),), 0)
    bridge.handle({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u"})
    assert bridge.conn.sent == []


def test_usage_is_summed_over_every_response_done_including_cancelled_and_out_of_band(bridge):
    usage = {
        "input_token_details": {
            "text_tokens": 10,
            "audio_tokens": 5,
            "cached_tokens_details": {"text_tokens": 4, "audio_tokens": 1},
        },
        "output_token_details": {"text_tokens": 2, "audio_tokens": 20},
    }
    bridge.handle(created("resp_1"))
    bridge.handle(
        {"type": "response.done", "response": {"id": "resp_1", "status": "cancelled", "usage": usage}}
    )
    bridge.handle(
        {
            "type": "response.created",
            "response": {"id": "resp_2", "conversation_id": None, "metadata": {"purpose": "summary"}},
        }
    )
    bridge.handle(
        {"type": "response.done", "response": {"id": "resp_2", "status": "completed", "usage": usage}}
    )
    assert (
        bridge.usage.input_text == 20
        and bridge.usage.output_audio == 40
        and bridge.usage.input_cached_audio == 2
    )


def test_a_greeting_refused_because_a_vad_answer_won_the_race_is_sent_after_it(bridge):
    bridge._request("greeting", "x")
    (greeting,) = [e for e in bridge.conn.sent if e["type"] == "response.create"]
    bridge.handle(created("resp_vad"))  # the server's own: it carries no request id
    bridge.handle(
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "conversation_already_has_active_response",
                "message": "...",
                "event_id": greeting["event_id"],
            },
        }
    )
    bridge.conn.sent.clear()
    bridge.handle({"type": "response.done", "response": {"id": "resp_vad", "status": "completed"}})
    assert bridge.conn.sent == [greeting]


def test_echoes_of_restored_items_never_evict_real_turns(bridge):
    for n in range(120):
        item = {"id": f"item_u{n}", "type": "message", "role": "user", "content": []}
        bridge.handle({"type": "conversation.item.added", "item": item})
        bridge.handle(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": f"item_u{n}",
                "transcript": f"turn {n}",
            }
        )

    def restore() -> list[dict]:
        bridge.conn = None
        conn = FakeConn()
        bridge._attach(conn)
        return [e["item"] for e in conn.sent if e["type"] == "conversation.item.create"]

    first = restore()
    for item in first:  # the new socket echoes every restored item
        bridge.handle({"type": "conversation.item.added", "item": item})
    second = restore()
    assert [i["content"][0]["text"] for i in second] == [f"turn {n}" for n in range(120)]
    assert all(len(i["id"]) <= 32 for i in first + second)


@pytest.mark.parametrize(
    "event",
    [
        {
            "type": "session.updated",
            "session": {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}}},
        },
        created("resp_1", audio={"output": {"format": {"type": "audio/pcma"}}}),
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "code": "beta_api_shape_disabled", "message": "..."},
        },
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_value",
                "message": "...",
                "event_id": "session-update-1",
            },
        },
    ],
)
def test_fatal_conditions_end_the_call(bridge, event):
    with pytest.raises(CallFailed):
        bridge.handle(event)


def test_audio_before_the_format_is_confirmed_is_refused(bridge):
    bridge.format_ok = False
    with pytest.raises(CallFailed):
        bridge.handle(delta("resp_1", "item_1", b"\x01"))
    assert bridge.link.played == []


def test_non_fatal_errors_do_not_raise(bridge):
    for code, message in [
        ("response_cancel_not_active", "x"),
        (None, "Audio content of 1ms is already shorter than 2ms"),
        ("server_error", "oops"),
    ]:
        bridge.handle({"type": "error", "error": {"type": "server_error", "code": code, "message": message}})


def test_rate_limits_are_recorded(bridge):
    limits = [{"name": "tokens", "limit": 100, "remaining": 50, "reset_seconds": 1.0}]
    bridge.handle({"type": "rate_limits.updated", "rate_limits": limits})
    assert bridge.rate_limits == limits


def test_session_created_schedules_a_recycle_before_expiry(bridge):
    import time

    bridge.handle({"type": "session.created", "session": {"expires_at": int(time.time()) + 3600}})
    assert 3600 - 121 <= bridge._recycle_at - bridge.link.now() <= 3600 - 119
