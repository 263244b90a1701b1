"""The call core and the Realtime session's decisions, driven with plain event dicts: the session
turns server events into the core's typed events, the core drives the session's commands, and a
fake socket records the client events that would go out. No sockets, no event loop timing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import pytest
from conftest import make_settings

from call_bridge import CallBridge
from metrics import Metrics
from model_backend import ModelFailed, SessionStart, ToolCall, ToolCancelled, Utterance
from openai_client import RealtimeBackend, RealtimeSession
from playout import Cut, Interruption


class FakeLink:
    """The Genesys side: records what the core plays, reports and cuts."""

    def __init__(self) -> None:
        self.played: list[tuple[Utterance, bytes]] = []
        self.cut: Interruption | None = None
        self.barge_ins = 0
        self.busy = False
        self.events: list[dict] = []
        self.clock = 0.0

    def now(self) -> float:
        return self.clock

    def play(self, utterance, audio) -> bool:
        self.played.append((utterance, audio))
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

    async def wait_item_played(self, utterance) -> None:
        return None

    async def disconnect(self, reason, info=None, output_variables=None) -> None:
        return None


class FakeSocket:
    """A model socket: what was sent, decoded."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, frame) -> None:
        self.sent.append(json.loads(frame) if isinstance(frame, str) else frame)

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.sent if e["type"] == type_]

    async def close(self) -> None:
        return None


def attached(
    settings=None, socket_number: int = 1, history=()
) -> tuple[CallBridge, RealtimeSession, FakeSocket]:
    """A core with a Realtime session attached to a fake socket, as after a connect."""
    settings = settings or make_settings()
    link = FakeLink()
    backend = RealtimeBackend(
        vendor="openai",
        label="OpenAI",
        model="gpt-realtime-2.1-mini",
        url="ws://127.0.0.1:9/v1/realtime",
        headers={},
        approval=settings.mcp.approval,
        metrics=Metrics(),
        clock=link.now,
    )
    bridge = CallBridge(link, settings.call_config(None, {}), settings, backend=backend)
    socket = FakeSocket()
    session = RealtimeSession(
        socket, backend.model, clock=link.now, approval=backend.approval, metrics=backend.metrics
    )
    session.begin(SessionStart(bridge.spec, socket_number, history=tuple(history)))
    bridge.socket = socket_number - 1
    bridge._attach(session)
    session._events = bridge.on_event
    session.handle(
        {"type": "session.updated", "session": {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}}
    )
    socket.sent.clear()
    return bridge, session, socket


@pytest.fixture
def pair():
    return attached()


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


def speech_started() -> dict:
    return {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "item_u"}


def test_caller_audio_goes_out_as_appends_or_waits_in_a_bounded_buffer(pair):
    bridge, _session, socket = pair
    bridge.on_audio(b"\x01\x02")
    assert socket.sent == [
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02").decode()}
    ]
    bridge.session = None  # between sockets
    bridge.on_audio(b"\x03" * 50_000)
    bridge.on_audio(b"\x04" * 50_000)
    assert len(bridge._pending_audio) == 80_000 and bridge._pending_audio[-1] == 4


def test_audio_deltas_are_played_tagged_with_their_utterance(pair):
    bridge, session, _socket = pair
    session.handle(created("resp_1"))
    session.handle(delta("resp_1", "item_1", b"\x05" * 800))
    ((utterance, audio),) = bridge.link.played
    assert utterance.key == "item_1" and audio == b"\x05" * 800 and utterance.received_bytes == 800


def test_barge_in_truncates_at_heard_clamped_to_received_and_drops_late_deltas(pair):
    bridge, session, socket = pair
    session.handle(created("resp_1"))
    session.handle(delta("resp_1", "item_1", b"\x05" * 8000))  # 1000 ms received
    utterance = bridge.link.played[0][0]
    bridge.link.cut = Interruption((Cut(utterance, heard_ms=1400, sent_ms=1000),), 0)
    session.handle(speech_started())
    assert socket.sent[-1] == {
        "type": "conversation.item.truncate",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1000,
    }
    session.handle(delta("resp_1", "item_1", b"\x06" * 800))
    assert len(bridge.link.played) == 1
    assert not socket.of("response.cancel") and not socket.of("response.create")


