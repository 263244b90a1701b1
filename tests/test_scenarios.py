"""One call core, every backend: the same behaviour-level scenarios played against OpenAI Realtime,
GPT-Live and Gemini Live through their simulators, judged only by what Genesys sees on the wire
(and by each simulator finding no violation of its vendor's protocol)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import API_KEY, make_settings, ws_url
from fake_genesys_api import FakeAction
from test_data_actions import ACCOUNT_SCHEMA

from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.gemini_simulator import GeminiSimulator
from simulators.live_simulator import LiveSimulator
from simulators.realtime_simulator import RealtimeSimulator, SessionFailure
from simulators.script import Script, Turn

TOOL = "genesys_data_action_get_account"
LEAD = 0.6  # the pacer's lead over playback


@pytest.fixture(params=["realtime", "live", "gemini"])
def kind(request) -> str:
    return request.param


@pytest.fixture
async def backend(kind, start_app):
    """Start a connector whose calls go to the `kind` backend's simulator: (app, sim)."""
    sims = []

    async def start(script: Script | None = None, **env: str):
        if kind == "realtime":
            sim = await RealtimeSimulator(script, validate_server=True).start()
            env = {"OPENAI_REALTIME_URL": sim.url, **env}
        elif kind == "live":
            sim = await LiveSimulator(script, validate_server=True).start()
            env = {
                "OPENAI_API": "live",
                "OPENAI_LIVE_URL": sim.url,
                "OPENAI_API_BASE_URL": sim.api_base_url,
                **env,
            }
        else:
            sim = await GeminiSimulator(script, validate_server=True).start()
            env = {
                "AI_VENDOR": "gemini",
                "GEMINI_API_KEY": "test-gemini-key",
                "GEMINI_LIVE_URL": sim.url,
                "GEMINI_API_BASE_URL": sim.api_base_url,
                **env,
            }
        sims.append(sim)
        return await start_app(make_settings(**env)), sim

    yield start
    for sim in sims:
        await sim.stop()


def new_call(app, **kwargs) -> GenesysCall:
    kwargs.setdefault("ping_interval", None)
    return GenesysCall(ws_url(app), api_key=API_KEY, **kwargs)


async def wait_for(condition, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def clean(sim, call) -> None:
    assert sim.violations == [] and call.record.violations == []


async def talk(call: GenesysCall, *parts: tuple[str, float], seed: int = 3) -> None:
    for n, (what, seconds) in enumerate(parts):
        await call.stream(speech_like(seconds, seed=seed + n) if what == "speak" else silence(seconds))


def played_out(call: GenesysCall) -> float:
    """When the caller will have heard the last bot byte received."""
    end = 0.0
    for t, size in call.record.audio_frames:
        end = max(end, t) + size / 8000
    return end


# -- the scenarios ---------------------------------------------------------------------------


async def test_the_greeting_is_spoken_first(backend):
    app, sim = await backend(INITIAL_GREETING="Welcome to the Acme line.")
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(talk(call, ("wait", 8.0)))
        await wait_for(lambda: call.record.audio_frames)
        await asyncio.sleep(3.0)  # "Welcome to the Acme line.": about 1.8 s of speech
        streaming.cancel()
        await call.close()
    assert call.record.bot_audio_bytes >= 1.5 * 8000
    clean(sim, call)


async def test_a_barge_in_cuts_the_bot_with_at_most_one_stale_frame(backend):
    script = Script(
        turns=[Turn(say="This is a long answer that the caller will cut off halfway.", seconds=6.0)],
        default=Turn(say="Yes?", seconds=0.6),
    )
    app, sim = await backend(script)
    async with new_call(app) as call:
        await call.open()
        await talk(call, ("speak", 1.0), ("wait", 0.7))
        streaming = asyncio.create_task(talk(call, ("wait", 8.0)))
        await wait_for(lambda: call.record.audio_frames)
        await asyncio.sleep(1.5)
        streaming.cancel()
        await talk(call, ("speak", 1.2), ("wait", 2.5), seed=7)
        await call.close()
    barge_ins = call.record.events("barge_in")
    assert len(barge_ins) == 1
    barged = barge_ins[0][0]
    stale = [t for t, _ in call.record.audio_frames if barged < t < barged + 0.8]
    assert len(stale) <= 1
    assert call.record.bot_audio_bytes < 6.0 * 8000 * 0.8  # the long answer was not played out
    clean(sim, call)


async def test_the_farewell_is_played_to_the_end_before_the_disconnect(backend):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "All done."})],
        farewell=Turn(say="Thank you for calling, goodbye and have a nice day.", seconds=2.5),
    )
    app, sim = await backend(script)
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(talk(call, ("speak", 1.0), ("wait", 15.0)))
        disconnect = await call.wait_disconnect(20)
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "completed"
    variables = disconnect["parameters"]["outputVariables"]
    assert variables["COMPLETION_SUMMARY"] == "All done." and len(variables) == 14
    assert call.record.bot_audio_bytes >= 2.5 * 8000 * 0.95  # all of the farewell reached Genesys
    assert call.record.disconnect_at >= played_out(call) - LEAD - 0.05  # not before it played
    clean(sim, call)


