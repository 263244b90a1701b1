"""Settings: parsing, validation, one-line errors with exit code 2, --check-config masking."""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import subprocess
import sys

import pytest
from conftest import CLIENT_SECRET, ROOT

from config import ConfigError, filter_mcp_allowed, load_settings, parse_api_keys, read_environment

SECRET_BYTES = base64.b64decode(CLIENT_SECRET)
BASE = {"GENESYS_API_KEY": "k", "OPENAI_API_KEY": "sk-x"}


def env(**values: str) -> dict[str, str]:
    return {**BASE, **values}


def test_defaults():
    s = load_settings(env())
    assert (s.host, s.port, s.log_level, s.log_format) == ("0.0.0.0", 8080, "INFO", "text")
    assert [k.key for k in s.api_keys] == ["k"] and s.api_keys[0].secret is None
    assert s.allowed_organization_ids == frozenset()


def test_debug_true_means_debug_level_and_log_level_wins_when_given():
    assert load_settings(env(DEBUG="true")).log_level == "DEBUG"
    assert load_settings(env(DEBUG="true", LOG_LEVEL="warning")).log_level == "WARNING"


def test_api_key_forms():
    keys = parse_api_keys("old, new", SECRET_BYTES)
    assert [(k.key, k.secret) for k in keys] == [("old", SECRET_BYTES), ("new", SECRET_BYTES)]
    keys = parse_api_keys(f"a:{CLIENT_SECRET},b", None)
    assert [(k.key, k.secret) for k in keys] == [("a", SECRET_BYTES), ("b", None)]
    # A single key that merely contains a colon stays one key.
    assert [k.key for k in parse_api_keys("abc:def", None)] == ["abc:def"]
    assert [k.key for k in parse_api_keys("abcd:efgh", None)] == ["abcd:efgh"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OPENAI_API_KEY": "sk-x"}, "GENESYS_API_KEY is required"),
        ({"OPENAI_API_KEY": "sk-x", "GENESYS_API_KEY": " , "}, "GENESYS_API_KEY is required"),
        ({"GENESYS_API_KEY": "k"}, "OPENAI_API_KEY is required"),
        (env(PORT="http"), "PORT must be an integer from 1 to 65535"),
        (env(PORT="70000"), "PORT must be an integer"),
        (env(LOG_LEVEL="chatty"), "LOG_LEVEL must be one of"),
        (env(LOG_FORMAT="xml"), "LOG_FORMAT must be one of text, json"),
        (env(DEBUG="maybe"), "DEBUG must be true or false"),
        (
            env(GENESYS_AUDIOHOOK_CLIENT_SECRET="not base64!"),
            "GENESYS_AUDIOHOOK_CLIENT_SECRET must be",
        ),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message) as excinfo:
        load_settings(env)
    assert "\n" not in str(excinfo.value)


def test_secret_values_are_never_echoed_in_errors():
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env(GENESYS_AUDIOHOOK_CLIENT_SECRET="s3cr3t-value!"))
    assert "s3cr3t" not in str(excinfo.value)


def test_environment_wins_over_dotenv(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9000\nHOST=10.0.0.1\n")
    monkeypatch.setenv("PORT", "9100")
    env = read_environment(env_file)
    assert env["PORT"] == "9100" and env["HOST"] == "10.0.0.1"


def run_main(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run(
        [sys.executable, str(ROOT / "oai_middleware.py"), *args],
        env=clean,
        cwd=ROOT / "tests",  # no .env there
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"OPENAI_API_KEY": "sk-x"}, "GENESYS_API_KEY"),
        (env(PORT="-1"), "PORT"),
        ({"GENESYS_API_KEY": "k"}, "OPENAI_API_KEY"),
    ],
)
def test_bad_configuration_stops_start_up_with_one_line_and_exit_2(values, variable):
    result = run_main(values)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "Traceback" not in result.stderr


def test_check_config_prints_the_effective_configuration_with_secrets_masked():
    result = run_main(
        {
            "GENESYS_API_KEY": "super-secret-key",
            "GENESYS_AUDIOHOOK_CLIENT_SECRET": CLIENT_SECRET,
            "PORT": "9999",
            "OPENAI_API_KEY": "sk-proj-very-secret",
            "OPENAI_VOICE": "marin",
        },
        "--check-config",
    )
    assert result.returncode == 0, result.stderr
    assert "PORT=9999" in result.stdout and "OPENAI_VOICE=marin" in result.stdout
    assert "GENESYS_API_KEY=<set, 16 characters>" in result.stdout
    for secret in ("super-secret-key", CLIENT_SECRET, "sk-proj-very-secret"):
        assert secret not in result.stdout
    assert run_main({}, "--check-config").returncode == 2