def test_speech_while_silent_sends_no_truncate(pair):
    bridge, session, socket = pair
    session.handle(speech_started())
    assert bridge.link.barge_ins == 1 and socket.sent == []


def test_items_of_a_replaced_session_are_not_truncated(pair):
    bridge, session, socket = pair
    old = Utterance("item_old", socket=0)  # the pacer still plays audio of the socket before
    old.received_bytes = 800
    bridge.link.cut = Interruption((Cut(old, heard_ms=50, sent_ms=100),), 0)
    session.handle(speech_started())
    assert socket.sent == [] and old.stale and old.heard_ms == 50


def test_usage_is_summed_over_every_response_done_including_cancelled_and_out_of_band(pair):
    bridge, session, _socket = pair
    usage = {
        "input_token_details": {
            "text_tokens": 10,
            "audio_tokens": 5,
            "cached_tokens_details": {"text_tokens": 4, "audio_tokens": 1},
        },
        "output_token_details": {"text_tokens": 2, "audio_tokens": 20},
    }
    session.handle(created("resp_1"))
    session.handle(
        {"type": "response.done", "response": {"id": "resp_1", "status": "cancelled", "usage": usage}}
    )
    session.handle(
        {
            "type": "response.created",
            "response": {"id": "resp_2", "conversation_id": None, "metadata": {"purpose": "summary"}},
        }
    )
    session.handle(
        {"type": "response.done", "response": {"id": "resp_2", "status": "completed", "usage": usage}}
    )
    assert (bridge.usage.input_text, bridge.usage.output_audio, bridge.usage.input_cached_audio) == (
        20,
        40,
        2,
    )


def test_a_greeting_refused_because_a_vad_answer_won_the_race_is_sent_after_it(pair):
    _bridge, session, socket = pair
    session.say("greeting", "x")
    (greeting,) = socket.of("response.create")
    session.handle(created("resp_vad"))  # the server's own: it carries no request id
    session.handle(
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
    socket.sent.clear()
    session.handle({"type": "response.done", "response": {"id": "resp_vad", "status": "completed"}})
    assert socket.sent == [greeting]


def test_echoes_of_restored_items_never_evict_real_turns():
    bridge, session, _socket = attached()
    for n in range(120):
        item = {"id": f"item_u{n}", "type": "message", "role": "user", "content": []}
        session.handle({"type": "conversation.item.added", "item": item})
        session.handle(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": f"item_u{n}",
                "transcript": f"turn {n}",
            }
        )
    first = FakeSocket()
    restored = RealtimeSession(
        first, "m", clock=bridge.link.now, approval=session.approval, metrics=session.metrics
    )
    restored._events = bridge.on_event
    restored.begin(SessionStart(bridge.spec, 2, history=tuple(bridge.transcript.turns())))
    items = [e["item"] for e in first.of("conversation.item.create")]
    for item in items:  # the new socket echoes every restored item
        restored.handle({"type": "conversation.item.added", "item": item})
    assert [t for _, t in bridge.transcript.turns()] == [f"turn {n}" for n in range(120)]
    assert all(len(i["id"]) <= 32 for i in items)


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
            "error": {"type": "invalid_request_error", "code": "beta_api_shape_disabled", "message": "."},
        },
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "code": "insufficient_quota", "message": "."},
        },
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_value",
                "message": ".",
                "event_id": "session-update-1",
            },
        },
    ],
)
def test_fatal_conditions_end_the_call(pair, event):
    _bridge, session, _socket = pair
    with pytest.raises(ModelFailed):
        session.handle(event)


def test_audio_before_the_format_is_confirmed_is_refused(pair):
    bridge, session, _socket = pair
    session.format_ok = False
    with pytest.raises(ModelFailed):
        session.handle(delta("resp_1", "item_1", b"\x01"))
    assert bridge.link.played == []


def test_non_fatal_errors_do_not_raise(pair):
    _bridge, session, _socket = pair
    for code, message in [
        ("response_cancel_not_active", "x"),
        (None, "Audio content of 1ms is already shorter than 2ms"),
        ("server_error", "oops"),
        ("invalid_value", "a refused tools update"),
    ]:
        event_id = "tools-update-1" if code == "invalid_value" else None
        session.handle(
            {
                "type": "error",
                "error": {"type": "server_error", "code": code, "message": message, "event_id": event_id},
            }
        )


