"""The voice path end to end: call simulator -> connector -> Realtime simulator, real sockets."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from conftest import API_KEY, ws_url

from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.script import Script, Turn


def caller(*segments: tuple[str, float]) -> bytes:
    """('speak', seconds) and ('wait', seconds) segments as caller audio."""
    out = b""
    for n, (kind, seconds) in enumerate(segments):
        out += speech_like(seconds, seed=10 + n) if kind == "speak" else silence(seconds)
    return out


def new_call(app, **kwargs) -> GenesysCall:
    kwargs.setdefault("ping_interval", None)
    return GenesysCall(ws_url(app), api_key=API_KEY, **kwargs)


def frames_in(call: GenesysCall, start: float, end: float) -> list[tuple[float, int]]:
    return [(t, n) for t, n in call.record.audio_frames if start <= t < end]


async def test_caller_audio_reaches_openai_byte_exact_even_before_it_is_ready(bridged):
    app, sim = await bridged(sim_options={"speed": 8})
    sim.connect_delay = 1.0
    audio = caller(("speak", 1.2), ("wait", 1.5))
    async with new_call(app) as call:
        await call.open()
        opened_after = call.record.opened_at - call.sent_at[1]
        await call.stream(audio)
        await asyncio.sleep(0.3)
        await call.close()
    assert opened_after < 1.0  # opened did not wait for OpenAI
    assert bytes(sim.sessions[0].audio_received) == audio
    assert sim.violations == [] and call.record.violations == []


async def test_bot_audio_reaches_the_caller_byte_exact_paced_in_small_frames(bridged):
    app, sim = await bridged(Script(turns=[Turn(say="Here is a fairly long answer for you.", seconds=2.5)]))
    async with new_call(app) as call:
        await call.open()
        await call.stream(caller(("speak", 1.0), ("wait", 4.5)))
        await call.close()
    sent = bytes(sim.sessions[0].audio_sent)
    assert len(sent) == 20_000
    assert bytes(call.record.bot_audio) == sent
    frames = call.record.audio_frames
    assert max(n for _, n in frames) <= 64_000
    start, total = frames[0][0], 0
    for t, n in frames:
        total += n
        assert total / 8000 - (t - start) <= 1.0 + 0.05  # at most one second ahead of playback
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)]
    assert min(gaps) >= 0.09  # about ten binary messages a second at most
    assert frames[-1][0] - start >= 2.5 - 1.0  # real-time pace, not a burst
    assert sim.violations == [] and call.record.violations == []


async def run_barge_in(app, *, bot_seconds: float, interrupt_after: float):
    """The caller speaks, the bot answers, the caller cuts in `interrupt_after` s into the answer."""
    call = new_call(app)
    async with call:
        await call.open()
        await call.stream(caller(("speak", 1.0), ("wait", 0.6)))
        async with asyncio.timeout(5):
            while not call.record.audio_frames:
                await asyncio.sleep(0.01)
        first_frame = call.record.audio_frames[0][0]
        await asyncio.sleep(max(0.0, first_frame + interrupt_after - time.monotonic()))
        await call.stream(caller(("speak", 1.0), ("wait", 2.0)))
        await call.close()
    return call, first_frame


def check_barge_in(call: GenesysCall, sim, first_frame: float):
    barge_ins = call.record.events("barge_in")
    assert len(barge_ins) == 1
    barged = barge_ins[0][0]
    # At most one stale binary frame after the barge_in event (one may already be on the wire);
    # the next answer cannot start within a second (the caller speaks for one).
    stale = frames_in(call, barged, barged + 1.0)
    assert len(stale) <= 1
    truncates = sim.events_of("conversation.item.truncate")
    assert len(truncates) == 1
    end_ms = truncates[0]["audio_end_ms"]
    received_before = sum(n for t, n in call.record.audio_frames if first_frame <= t <= barged)
    heard_estimate_ms = (barged - first_frame) * 1000
    assert end_ms <= received_before / 8 + 1  # never more than was sent
    assert heard_estimate_ms - 150 <= end_ms  # and about what was played
    assert sim.sessions[0].truncations[0]["item_audio_ms"] >= end_ms  # no overshoot error
    assert sim.events_of("response.cancel") == []
    assert sim.events_of("response.create") == []  # the server's VAD answers, not us
    return end_ms


async def test_barge_in_flushes_and_truncates_at_what_the_caller_heard(bridged):
    script = Script(
        turns=[
            Turn(say="A long answer that the caller will interrupt.", seconds=6.0),
            Turn(say="Yes?", seconds=0.8),
        ]
    )
    app, sim = await bridged(script)
    call, first_frame = await run_barge_in(app, bot_seconds=6.0, interrupt_after=1.5)
    end_ms = check_barge_in(call, sim, first_frame)
    assert 1200 <= end_ms <= 2000
    cancelled = [r for r in sim.sessions[0].responses if r.cancelled == "turn_detected"]
    assert len(cancelled) == 1
    assert sim.violations == [] and call.record.violations == []


async def test_barge_in_after_response_done_while_audio_still_plays(bridged):
    script = Script(
        turns=[Turn(say="Generated at once, played for seconds.", seconds=5.0), Turn(say="Yes?", seconds=0.8)]
    )
    app, sim = await bridged(script, sim_options={"speed": 100})
    call, first_frame = await run_barge_in(app, bot_seconds=5.0, interrupt_after=1.5)
    assert all(r.cancelled is None for r in sim.sessions[0].responses)  # it was already done
    end_ms = check_barge_in(call, sim, first_frame)
    assert 1200 <= end_ms <= 2000
    assert sim.violations == [] and call.record.violations == []


async def test_greeting_speaks_first_and_both_sides_are_transcribed(bridged, caplog):
    caplog.set_level(logging.DEBUG, logger="bridge")
    app, sim = await bridged(
        Script(turns=[Turn(say="Your order ships tomorrow.", seconds=1.0)]),
        INITIAL_GREETING="Welcome to Acme support",
    )
    async with new_call(app) as call:
        await call.open()
        await call.stream(caller(("wait", 2.5), ("speak", 1.0), ("wait", 2.5)))
        await call.close()
    creates = sim.events_of("response.create")
    assert len(creates) == 1 and "Welcome to Acme support" in creates[0]["response"]["instructions"]
    assert call.record.audio_frames[0][0] < call.record.opened_at + 1.5  # the bot spoke first
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "assistant: Welcome to Acme support" in lines
    assert "caller: This is what the caller said in turn 1." in lines
    assert "assistant: Your order ships tomorrow." in lines
    assert sim.violations == [] and call.record.violations == []


async def test_a_dropped_openai_socket_is_replaced_and_the_conversation_restored(bridged):
    script = Script(
        turns=[
            Turn(say="First answer.", seconds=0.8),
            Turn(say="Second answer after the outage.", seconds=0.8),
        ]
    )
    app, sim = await bridged(script)
    async with new_call(app) as call:
        await call.open()
        await call.stream(caller(("speak", 1.0), ("wait", 2.5)))
        first_answer = len(call.record.bot_audio)
        sim.drop_all()
        await call.stream(caller(("wait", 1.0), ("speak", 1.0), ("wait", 2.5)))
        await call.close()
    assert first_answer == 6400
    assert len(sim.sessions) == 2
    restored = [e for e in sim.sessions[1].received if e["type"] == "conversation.item.create"]
    texts = [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in restored]
    assert texts == [("user", "This is what the caller said in turn 1."), ("assistant", "First answer.")]
    assert sim.sessions[1].received[0]["type"] == "session.update"
    assert len(call.record.bot_audio) == 2 * 6400  # the second answer came through the new socket
    assert call.record.disconnect is None
    assert sim.violations == [] and call.record.violations == []


async def test_refused_reconnect_ends_the_call_with_escalation(bridged):
    app, sim = await bridged(Script(turns=[Turn(say="Hi.", seconds=0.5)]), OPENAI_RECONNECT_SECONDS="1.5")
    async with new_call(app) as call:
        await call.open()
        await call.stream(caller(("speak", 1.0), ("wait", 1.5)))
        sim.refuse_all = True
        sim.drop_all()
        dropped = time.monotonic()
        streaming = asyncio.create_task(call.stream(silence(5)))
        disconnect = await call.wait_disconnect(5)
        streaming.cancel()
    assert time.monotonic() - dropped < 1.5 + 1.0
    params = disconnect["parameters"]
    assert params["reason"] == "error" and params["info"] == "OpenAI unreachable"
    assert params["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    assert sim.connections >= 3  # it did retry
    assert sim.violations == [] and call.record.violations == []


async def test_openai_unreachable_at_open_ends_the_call_cleanly(start_app):
    from conftest import make_settings

    app = await start_app(
        make_settings(OPENAI_REALTIME_URL="ws://127.0.0.1:9/v1/realtime", OPENAI_RECONNECT_SECONDS="1")
    )
    async with new_call(app) as call:
        await call.open()
        disconnect = await call.wait_disconnect(5)
    assert disconnect["parameters"]["reason"] == "error"
    assert disconnect["parameters"]["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    assert call.record.closed_at is not None and call.record.violations == []


async def test_the_openai_session_is_replaced_quietly_before_its_time_limit(bridged):
    script = Script(
        turns=[Turn(say="One.", seconds=0.6), Turn(say="Two.", seconds=0.6), Turn(say="Three.", seconds=0.6)]
    )
    app, sim = await bridged(script, sim_options={"session_seconds": 4.0})
    async with new_call(app) as call:
        await call.open()
        for _ in range(3):  # quiet at 3 s, when the recycle is due (3/4 of the 4 s lifetime)
            await call.stream(caller(("speak", 0.8), ("wait", 2.7)))
        await call.close()
    assert len(sim.sessions) >= 2
    assert sim.sessions[0].close_code == 1000  # we closed it, before the 1001 limit
    assert any(e["type"] == "conversation.item.create" for e in sim.sessions[1].received)
    assert call.record.disconnect is None
    assert len(call.record.bot_audio) == 3 * 4800
    assert sim.violations == [] and call.record.violations == []


async def test_pings_are_answered_at_once_while_openai_is_slow_to_connect(bridged):
    app, sim = await bridged()
    sim.connect_delay = 2.0
    async with new_call(app) as call:
        await call.open()
        for _ in range(15):
            await call.ping()
            await asyncio.sleep(0.1)
        await call.close()
    assert len(call.record.pong_rtts) == 15
    assert max(call.record.pong_rtts) < 0.05
    assert call.record.violations == []


async def test_openai_error_events_are_handled_by_kind(bridged, caplog):
    app, sim = await bridged(Script(turns=[Turn(say="Still here.", seconds=0.6)]))
    async with new_call(app) as call:
        await call.open()
        await call.stream(silence(0.5))
        session = sim.sessions[0]
        for code, message in [
            (
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: resp_1.",
            ),
            ("response_cancel_not_active", "Cancellation failed: no active response found"),
            (None, "Audio content of 9800ms is already shorter than 11579ms"),
            ("input_audio_buffer_commit_empty", "buffer too small"),
            ("rate_limit_exceeded", "Rate limit reached"),
        ]:
            await session.emit(
                "error",
                error={
                    "type": "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": None,
                },
            )
        await call.stream(caller(("speak", 1.0), ("wait", 2.0)))
        assert len(call.record.bot_audio) == 4800  # the call went on
        await session.emit(
            "error",
            error={
                "type": "invalid_request_error",
                "code": "unknown_parameter",
                "message": "Unknown parameter",
                "param": None,
                "event_id": "session-update-1",
            },
        )
        disconnect = await call.wait_disconnect(5)
    assert disconnect["parameters"]["reason"] == "error"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("rate_limit_exceeded" in w for w in warnings)
    assert not any("already shorter" in w or "cancel_not_active" in w for w in warnings)
    assert sim.violations == [] and call.record.violations == []


async def test_output_format_guard_never_plays_other_audio(bridged):
    app, sim = await bridged(INITIAL_GREETING="Hello")
    sim.force_output_format = {"type": "audio/pcm", "rate": 24000}
    async with new_call(app) as call:
        await call.open()
        disconnect = await call.wait_disconnect(5)
    assert disconnect["parameters"]["reason"] == "error"
    assert "audio/pcmu" in disconnect["parameters"]["info"]
    assert call.record.audio_frames == []
    assert call.record.violations == []
