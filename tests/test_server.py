"""The AudioHook server over real sockets on 127.0.0.1, with the call simulator as Genesys."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import urllib.request

import pytest
from conftest import (
    API_KEY,
    CLIENT_SECRET,
    RecordingHandler,
    live_tasks,
    make_settings,
    recording_factory,
    settled,
    ws_url,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import audiohook_server
from model_backend import Utterance
from simulators.audio import speech_like
from simulators.call_simulator import STEREO, GenesysCall


@pytest.fixture(autouse=True)
def _clear_handlers():
    RecordingHandler.instances.clear()


def http_get(app, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


async def get(app, path: str):
    return await asyncio.to_thread(http_get, app, path)


def call(app, **kwargs) -> GenesysCall:
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("ping_interval", None)
    return GenesysCall(ws_url(app), **kwargs)


async def test_health_ready_and_unknown_paths(start_app):
    app = await start_app()
    for path in ("/", "/health"):
        status, ctype, body = await get(app, path)
        assert status == 200 and ctype == "application/json" and json.loads(body)["status"] == "alive"
    status, _, body = await get(app, "/ready")
    assert status == 200 and json.loads(body)["status"] == "ready"
    for path in ("/nope", "/audiohookx", "/health/x"):
        assert (await get(app, path))[0] == 404


async def test_probe_gets_opened_and_closed_without_starting_a_call(start_app):
    app = await start_app(handler_factory=recording_factory())
    async with call(app, probe=True) as sim:
        opened = await sim.open()
        assert opened["seq"] == 1 and opened["clientseq"] == 1
        await sim.send_raw(b"")  # the reference client sends one empty frame before close
        closed = await sim.close()
    assert closed == {
        "version": "2",
        "type": "closed",
        "seq": 2,
        "clientseq": 2,
        "id": sim.session_id,
        "parameters": {},
    }
    assert RecordingHandler.instances == []
    assert sim.record.violations == []


async def test_call_streams_caller_audio_byte_exact_and_close_is_answered_within_a_second(
    start_app,
):
    app = await start_app(handler_factory=recording_factory())
    tasks_before = live_tasks()
    audio = speech_like(1.0, seed=3)
    async with call(app, connector_id="sales-bot", input_variables={"LANGUAGE": "fr"}) as sim:
        await sim.open()
        await sim.stream(audio, realtime=False)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        closed = await sim.close()
        assert closed is not None and time.monotonic() - started < 1.0
    handler = RecordingHandler.instances[0]
    assert bytes(handler.audio) == audio
    assert handler.request.input_variables == {"LANGUAGE": "fr"}
    assert handler.session.connector_id == "sales-bot"
    await settled(app)
    assert handler.cancelled
    assert live_tasks() <= tasks_before
    assert sim.record.violations == []


async def test_connector_id_is_taken_from_the_path_with_a_query_string(start_app):
    app = await start_app(handler_factory=recording_factory())
    sim = GenesysCall(ws_url(app, "/audiohook/billing%20bot?region=eu"), api_key=API_KEY, ping_interval=None)
    async with sim:
        await sim.open()
        await sim.close()
    assert RecordingHandler.instances[0].session.connector_id == "billing bot"


async def test_stereo_media_is_deinterleaved_to_the_external_channel(start_app):
    app = await start_app(handler_factory=recording_factory())
    audio = speech_like(0.6, seed=4)
    async with call(app, media=[dict(STEREO, channels=["internal", "external"])]) as sim:
        opened = await sim.open()
        assert opened["parameters"]["media"][0]["channels"] == ["internal", "external"]
        await sim.stream(audio, realtime=False)
        await asyncio.sleep(0.1)
        await sim.close()
    assert bytes(RecordingHandler.instances[0].audio) == audio


async def test_pings_are_answered_with_their_seq_while_audio_streams(start_app):
    app = await start_app(handler_factory=recording_factory())
    async with call(app) as sim:
        await sim.open()
        streaming = asyncio.create_task(sim.stream(speech_like(2.0), frame_ms=20, realtime=False))
        for _ in range(50):
            await sim.ping()
        await streaming
        await asyncio.sleep(0.2)
        await sim.close()
    assert len(sim.record.pong_rtts) == 50
    assert sim.record.violations == []


async def test_pause_resume_update_dtmf_and_playback_messages(start_app):
    app = await start_app(handler_factory=recording_factory())
    async with call(app) as sim:
        await sim.open()
        await sim.send_message("paused")
        await sim.send_audio(b"\x01" * 160)
        await sim.send_message("resumed", {"start": "PT0S", "discarded": "PT1.5S"})
        await sim.send_audio(b"\x02" * 160)
        await sim.send_message("update", {"language": "de-DE"})
        await sim.send_dtmf("42#", gap=0)
        await sim.send_message("playback_started")
        await sim.send_message("playback_completed")
        await asyncio.sleep(0.2)
        await sim.close()
    handler = RecordingHandler.instances[0]
    assert bytes(handler.audio) == b"\x02" * 160
    assert handler.digits == ["4", "2", "#"]
    assert len(sim.record.of_type("updated")) == 1
    assert handler.session.protocol.position == pytest.approx(0.02 + 1.5)
    assert sim.record.violations == []


async def test_bot_audio_is_paced_byte_exact_in_frames_under_64000_bytes(start_app):
    audio = speech_like(2.0, seed=5)

    async def speak(handler):
        handler.session.play(Utterance("item_1"), audio)

    app = await start_app(handler_factory=recording_factory(speak))
    async with call(app) as sim:
        await sim.open()
        await asyncio.sleep(2.2)
        await sim.close()
    frames = sim.record.audio_frames
    assert bytes(sim.record.bot_audio) == audio
    assert max(size for _, size in frames) <= 64_000
    start = frames[0][0]
    sent = 0
    for t, size in frames:
        sent += size
        assert sent / 8000 - (t - start) <= 1.0 + 0.05  # at most a second ahead of real time
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)]
    assert min(gaps) >= 0.09  # about ten messages a second at most
    assert sim.record.violations == []


async def test_disconnect_runs_the_close_transaction(start_app):
    async def hang_up(handler):
        await asyncio.sleep(0.1)
        await handler.session.disconnect("completed", "done", {"A": "1"})

    app = await start_app(handler_factory=recording_factory(hang_up))
    async with call(app) as sim:
        await sim.open()
        disconnect = await sim.wait_disconnect(5)
        await sim.wait_closed(5)
    assert disconnect["parameters"] == {
        "reason": "completed",
        "info": "done",
        "outputVariables": {"A": "1"},
    }
    assert sim.record.closed_at is not None
    await settled(app)
    assert sim.record.violations == []


async def test_protocol_errors_before_any_call_still_carry_all_fourteen_output_variables(start_app):
    app = await start_app()
    async with call(app) as sim:
        await sim.send_raw("{oops")
        disconnect = await sim.wait_disconnect(5)
    variables = disconnect["parameters"]["outputVariables"]
    assert len(variables) == 14 and all(isinstance(v, str) for v in variables.values())
    assert variables["ESCALATION_REQUIRED"] == "true"
    assert variables["ESCALATION_REASON"] == "technical problem: protocol error: malformed JSON"


async def test_genesys_429_holds_bot_audio_for_retry_after_and_pings_still_answered(start_app):
    async def speak_later(handler):
        await asyncio.sleep(0.2)
        handler.session.play(Utterance("item_1"), speech_like(1.0))

    app = await start_app(handler_factory=recording_factory(speak_later))
    async with call(app) as sim:
        await sim.open()
        await sim.send_message("error", {"code": 429, "message": "Too many requests", "retryAfter": "PT1S"})
        sent = time.monotonic()
        await asyncio.sleep(0.3)
        await sim.ping()
        await asyncio.sleep(1.2)
        await sim.close()
    first_audio = sim.record.audio_frames[0][0]
    assert first_audio - sent >= 0.95
    assert len(sim.record.pong_rtts) == 1 and sim.record.pong_rtts[0] < 0.05


async def test_socket_dropped_without_close_releases_everything(start_app):
    app = await start_app(handler_factory=recording_factory())
    tasks_before = live_tasks()
    sim = call(app)
    await sim.connect()
    await sim.open()
    await sim.send_audio(b"\x01" * 1600)
    assert sim.ws is not None
    sim.ws.transport.abort()
    await sim.aclose()
    await settled(app)
    assert RecordingHandler.instances[0].cancelled
    assert live_tasks() <= tasks_before


async def test_a_silent_genesys_is_let_go_after_the_read_idle_timeout(start_app, monkeypatch, caplog):
    monkeypatch.setattr(audiohook_server, "READ_IDLE_TIMEOUT", 1.0)
    app = await start_app(handler_factory=recording_factory())
    async with call(app) as sim:
        await sim.open()
        for _ in range(25):  # 2.5 s of audio, longer than the idle timeout: the call goes on
            await sim.send_audio(b"\x01" * 800)
            await asyncio.sleep(0.1)
        assert app.sessions
        last = time.monotonic()
        await sim.wait_closed(5)  # then nothing more from the client
        gone = time.monotonic() - last
    await settled(app)
    assert 0.85 <= gone <= 2.5
    assert len(RecordingHandler.instances[0].audio) == 25 * 800
    assert "nothing received from Genesys for 1.0s; ending the session" in caplog.text


async def test_no_close_after_our_disconnect_ends_the_session_after_the_close_wait(
    start_app, monkeypatch, caplog
):
    monkeypatch.setattr(audiohook_server, "CLOSE_WAIT", 1.0)

    async def hang_up(handler):
        await asyncio.sleep(0.1)
        await handler.session.disconnect("completed", "done", {"A": "1"})

    app = await start_app(handler_factory=recording_factory(hang_up))
    async with call(app, auto_close=False) as sim:  # a client that never sends `close`
        await sim.open()
        await sim.wait_disconnect(5)
        await sim.wait_closed(5)
        gone = time.monotonic() - sim.record.disconnect_at
    await settled(app)
    assert 0.85 <= gone <= 2.5  # the close wait, not the 60 s read idle timeout
    assert "no close from Genesys within 1.0s of our disconnect" in caplog.text


# -- bad input before the upgrade -----------------------------------------------------------


async def expect_status(url: str, headers: dict[str, str], status: int) -> str:
    with pytest.raises(InvalidStatus) as excinfo:
        async with connect(url, additional_headers=headers, open_timeout=5):
            pass
    response = excinfo.value.response
    assert response.status_code == status
    return response.body.decode()


def genesys_headers(sim: GenesysCall, **changes: str | None) -> dict[str, str]:
    headers = sim.headers()
    for name, value in changes.items():
        headers.pop(name, None)
        if value is not None:
            headers[name] = value
    return headers


async def test_missing_audiohook_headers_get_400_and_bad_keys_401_without_detail(start_app, caplog):
    app = await start_app()
    sim = call(app)
    url = ws_url(app)
    for header in ("Audiohook-Session-Id", "Audiohook-Organization-Id", "Audiohook-Correlation-Id"):
        await expect_status(url, genesys_headers(sim, **{header: None}), 400)
    await expect_status(url, genesys_headers(sim, **{"Audiohook-Session-Id": "1234"}), 400)
    body = await expect_status(url, genesys_headers(sim, **{"X-API-KEY": "wrong"}), 401)
    assert body == "Unauthorized\n"
    await expect_status(url, genesys_headers(sim, **{"X-API-KEY": None}), 401)
    refusals = [
        r for r in caplog.records if r.levelno == logging.WARNING and "upgrade refused" in r.getMessage()
    ]
    # One line per reason (missing_header three times, malformed_header, wrong and missing key).
    assert len(refusals) == 4
    assert refusals[-1].session_id == sim.session_id


async def test_signed_requests_are_verified_when_a_client_secret_is_configured(start_app):
    settings = make_settings(GENESYS_AUDIOHOOK_CLIENT_SECRET=CLIENT_SECRET)
    app = await start_app(settings)
    url = ws_url(app)
    signed = call(app, client_secret=CLIENT_SECRET)
    async with signed:
        await signed.open()
        await signed.close()
    assert signed.record.violations == []
    unsigned = call(app)
    await expect_status(url, unsigned.headers(), 401)
    replay_source = call(app, client_secret=CLIENT_SECRET)
    headers = replay_source.headers()
    async with connect(url, additional_headers=headers):
        pass
    await expect_status(url, headers, 401)  # same nonce again
    tampered = genesys_headers(
        call(app, client_secret=CLIENT_SECRET),
        **{"Audiohook-Correlation-Id": "e160e428-53e2-487c-977d-96989bf5c99d"},
    )
    await expect_status(url, tampered, 401)


async def test_disallowed_organization_gets_401(start_app):
    settings = make_settings(GENESYS_ALLOWED_ORGANIZATION_IDS="d7934305-0972-4844-938e-9060eef73d05")
    app = await start_app(settings)
    await expect_status(ws_url(app), call(app).headers(), 401)
    allowed = call(app, organization_id="d7934305-0972-4844-938e-9060eef73d05")
    async with allowed:
        await allowed.open()
        await allowed.close()


async def test_failed_authentication_waits_a_fixed_delay_without_slowing_other_calls(start_app):
    app = await start_app(auth_failure_delay=0.5)
    healthy = call(app)
    async with healthy:
        await healthy.open()
        url = ws_url(app)
        bad = genesys_headers(call(app), **{"X-API-KEY": "wrong"})
        started = time.monotonic()
        flood = [asyncio.create_task(expect_status(url, bad, 401)) for _ in range(30)]
        await asyncio.sleep(0.05)
        for _ in range(10):
            await healthy.ping()
            await asyncio.sleep(0.02)
        await asyncio.gather(*flood)
        elapsed = time.monotonic() - started
        await healthy.close()
    assert elapsed >= 0.5
    assert max(healthy.record.pong_rtts) < 0.05


# -- bad input after the upgrade ------------------------------------------------------------

BAD_MESSAGES = [
    ("wrong seq", lambda s: s.envelope("ping", seq=s.seq + 2), "invalid seq"),
    ("repeated seq", lambda s: s.envelope("ping", seq=s.seq), "invalid seq"),
    ("serverseq ahead", lambda s: s.envelope("ping", serverseq=99), "invalid serverseq"),
    (
        "wrong id",
        lambda s: s.envelope("ping", id="7e1a0f00-0000-4000-8000-000000000000"),
        "id does not match",
    ),
    ("unknown type", lambda s: s.envelope("frobnicate"), "unknown message type"),
    (
        "parameters not object",
        lambda s: s.envelope("ping", parameters="x"),
        "parameters must be an object",
    ),
    ("not json", lambda s: "{oops", "malformed JSON"),
    (
        "oversize",
        lambda s: s.envelope("ping", parameters={"pad": "x" * 70_000}),
        "message too large",
    ),
    ("bad dtmf", lambda s: s.envelope("dtmf", parameters={"digit": "xy"}), "dtmf"),
    ("oversize audio", lambda s: b"\x01" * 70_000, "audio frame too large"),
]


class RawSender:
    """Builds envelopes with the simulator's counters, optionally broken."""

    def __init__(self, sim: GenesysCall) -> None:
        self.sim = sim
        self.seq = sim.seq

    def envelope(self, type_, **fields):
        msg = {
            "version": "2",
            "id": self.sim.session_id,
            "type": type_,
            "seq": self.sim.seq + 1,
            "serverseq": self.sim.server_seq,
            "position": "PT0S",
            "parameters": {},
        }
        msg.update(fields)
        return json.dumps(msg)


