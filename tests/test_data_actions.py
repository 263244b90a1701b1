"""Genesys Data Actions against a fake Genesys Cloud API: OAuth, schemas, execution, failures."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from conftest import OPENAI_KEY
from fake_genesys_api import FakeAction

from config import ConfigError, load_settings, region_domain
from genesys_actions import (
    REDACTED,
    ActionError,
    DataActionTools,
    GenesysApi,
    redact,
    requested_actions,
    tool_name,
)

ACCOUNT_SCHEMA = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "title": "Get Account Request",
    "type": "object",
    "properties": {"accountNumber": {"type": "string", "pattern": "^[0-9]{4,10}$"}},
    "required": ["accountNumber"],
    "additionalProperties": False,
}
ACCOUNT_RESULT = {
    "customer": {"name": "Jane Doe", "ssn": "123-45-6789", "address": {"zip": "46204"}},
    "accounts": [
        {"number": "4111111111111111", "balance": 12.5},
        {"number": "5500000000000004", "balance": 3},
    ],
    "status": "active",
}


def settings_for(fake, **env):
    return load_settings({"GENESYS_API_KEY": "k", "OPENAI_API_KEY": OPENAI_KEY, **fake.env(**env)})


@pytest.fixture
async def client(genesys_api):
    clients = []

    async def make(clock=None, **env) -> GenesysApi:
        settings = settings_for(genesys_api, **env)
        api = GenesysApi(settings.genesys, **({"clock": clock} if clock else {}))
        await api.start()
        clients.append(api)
        return api

    yield make
    for api in clients:
        await api.close()


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "domain"),
    [
        ("mypurecloud.com", "mypurecloud.com"),
        ("usw2.pure.cloud", "usw2.pure.cloud"),
        ("mypurecloud.ie", "mypurecloud.ie"),
        ("mypurecloud.de", "mypurecloud.de"),
        ("mypurecloud.com.au", "mypurecloud.com.au"),
        ("mypurecloud.jp", "mypurecloud.jp"),
        ("cac1.pure.cloud", "cac1.pure.cloud"),
        ("euw2.pure.cloud", "euw2.pure.cloud"),
        ("aps1.pure.cloud", "aps1.pure.cloud"),
        ("apne2.pure.cloud", "apne2.pure.cloud"),
        ("use2.us-gov-pure.cloud", "use2.us-gov-pure.cloud"),
        ("https://api.mypurecloud.ie/", "mypurecloud.ie"),
        ("eu-west-2", "euw2.pure.cloud"),
    ],
)
def test_regions_map_to_their_domain(region, domain):
    assert region_domain(region) == domain


def test_region_and_overrides_give_the_api_and_login_urls():
    base = {
        "GENESYS_API_KEY": "k",
        "OPENAI_API_KEY": OPENAI_KEY,
        "ENABLE_GENESYS_DATA_ACTIONS": "true",
        "GENESYS_CLIENT_ID": "i",
        "GENESYS_CLIENT_SECRET": "s",
    }
    g = load_settings({**base, "GENESYS_REGION": "usw2.pure.cloud"}).genesys
    assert (g.api_base, g.login_base) == ("https://api.usw2.pure.cloud", "https://login.usw2.pure.cloud")
    g = load_settings(
        {**base, "GENESYS_REGION": "mypurecloud.de", "GENESYS_LOGIN_URL": "https://sso.example.com"}
    ).genesys
    assert (g.api_base, g.login_base) == ("https://api.mypurecloud.de", "https://sso.example.com")
    g = load_settings({**base, "GENESYS_BASE_URL": "https://api.mypurecloud.jp"}).genesys
    assert g.login_base == "https://login.mypurecloud.jp"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GENESYS_REGION": "mars.pure.cloud"}, "GENESYS_REGION must be a Genesys Cloud region"),
        (
            {"ENABLE_GENESYS_DATA_ACTIONS": "true", "GENESYS_REGION": "mypurecloud.com"},
            "GENESYS_CLIENT_ID and GENESYS_CLIENT_SECRET are required",
        ),
        (
            {"ENABLE_GENESYS_DATA_ACTIONS": "true", "GENESYS_CLIENT_ID": "i", "GENESYS_CLIENT_SECRET": "s"},
            "GENESYS_REGION",
        ),
        ({"GENESYS_BASE_URL": "api.mypurecloud.com"}, "GENESYS_BASE_URL must be an http"),
    ],
)
def test_bad_genesys_settings_stop_start_up(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"GENESYS_API_KEY": "k", "OPENAI_API_KEY": OPENAI_KEY, **env})


# -- OAuth -----------------------------------------------------------------------------------


async def test_concurrent_calls_share_one_token_fetch(genesys_api, client):
    genesys_api.token_delay = 0.2
    api = await client()
    tokens = await asyncio.gather(*(api.token() for _ in range(20)))
    assert len(set(tokens)) == 1 and genesys_api.token_requests == 1


async def test_the_token_is_refreshed_before_it_expires(genesys_api, client):
    now = [0.0]
    genesys_api.expires_in = 600
    api = await client(clock=lambda: now[0])
    first = await api.token()
    now[0] = 530.0
    assert await api.token() == first and genesys_api.token_requests == 1
    now[0] = 545.0  # inside the last minute of its 600 s life: refreshed
    assert await api.token() != first and genesys_api.token_requests == 2
    now[0] = 600.0
    await api.token()
    assert genesys_api.token_requests == 2


async def test_a_401_from_the_api_triggers_one_refresh(genesys_api, client):
    genesys_api.actions["a1"] = FakeAction(ACCOUNT_SCHEMA)
    api = await client()
    await api.token()
    genesys_api.expire_tokens()
    status, _ = await api.execute("a1", {"accountNumber": "1234"})
    assert status == 200 and genesys_api.token_requests == 2


async def test_wrong_client_credentials_are_a_clear_error(genesys_api, client):
    api = await client(GENESYS_CLIENT_SECRET="wrong")
    genesys_api.actions["a1"] = FakeAction(ACCOUNT_SCHEMA)
    tools = DataActionTools(api, ["a1"], [])
    await tools.prepare()
    assert tools.tools == {}


# -- tools per call --------------------------------------------------------------------------


def test_descriptions_stay_aligned_through_filtering_and_the_cap():
    chosen = requested_actions(["a", "b", "c", "d"], ["A", "B", "C"], frozenset({"b", "c", "d"}), cap=2)
    assert chosen == [("b", "B"), ("c", "C")]
    assert requested_actions(["a", "a", "b"], ["A", "A2", "B"], frozenset(), 10) == [("a", "A"), ("b", "B")]


def test_tool_names_are_valid_at_most_64_and_unique():
    taken: set[str] = set()
    long_label = "Get the account balance and the last twenty transactions of a customer by number"
    names = [tool_name(long_label, f"id-{n}", taken) for n in range(3)]
    assert len(set(names)) == 3
    for name in names:
        assert len(name) <= 64 and name.startswith("genesys_data_action_")
        assert all(c.isalnum() or c in "_-" for c in name)
    assert tool_name("Ünïcode / spaces!", "x", set()) == "genesys_data_action_n_code_spaces"


async def test_tools_are_built_from_the_schemas_and_schemas_are_cached(genesys_api, client, caplog):
    genesys_api.actions["act-1"] = FakeAction(
        ACCOUNT_SCHEMA, {"type": "object", "properties": {"status": {}, "customer": {}}}
    )
    genesys_api.actions["act-2"] = FakeAction(dict(ACCOUNT_SCHEMA, title="Get Account Request"))
    api = await client(GENESYS_ALLOWED_DATA_ACTION_IDS="act-1,act-2,act-missing")
    tools = DataActionTools(
        api, ["blocked", "act-1", "act-missing", "act-2"], ["B", "Find an account", "M", "Second"]
    )
    with caplog.at_level(logging.WARNING):
        await tools.prepare()
    names = list(tools.tools)
    assert names[0] == "genesys_data_action_get_account" and names[1].startswith(
        "genesys_data_action_get_account_"
    )
    first = tools.specs[0]
    assert first.name == names[0] and first.description == "Find an account Returns: customer, status."
    assert first.parameters["required"] == ["accountNumber"] and "$schema" not in first.parameters
    assert tools.tools[names[1]].description == "Second"
    messages = [r.getMessage() for r in caplog.records]
    assert any("blocked is not in GENESYS_ALLOWED_DATA_ACTION_IDS" in m for m in messages)
    assert any("act-missing left out" in m for m in messages)
    before = len(genesys_api.schema_requests)
    await DataActionTools(api, ["act-1"], []).prepare()
    assert len(genesys_api.schema_requests) == before  # cached


async def test_schemas_expire_after_the_ttl(genesys_api, client):
    now = [0.0]
    genesys_api.actions["a1"] = FakeAction(ACCOUNT_SCHEMA)
    api = await client(clock=lambda: now[0], GENESYS_SCHEMA_CACHE_SECONDS="60")
    await api.schema("a1", "inputschema")
    now[0] = 61.0
    await api.schema("a1", "inputschema")
    assert genesys_api.schema_requests.count(("a1", "inputschema")) == 2


async def prepared(genesys_api, client, action: FakeAction, **env) -> tuple[DataActionTools, str]:
    genesys_api.actions["acct"] = action
    api = await client(**env)
    tools = DataActionTools(api, ["acct"], ["Look up an account"])
    await tools.prepare()
    return tools, next(iter(tools.tools))


async def test_execute_sends_the_arguments_exactly_and_redacts_the_result(genesys_api, client, caplog):
    action = FakeAction(ACCOUNT_SCHEMA, result=ACCOUNT_RESULT)
    tools, name = await prepared(
        genesys_api,
        client,
        action,
        GENESYS_TOOL_OUTPUT_REDACTION_FIELDS="customer.ssn,accounts.number,customer.address.zip,nope.x",
    )
    with caplog.at_level(logging.DEBUG, logger="data-actions"):
        output, ok = await tools.run(name, '{"accountNumber": "12345"}')
    assert ok
    assert genesys_api.executions == [("acct", {"accountNumber": "12345"})]
    result = json.loads(output)
    assert result["customer"] == {"name": "Jane Doe", "ssn": REDACTED, "address": {"zip": REDACTED}}
    assert [a["number"] for a in result["accounts"]] == [REDACTED, REDACTED]
    assert result["accounts"][0]["balance"] == 12.5
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("123-45-6789", "4111111111111111", "5500000000000004", "46204"):
        assert secret not in logged and secret not in output
    assert "Jane Doe" in logged  # not a redaction field: shown at DEBUG only
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "Jane Doe" in r.getMessage())


def test_redaction_handles_nesting_and_arrays_at_any_level():
    value = {"a": [{"b": [{"c": 1, "d": 2}]}], "e": {"c": 3}}
    assert redact(value, ["a.b.c", "e.c"]) == {"a": [{"b": [{"c": REDACTED, "d": 2}]}], "e": {"c": REDACTED}}
    assert redact([{"x": 1}, {"x": 2}], ["x"]) == [{"x": REDACTED}, {"x": REDACTED}]
    assert value["e"]["c"] == 3  # the original is untouched


@pytest.mark.parametrize(
    ("mode", "expected", "executions"),
    [
        ("500", "the data service failed (HTTP 500); the action may or may not have run", 1),
        (
            "400",
            "the data service refused the request (HTTP 400): "
            "bad.request: Account {accountNumber} not found: {backendBody}",
            1,
        ),
        ("429", None, 2),
    ],
)
async def test_failures_give_the_model_a_short_error_and_retry_only_when_safe(
    genesys_api, client, mode, expected, executions
):
    tools, name = await prepared(genesys_api, client, FakeAction(ACCOUNT_SCHEMA, mode=mode, result={"ok": 1}))
    output = json.loads((await tools.run(name, '{"accountNumber": "12345"}'))[0])
    if expected is None:
        assert output == {"ok": 1}
    else:
        assert output == {"error": expected}
    assert len(genesys_api.executions) == executions


async def test_a_timeout_is_an_error_and_is_never_retried(genesys_api, client):
    tools, name = await prepared(
        genesys_api, client, FakeAction(ACCOUNT_SCHEMA, delay=2.0), GENESYS_HTTP_TIMEOUT_SECONDS="0.5"
    )
    output = json.loads((await tools.run(name, '{"accountNumber": "12345"}'))[0])
    assert output == {"error": "the Genesys API did not answer in time"}
    assert len(genesys_api.executions) == 1


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ('{"accountNumber": "12"}', 'invalid arguments: accountNumber: must satisfy pattern "^[0-9]{4,10}$"'),
        ('{"accountNumber": "1234", "extra": 1}', "invalid arguments: the arguments: does not satisfy"),
        ("{}", "invalid arguments: the arguments: missing accountNumber"),
        ("[1]", "the arguments must be a JSON object"),
        ("not json", "the arguments are not valid JSON"),
        ('{"accountNumber": "' + "1" * 5000 + '"}', "the arguments are larger than 4096 bytes"),
    ],
)
async def test_invalid_arguments_never_reach_genesys(genesys_api, client, arguments, error):
    tools, name = await prepared(genesys_api, client, FakeAction(ACCOUNT_SCHEMA))
    output = json.loads((await tools.run(name, arguments))[0])
    assert output["error"].startswith(error)
    assert genesys_api.executions == []


async def test_the_per_call_cap_is_enforced(genesys_api, client):
    tools, name = await prepared(
        genesys_api, client, FakeAction(ACCOUNT_SCHEMA), GENESYS_MAX_ACTION_CALLS_PER_SESSION="2"
    )
    outputs = [json.loads((await tools.run(name, '{"accountNumber": "1234"}'))[0]) for _ in range(3)]
    assert outputs[2] == {"error": "no more data lookups are allowed on this call"}
    assert len(genesys_api.executions) == 2


async def test_large_results_are_capped_and_stay_json(genesys_api, client):
    big = {"items": [{"text": "x" * 100} for _ in range(200)]}
    tools, name = await prepared(
        genesys_api, client, FakeAction(ACCOUNT_SCHEMA, result=big), GENESYS_MAX_TOOL_OUTPUT_BYTES="1000"
    )
    output, _ = await tools.run(name, '{"accountNumber": "1234"}')
    assert len(output) <= 1000 and json.loads(output)["result_truncated"] is True


async def test_a_refused_connection_is_retried(genesys_api, client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from fake_genesys_api import FakeGenesysApi

    late = FakeGenesysApi()
    late.actions["a1"] = FakeAction(ACCOUNT_SCHEMA)
    api = await client(GENESYS_BASE_URL=f"http://127.0.0.1:{port}", GENESYS_LOGIN_URL=genesys_api.url)
    genesys_api.valid_tokens = late.valid_tokens  # tokens from the login service are valid on the late API

    async def start_late():
        await asyncio.sleep(0.3)
        await late.start(port)

    starting = asyncio.create_task(start_late())
    try:
        status, _ = await api.execute("a1", {"accountNumber": "1234"})
    finally:
        await starting
        await late.stop()
    assert status == 200 and len(late.executions) == 1


# -- what the model and the log may see of a failure (issue 11) --------------------------------


async def test_a_genesys_refusal_reaches_neither_model_nor_log_with_the_backend_s_data(
    genesys_api, client, caplog
):
    caplog.set_level(logging.DEBUG)
    tools, name = await prepared(genesys_api, client, FakeAction(ACCOUNT_SCHEMA, mode="400"))
    output, ok = await tools.run(name, '{"accountNumber": "12345"}')
    assert not ok
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for value in ("123-45-6789", "backend said"):
        assert value not in output and value not in logged
    assert "bad.request" in output


async def test_a_schema_violation_is_described_without_the_argument_value(genesys_api, client, caplog):
    caplog.set_level(logging.DEBUG)
    schema = {"type": "object", "properties": {"pin": {"type": "integer"}}, "required": ["pin"]}
    tools, name = await prepared(genesys_api, client, FakeAction(schema))
    output, ok = await tools.run(name, '{"pin": "9876 5432"}')
    assert not ok and "pin: must satisfy type" in output
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "9876 5432" not in output and "9876 5432" not in logged


async def test_a_body_that_is_not_utf8_is_a_clear_error(genesys_api, client):
    tools, name = await prepared(genesys_api, client, FakeAction(ACCOUNT_SCHEMA, mode="not-utf8"))
    output, ok = await tools.run(name, '{"accountNumber": "1234"}')
    assert not ok and "not UTF-8" in json.loads(output)["error"]


@pytest.mark.parametrize("expires_in", ["soon", None, -5, [1]])
async def test_a_token_without_a_usable_lifetime_is_a_clear_error(genesys_api, client, expires_in):
    genesys_api.expires_in = expires_in
    api = await client()
    with pytest.raises(ActionError, match="valid token lifetime"):
        await api.token()


async def test_an_unresolvable_schema_reference_is_a_clear_error(genesys_api, client):
    schema = {"type": "object", "properties": {"account": {"$ref": "#/definitions/missing"}}}
    tools, name = await prepared(genesys_api, client, FakeAction(schema))
    output, ok = await tools.run(name, '{"account": "1"}')
    assert not ok and "cannot be resolved" in json.loads(output)["error"]
    assert genesys_api.executions == []
