"""The one-command demo, run as operators run it: success with words, a WAV and the variables;
failure when the model cannot be reached; settings built as the server builds them."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest
from conftest import ROOT
from test_speech import speech_band_share

import demo
from backends import openai_endpoints
from simulators import speech
from simulators.audio import read_wav
from utils import ulaw_rms


def plain_environment(home) -> dict[str, str]:
    """No setting of ours from the machine running the tests."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LANG": "C.UTF-8"}


async def run_demo(cwd, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "demo.py"),
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode, out.decode(), err.decode()


def silent_runs(audio: bytes, window: int = 160) -> list[int]:
    """Lengths (in 20 ms windows) of the runs of silence between sounds."""
    runs, current = [], 0
    for start in range(0, len(audio), window):
        if ulaw_rms(audio[start : start + window]) < 50:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


async def test_the_demo_completes_with_words_a_wav_as_heard_and_the_variables(tmp_path):
    code, out, err = await run_demo(
        tmp_path,
        plain_environment(tmp_path),
        *("--listen", "6", "--save", "bot.wav", "--timeline", "call.html"),
    )
    assert code == 0, out + err
    assert "Connector -> the local OpenAI Realtime simulator" in out
    if speech.available():  # the caller says real words, not the buzz
        assert "caller says 'Hi, where is my order?' (" in out and "speech-like" not in out
    assert "Output variables for Architect:" in out
    assert "  COMPLETION_SUMMARY = Order status given; it arrives Friday." in out
    assert "  ESCALATION_REQUIRED = false" in out
    audio = read_wav(tmp_path / "bot.wav")
    loud = sum(1 for i in range(0, len(audio), 1600) if ulaw_rms(audio[i : i + 1600]) > 500)
    assert loud >= 25  # greeting, answer and farewell: over five seconds of speech
    assert max(silent_runs(audio)) >= 50  # the caller's turns are silence in what it heard
    assert 'id="call-data"' in (tmp_path / "call.html").read_text(encoding="utf-8")
    if speech.available():  # the bot speaks words too: speech-band energy, as long as its text
        assert speech_band_share(audio) > 0.75
        spoken = loud / 5  # seconds of speech, in 200 ms windows
        text = len(demo.GREETING) + len(demo.ANSWER) + len("Thank you for calling. Goodbye!")
        assert 0.5 < spoken / (text / speech.CHARACTERS_PER_SECOND) < 2.0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_demo_fails_loudly_and_writes_no_wav_when_the_model_is_unreachable(tmp_path):
    # A "real" model the server settings point at, some of them from .env as the server reads them.
    (tmp_path / ".env").write_text(
        "OPENAI_MODEL=gpt-realtime\nOPENAI_VOICE=cedar\nOPENAI_RECONNECT_SECONDS=1\n"
    )
    env = plain_environment(tmp_path)
    env.update(
        OPENAI_API_KEY="sk-test-not-a-real-key",
        OPENAI_REALTIME_URL=f"ws://127.0.0.1:{closed_port()}/v1/realtime",
    )
    code, out, err = await run_demo(tmp_path, env, "--listen", "2", "--save", "bot.wav")
    assert code == 3, out + err
    assert (
        "the real OpenAI Realtime API at ws://127.0.0.1:" in out
        and "(model gpt-realtime, voice cedar)" in out
    )
    assert "demo: the call failed: the connector ended the call: disconnect error" in err
    assert "warning: OPENAI_MODEL (environment): " in out and "2027-01-20" in out  # as the server warns
    assert "Traceback" not in err
    assert not (tmp_path / "bot.wav").exists()
    assert "sk-test-not-a-real-key" not in out + err


def test_settings_are_the_servers_with_only_the_demos_own_on_top():
    env = {
        "OPENAI_API_KEY": "sk-real",
        "OPENAI_MODEL": "gpt-realtime",
        "OPENAI_VOICE": "marin",
        "GENESYS_API_KEY": "the-production-key",
        "HOST": "0.0.0.0",
        "PORT": "8080",
        "IDLE_TIMEOUT_SECONDS": "42",
    }
    real = demo.demo_settings(env, None)
    assert (real.host, real.port, real.openai_api_key) == ("127.0.0.1", 0, "sk-real")
    assert [k.key for k in real.api_keys] == [demo.DEMO_KEY]
    assert openai_endpoints(real, "openai")[0] == "wss://api.openai.com/v1/realtime"
    assert real.idle_timeout_seconds == 42
    per_call = real.call_config("demo-bot", {})
    assert (per_call.model, per_call.voice, per_call.greeting) == ("gpt-realtime", "marin", None)

    simulated = demo.demo_settings(
        env, {"OPENAI_REALTIME_URL": "ws://127.0.0.1:1234/v1/realtime", "OPENAI_API_KEY": "sk-demo-simulated"}
    )
    assert openai_endpoints(simulated, "openai")[0] == "ws://127.0.0.1:1234/v1/realtime"
    assert simulated.openai_api_key == demo.SIMULATED_KEYS["OPENAI_API_KEY"]  # the real key stays home
    assert simulated.call_config("demo-bot", {}).greeting == demo.GREETING


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OPENAI_MODEL": "gpt-live-1"}, "the local OpenAI GPT-Live simulator"),
        ({"AI_VENDOR": "azure", "OPENAI_API": "live"}, "the local Azure OpenAI GPT-Live simulator"),
        ({"AI_VENDOR": "azure"}, "the local Azure OpenAI Realtime simulator"),
        ({"AI_VENDOR": "gemini"}, "the local Gemini Live simulator"),
    ],
)
async def test_the_demo_chooses_the_backend_like_the_server_with_no_account(tmp_path, env, expected):
    code, out, err = await run_demo(tmp_path, {**plain_environment(tmp_path), **env}, "--listen", "6")
    assert code == 0, out + err
    assert expected in out
    assert "AI_VENDOR = " + env.get("AI_VENDOR", "openai") in out
    assert (tmp_path / "demo-bot.wav").exists()