def test_rate_limits_are_recorded(pair):
    _bridge, session, _socket = pair
    limits = [{"name": "tokens", "limit": 100, "remaining": 50, "reset_seconds": 1.0}]
    session.handle({"type": "rate_limits.updated", "rate_limits": limits})
    assert session.rate_limits == limits


def test_the_recycle_comes_before_expiry_by_the_session_s_own_stamps(pair):
    _bridge, session, _socket = pair
    session.handle({"type": "session.created", "session": {"expires_at": int(time.time()) + 3600}})
    assert session.recycle_at == 3600 - 120  # no created_at: the documented lifetime
    session.handle({"type": "session.created", "session": {"created_at": 10, "expires_at": 410}})
    assert session.recycle_at == 400 - 100  # a quarter of a short lifetime


def test_every_id_the_session_creates_is_at_most_32_characters():
    _bridge, session, socket = attached(socket_number=123456)
    session.note("x")
    session.user_input("1 2 3")
    session.say("filler", "y")
    ids = [e.get("event_id") for e in socket.sent] + [
        e["item"].get("id") for e in socket.of("conversation.item.create")
    ]
    assert ids and all(len(i) <= 32 for i in ids if i)


# -- the second review: the core across sockets and at the end -----------------------------------


def attach_another(bridge: CallBridge) -> tuple[RealtimeSession, FakeSocket]:
    """The next socket of the same call, confirmed (as after a reconnect)."""
    socket = FakeSocket()
    session = RealtimeSession(
        socket,
        bridge.backend.model,
        clock=bridge.link.now,
        approval=bridge.backend.approval,
        metrics=Metrics(),
    )
    session.begin(SessionStart(bridge.spec, bridge.socket + 1))
    bridge._attach(session)
    session._events = bridge.on_event
    socket.sent.clear()
    session.handle(
        {"type": "session.updated", "session": {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}}
    )
    return session, socket


def test_the_farewell_is_asked_for_once_on_a_socket_even_if_it_confirms_after_the_ending_began(pair):
    from call_control import limit_outcome

    bridge, session, socket = pair
    bridge.finish(limit_outcome("the call reached its maximum length"))
    bridge._on_ready()  # the same socket says it is ready (a limit during a reconnect)
    locks = [e for e in socket.of("session.update") if e["event_id"].startswith("cx1lock")]
    assert len(locks) == 1
    assert session.gate.queued is None  # no second goodbye waiting for the first


def test_digits_keyed_while_no_socket_is_attached_reach_the_next_one_as_user_input(pair):
    bridge, _session, _socket = pair
    bridge.session = None  # the socket dropped; the next one resumes, with no history sent
    bridge.on_dtmf("4")
    bridge.on_dtmf("2")
    bridge.on_dtmf("#")
    _new, socket = attach_another(bridge)
    texts = [
        part["text"]
        for e in socket.of("conversation.item.create")
        if e["item"]["role"] == "user"
        for part in e["item"]["content"]
    ]
    assert texts == ["The caller entered 4 2 on the keypad."]
    assert [t for t in bridge.transcript.turns() if "4 2" in t[1]] == [("user", texts[0])]


def test_an_answer_asked_for_before_the_caller_began_is_cancelled_once_created(pair):
    _bridge, session, socket = pair
    session.tool_result("call_1", "{}")
    (request,) = socket.of("response.create")
    session.handle(speech_started())  # the caller starts before the response exists
    metadata = request["response"]["metadata"]
    session.handle(created("resp_1", metadata=metadata))
    assert [e.get("response_id") for e in socket.of("response.cancel")] == ["resp_1"]


