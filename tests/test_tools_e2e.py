"""Tools end to end: Genesys Data Actions and remote MCP through both simulators."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from conftest import API_KEY, ws_url
from fake_genesys_api import CLIENT_SECRET, FakeAction
from test_data_actions import ACCOUNT_RESULT, ACCOUNT_SCHEMA

from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.script import Script, Turn

TOOL = "genesys_data_action_get_account"


def new_call(app, **kwargs) -> GenesysCall:
    kwargs.setdefault("ping_interval", None)
    return GenesysCall(ws_url(app), api_key=API_KEY, **kwargs)


def function_outputs(sim) -> list[str]:
    return [
        e["item"]["output"]
        for e in sim.events_of("conversation.item.create")
        if e["item"]["type"] == "function_call_output"
    ]


def session_tools(sim) -> list[dict]:
    return sim.events_of("session.update")[0]["session"]["tools"]


async def test_a_data_action_result_reaches_the_model_redacted(bridged, genesys_api, caplog):
    caplog.set_level(logging.DEBUG)
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, result=ACCOUNT_RESULT)
    script = Script(
        turns=[Turn(call=TOOL, arguments={"accountNumber": "12345"})],
        default=Turn(say="Your account is active.", seconds=0.8),
    )
    app, sim = await bridged(
        script,
        **genesys_api.env(GENESYS_TOOL_OUTPUT_REDACTION_FIELDS="customer.ssn,accounts.number"),
    )
    variables = {"DATA_ACTION_IDS": "acct-1", "DATA_ACTION_DESCRIPTIONS": "Find the caller's account"}
    async with new_call(app, input_variables=variables) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(3.0))
        await call.close()
    tool = next(t for t in session_tools(sim) if t.get("name") == TOOL)
    assert tool["description"] == "Find the caller's account"
    assert tool["parameters"]["required"] == ["accountNumber"]
    assert (
        "genesys_data_action_get_account: Find the caller's account"
        in sim.events_of("session.update")[0]["session"]["instructions"]
    )
    assert genesys_api.executions == [("acct-1", {"accountNumber": "12345"})]
    output = json.loads(function_outputs(sim)[0])
    assert output["customer"]["ssn"] == "[REDACTED]" and output["accounts"][1]["number"] == "[REDACTED]"
    kinds = [e["type"] for e in sim.sessions[0].received if e["type"] != "input_audio_buffer.append"]
    assert kinds.index("response.create") > kinds.index("conversation.item.create")  # the model goes on
    assert len(call.record.bot_audio) == 6400
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("123-45-6789", "4111111111111111", CLIENT_SECRET, "token-1-secret"):
        assert secret not in logged
    assert sim.violations == [] and call.record.violations == []


async def test_a_hanging_action_leaves_no_dead_air(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=3.0, result={"status": "active"})
    script = Script(
        turns=[Turn(call=TOOL, arguments={"accountNumber": "12345"})],
        default=Turn(say="All done.", seconds=0.5),
        filler=Turn(say="Still checking.", seconds=0.6),
    )
    app, sim = await bridged(script, TOOL_FILLER_AFTER_MS="500", **genesys_api.env())
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(0.8))
        appended_before = len(sim.sessions[0].audio_received)
        pinging_started = time.monotonic()
        streaming = asyncio.create_task(call.stream(silence(4.0)))
        while time.monotonic() - pinging_started < 2.5:
            await call.ping()
            await asyncio.sleep(0.2)
        await streaming
        await call.close()
    assert max(call.record.pong_rtts) < 0.05
    assert len(sim.sessions[0].audio_received) - appended_before >= 2.4 * 8000  # caller audio kept flowing
    purposes = [
        e.get("response", {}).get("metadata", {}).get("purpose") for e in sim.events_of("response.create")
    ]
    assert purposes == ["filler", "answer"]
    assert len(call.record.bot_audio) == 4800 + 4000  # the holding phrase, then the answer
    assert json.loads(function_outputs(sim)[0]) == {"status": "active"}
    assert sim.violations == [] and call.record.violations == []


async def test_only_allowed_actions_up_to_the_cap_are_offered(bridged, genesys_api):
    for action_id in ("a", "b", "c", "d"):
        genesys_api.actions[action_id] = FakeAction(dict(ACCOUNT_SCHEMA, title=f"Action {action_id}"))
    app, sim = await bridged(
        **genesys_api.env(GENESYS_ALLOWED_DATA_ACTION_IDS="b,c,d", GENESYS_MAX_TOOLS_PER_SESSION="2")
    )
    variables = {"DATA_ACTION_IDS": "a|b|c|d", "DATA_ACTION_DESCRIPTIONS": "A|B|C|D"}
    async with new_call(app, input_variables=variables) as call:
        await call.open()
        await call.stream(silence(0.5))
        await call.close()
    offered = {
        t["name"]: t["description"]
        for t in session_tools(sim)
        if t["name"].startswith("genesys_data_action_")
    }
    assert offered == {"genesys_data_action_action_b": "B", "genesys_data_action_action_c": "C"}


async def test_an_unreachable_genesys_does_not_hold_up_the_call(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA)
    genesys_api.token_delay = 5.0  # the login service hangs
    app, sim = await bridged(
        Script(default=Turn(say="Hello.", seconds=0.5)), INITIAL_GREETING="Hi", **genesys_api.env()
    )
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        started = time.monotonic()
        await call.open()
        await call.stream(silence(4.0))
        await call.close()
    assert call.record.audio_frames[0][0] - started < 4.0  # the greeting did not wait for Genesys
    assert call.record.violations == [] and sim.violations == []


MCP_CRM = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://mcp.example.com/crm",
    "allowed_tools": ["lookup", "delete_account"],
    "require_approval": "always",
    "headers": {"X-Tenant": "acme"},
    "authorization": "mcp-bearer-secret-value",
    "server_description": "Customer records",
}
MCP_OTHER = {
    "type": "mcp",
    "server_label": "other",
    "server_url": "https://evil.example.net/mcp",
    "require_approval": "never",
}


async def test_mcp_entries_allowlist_approvals_and_events(bridged, caplog):
    caplog.set_level(logging.DEBUG)
    script = Script(
        turns=[
            Turn(approval={"server_label": "crm", "name": "lookup", "arguments": {"id": "7"}}),
            Turn(
                mcp={
                    "server_label": "crm",
                    "name": "lookup",
                    "arguments": {"id": "7"},
                    "output": "gold member",
                }
            ),
            Turn(approval={"server_label": "crm", "name": "delete_account", "arguments": {"id": "7"}}),
            Turn(mcp={"server_label": "crm", "name": "lookup", "arguments": {}, "error": "boom"}),
        ]
    )
    app, sim = await bridged(
        script,
        ENABLE_MCP_TOOLS="true",
        MCP_TOOLS_JSON=json.dumps([MCP_CRM, MCP_OTHER]),
        MCP_ALLOWED_SERVER_URLS="https://mcp.example.com/crm",
        MCP_APPROVAL_POLICY="approve",
        MCP_APPROVED_TOOLS="crm:lookup",
    )
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(2.0) + speech_like(1.0, seed=4) + silence(2.0))
        await call.close()
    mcp = [t for t in session_tools(sim) if t.get("type") == "mcp"]
    assert mcp == [MCP_CRM]  # passed unchanged; the unlisted server dropped
    assert "  - crm: Customer records" in sim.events_of("session.update")[0]["session"]["instructions"]
    answers = [
        e["item"]
        for e in sim.events_of("conversation.item.create")
        if e["item"]["type"] == "mcp_approval_response"
    ]
    assert [a["approve"] for a in answers] == [True, False]
    kinds = [e["type"] for e in sim.sessions[0].received if e["type"] != "input_audio_buffer.append"]
    assert kinds.count("response.create") >= 2  # each answer is followed by a response
    messages = [r.getMessage() for r in caplog.records]
    # Found while reading the configuration: logged at start (test_startup), kept in the settings.
    assert any("MCP server other" in w and "dropped" in w for w in app.settings.warnings)
    assert "MCP tool listing completed: crm" in messages
    assert "MCP call completed: crm/lookup" in messages and "MCP call failed: crm/lookup" in messages
    assert "MCP approval request for crm/delete_account: denied" in messages
    logged = "\n".join(messages)
    assert "mcp-bearer-secret-value" not in logged and "acme" not in logged
    assert sim.violations == [] and call.record.violations == []


async def test_mcp_approvals_are_denied_by_default(bridged):
    script = Script(turns=[Turn(approval={"server_label": "crm", "name": "lookup", "arguments": {}})])
    app, sim = await bridged(script, ENABLE_MCP_TOOLS="true", MCP_TOOLS_JSON=json.dumps([MCP_CRM]))
    async with new_call(app) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(2.0))
        await call.close()
    answers = [
        e["item"]
        for e in sim.events_of("conversation.item.create")
        if e["item"]["type"] == "mcp_approval_response"
    ]
    assert [a["approve"] for a in answers] == [False]
    assert sim.violations == []


async def test_barge_in_still_works_while_an_action_runs(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, delay=4.0)
    script = Script(
        turns=[Turn(call=TOOL, arguments={"accountNumber": "12345"})],
        filler=Turn(say="Please hold on while I look that up for you.", seconds=3.0),
        default=Turn(say="Okay.", seconds=0.5),
    )
    app, sim = await bridged(script, TOOL_FILLER_AFTER_MS="200", **genesys_api.env())
    async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(1.2))  # the holding phrase starts
        await call.stream(speech_like(0.8, seed=5) + silence(1.5))  # the caller talks over it
        await call.close()
    assert len(call.record.events("barge_in")) == 1
    assert len(sim.events_of("conversation.item.truncate")) == 1
    assert sim.violations == [] and call.record.violations == []


async def test_concurrent_calls_share_one_token_fetch(bridged, genesys_api):
    genesys_api.actions["acct-1"] = FakeAction(ACCOUNT_SCHEMA, result={"status": "active"})
    genesys_api.token_delay = 0.3
    script = Script(
        turns=[Turn(call=TOOL, arguments={"accountNumber": "12345"})] * 4,
        default=Turn(say="Done.", seconds=0.3),
    )
    app, sim = await bridged(script, **genesys_api.env())

    async def one_call():
        async with new_call(app, input_variables={"DATA_ACTION_IDS": "acct-1"}) as call:
            await call.open()
            await call.stream(speech_like(1.0, seed=3) + silence(1.5))
            await call.close()

    await asyncio.gather(*(one_call() for _ in range(4)))
    assert genesys_api.token_requests == 1
    assert len(genesys_api.executions) == 4
    assert sim.violations == []
