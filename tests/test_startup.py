"""Start-up as an operator meets it (§9): one line and exit 2 for what stops it, never a
traceback; `--check-config` catches what people get wrong; wrong URLs leave a trace."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT, ws_url
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import oai_middleware
from log_setup import RefusalLog
from simulators.call_simulator import GenesysCall

BASE = {"GENESYS_API_KEY": "key-1", "OPENAI_API_KEY": "sk-test"}


def run(env: dict[str, str], *args: str, cwd=None, timeout: float = 20) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        [sys.executable, str(ROOT / "oai_middleware.py"), *args],
        env=clean,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_port_in_use_is_one_line_naming_the_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(run({**BASE, "HOST": "127.0.0.1", "PORT": str(port)}, cwd=tmp_path))
    assert "already in use" in line and f"PORT={port}" in line


def test_a_host_that_does_not_resolve_is_one_line_naming_host(tmp_path):
    line = one_line(run({**BASE, "HOST": "bogus.invalid", "PORT": "18765"}, cwd=tmp_path))
    assert "HOST 'bogus.invalid' does not resolve" in line


def test_a_rejected_value_is_named_with_what_was_given(tmp_path):
    line = one_line(run({**BASE, "OPENAI_VOICE": "bob"}, "--check-config", cwd=tmp_path))
    assert line.startswith("configuration error: OPENAI_VOICE must be one of") and "(got 'bob')" in line


def test_check_config_warns_of_placeholders_look_alikes_and_deprecated_models_and_ends_ok(tmp_path):
    profiles = tmp_path / "profiles.json"
    profiles.write_text('{"sales": {"OPENAI_VOICE": "marin"}, "support": {"AGENT_NAME": "Ava"}}')
    env = {
        **BASE,
        "GENESYS_API_KEY": "change-me",
        "OPENAI_VIOCE": "cedar",
        "OPENAI_MODEL": "gpt-realtime-mini",
        "BOT_PROFILES_PATH": str(profiles),
    }
    result = run(env, "--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "configuration OK"
    assert "profile sales: OPENAI_VOICE" in lines and "profile support: AGENT_NAME" in lines
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert any("OPENAI_VIOCE" in w and "did you mean OPENAI_VOICE" in w for w in warnings)
    assert any("GENESYS_API_KEY still holds the example file's placeholder" in w for w in warnings)
    assert any("2027-01-20" in w and "gpt-realtime-2.1-mini" in w for w in warnings)
    assert (
        "GENESYS_API_KEY=<set, 9 characters>" in lines
        and "change-me" not in result.stdout.replace("placeholder", "").split("warning")[0]
    )
    assert "DATA_ACTION_IDS=<unset>" in lines and "MCP_TOOLS_JSON=<unset>" in lines


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(port: int, process: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not come up")


MCP = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/mcp"}
MCP_DROPPED = {"type": "mcp", "server_label": "other", "server_url": "https://other.example.com/mcp"}
DROPPED_LINE = "MCP server other (MCP_TOOLS_JSON) dropped: not in MCP_ALLOWED_SERVER_URLS"


def test_configuration_warnings_are_logged_once_logging_is_set_up_in_its_format(tmp_path):
    port = free_port()
    env = {
        **BASE,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_FORMAT": "json",
        "ENABLE_MCP_TOOLS": "true",
        "MCP_TOOLS_JSON": json.dumps([MCP, MCP_DROPPED]),
        "MCP_ALLOWED_SERVER_URLS": "https://mcp.example.com/mcp",
    }
    check = run(env, "--check-config", cwd=tmp_path)
    assert check.returncode == 0 and check.stderr == ""
    assert f"warning: {DROPPED_LINE}" in check.stdout.splitlines()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "oai_middleware.py")],
        env={"PATH": os.environ["PATH"], **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_healthy(port, server)
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=15)
    finally:
        server.kill()
    assert server.returncode == 0 and out == ""
    # Every line is a JSON log line: nothing was printed before logging was set up.
    entries = [json.loads(line) for line in err.splitlines()]
    assert {"level": "WARNING", "message": DROPPED_LINE}.items() <= next(
        e for e in entries if "MCP server" in e["message"]
    ).items()
    assert any(e["message"].startswith("listening on") for e in entries)


def test_the_server_refuses_to_start_with_a_placeholder(tmp_path):
    line = one_line(run({**BASE, "OPENAI_API_KEY": "sk-change-me"}, cwd=tmp_path))
    assert "OPENAI_API_KEY" in line and "placeholder" in line


@pytest.mark.parametrize(("path", "hint"), [("/", "must end in /audiohook"), ("/ws", "")])
async def test_a_websocket_upgrade_on_a_wrong_path_is_404_and_logged(start_app, caplog, path, hint):
    app = await start_app()
    headers = GenesysCall(ws_url(app), api_key="test-api-key").headers()
    with pytest.raises(InvalidStatus) as excinfo:
        async with connect(ws_url(app, path), additional_headers=headers, open_timeout=5):
            pass
    assert excinfo.value.response.status_code == 404
    lines = [
        r for r in caplog.records if r.levelno == logging.WARNING and "WebSocket upgrade on" in r.getMessage()
    ]
    assert len(lines) == 1 and path in lines[0].getMessage() and hint in lines[0].getMessage()


async def test_plain_get_on_slash_is_still_the_health_answer(start_app):
    app = await start_app()
    status = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{app.port}/", timeout=5).status
    )
    assert status == 200


async def test_the_housekeeping_logs_the_count_a_flood_of_refusals_leaves_behind(
    start_app, caplog, monkeypatch
):
    monkeypatch.setattr(oai_middleware, "REFUSAL_FLUSH_SECONDS", 0.05)
    app = await start_app()
    app.refusals = RefusalLog(logging.getLogger("connector"), interval=1.0)
    headers = GenesysCall(ws_url(app), api_key="test-api-key").headers()
    for _ in range(3):
        with pytest.raises(InvalidStatus):
            async with connect(ws_url(app, "/ws"), additional_headers=headers, open_timeout=5):
                pass
    flood_over = time.time()

    def refusals() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "WebSocket upgrade on /ws" in r.getMessage()]

    async with asyncio.timeout(5):
        while len(refusals()) < 2:
            await asyncio.sleep(0.05)
    first, count = refusals()
    assert "more" not in first.getMessage()
    # No refusal came after the flood: only the housekeeping can have logged its count.
    assert count.created >= flood_over and "(and 1 more in the last 1 s)" in count.getMessage()