def test_the_silence_closing_a_paused_turn_is_not_counted_as_the_caller_s_audio(pair):
    bridge, session, _socket = pair
    bridge.on_audio(b"\x10" * 8000)
    session.handle(speech_started())
    bridge.on_pause()  # the caller was speaking: the session closes their turn with silence
    bridge.on_resume()
    bridge.on_audio(b"\x10" * 4000)
    session.handle({**speech_started(), "audio_start_ms": (8000 + 6400 + 800) // 8})
    assert bridge._speech_start_byte == 8000 + 800  # where it is in what the caller sent


class SlowTools:
    """Data Actions that answer when the test says so."""

    def __init__(self) -> None:
        self.answers: dict[str, asyncio.Future[tuple[str, bool]]] = {}

    def handles(self, name: str) -> bool:
        return name.startswith("genesys_data_action_")

    async def run(self, name: str, raw_arguments: str) -> tuple[str, bool]:
        self.answers[name] = asyncio.get_running_loop().create_future()
        return await self.answers[name]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def with_slow_tools(settings=None) -> tuple[CallBridge, RealtimeSession, FakeSocket, SlowTools]:
    bridge, session, socket = attached(settings)
    tools = SlowTools()
    bridge.data_tools = tools
    return bridge, session, socket, tools


@contextlib.asynccontextmanager
async def call_tasks(bridge: CallBridge):
    """The bridge's task group, as its `run` would own it."""
    async with asyncio.TaskGroup() as tg:
        bridge._tg = tg
        yield
        bridge._tg = None


async def test_a_tool_still_running_for_a_replaced_socket_does_not_hold_the_new_socket_s_answer():
    bridge, _session, _socket, tools = with_slow_tools()
    async with call_tasks(bridge):
        bridge.on_event(ToolCall("call_a", "genesys_data_action_slow", "{}"))
        await settle()
        _new, socket = attach_another(bridge)  # socket 1 dropped with the slow tool running
        bridge.on_event(ToolCall("call_b", "genesys_data_action_fast", "{}"))
        await settle()
        tools.answers["genesys_data_action_fast"].set_result(('{"ok": true}', True))
        await settle()
        assert len(socket.of("response.create")) == 1  # the model answers the fast result now
        tools.answers["genesys_data_action_slow"].set_result(('{"ok": true}', True))
        await settle()


async def test_a_tool_result_after_the_ending_began_never_asks_for_another_answer():
    from call_control import outcome_from_tool

    bridge, session, socket, tools = with_slow_tools()
    async with call_tasks(bridge):
        bridge.on_event(ToolCall("call_a", "genesys_data_action_slow", "{}"))
        await settle()
        bridge._tg = None  # the ending's own tasks (summary, disconnect) are not this test's
        bridge.finish(outcome_from_tool("end_conversation_successfully", {"summary": "done"}))
        tools.answers["genesys_data_action_slow"].set_result(('{"ok": true}', True))
        await settle()
    outputs = [
        e["item"]["call_id"]
        for e in socket.of("conversation.item.create")
        if e["item"]["type"] == "function_call_output"
    ]
    assert outputs == ["call_a"]  # the model's conversation gets the result all the same
    assert [purpose_of(e) for e in socket.of("response.create")] == ["farewell"]
    assert session.gate.queued is None


def purpose_of(event: dict) -> str | None:
    return ((event.get("response") or {}).get("metadata") or {}).get("purpose")


async def test_limits_do_not_spin_while_the_stream_is_paused_past_the_maximum_length():
    settings = make_settings(MAX_CALL_DURATION_SECONDS="1")
    bridge, session, _socket = attached(settings)
    ticks = []
    session.tick = lambda: ticks.append(1)
    bridge.link.clock = 5.0  # past the maximum length
    bridge.on_pause()
    watcher = asyncio.create_task(bridge._watch_limits())
    await asyncio.sleep(0.3)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    assert bridge.outcome is None  # no farewell into a paused stream
    assert len(ticks) <= 2


async def test_a_tool_call_the_model_cancels_stops_with_no_holding_phrase_and_no_result():
    bridge, _session, socket, tools = with_slow_tools(make_settings(TOOL_FILLER_AFTER_MS="100"))
    async with call_tasks(bridge):
        bridge.on_event(ToolCall("call_a", "genesys_data_action_slow", "{}"))
        await settle()
        bridge.on_event(ToolCancelled(("call_a",)))  # the caller cut in; the model withdrew it
        await asyncio.sleep(0.3)  # past the holding phrase's moment
    assert tools.answers["genesys_data_action_slow"].cancelled()  # the Data Action's work stopped
    assert socket.of("response.create") == []  # no holding phrase
    assert socket.of("conversation.item.create") == []  # no result handed over
    assert bridge._tools_running == 0