def test_event_loop_choice(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    assert load_settings(env()).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="EVENT_LOOP is uvloop but uvloop is not installed"):
        load_settings(env(EVENT_LOOP="uvloop"))
    with pytest.raises(ConfigError, match="EVENT_LOOP must be one of"):
        load_settings(env(EVENT_LOOP="trio"))


# -- per-call settings and bot profiles ------------------------------------------------------


def write_profiles(tmp_path, document) -> str:
    path = tmp_path / "profiles.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def test_precedence_input_variable_then_profile_then_environment_then_default(tmp_path):
    profiles = write_profiles(
        tmp_path,
        {
            "sales": {
                "OPENAI_VOICE": "cedar",
                "INITIAL_GREETING": "Hi from sales",
                "OPENAI_VAD_SILENCE_MS": 700,
            }
        },
    )
    settings = load_settings(env(BOT_PROFILES_PATH=profiles, OPENAI_VOICE="marin", AGENT_NAME="Env Agent"))
    call = settings.call_config("sales", {"AGENT_NAME": "Ava"})
    assert call.voice == "cedar"  # profile over environment
    assert call.greeting == "Hi from sales"
    assert call.vad_silence_ms == 700
    assert call.agent_name == "Ava"  # input variable over environment
    assert call.company_name == "Our Company"  # built-in default
    assert settings.call_config("sales", {"OPENAI_VOICE": "ash"}).voice == "ash"  # input over profile
    other = settings.call_config("support", {})
    assert (other.voice, other.greeting, other.agent_name) == ("marin", None, "Env Agent")
    assert settings.call_config(None, {}).voice == "marin"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object keyed by connector id"),
        ({"sales": "x"}, "profile 'sales': must be an object"),
        ({"sales": {"OPENAI_VOICES": "cedar"}}, "profile 'sales': unknown key OPENAI_VOICES"),
        ({"sales": {"OPENAI_VOICE": "nova"}}, "profile 'sales': OPENAI_VOICE must be one of"),
        ({"sales": {"OPENAI_VAD_THRESHOLD": 3}}, "OPENAI_VAD_THRESHOLD must be a number from 0 to 1"),
    ],
)
def test_a_bad_profile_file_stops_start_up_with_one_line(tmp_path, document, message):
    with pytest.raises(ConfigError, match=message) as excinfo:
        load_settings(env(BOT_PROFILES_PATH=write_profiles(tmp_path, document)))
    assert "\n" not in str(excinfo.value)


def test_a_missing_profile_file_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="BOT_PROFILES_PATH: cannot read"):
        load_settings(env(BOT_PROFILES_PATH=str(tmp_path / "nope.json")))


def test_a_bad_profile_file_exits_2_from_the_command_line(tmp_path):
    result = run_main(env(BOT_PROFILES_PATH=write_profiles(tmp_path, {"a": {"BOGUS": 1}})))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "BOGUS" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OPENAI_VOICE", "nova"),
        ("OPENAI_MODEL", "gpt-4o"),
        ("OPENAI_MAX_OUTPUT_TOKENS", "5000"),
        ("OPENAI_VAD_THRESHOLD", "loud"),
        ("OPENAI_TURN_DETECTION", "push_to_talk"),
    ],
)
def test_malformed_input_variables_fall_back_with_one_warning(caplog, name, value):
    settings = load_settings(env())
    default = settings.call_config(None, {})
    with caplog.at_level(logging.WARNING):
        call = settings.call_config(None, {name: value})
    assert call == default
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and name in warnings[0].getMessage()


def test_input_variables_that_parse_are_used():
    call = load_settings(env()).call_config(
        None,
        {"OPENAI_MODEL": "gpt-realtime-2.1", "OPENAI_MAX_OUTPUT_TOKENS": "512", "DATA_ACTION_IDS": "a, b|c"},
    )
    assert (call.model, call.max_output_tokens, call.data_action_ids) == (
        "gpt-realtime-2.1",
        512,
        ("a", "b", "c"),
    )
    assert (
        load_settings(env()).call_config(None, {"OPENAI_MAX_OUTPUT_TOKENS": "INF"}).max_output_tokens == "inf"
    )