@pytest.mark.parametrize(("name", "build", "info"), BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES])
async def test_bad_messages_get_disconnect_error_and_healthy_call_is_unaffected(
    start_app, caplog, name, build, info
):
    app = await start_app(handler_factory=recording_factory())
    healthy = call(app)
    bad = call(app)
    async with healthy, bad:
        await healthy.open()
        await bad.open()
        streaming = asyncio.create_task(healthy.stream(speech_like(1.0), realtime=True))
        await bad.send_raw(build(RawSender(bad)))
        disconnect = await bad.wait_disconnect(5)
        assert disconnect["parameters"]["reason"] == "error"
        assert info in disconnect["parameters"]["info"]
        assert disconnect["parameters"]["outputVariables"] == {
            "RECORDED_BYTES": "0",
            "FAILURE": f"protocol error: {disconnect['parameters']['info']}",
        }
        assert bad.record.closed_at is not None  # our close was still answered
        await healthy.ping()
        await streaming
        await asyncio.sleep(0.1)
        await healthy.close()
    assert healthy.record.violations == [] and len(healthy.record.pong_rtts) == 1
    assert len(RecordingHandler.instances[0].audio) == 8000
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].session_id == bad.session_id
    assert warnings[0].exc_info is None
    await settled(app)


async def test_messages_before_open_are_rejected(start_app, caplog):
    app = await start_app(handler_factory=recording_factory())
    async with call(app) as sim:
        await sim.send_message("dtmf", {"digit": "1"})
        disconnect = await sim.wait_disconnect(5)
    assert disconnect["parameters"]["info"] == "expected open, got dtmf"
    assert RecordingHandler.instances == []
    async with call(app) as sim:
        await sim.send_raw(b"\x01" * 160)
        disconnect = await sim.wait_disconnect(5)
    assert disconnect["parameters"]["info"] == "audio before open"


