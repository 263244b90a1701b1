"""Settings: parsing, validation, one-line errors with exit code 2, --check-config masking."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from conftest import CLIENT_SECRET, ROOT

from config import ConfigError, load_settings, parse_api_keys, read_environment

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