def test_temperature_is_accepted_ignored_and_logged(caplog):
    with caplog.at_level(logging.INFO):
        call = load_settings(env()).call_config(None, {"OPENAI_TEMPERATURE": "0.9"})
    assert call == load_settings(env()).call_config(None, {})
    assert any("OPENAI_TEMPERATURE is ignored" in r.getMessage() for r in caplog.records)


def test_empty_values_turn_transcription_and_noise_reduction_off():
    settings = load_settings(env(OPENAI_TRANSCRIPTION_MODEL="", OPENAI_NOISE_REDUCTION=""))
    call = settings.call_config(None, {})
    assert call.transcription_model is None and call.noise_reduction is None
    assert load_settings(env()).call_config(None, {}).transcription_model == "gpt-4o-mini-transcribe"


def test_environment_model_is_a_free_configuration_string():
    assert load_settings(env(OPENAI_MODEL="gpt-live-1")).call_config(None, {}).model == "gpt-live-1"


# -- switching vendor from Architect ---------------------------------------------------------

CREDENTIALS = {
    "AZURE_OPENAI_ENDPOINT": "https://acme.openai.azure.com",
    "AZURE_OPENAI_API_KEY": "az",
    "GEMINI_API_KEY": "g",
}


@pytest.mark.parametrize(
    ("configured", "inputs", "expected"),
    [
        # azure -> openai: an Azure deployment name is not an OpenAI model.
        ({"AI_VENDOR": "azure", "OPENAI_MODEL": "my-dep"}, {}, ("azure", "realtime", "my-dep")),
        (
            {"AI_VENDOR": "azure", "OPENAI_MODEL": "my-dep"},
            {"AI_VENDOR": "openai"},
            ("openai", "realtime", "gpt-realtime-2.1-mini"),
        ),
        (
            {"AI_VENDOR": "azure", "OPENAI_MODEL": "my-dep", "OPENAI_API": "live"},
            {"AI_VENDOR": "openai"},
            ("openai", "live", "gpt-live-1"),
        ),
        (
            {"AI_VENDOR": "azure", "OPENAI_MODEL": "my-dep"},
            {"AI_VENDOR": "openai", "OPENAI_MODEL": "gpt-live-1.1"},
            ("openai", "live", "gpt-live-1.1"),
        ),
        # openai -> azure: an OpenAI model name is not a deployment of this resource.
        (
            {"OPENAI_MODEL": "gpt-realtime-2.1"},
            {"AI_VENDOR": "azure"},
            ("azure", "realtime", "gpt-realtime-2.1-mini"),
        ),
        (
            {"OPENAI_MODEL": "gpt-realtime-2.1"},
            {"AI_VENDOR": "azure", "OPENAI_MODEL": "contoso-voice"},
            ("azure", "realtime", "contoso-voice"),
        ),
        # gemini -> openai: OPENAI_MODEL set beside Gemini is for OpenAI or Azure, and checked.
        (
            {"AI_VENDOR": "gemini", "OPENAI_MODEL": "gpt-realtime-2.1"},
            {"AI_VENDOR": "openai"},
            ("openai", "realtime", "gpt-realtime-2.1"),
        ),
        (
            {"AI_VENDOR": "gemini", "OPENAI_MODEL": "contoso-voice"},
            {"AI_VENDOR": "openai"},
            ("openai", "realtime", "gpt-realtime-2.1-mini"),
        ),
    ],
)
def test_an_input_variable_switching_vendor_does_not_inherit_the_other_vendors_model(
    configured, inputs, expected
):
    call = load_settings(env(**CREDENTIALS, **configured)).call_config(None, inputs)
    assert (call.vendor, call.api, call.model) == expected


def test_a_model_name_openai_does_not_have_is_refused_wherever_it_was_set(caplog):
    settings = load_settings(env(**CREDENTIALS, AI_VENDOR="gemini", OPENAI_MODEL="contoso-voice"))
    with caplog.at_level(logging.WARNING):
        assert settings.call_config(None, {"AI_VENDOR": "openai"}).model == "gpt-realtime-2.1-mini"
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "OPENAI_MODEL (environment) 'contoso-voice' is not a Realtime" in line
    assert line.endswith("using gpt-realtime-2.1-mini")
    # The deployment's own setting for OpenAI is refused at start, in one line with the value.
    with pytest.raises(ConfigError, match=r"OPENAI_MODEL \(environment\) must be a Realtime .*'gpt-4o'"):
        load_settings(env(OPENAI_MODEL="gpt-4o"))


