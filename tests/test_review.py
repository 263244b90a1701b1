"""What a second line-by-line review found in the call core and the Realtime backend, reproduced
through real sockets with the project's simulators (wire in, wire out). Every test here failed
before its fix; the core's decisions that need no sockets are in test_bridge_unit."""

from __future__ import annotations

import asyncio
import logging
import time

from fake_genesys_api import FakeAction
from test_data_actions import ACCOUNT_SCHEMA
from test_hardening import TOOL, creates, new_call, purpose, wait_for
from websockets.protocol import State

from simulators.audio import silence, speech_like
from simulators.realtime_simulator import SessionFailure
from simulators.script import Script, Turn


async def test_a_socket_that_never_confirms_its_session_is_a_failed_attempt_within_the_budget(bridged):
    app, sim = await bridged(OPENAI_RECONNECT_SECONDS="3")
    sim.mute_next = 100  # every socket is accepted and then says nothing
    started = time.monotonic()
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(12.0)))
        disconnect = await call.wait_disconnect(12)
        elapsed = time.monotonic() - started
        streaming.cancel()
    params = disconnect["parameters"]
    assert params["reason"] == "error"
    assert params["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    # The first socket's start limit is the budget (3 s), then the outage's 3 s: never the idle
    # timeout's two minutes of silence.
    assert elapsed < 8.0, elapsed
    assert len(sim.sessions) >= 2


async def test_a_tool_result_during_the_goodbye_adds_nothing_after_it_and_logs_no_caller_text(
    bridged, genesys_api, caplog
):
    caplog.set_level(logging.INFO)
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=1.0, result={"status": "gold"})
    ending = ("end_conversation_successfully", {"summary": "Jane Doe asked about card 4411"})
    script = Script(
        turns=[Turn(calls=[(TOOL, {"accountNumber": "12345"}), ending])],
        farewell=Turn(say="Thank you, goodbye.", seconds=2.5),
    )
    app, sim = await bridged(script, TOOL_FILLER_AFTER_MS="0", **genesys_api.env())
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(speech_like(1.0, seed=3) + silence(9.0)))
        disconnect = await call.wait_disconnect(12)
        streaming.cancel()
    assert genesys_api.executions  # the tool ran and answered while the goodbye played
    outputs = [
        e
        for e in sim.sessions[0].received
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]
    assert len(outputs) == 2
    assert [purpose(e) for e in creates(sim) if purpose(e) != "summary"] == ["farewell"]
    assert disconnect["parameters"]["reason"] == "completed"
    assert len(call.record.bot_audio) == int(2.5 * 8000)  # the goodbye, whole, and nothing after
    above_debug = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not [m for m in above_debug if "4411" in m or "Jane" in m]


async def test_a_failed_model_socket_is_closed_before_genesys_hears_the_disconnect(bridged):
    app, sim = await bridged(OPENAI_RECONNECT_SECONDS="5")
    sim.session_failure = SessionFailure("insufficient_quota", after="created", close_code=None)
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(6.0)))
        disconnect = await call.wait_disconnect(6)
        state = sim.sessions[0].ws.state
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "error"
    assert state in (State.CLOSING, State.CLOSED)


async def test_a_drop_after_the_goodbye_was_generated_dials_no_new_socket(bridged):
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "done"})],
        farewell=Turn(say="Thank you for calling, goodbye.", seconds=3.0),
    )
    app, sim = await bridged(script)
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(speech_like(1.0, seed=3) + silence(8.0)))
        farewell = lambda: [r for s in sim.sessions for r in s.responses if r.purpose == "farewell"]  # noqa: E731
        await wait_for(lambda: farewell() and farewell()[0].output)  # generated, still playing
        assert len(call.record.bot_audio) < 3 * 8000
        sim.drop_all()
        disconnect = await call.wait_disconnect(10)
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "completed"
    assert len(sim.sessions) == 1
    assert len(call.record.bot_audio) == 3 * 8000  # generated before the drop: played to the end


async def test_a_planned_move_to_a_new_socket_has_one_budget_counted_from_the_move(bridged):
    app, sim = await bridged(sim_options={"session_seconds": 4.0}, OPENAI_RECONNECT_SECONDS="3")
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(14.0)))
        await wait_for(lambda: sim.sessions and sim.sessions[0].received)
        sim.mute_next = 100  # every socket after the first says nothing
        await wait_for(lambda: len(sim.sessions) == 2)  # the move, at 3/4 of the lifetime
        moved = time.monotonic()
        disconnect = await call.wait_disconnect(10)
        elapsed = time.monotonic() - moved
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "error"
    assert disconnect["parameters"]["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    assert elapsed < 4.5, elapsed  # 3 s from the move, not a first attempt and then the budget
