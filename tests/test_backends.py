"""Vendors, APIs and models (§4a): which backend serves a call, with which endpoint, credentials
and model; the deprecation guard on both sides of the date; what Architect is told served it."""

from __future__ import annotations

import asyncio
import datetime
import logging

import pytest
from conftest import API_KEY, make_settings, ws_url

from backends import azure_url, backend_chooser, openai_endpoints
from config import ConfigError, load_settings
from metrics import Metrics
from openai_client import RealtimeBackend
from simulators.audio import silence, speech_like
from simulators.call_simulator import GenesysCall
from simulators.script import Script, Turn
from text_api import TextApi

BASE = {"GENESYS_API_KEY": "k"}
SHUTDOWN = datetime.date(2027, 1, 20)


def settings(today: datetime.date | None = None, **env: str):
    return load_settings({**BASE, **env}, today=today)


# -- choosing the API and the model ------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "inputs", "expected"),
    [
        ({}, {}, ("openai", "realtime", "gpt-realtime-2.1-mini")),
        ({}, {"OPENAI_MODEL": "gpt-live-1"}, ("openai", "live", "gpt-live-1")),  # auto by name
        ({"OPENAI_API": "live"}, {}, ("openai", "live", "gpt-live-1")),  # no Live model named
        ({"OPENAI_API": "live", "OPENAI_MODEL": "gpt-live-1.1"}, {}, ("openai", "live", "gpt-live-1.1")),
        (
            {"OPENAI_MODEL": "gpt-live-1"},
            {"OPENAI_API": "realtime"},
            ("openai", "realtime", "gpt-realtime-2.1-mini"),
        ),
        ({}, {"OPENAI_MODEL": "not-a-model"}, ("openai", "realtime", "gpt-realtime-2.1-mini")),
    ],
)
def test_the_api_follows_the_setting_or_the_model_name(env, inputs, expected):
    call = settings(OPENAI_API_KEY="sk", **env).call_config(None, inputs)
    assert (call.vendor, call.api, call.model) == expected


def test_azure_deployment_names_are_free_form_and_need_an_explicit_live_api():
    s = settings(
        AI_VENDOR="azure", AZURE_OPENAI_ENDPOINT="https://acme.openai.azure.com", AZURE_OPENAI_API_KEY="az"
    )
    realtime = s.call_config(None, {"OPENAI_MODEL": "contoso-voice-prod"})
    assert (realtime.vendor, realtime.api, realtime.model) == ("azure", "realtime", "contoso-voice-prod")
    live = s.call_config(None, {"OPENAI_MODEL": "contoso-live", "OPENAI_API": "live"})
    assert (live.api, live.model) == ("live", "contoso-live")


def test_voices_are_checked_against_the_api_the_call_uses(caplog):
    s = settings(OPENAI_API_KEY="sk")
    assert s.call_config(None, {"OPENAI_VOICE": "quartz", "OPENAI_API": "live"}).voice == "quartz"
    assert s.call_config(None, {"OPENAI_VOICE": "quartz"}).voice == "sage"  # not a Realtime voice
    assert any("not a Realtime voice" in r.getMessage() for r in caplog.records)
    g = settings(AI_VENDOR="gemini", GEMINI_API_KEY="g")
    assert g.call_config(None, {"GEMINI_VOICE": "Puck"}).gemini_voice == "Puck"
    assert g.call_config(None, {"GEMINI_VOICE": "sage"}).gemini_voice == "Kore"


# -- credentials for the vendors in use, and only those ----------------------------------------


def test_credentials_are_required_for_every_vendor_in_use_and_only_those(tmp_path):
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is required"):
        settings()
    assert settings(AI_VENDOR="gemini", GEMINI_API_KEY="g").vendors == frozenset({"gemini"})
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY are required"):
        settings(AI_VENDOR="azure", AZURE_OPENAI_API_KEY="az")
    profiles = tmp_path / "profiles.json"
    profiles.write_text('{"sales": {"AI_VENDOR": "gemini"}}')
    with pytest.raises(ConfigError, match="GEMINI_API_KEY is required"):
        settings(OPENAI_API_KEY="sk", BOT_PROFILES_PATH=str(profiles))


