"""What a line-by-line review found: each defect reproduced through real sockets, wire in and wire
out, with the project's simulators (issue 11). Every test here failed before its fix."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from conftest import API_KEY, settled, ws_url
from fake_genesys_api import FakeAction
from test_data_actions import ACCOUNT_SCHEMA

from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.realtime_simulator import SessionFailure
from simulators.script import Script, Turn

TOOL = "genesys_data_action_get_account"


def new_call(app, **kwargs) -> GenesysCall:
    kwargs.setdefault("ping_interval", None)
    return GenesysCall(ws_url(app), api_key=API_KEY, **kwargs)


def creates(sim, session: int | None = None) -> list[dict]:
    events = (
        sim.events_of("response.create")
        if session is None
        else [e for e in sim.sessions[session].received if e["type"] == "response.create"]
    )
    return events


def purpose(event: dict) -> str | None:
    return ((event.get("response") or {}).get("metadata") or {}).get("purpose")


async def wait_for(condition, timeout: float = 10.0, step: float = 0.02) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(step)


def warnings_about(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# -- 1. one reconnect budget per outage -------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        SessionFailure("server_error", after="created", close_code=1011),
        SessionFailure(None, after="updated", close_code=1013),
    ],
    ids=["error-then-close", "close-after-session-updated"],
)
async def test_sockets_accepted_then_closed_spend_one_budget_with_backoff_then_escalate(
    bridged, caplog, failure
):
    caplog.set_level(logging.INFO)
    app, sim = await bridged(OPENAI_RECONNECT_SECONDS="3")
    sim.session_failure = failure
    started = time.monotonic()
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(10.0)))
        disconnect = await call.wait_disconnect(8)
        streaming.cancel()
    elapsed = time.monotonic() - started
    params = disconnect["parameters"]
    assert params["reason"] == "error"
    assert params["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    assert 2.5 <= elapsed <= 5.0  # the budget, not one attempt, and not forever
    assert 2 <= len(sim.sessions) <= 8  # backoff between every attempt: no storm
    gaps = [b.created_at - a.created_at for a, b in zip(sim.sessions, sim.sessions[1:], strict=False)]
    assert all(g >= 0.1 for g in gaps)
    assert len(warnings_about(caplog, "OpenAI")) <= 2  # one line for the outage, one for the end
    metrics = app.metrics.render().decode()
    assert "connector_openai_connect_attempts_total" in metrics


async def test_a_quota_error_after_the_handshake_escalates_at_once(bridged):
    app, sim = await bridged(OPENAI_RECONNECT_SECONDS="5")
    sim.session_failure = SessionFailure("insufficient_quota", after="created")
    started = time.monotonic()
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(6.0)))
        disconnect = await call.wait_disconnect(6)
        streaming.cancel()
    assert disconnect["parameters"]["reason"] == "error"
    assert disconnect["parameters"]["outputVariables"]["ESCALATION_REQUIRED"] == "true"
    assert len(sim.sessions) == 1 and time.monotonic() - started < 2.0


async def test_the_budget_resets_once_a_socket_has_proved_healthy(bridged):
    app, sim = await bridged(Script(default=Turn(say="Hello.", seconds=0.5)), OPENAI_RECONNECT_SECONDS="1.5")
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(silence(12.0)))
        for n in range(3):  # three outages, each after a healthy stretch: 4.5 s > one budget
            await wait_for(lambda n=n: len(sim.sessions) == n + 1 and sim.sessions[n].received)
            await asyncio.sleep(3.5)
            sim.sessions[n].drop()
        await wait_for(lambda: len(sim.sessions) == 4 and sim.sessions[3].received)
        assert call.record.disconnect is None
        streaming.cancel()
        await call.close()
    assert sim.violations == [] and call.record.violations == []


# -- 2. every unheard item is truncated -------------------------------------------------------


async def test_a_barge_in_truncates_every_item_of_the_cut_answer(bridged):
    script = Script(
        turns=[
            Turn(
                say="First part of the answer.", seconds=2.0, more=[Turn(say="The second part.", seconds=3.0)]
            )
        ],
        default=Turn(say="Yes?", seconds=0.5),
    )
    app, sim = await bridged(script)
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(0.6))
        await wait_for(lambda: call.record.audio_frames)
        await asyncio.sleep(0.8)
        await call.stream(speech_like(1.0, seed=4) + silence(2.0))
        await call.close()
    truncates = {e["item_id"]: e["audio_end_ms"] for e in sim.events_of("conversation.item.truncate")}
    first, second = (o["id"] for o in sim.sessions[0].responses[0].output)
    assert set(truncates) == {first, second}
    assert 400 <= truncates[first] <= 2000 and truncates[second] == 0
    assert sim.violations == [] and call.record.violations == []


# -- 3. no answer over the caller -------------------------------------------------------------


async def test_a_tool_result_while_the_caller_speaks_is_handed_over_and_vad_answers(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=1.2, result={"status": "gold"})
    script = Script(
        turns=[Turn(call=TOOL, arguments={"accountNumber": "12345"})],
        default=Turn(say="You are a gold member.", seconds=0.6),
    )
    app, sim = await bridged(script, TOOL_FILLER_AFTER_MS="0", **genesys_api.env())
    sim.hold_speech_stopped = asyncio.Event()
    sim.hold_speech_stopped.set()
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(0.7))
        await wait_for(lambda: genesys_api.executions)
        sim.hold_speech_stopped.clear()  # the caller goes on talking past the tool result
        await call.stream(speech_like(0.6, seed=4) + silence(1.6))
        outputs_at = len(sim.sessions[0].received)
        assert any(
            e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
            for e in sim.sessions[0].received
        )
        sim.hold_speech_stopped.set()
        await call.stream(silence(2.0))
        await call.close()
    after = sim.sessions[0].received[:outputs_at]
    plain = [e for e in after if e["type"] == "response.create" and purpose(e) != "filler"]
    assert plain == []  # nothing was started over the caller
    assert len(sim.sessions[0].responses) == 2  # the tool call, then VAD's answer after the caller
    assert sim.violations == [] and call.record.violations == []


# -- 4. the gate never wedges or loses a request ------------------------------------------------


async def test_a_refused_request_does_not_wedge_later_ones(bridged):
    app, sim = await bridged(
        Script(default=Turn(say="Got your digits.", seconds=0.5)), INITIAL_GREETING="Hi!"
    )
    sim.refuse_create = lambda e: "invalid_value" if purpose(e) == "greeting" else None
    async with new_call(app) as call:
        await call.open()
        await wait_for(lambda: creates(sim))
        await call.send_dtmf("12#")
        await call.stream(silence(2.0))
        await call.close()
    assert len(creates(sim)) == 2  # the digits still got their answer
    assert len(call.record.bot_audio) == 4000
    assert sim.violations == [] and call.record.violations == []


async def test_a_greeting_that_loses_the_race_to_a_vad_answer_is_spoken_after_it(bridged):
    app, sim = await bridged(
        Script(default=Turn(say="An answer.", seconds=0.8)), INITIAL_GREETING="Welcome to the demo line."
    )
    sim.connect_delay = 1.6  # the caller speaks before OpenAI is ready: buffered, then VAD answers first
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(0.8, seed=3) + silence(0.8) + silence(4.0))
        await call.close()
    spoken = [r.purpose for r in sim.sessions[0].responses]
    assert spoken == [None, "greeting"]
    assert sim.violations == [] and call.record.violations == []


# -- 5. no socket outlives its call --------------------------------------------------------------


@pytest.mark.parametrize("moment", ["connecting", "loading-schemas", "answering", "tool-running", "farewell"])
async def test_every_openai_socket_is_closed_within_5_s_of_closed(bridged, genesys_api, moment):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=3.0, result={"status": "gold"})
    turns = {
        "tool-running": [Turn(call=TOOL, arguments={"accountNumber": "1"})],
        "farewell": [Turn(call="end_conversation_successfully", arguments={"summary": "x"})],
    }.get(moment, [Turn(say="A long answer.", seconds=6.0)])
    app, sim = await bridged(
        Script(turns=turns, farewell=Turn(say="Goodbye now.", seconds=4.0)),
        sim_options={"speed": 1.0},
        **genesys_api.env(),
    )
    if moment == "connecting":
        sim.connect_delay = 2.0
    if moment == "loading-schemas":
        genesys_api.schema_delay = 2.5
    variables = {"DATA_ACTION_IDS": "acct-1"}
    async with new_call(app, input_variables=variables) as call:
        await call.open()
        if moment in ("connecting", "loading-schemas"):
            await asyncio.sleep(0.4)
        else:
            await call.stream(speech_like(1.0, seed=3) + silence(0.6))
            await wait_for(lambda: call.record.audio_frames or genesys_api.executions)
            await asyncio.sleep(0.3)
        await call.close()
        closed_at = call.record.closed_at
    await settled(app, timeout=5)
    await wait_for(lambda: sim.connections and all(s.closed_at for s in sim.sessions), timeout=6)
    assert closed_at is not None
    assert all(s.closed_at - closed_at < 5.0 for s in sim.sessions)
    if moment == "connecting":  # the handshake was cut short: the simulator never saw a session
        return
    assert sim.sessions


# -- 6. ids within the service's limits ----------------------------------------------------------


async def test_approved_mcp_calls_use_ids_the_service_accepts(bridged):
    script = Script(
        turns=[Turn(approval={"server_label": "crm", "name": "lookup", "arguments": {"id": "7"}})]
    )
    mcp = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/crm"}
    app, sim = await bridged(
        script,
        ENABLE_MCP_TOOLS="true",
        MCP_TOOLS_JSON=json.dumps([mcp]),
        MCP_APPROVAL_POLICY="approve",
        MCP_APPROVED_TOOLS="crm:lookup",
    )
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(2.0))
        await call.close()
    answers = [
        e["item"]
        for e in sim.events_of("conversation.item.create")
        if e["item"]["type"] == "mcp_approval_response"
    ]
    assert [a["approve"] for a in answers] == [True]
    ids = [e.get("event_id") for e in sim.client_events] + [a["id"] for a in answers]
    assert all(len(i) <= 32 for i in ids if i)
    assert sim.violations == []


# -- 7. restores keep the real history ----------------------------------------------------------


async def test_caller_audio_of_an_utterance_cut_by_a_drop_is_replayed_on_the_new_socket(bridged):
    app, sim = await bridged(Script(default=Turn(say="Understood.", seconds=0.5)))
    utterance = speech_like(2.0, seed=3)
    async with new_call(app) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(utterance + silence(3.0)))
        await wait_for(
            lambda: (
                sim.sessions
                and any(
                    e["type"] == "input_audio_buffer.speech_started"
                    for _, d, e in sim.sessions[0].timeline
                    if d == "out"
                )
            )
        )
        await asyncio.sleep(0.5)
        sim.drop_all()  # mid-utterance
        await streaming
        await call.close()
    assert len(sim.sessions) == 2
    old, new = sim.sessions
    started = next(
        e for _, d, e in old.timeline if d == "out" and e["type"] == "input_audio_buffer.speech_started"
    )
    spoken_before_drop = bytes(old.audio_received[started["audio_start_ms"] * 8 :])
    assert len(spoken_before_drop) >= 0.4 * 8000
    assert bytes(new.audio_received).startswith(spoken_before_drop)
    assert sim.violations == [] and call.record.violations == []


# -- 8. turn details -------------------------------------------------------------------------------


async def test_greeting_filler_and_farewell_never_call_tools(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=1.5, result={"status": "gold"})
    script = Script(
        turns=[
            Turn(call=TOOL, arguments={"accountNumber": "12345"}),
            Turn(call="end_conversation_successfully", arguments={"summary": "done"}),
        ],
        default=Turn(say="Gold.", seconds=0.4),
        filler=Turn(say="Still checking.", seconds=0.5),
        farewell=Turn(say="Bye.", seconds=0.5),
    )
    app, sim = await bridged(
        script, INITIAL_GREETING="Hello!", TOOL_FILLER_AFTER_MS="400", **genesys_api.env()
    )
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        streaming = asyncio.create_task(
            call.stream(
                silence(1.5) + speech_like(1.0, seed=3) + silence(4.0) + speech_like(0.8, seed=4) + silence(6)
            )
        )
        await call.wait_disconnect(20)
        streaming.cancel()
    own = {
        purpose(e): e["response"].get("tool_choice")
        for e in creates(sim)
        if purpose(e) in ("greeting", "filler", "farewell")
    }
    assert own == {"greeting": "none", "filler": "none", "farewell": "none"}


async def test_tools_ready_after_the_ending_began_keep_turns_locked(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA)
    genesys_api.schema_delay = 1.8  # both schemas: past TOOLS_READY_WAIT, while the farewell plays
    script = Script(
        turns=[Turn(call="end_conversation_successfully", arguments={"summary": "done"})],
        farewell=Turn(say="Goodbye, have a nice day.", seconds=3.0),
    )
    app, sim = await bridged(
        script, sim_options={"speed": 1.0}, FAREWELL_TIMEOUT_SECONDS="8", **genesys_api.env()
    )
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(speech_like(1.0, seed=3) + silence(12)))
        await call.wait_disconnect(15)
        streaming.cancel()
    updates = sim.events_of("session.update")

    def turn_detection(update: dict) -> dict | None:
        return (update["session"].get("audio") or {}).get("input", {}).get("turn_detection")

    locked = next(
        i for i, e in enumerate(updates) if (turn_detection(e) or {}).get("create_response") is False
    )
    for later in updates[locked + 1 :]:
        td = turn_detection(later)
        assert td is None or td.get("create_response") is False
    assert call.record.disconnect["parameters"]["reason"] == "completed"


async def test_a_refused_tools_update_does_not_end_the_call(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA)
    genesys_api.schema_delay = 1.8  # both schemas: past TOOLS_READY_WAIT, a second update
    app, sim = await bridged(Script(default=Turn(say="Sure.", seconds=0.5)), **genesys_api.env())
    sim.refuse_update = lambda e: (
        "invalid_value" if e["session"].get("tools") and len(sim.events_of("session.update")) > 1 else None
    )
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        await call.stream(silence(5.0) + speech_like(1.0, seed=3) + silence(2.0))
        await call.close()
    assert len(sim.events_of("session.update")) == 2
    assert call.record.disconnect is None
    assert len(call.record.bot_audio) == 4000


async def test_bot_turns_are_reported_when_played_with_what_the_caller_heard(bridged):
    script = Script(
        turns=[Turn(say="one two three four five six seven eight nine ten", seconds=4.0)],
        default=Turn(say="Yes?", seconds=0.5),
    )
    app, _sim = await bridged(script)
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(0.6))
        await wait_for(lambda: call.record.audio_frames)
        first = call.record.audio_frames[0][0]
        await asyncio.sleep(max(0.0, first + 1.6 - time.monotonic()))
        await call.stream(speech_like(1.0, seed=4) + silence(2.5))
        await call.close()
    turns = call.record.events("bot_turn_response")
    barged = call.record.events("barge_in")[0][0]
    cut = next(e for t, e in turns if t >= barged - 0.01)
    words = cut["data"]["text"].split()
    assert 2 <= len(words) <= 6  # what was heard of the ten words, not the whole answer
    last = [t for t, e in turns if e["data"]["text"] == "Yes?"]
    yes_frames = [t for t, _ in call.record.audio_frames if t > barged + 0.5]
    assert last and last[0] >= yes_frames[-1] - 0.05  # reported once it had played


async def test_a_key_pressed_before_the_requested_answer_starts_cancels_it(bridged):
    app, sim = await bridged(Script(default=Turn(say="An answer that the keypad stops.", seconds=3.0)))
    sim.created_delay = 0.8
    async with new_call(app) as call:
        await call.open()
        await call.send_dtmf("5#")
        await wait_for(lambda: creates(sim))
        await call.send_dtmf("7")  # the first key of the next entry, while the answer is pending
        await call.stream(silence(3.0))
        await call.close()
    kinds = [
        e["type"] for e in sim.sessions[0].received if e["type"] in ("response.create", "response.cancel")
    ]
    assert kinds[:2] == ["response.create", "response.cancel"]
    first_answer = sim.sessions[0].responses[0]
    assert first_answer.cancelled == "client_cancelled"


# -- 9. pause is a pause -------------------------------------------------------------------------


async def pause(call) -> float:
    call.paused = True
    await call.send_message("paused")
    return time.monotonic()


async def resume(call) -> float:
    call.paused = False
    start = f"PT{call.audio_seconds_sent:.3f}S"
    await call.send_message("resumed", {"start": start, "discarded": "PT0S"})
    return time.monotonic()


async def test_while_paused_the_idle_timer_stands_still_and_bot_audio_is_held(bridged):
    app, _sim = await bridged(
        Script(default=Turn(say="Here is the answer.", seconds=1.5)), IDLE_TIMEOUT_SECONDS="2"
    )
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(0.55))
        paused_at = await pause(call)  # the answer is on its way
        await asyncio.sleep(3.0)  # longer than the idle timeout
        resumed_at = await resume(call)
        assert call.record.disconnect is None
        disconnect = await call.wait_disconnect(8)
    during = [t for t, _ in call.record.audio_frames if paused_at + 0.05 < t < resumed_at]
    assert during == []  # held while paused
    received, answer_end, farewell_start = 0, None, None
    for t, size in call.record.audio_frames:
        if received >= 12_000 and farewell_start is None:
            farewell_start = t
        received += size
        if received >= 12_000 and answer_end is None:
            answer_end = t
    assert answer_end is not None and answer_end > resumed_at  # played after the pause
    assert farewell_start is not None and farewell_start - answer_end >= 1.4  # idle counted anew
    assert disconnect["parameters"]["reason"] == "completed"


async def test_a_limit_reached_while_paused_speaks_its_farewell_after_resumed(bridged):
    app, _sim = await bridged(
        Script(farewell=Turn(say="Time is up, goodbye.", seconds=1.0)), MAX_CALL_DURATION_SECONDS="1.5"
    )
    async with new_call(app) as call:
        await call.open()
        await asyncio.sleep(0.5)
        await pause(call)
        await asyncio.sleep(2.5)
        resumed_at = await resume(call)
        assert call.record.disconnect is None
        disconnect = await call.wait_disconnect(10)
    farewell = [t for t, _ in call.record.audio_frames if t >= resumed_at]
    assert len(call.record.bot_audio) == 8000 and farewell
    assert disconnect["parameters"]["reason"] == "completed"


async def test_a_pause_mid_utterance_closes_the_caller_turn(bridged):
    app, sim = await bridged(Script(default=Turn(say="Okay.", seconds=0.5)))
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.2, seed=3))  # no silence after: the caller is mid-word
        await wait_for(
            lambda: any(
                e["type"] == "input_audio_buffer.speech_started"
                for _, d, e in sim.sessions[0].timeline
                if d == "out"
            )
        )
        await pause(call)
        await asyncio.sleep(1.5)
        stopped = [
            e
            for _, d, e in sim.sessions[0].timeline
            if d == "out" and e["type"] == "input_audio_buffer.speech_stopped"
        ]
        await resume(call)
        await call.stream(silence(1.0))
        await call.close()
    assert len(stopped) == 1


# -- 10. the flow's language -----------------------------------------------------------------------


def session_update_languages(sim) -> list[tuple[str, str | None]]:
    out = []
    for e in sim.events_of("session.update"):
        session = e["session"]
        transcription = ((session.get("audio") or {}).get("input") or {}).get("transcription") or {}
        if "instructions" in session:
            out.append((session["instructions"], transcription.get("language")))
    return out


async def test_the_flow_language_shapes_instructions_and_transcription_and_an_update_switches_it(bridged):
    app, sim = await bridged()
    async with new_call(app, language="es-es") as call:
        await call.open()
        await wait_for(lambda: sim.events_of("session.update"))
        await call.send_message("update", {"language": "fr-FR"})
        await wait_for(lambda: len(sim.events_of("session.update")) == 2)
        await call.close()
    (first, first_lang), (second, second_lang) = session_update_languages(sim)
    assert "Speak es-es" in first and first_lang == "es"
    assert "Speak fr-FR" in second and second_lang == "fr"
    assert sim.violations == [] and call.record.violations == []


async def test_language_from_the_environment_wins_over_the_flow(bridged):
    app, sim = await bridged(LANGUAGE="de-DE")
    async with new_call(app, language="es-es") as call:
        await call.open()
        await wait_for(lambda: sim.events_of("session.update"))
        await call.close()
    ((instructions, language),) = session_update_languages(sim)
    assert "Speak de-DE" in instructions and language == "de"


@pytest.mark.parametrize(("setting", "expected"), [("en-US,es-ES", ["en-US", "es-ES"]), (None, None)])
async def test_opened_lists_supported_languages_when_asked(start_app, setting, expected):
    from conftest import make_settings, recording_factory

    env = {"SUPPORTED_LANGUAGES": setting} if setting else {}
    app = await start_app(make_settings(**env), handler_factory=recording_factory())
    async with new_call(app, ask_languages=True) as call:
        opened = await call.open()
        await call.close()
    assert opened["parameters"].get("supportedLanguages") == expected


# -- 11. bad requests get answers, not tracebacks ------------------------------------------------


async def expect_status(url: str, headers, status: int) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as excinfo:
        async with connect(url, additional_headers=headers, open_timeout=5):
            pass
    assert excinfo.value.response.status_code == status


async def test_a_repeated_audiohook_header_is_400_counted_and_logged_once(start_app, caplog):
    app = await start_app()
    call = new_call(app)
    headers = [*call.headers().items(), ("Audiohook-Session-Id", call.session_id)]
    for _ in range(3):
        await expect_status(ws_url(app), headers, 400)
    lines = [r for r in caplog.records if "sent twice" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert 'connector_auth_failures_total{reason="repeated_header"} 3.0' in app.metrics.render().decode()


async def test_a_flood_of_refused_requests_logs_one_line_per_reason(start_app, caplog):
    app = await start_app()
    call = new_call(app)
    headers = dict(call.headers(), **{"X-API-KEY": "wrong"})
    await asyncio.gather(*(expect_status(ws_url(app), headers, 401) for _ in range(40)))
    refusals = [r for r in caplog.records if "upgrade refused" in r.getMessage()]
    assert len(refusals) == 1
    assert 'connector_auth_failures_total{reason="wrong_api_key"} 40.0' in app.metrics.render().decode()


async def test_handshakes_in_progress_are_capped(start_app):
    from conftest import make_settings

    app = await start_app(make_settings(MAX_PENDING_HANDSHAKES="2"))
    idle = []
    for _ in range(3):  # a slowloris: connected, the request never finished
        _reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"GET /audiohook HTTP/1.1\r\nHost: x\r\n")
        idle.append(writer)
    await wait_for(lambda: app.pending_handshakes == 3)
    try:
        await expect_status(ws_url(app), new_call(app).headers(), 503)
    finally:
        for writer in idle:
            writer.close()
    await wait_for(lambda: app.pending_handshakes == 0)
    async with new_call(app) as call:  # and once they are gone, calls get in again
        await call.open()
        await call.close()


async def test_json_nested_too_deep_is_a_protocol_violation_not_a_dropped_socket(start_app):
    from conftest import recording_factory

    app = await start_app(handler_factory=recording_factory())
    async with new_call(app) as call:
        await call.open()
        await call.send_raw("[" * 30_000 + "]" * 30_000)
        disconnect = await call.wait_disconnect(5)
    assert disconnect["parameters"]["reason"] == "error"
    assert call.record.closed_at is not None


async def test_a_retry_after_beyond_30_s_is_clamped_with_a_log_line(start_app, caplog):
    from conftest import recording_factory

    app = await start_app(handler_factory=recording_factory())
    async with new_call(app) as call:
        await call.open()
        await call.send_message("error", {"code": 429, "message": "slow down", "retryAfter": "PT3600S"})
        await wait_for(lambda: any("clamped" in r.getMessage() for r in caplog.records))
        session = next(iter(app.sessions))
        assert session.playout.hold_until - session.now() <= 30.0
        await call.close()


async def test_stereo_frames_of_odd_length_never_swap_the_channels(start_app):
    from conftest import RecordingHandler, recording_factory

    from simulators.call_simulator import STEREO

    app = await start_app(handler_factory=recording_factory())
    external = bytes(range(0, 200, 2)) * 4  # the caller
    interleaved = bytes(b for pair in zip(external, b"\xff" * len(external), strict=True) for b in pair)
    async with new_call(app, media=[STEREO]) as call:
        await call.open()
        position = 0
        for size in (3, 1, 5, 2, 7, 100, 1, 201):  # odd lengths leave half a pair for the next frame
            await call.send_raw(interleaved[position : position + size])
            position += size
        await call.send_raw(interleaved[position:])
        await asyncio.sleep(0.2)
        await call.close()
    assert bytes(RecordingHandler.instances[-1].audio) == external


async def test_the_session_is_recycled_by_its_own_lifetime_whatever_the_host_clock(bridged):
    app, sim = await bridged(sim_options={"session_seconds": 8.0})
    sim.clock_offset = 7200.0  # OpenAI's clock two hours ahead of ours
    async with new_call(app) as call:
        await call.open()
        await call.stream(silence(8.0))
        await call.close()
    assert len(sim.sessions) == 2  # replaced before its end (at 3/4 of 8 s), not left to expire
    assert 5.0 <= sim.sessions[1].created_at - sim.sessions[0].created_at <= 7.5