def test_a_switched_vendor_takes_the_nearest_model_set_for_it(tmp_path):
    profiles = write_profiles(tmp_path, {"azure-bot": {"AI_VENDOR": "azure", "OPENAI_MODEL": "my-dep"}})
    settings = load_settings(env(**CREDENTIALS, OPENAI_MODEL="gpt-realtime-2.1", BOT_PROFILES_PATH=profiles))
    assert settings.call_config("azure-bot", {}).model == "my-dep"
    # The profile's deployment is Azure's; the environment's model is OpenAI's.
    assert settings.call_config("azure-bot", {"AI_VENDOR": "openai"}).model == "gpt-realtime-2.1"


def test_switching_to_gemini_uses_geminis_own_model_setting(caplog):
    settings = load_settings(
        env(**CREDENTIALS, OPENAI_MODEL="gpt-realtime-2.1", GEMINI_MODEL="gemini-3.8-live-eu")
    )
    with caplog.at_level(logging.WARNING):
        call = settings.call_config(None, {"AI_VENDOR": "gemini"})
        named = settings.call_config(None, {"AI_VENDOR": "gemini", "GEMINI_MODEL": "gemini-next-live"})
    assert (call.vendor, call.gemini_model) == ("gemini", "gemini-3.8-live-eu")
    assert named.gemini_model == "gemini-next-live"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- the deprecation guard's calendar --------------------------------------------------------

SHUTDOWN = datetime.date(2027, 1, 20)  # gpt-realtime-mini's


class Calendar:
    """The guard's clock, moved by the test: one process living across a shutdown date."""

    def __init__(self, day: datetime.date) -> None:
        self.day = day

    def __call__(self) -> datetime.date:
        return self.day


def test_a_process_running_across_a_shutdown_dials_the_replacement_from_that_day(caplog):
    calendar = Calendar(SHUTDOWN - datetime.timedelta(days=1))
    settings = load_settings(env(OPENAI_MODEL="gpt-realtime-mini"), today=calendar)
    assert "2027-01-20" in settings.warnings[0]  # at start: still before the date
    with caplog.at_level(logging.WARNING):
        before = settings.call_config(None, {}).model
        calendar.day = SHUTDOWN
        after = [settings.call_config(None, {}).model for _ in range(3)]
    assert before == "gpt-realtime-mini"
    assert after == ["gpt-realtime-2.1-mini"] * 3
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "gpt-realtime-mini was shut down on 2027-01-20; using gpt-realtime-2.1-mini" in line


def test_a_shut_down_model_named_by_input_variables_is_logged_once_per_process(caplog):
    settings = load_settings(env(), today=SHUTDOWN)
    with caplog.at_level(logging.WARNING):
        models = [settings.call_config(None, {"OPENAI_MODEL": "gpt-realtime"}).model for _ in range(3)]
        settings.call_config(None, {"OPENAI_MODEL": "gpt-realtime-mini"})
    assert models == ["gpt-realtime-2.1"] * 3
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2 and all(line.startswith("input variable OPENAI_MODEL: ") for line in lines)


# -- MCP -------------------------------------------------------------------------------------

MCP_ENTRY = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://mcp.example.com/mcp",
    "authorization": "tok-secret-1",
}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("{}", "must be a JSON array"),
        ("[{", "MCP_TOOLS_JSON"),
        (json.dumps([{"type": "web_search_preview"}]), 'type must be "mcp"'),
        (json.dumps([dict(MCP_ENTRY, color="blue")]), "unknown key color"),
        (json.dumps([dict(MCP_ENTRY, server_label="has space")]), "server_label must be"),
        (json.dumps([MCP_ENTRY, MCP_ENTRY]), "server_label crm is used twice"),
        (json.dumps([dict(MCP_ENTRY, server_url="http://insecure.example.com")]), "https://"),
        (json.dumps([dict(MCP_ENTRY, allowed_tools="lookup")]), "allowed_tools"),
        (json.dumps([dict(MCP_ENTRY, require_approval="sometimes")]), "require_approval"),
        (json.dumps([dict(MCP_ENTRY, headers={"X": 1})]), "headers must map strings"),
    ],
)
def test_bad_mcp_entries_stop_start_up(entries, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env(ENABLE_MCP_TOOLS="true", MCP_TOOLS_JSON=entries))