def test_an_input_variable_naming_a_vendor_without_credentials_gets_the_default(caplog):
    s = settings(OPENAI_API_KEY="sk")
    assert s.call_config(None, {"AI_VENDOR": "gemini"}).vendor == "openai"
    lines = [r for r in caplog.records if "no credentials" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING


# -- the deprecation guard ---------------------------------------------------------------------


def test_a_deprecated_model_is_warned_of_before_its_shutdown_and_still_used():
    s = settings(SHUTDOWN - datetime.timedelta(days=1), OPENAI_API_KEY="sk", OPENAI_MODEL="gpt-realtime-mini")
    assert s.call_config(None, {}).model == "gpt-realtime-mini"
    (warning,) = s.warnings
    assert "2027-01-20" in warning and "gpt-realtime-2.1-mini" in warning


@pytest.mark.parametrize(
    ("model", "replacement"),
    [("gpt-realtime-mini", "gpt-realtime-2.1-mini"), ("gpt-realtime-2025-08-28", "gpt-realtime-2.1")],
)
def test_from_the_shutdown_on_the_replacement_is_dialled(model, replacement, caplog):
    s = settings(SHUTDOWN, OPENAI_API_KEY="sk", OPENAI_MODEL=model)
    assert s.call_config(None, {}).model == replacement
    assert "using " + replacement in s.warnings[0]
    assert (
        settings(SHUTDOWN, OPENAI_API_KEY="sk").call_config(None, {"OPENAI_MODEL": model}).model
        == replacement
    )
    assert any("input variable OPENAI_MODEL" in r.getMessage() for r in caplog.records)


def test_model_migration_off_keeps_the_configured_model_with_a_warning():
    s = settings(SHUTDOWN, OPENAI_API_KEY="sk", OPENAI_MODEL="gpt-realtime-mini", MODEL_MIGRATION="off")
    assert s.call_config(None, {}).model == "gpt-realtime-mini"
    assert "MODEL_MIGRATION is off" in s.warnings[0]


def test_the_default_model_is_not_deprecated():
    s = settings(SHUTDOWN + datetime.timedelta(days=400), OPENAI_API_KEY="sk")
    assert s.call_config(None, {}).model == "gpt-realtime-2.1-mini" and s.warnings == ()


# -- endpoints and headers ---------------------------------------------------------------------


def test_azure_urls_and_header_follow_the_endpoint_and_explicit_urls_win():
    s = settings(
        AI_VENDOR="azure", AZURE_OPENAI_ENDPOINT="https://acme.openai.azure.com/", AZURE_OPENAI_API_KEY="az"
    )
    realtime, live, base, headers = openai_endpoints(s, "azure")
    assert realtime == "wss://acme.openai.azure.com/openai/v1/realtime"
    assert live == "wss://acme.openai.azure.com/openai/v1/live/sessions"
    assert base == "https://acme.openai.azure.com/openai/v1"
    assert headers == {"api-key": "az"}
    s = settings(OPENAI_API_KEY="sk", OPENAI_REALTIME_URL="ws://127.0.0.1:1/v1/realtime")
    realtime, live, base, headers = openai_endpoints(s, "openai")
    assert realtime == "ws://127.0.0.1:1/v1/realtime" and live == "wss://api.openai.com/v1/live/sessions"
    assert base == "https://api.openai.com/v1" and headers == {"Authorization": "Bearer sk"}
    assert azure_url("http://127.0.0.1:8080", "/realtime", "ws") == "ws://127.0.0.1:8080/openai/v1/realtime"


async def test_each_call_gets_the_backend_its_settings_name():
    s = settings(
        OPENAI_API_KEY="sk", AZURE_OPENAI_ENDPOINT="https://a.openai.azure.com", AZURE_OPENAI_API_KEY="az"
    )
    choose = backend_chooser(s, Metrics(), TextApi())
    openai_call = choose(s.call_config(None, {}))
    assert isinstance(openai_call, RealtimeBackend) and openai_call.vendor == "openai"
    azure = choose(s.call_config(None, {"AI_VENDOR": "azure", "OPENAI_MODEL": "voice-prod"}))
    assert (azure.vendor, azure.model, azure.headers) == ("azure", "voice-prod", {"api-key": "az"})


# -- over the wire -----------------------------------------------------------------------------


async def test_an_azure_realtime_call_uses_the_azure_path_header_and_deployment(start_app, realtime):
    sim = await realtime(Script(default=Turn(say="Hello from Azure.", seconds=0.6)))
    app = await start_app(
        make_settings(
            AI_VENDOR="azure",
            AZURE_OPENAI_ENDPOINT=sim.azure_endpoint,
            AZURE_OPENAI_API_KEY="azure-test-key",
            OPENAI_REALTIME_URL="",
            OPENAI_MODEL="contoso-realtime",
        )
    )
    async with GenesysCall(ws_url(app), api_key=API_KEY, ping_interval=None) as call:
        await call.open()
        await call.stream(speech_like(1.0, seed=3) + silence(2.0))
        await call.close()
    (session,) = sim.sessions
    assert session.path == "/openai/v1/realtime?model=contoso-realtime"
    assert sim.events_of("session.update")[0]["session"]["model"] == "contoso-realtime"
    assert len(call.record.bot_audio) == 4800
    assert sim.violations == [] and call.record.violations == []


async def test_output_variables_say_what_served_the_call(bridged):
    from simulators.script import Turn as T

    app, sim = await bridged(
        Script(turns=[T(call="end_conversation_successfully", arguments={"summary": "ok"})])
    )
    async with GenesysCall(ws_url(app), api_key=API_KEY, ping_interval=None) as call:
        await call.open()
        streaming = asyncio.create_task(call.stream(speech_like(1.0, seed=3) + silence(6.0)))
        disconnect = await call.wait_disconnect(10)
        streaming.cancel()
    variables = disconnect["parameters"]["outputVariables"]
    assert variables["AI_VENDOR"] == "openai" and variables["AI_MODEL"] == "gpt-realtime-2.1-mini"
    assert variables["TOTAL_BILLED_SECONDS"] == "0"  # Realtime bills by tokens
    assert sim.violations == []