async def test_keyed_digits_reach_the_model_and_it_answers(backend):
    app, sim = await backend(Script(default=Turn(say="Thanks, I have your account number.", seconds=1.2)))
    async with new_call(app) as call:
        await call.open()
        await talk(call, ("wait", 0.5))
        await call.send_dtmf("4127#")
        await talk(call, ("wait", 5.0))
        await call.close()
    assert call.record.bot_audio_bytes >= 1.2 * 8000 * 0.9
    clean(sim, call)


async def test_the_idle_limit_ends_the_call_with_a_farewell(backend):
    app, sim = await backend(
        Script(farewell=Turn(say="Goodbye for now.", seconds=1.0)), IDLE_TIMEOUT_SECONDS="2"
    )
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(talk(call, ("wait", 12.0)))
        disconnect = await call.wait_disconnect(12)
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "completed"
    assert (
        disconnect["parameters"]["outputVariables"]["COMPLETION_SUMMARY"] == "call ended: no activity for 2 s"
    )
    assert call.record.bot_audio_bytes >= 8000 * 0.9
    clean(sim, call)


async def test_the_length_limit_ends_a_busy_call(backend):
    app, sim = await backend(
        Script(
            default=Turn(say="Sure.", seconds=0.5),
            farewell=Turn(say="We are out of time, goodbye.", seconds=1.2),
        ),
        MAX_CALL_DURATION_SECONDS="4",
    )
    started = time.monotonic()
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(
            talk(call, ("speak", 1.0), ("wait", 0.8), ("speak", 1.0), ("wait", 12))
        )
        disconnect = await call.wait_disconnect(15)
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "completed"
    assert "maximum call duration" in disconnect["parameters"]["outputVariables"]["COMPLETION_SUMMARY"]
    assert time.monotonic() - started < 12
    clean(sim, call)


async def test_a_slow_data_action_gets_a_holding_phrase_then_its_answer(backend, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=2.5, result={"status": "gold"})
    script = Script(
        turns=[Turn(call=TOOL, arguments={"accountNumber": "12345"})],
        default=Turn(say="You are a gold member.", seconds=1.0),
        filler=Turn(say="One moment, still checking.", seconds=1.0),
    )
    app, sim = await backend(script, TOOL_FILLER_AFTER_MS="600", **genesys_api.env())
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        await talk(call, ("speak", 1.0), ("wait", 8.0))
        await call.close()
    assert genesys_api.executions == [("acct-1", {"accountNumber": "12345"})]
    assert call.record.bot_audio_bytes >= 2.0 * 8000 * 0.9  # the holding phrase and the answer
    clean(sim, call)


async def test_two_calls_in_one_turn_both_run_once_and_one_answer_follows(backend, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=0.3, result={"status": "gold"})
    script = Script(
        turns=[Turn(calls=[(TOOL, {"accountNumber": "1111"}), (TOOL, {"accountNumber": "2222"})])],
        default=Turn(say="Both accounts are gold.", seconds=1.0),
    )
    app, sim = await backend(script, TOOL_FILLER_AFTER_MS="0", **genesys_api.env())
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        await talk(call, ("speak", 1.0), ("wait", 6.0))
        await call.close()
    assert sorted(args["accountNumber"] for _, args in genesys_api.executions) == ["1111", "2222"]
    assert 1.0 * 8000 * 0.9 <= call.record.bot_audio_bytes <= 1.0 * 8000 * 1.3  # one answer
    clean(sim, call)


async def test_a_dropped_model_socket_is_replaced_and_the_call_goes_on(backend):
    script = Script(
        turns=[Turn(say="First answer.", seconds=0.8)], default=Turn(say="Second answer.", seconds=0.8)
    )
    app, sim = await backend(script)
    async with new_call(app) as call:
        await call.open()
        await talk(call, ("speak", 1.0), ("wait", 3.0))
        first = call.record.bot_audio_bytes
        assert first > 0
        sim.drop_all()
        await talk(call, ("wait", 1.5), ("speak", 1.0), ("wait", 4.0), seed=9)
        await call.close()
    assert call.record.disconnect is None
    assert call.record.bot_audio_bytes >= first + 0.8 * 8000 * 0.9  # answered on the new socket
    clean(sim, call)


async def test_a_fatal_refusal_escalates_at_once_with_one_socket(backend, kind):
    app, sim = await backend(OPENAI_RECONNECT_SECONDS="5")
    if kind == "realtime":
        sim.session_failure = SessionFailure("insufficient_quota")
    elif kind == "live":
        sim.start_error = "insufficient_quota"
    else:
        sim.quota_exceeded = True
    started = time.monotonic()
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(talk(call, ("wait", 8.0)))
        disconnect = await call.wait_disconnect(8)
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "error"
    variables = disconnect["parameters"]["outputVariables"]
    assert variables["ESCALATION_REQUIRED"] == "true"
    assert variables["AI_VENDOR"] == ("gemini" if kind == "gemini" else "openai")
    assert time.monotonic() - started < 3.0
    connections = sim.connections if isinstance(sim.connections, int) else len(sim.connections)
    assert connections == 1
    assert json.loads(variables["CONVERSATION_SUMMARY"])