def test_mcp_settings(tmp_path):
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps([MCP_ENTRY]))
    settings = load_settings(env(ENABLE_MCP_TOOLS="true", MCP_SERVERS_CONFIG_PATH=str(path)))
    assert settings.mcp.tools == (MCP_ENTRY,)
    assert "tok-secret-1" in settings.secrets()
    assert settings.call_config(None, {}).mcp_tools == (MCP_ENTRY,)
    assert load_settings(env(MCP_TOOLS_JSON=json.dumps([MCP_ENTRY]))).mcp.tools == ()  # not enabled
    with pytest.raises(ConfigError, match="set only one"):
        load_settings(env(MCP_TOOLS_JSON="[]", MCP_SERVERS_CONFIG_PATH=str(path)))
    with pytest.raises(ConfigError, match="MCP_APPROVAL_POLICY=approve needs MCP_APPROVED_TOOLS"):
        load_settings(env(MCP_APPROVAL_POLICY="approve"))


def test_check_config_shows_mcp_servers_without_their_secrets():
    result = run_main(env(ENABLE_MCP_TOOLS="true", MCP_TOOLS_JSON=json.dumps([MCP_ENTRY])), "--check-config")
    assert result.returncode == 0
    assert "MCP_TOOLS_JSON=crm=https://mcp.example.com/mcp" in result.stdout
    assert "tok-secret-1" not in result.stdout


def test_profiles_carry_their_own_mcp_servers_filtered_by_the_allowlist(tmp_path, caplog):
    other = dict(MCP_ENTRY, server_label="other", server_url="https://other.example.com/mcp")
    profiles = write_profiles(tmp_path, {"sales": {"MCP_TOOLS": [MCP_ENTRY, other]}, "bad": {}})
    with caplog.at_level(logging.DEBUG):
        settings = load_settings(
            env(
                ENABLE_MCP_TOOLS="true",
                BOT_PROFILES_PATH=profiles,
                MCP_ALLOWED_SERVER_URLS="https://mcp.example.com/mcp",
            )
        )
    assert settings.call_config("sales", {}).mcp_tools == (MCP_ENTRY,)
    assert settings.call_config("bad", {}).mcp_tools == ()
    # Told in the warnings (logged once logging is set up), not logged while reading.
    assert settings.warnings == ("MCP server other (profile sales) dropped: not in MCP_ALLOWED_SERVER_URLS",)
    assert caplog.records == []
    with pytest.raises(ConfigError, match="MCP_TOOLS"):
        load_settings(env(BOT_PROFILES_PATH=write_profiles(tmp_path, {"s": {"MCP_TOOLS": [{"type": "x"}]}})))


def test_the_mcp_allowlist_ignores_case_in_scheme_and_host_but_not_in_the_path():
    entries = [
        {"type": "mcp", "server_label": "a", "server_url": "https://MCP.Example.com/crm"},
        {"type": "mcp", "server_label": "b", "server_url": "https://mcp.example.com/CRM"},
        {"type": "mcp", "server_label": "c", "server_url": "https://mcp.example.com/crm/admin"},
    ]
    warnings: list[str] = []
    kept = filter_mcp_allowed(entries, frozenset({"HTTPS://mcp.example.COM/crm"}), "test", warnings)
    assert [e["server_label"] for e in kept] == ["a"]
    assert len(warnings) == 2 and "MCP server b (test) dropped" in warnings[0]


def test_check_config_shows_what_the_mcp_allowlist_dropped_as_a_warning_line():
    other = dict(MCP_ENTRY, server_label="other", server_url="https://other.example.com/mcp")
    result = run_main(
        env(
            ENABLE_MCP_TOOLS="true",
            MCP_TOOLS_JSON=json.dumps([MCP_ENTRY, other]),
            MCP_ALLOWED_SERVER_URLS="https://mcp.example.com/mcp",
        ),
        "--check-config",
    )
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert "warning: MCP server other (MCP_TOOLS_JSON) dropped: not in MCP_ALLOWED_SERVER_URLS" in lines
    assert lines[-1] == "configuration OK"