async def test_unsupported_media_gets_disconnect_error(start_app):
    app = await start_app(handler_factory=recording_factory())
    l16 = {"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}
    async with call(app, media=[l16]) as sim:
        with pytest.raises(Exception, match="no opened"):
            await sim.open()
        await sim.wait_closed(5)
    assert sim.record.disconnect["parameters"]["info"] == "no supported media"
    assert RecordingHandler.instances == []


async def test_organization_mismatch_between_header_and_open_is_unauthorized(start_app):
    app = await start_app(handler_factory=recording_factory())
    sim = call(app)
    async with sim:
        sim.organization_id = "d7934305-0972-4844-938e-9060eef73d05"
        with pytest.raises(Exception, match="no opened"):
            await sim.open()
        await sim.wait_closed(5)
    assert sim.record.disconnect["parameters"]["reason"] == "unauthorized"
    assert sim.record.violations == []


async def test_many_concurrent_calls_each_get_their_own_audio(start_app):
    app = await start_app(handler_factory=recording_factory())
    sims = [call(app) for _ in range(20)]
    audios = [speech_like(0.4, seed=n) for n in range(20)]

    async def one(sim, audio):
        async with sim:
            await sim.open()
            await sim.stream(audio, realtime=False)
            await sim.ping()
            await asyncio.sleep(0.2)
            await sim.close()

    await asyncio.gather(*(one(s, a) for s, a in zip(sims, audios, strict=True)))
    by_session = {h.session.session_id: bytes(h.audio) for h in RecordingHandler.instances}
    for sim, audio in zip(sims, audios, strict=True):
        assert by_session[sim.session_id] == audio
        assert sim.record.violations == []
    await settled(app)
