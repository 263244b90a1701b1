"""The call simulator as operators use it (command line): its WAV handling, one-line failures,
exit codes, Ctrl-C, progress, and the bot audio saved as the caller heard it."""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import signal
import socket
import struct
import sys
import wave
from array import array
from pathlib import Path

import pytest
from conftest import API_KEY, ROOT, RecordingHandler, recording_factory, ws_url
from websockets.asyncio.server import ServerConnection, serve

from model_backend import Utterance
from simulators.audio import read_wav, speech_like, write_wav
from simulators.call_simulator import (
    CallRecord,
    Exit,
    GenesysCall,
    Played,
    call_outcome,
    heard_audio,
    playout,
    save_audio,
    websocket_url,
)
from utils import audioop

WAV_ACCEPTED = "accepted: PCM 8/16-bit or μ-law WAV, mono or stereo, any rate"


def test_mulaw_wav_round_trips_byte_exact(tmp_path):
    audio = speech_like(0.5, seed=9)
    write_wav(tmp_path / "a.wav", audio)
    assert read_wav(tmp_path / "a.wav") == audio


def test_pcm_stereo_16k_wav_is_converted_to_8k_mono_ulaw(tmp_path):
    path = tmp_path / "pcm.wav"
    samples = array("h", [1000, -1000] * 16000)  # 1 s of 16 kHz stereo
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    audio = read_wav(path)
    assert abs(len(audio) - 8000) <= 2


def float_wav(path: Path) -> Path:
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 4) + b"\0\0\0\0"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_unsupported_wav_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        read_wav(float_wav(tmp_path / "float.wav"))


# -- what the caller heard -------------------------------------------------------------------


def test_frames_sent_in_a_burst_play_back_to_back_from_their_arrival():
    played = playout([(10.5, b"\x01" * 1600), (10.51, b"\x02" * 1600)], [], origin=10.0)
    assert played == [Played(4000, b"\x01" * 1600), Played(5600, b"\x02" * 1600)]


def test_silence_fills_the_gaps_where_the_bot_was_silent():
    heard = heard_audio(playout([(0.0, b"\x01" * 800), (1.0, b"\x02" * 800)], [], origin=0.0))
    assert heard == b"\x01" * 800 + b"\xff" * 7200 + b"\x02" * 800


def test_a_barge_in_flushes_what_had_not_been_played():
    frames = [(0.0, b"\x01" * 8000), (0.1, b"\x02" * 1600), (0.6, b"\x03" * 800)]
    played = playout(frames, [0.5], origin=0.0)
    # Half of the first second was heard, the queued frame never; the next plays on arrival.
    assert played == [Played(0, b"\x01" * 4000), Played(4800, b"\x03" * 800)]
    assert heard_audio(played) == b"\x01" * 4000 + b"\xff" * 800 + b"\x03" * 800


def test_frames_stay_back_to_back_over_a_long_call():
    frames = [(n * 0.2 - 0.01, b"\x05" * 1600) for n in range(1, 3001)]  # ten minutes, 10 ms early
    played = playout(frames, [], origin=0.0)
    assert all(b.start == a.end for a, b in itertools.pairwise(played))


def test_pcm16_wav_is_readable_by_the_wave_module(tmp_path):
    audio = speech_like(0.3, seed=4)
    save_audio(tmp_path / "bot.wav", audio, "pcm16")
    with wave.open(str(tmp_path / "bot.wav"), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        assert w.readframes(w.getnframes()) == audioop.ulaw2lin(audio, 2)


@pytest.mark.parametrize(
    ("given", "url", "noted"),
    [
        ("ws://h:8080/audiohook", "ws://h:8080/audiohook", False),
        ("wss://h/audiohook", "wss://h/audiohook", False),
        ("http://h:8080/audiohook", "ws://h:8080/audiohook", True),
        ("https://app.example/audiohook?x=1", "wss://app.example/audiohook?x=1", True),
    ],
)
def test_connector_urls_are_websocket_urls(given, url, noted):
    assert websocket_url(given)[0] == url
    assert (websocket_url(given)[1] is not None) == noted


@pytest.mark.parametrize("given", ["ftp://h/x", "h:8080/audiohook", "ws:///x", "ws://h:99999/x"])
def test_other_urls_are_refused(given):
    with pytest.raises(ValueError):
        websocket_url(given)


def record_of(*messages: dict, violations: tuple[str, ...] = (), opened: bool = True, closed: bool = True):
    record = CallRecord(messages=[(1.0, m) for m in messages], violations=list(violations))
    record.opened_at = 0.5 if opened else None
    record.closed_at = 2.0 if closed else None
    for m in messages:
        if m["type"] == "disconnect":
            record.disconnect = m
    return record


def outcome_of(record: CallRecord, **kwargs) -> Exit:
    call = GenesysCall("ws://127.0.0.1:9/audiohook", api_key="k")
    call.record = record
    return call_outcome(call, **kwargs)[0]


def disconnect(reason: str) -> dict:
    return {"type": "disconnect", "parameters": {"reason": reason, "outputVariables": {}}}


def test_exit_codes_say_what_happened():
    assert outcome_of(record_of()) is Exit.COMPLETED
    assert outcome_of(record_of(disconnect("completed"))) is Exit.COMPLETED
    assert outcome_of(record_of(), refused="HTTP 401") is Exit.UNREACHABLE
    assert outcome_of(record_of(disconnect("error"))) is Exit.ENDED_IN_ERROR
    assert outcome_of(record_of(disconnect("unauthorized"), opened=False)) is Exit.ENDED_IN_ERROR
    assert outcome_of(record_of(opened=False, closed=False)) is Exit.TIMEOUT
    assert outcome_of(record_of(closed=False)) is Exit.TIMEOUT
    assert outcome_of(record_of(violations=("seq 3 after 1",))) is Exit.VIOLATIONS
    assert outcome_of(record_of(), interrupted=True) is Exit.INTERRUPTED


# -- the command line --------------------------------------------------------------------------


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulators.call_simulator", *args]


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command(*args),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


async def test_help_lists_the_flags_and_the_exit_codes():
    code, out, _ = await run_cli("--help")
    assert code == 0
    for flag in (
        "--api-key",
        "--client-secret",
        "--connector-id",
        "--var",
        "--wav",
        "--say",
        "--dtmf",
        "--save-bot",
        "--save-format",
        "--timeline",
        "--progress-every",
        "--probe",
    ):
        assert flag in out
    assert "exit codes:" in out
    for code_line in ("  0 ", "  1 ", "  2 ", "  3 ", "  4 ", "  5 ", "  130 "):
        assert code_line in out


async def test_cli_places_a_call_with_variables_dtmf_and_a_wav(start_app, tmp_path):
    RecordingHandler.instances.clear()
    app = await start_app(handler_factory=recording_factory())
    caller = tmp_path / "caller.wav"
    write_wav(caller, speech_like(0.6, seed=2))
    code, out, err = await run_cli(
        ws_url(app),
        "--api-key",
        API_KEY,
        "--connector-id",
        "bot-7",
        "--var",
        "AGENT_NAME=Ava",
        "--wav",
        str(caller),
        "--listen",
        "0.4",
        "--dtmf",
        "0.2:12#",
        "--save-bot",
        str(tmp_path / "bot.wav"),
    )
    assert code == 0, out + err
    assert "closed:             yes" in out
    assert "result:             completed (our close was answered) (exit 0)" in out
    handler = RecordingHandler.instances[0]
    assert handler.session.connector_id == "bot-7"
    assert handler.request.input_variables == {"AGENT_NAME": "Ava"}
    assert handler.digits == ["1", "2", "#"]
    assert bytes(handler.audio[:4800]) == speech_like(0.6, seed=2)
    assert (tmp_path / "bot.wav").exists()


async def test_cli_probe_and_refused_key(start_app):
    app = await start_app()
    code, out, _ = await run_cli(ws_url(app), "--api-key", API_KEY, "--probe", "--quiet")
    assert code == 0 and "closed:             yes" in out
    code, _, err = await run_cli(ws_url(app), "--api-key", "wrong", "--quiet")
    assert code == 1 and "HTTP 401" in one_line(err)


async def test_an_http_url_is_taken_as_ws_with_a_one_line_note(start_app):
    RecordingHandler.instances.clear()
    app = await start_app(handler_factory=recording_factory())
    url = f"http://127.0.0.1:{app.port}/audiohook"
    code, out, err = await run_cli(url, "--api-key", API_KEY, "--speech", "0.4", "--listen", "0.2", "--quiet")
    assert code == 0, out + err
    assert (
        one_line(err) == f"call_simulator: note: http:// taken as ws:// (ws://127.0.0.1:{app.port}/audiohook)"
    )
    assert len(RecordingHandler.instances) == 1 and "closed:             yes" in out


@pytest.fixture
async def listener():
    """A TCP port on 127.0.0.1 that counts the connections made to it."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"ws://127.0.0.1:{port}/audiohook", accepted
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--dtmf", "1:x"], "argument --dtmf: 'x' in '1:x': the keys are 0-9, *, # and A-D"),
        (["--dtmf", "1:12e"], "'e' in '1:12e'"),
        (["--dtmf", "soon:1"], "expected SECONDS:DIGITS"),
        (["--dtmf", "2:"], "expected SECONDS:DIGITS"),
        (["--dtmf=-1:5"], "the time cannot be negative"),
        (["--dtmf", "nan:5"], "expected SECONDS:DIGITS"),
        (["--var", "AGENT_NAME"], "argument --var: expected NAME=VALUE"),
        (["--var", "=Ava"], "argument --var: expected NAME=VALUE"),
        (["--var", "AGENT NAME=Ava"], "no space in NAME"),
    ],
)
async def test_bad_dtmf_or_var_is_refused_in_one_line_before_dialling(listener, args, says):
    url, accepted = listener
    code, _, err = await run_cli(url, "--api-key", API_KEY, *args)
    assert code == 2
    assert says in one_line(err)
    assert accepted == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/audiohook", "127.0.0.1:8080/audiohook"])
async def test_another_scheme_is_refused_in_one_line(url):
    code, _, err = await run_cli(url, "--api-key", API_KEY)
    assert code == 2
    assert "expected a ws://, wss://, http:// or https:// URL" in one_line(err)


async def test_a_missing_not_wav_or_float_wav_is_one_line_naming_the_file(listener, tmp_path):
    url, accepted = listener
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    for path, problem in (
        (tmp_path / "missing.wav", "No such file or directory"),
        (text, "not a WAV file"),
        (float_wav(tmp_path / "float.wav"), "unsupported WAV format (tag 3, 32 bits)"),
    ):
        code, _, err = await run_cli(url, "--api-key", API_KEY, "--wav", str(path))
        line = one_line(err)
        assert code == 2
        assert f"--wav {path}: {problem}" in line and WAV_ACCEPTED in line
    assert accepted == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_exit_1_when_the_upgrade_is_refused_or_nothing_listens():
    def refuse(connection: ServerConnection, request):
        return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")

    async with serve(lambda ws: ws.close(), "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        code, out, err = await run_cli(f"ws://127.0.0.1:{port}/audiohook", "--api-key", API_KEY)
    assert code == 1 and out == ""
    assert one_line(err) == "call_simulator: connection refused: HTTP 503 Service Unavailable"
    code, out, err = await run_cli(f"ws://127.0.0.1:{closed_port()}/audiohook", "--api-key", API_KEY)
    assert code == 1 and out == ""
    assert "cannot connect to ws://127.0.0.1:" in one_line(err)


def end_call_with(reason: str, info: str | None, variables: dict[str, str] | None = None):
    async def script(handler: RecordingHandler) -> None:
        await asyncio.sleep(0.3)
        await handler.session.disconnect(reason, info, variables)

    return recording_factory(script)


async def test_exit_0_when_the_connector_completes_the_call(start_app):
    app = await start_app(handler_factory=end_call_with("completed", None, {"RESULT": "done"}))
    code, out, err = await run_cli(ws_url(app), "--api-key", API_KEY, "--speech", "0.4", "--listen", "2")
    assert code == 0, out + err
    assert "    RESULT = done" in out and "closed:             yes" in out
    assert "result:             completed (the connector ended it) (exit 0)" in out


async def test_exit_3_when_the_connector_ends_the_call_in_error(start_app):
    app = await start_app(handler_factory=end_call_with("error", "model unreachable"))
    code, out, err = await run_cli(ws_url(app), "--api-key", API_KEY, "--speech", "0.4", "--listen", "2")
    assert code == 3, out + err
    assert (
        one_line(err) == "call_simulator: the connector ended the call: disconnect error (model unreachable)"
    )
    assert "disconnect:         error model unreachable" in out and "closed:             yes" in out


def server_message(msg: dict, type_: str, seq: int, **parameters) -> str:
    return json.dumps(
        {
            "version": "2",
            "id": msg["id"],
            "type": type_,
            "seq": seq,
            "clientseq": msg["seq"],
            "parameters": parameters,
        }
    )


@contextlib.asynccontextmanager
async def audiohook_server(answers: dict[str, tuple[str, int]]):
    """A stand-in connector answering client message types with (type, seq); silent otherwise."""

    async def handle(ws: ServerConnection) -> None:
        async for raw in ws:
            if isinstance(raw, bytes):
                continue
            msg = json.loads(raw)
            if msg["type"] in answers:
                type_, seq = answers[msg["type"]]
                media = msg["parameters"].get("media", [{}])[:1] if type_ == "opened" else None
                extra = {"media": media} if media is not None else {}
                await ws.send(server_message(msg, type_, seq, **extra))

    async with serve(handle, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/audiohook"


async def test_exit_4_when_open_is_never_answered():
    async with audiohook_server({}) as url:
        code, out, err = await run_cli(url, "--api-key", API_KEY, "--quiet")
    assert code == 4, out + err
    assert one_line(err) == "call_simulator: no opened within 5 s of open"
    assert "result:             no opened within 5 s of open (exit 4)" in out


async def test_exit_5_when_the_server_breaks_the_protocol():
    # `closed` comes with seq 3 after 1: a sequence gap.
    async with audiohook_server({"open": ("opened", 1), "close": ("closed", 3)}) as url:
        code, out, err = await run_cli(url, "--api-key", API_KEY, "--speech", "0.2", "--listen", "0.2")
    assert code == 5, out + err
    assert "protocol violations:" in out and "bad closed: seq 3 after 1" in out
    assert one_line(err) == "call_simulator: 1 protocol violation(s) seen"


class Cli:
    """The command running in the background, its output read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []

    @classmethod
    async def start(cls, *args: str) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            *command(*args), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def wait_for(self, text: str, *, stderr: bool = False, timeout: float = 20.0) -> None:
        stream = self.proc.stderr if stderr else self.proc.stdout
        lines = self.err if stderr else self.out
        assert stream is not None
        async with asyncio.timeout(timeout):
            while not any(text in line for line in lines):
                line = await stream.readline()
                assert line, f"the command ended before printing {text!r}: {lines}"
                lines.append(line.decode())

    async def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        assert self.proc.returncode is not None
        return self.proc.returncode, "".join(self.out) + out.decode(), "".join(self.err) + err.decode()


async def test_ctrl_c_sends_close_waits_for_closed_prints_the_summary_and_exits_130(start_app):
    RecordingHandler.instances.clear()
    app = await start_app(handler_factory=recording_factory())
    cli = await Cli.start(ws_url(app), "--api-key", API_KEY, "--speech", "1", "--listen", "30")
    await cli.wait_for("<- opened")
    await asyncio.sleep(0.3)
    cli.proc.send_signal(signal.SIGINT)
    code, out, err = await cli.finish()
    assert code == 130, out + err
    session = RecordingHandler.instances[0].session
    assert session.end_reason == "caller hung up" and session.outcome == "caller_hangup"
    assert '-> close {"reason": "end"}' in out and "<- closed" in out
    assert "closed:             yes" in out
    assert "result:             interrupted: close sent, closed received (exit 130)" in out
    assert "interrupted: hanging up" in err and "Traceback" not in err


async def test_a_second_ctrl_c_exits_at_once_without_waiting_for_closed():
    async with audiohook_server({"open": ("opened", 1)}) as url:  # close is never answered
        cli = await Cli.start(url, "--api-key", API_KEY, "--listen", "30")
        await cli.wait_for("<- opened")
        cli.proc.send_signal(signal.SIGINT)
        await cli.wait_for("interrupted: hanging up", stderr=True)
        await cli.wait_for("-> close")
        cli.proc.send_signal(signal.SIGINT)
        code, out, err = await cli.finish()
    assert code == 130
    assert "interrupted again: exiting now" in err and "Traceback" not in err
    assert "result:" not in out  # no summary: it did not wait


async def test_progress_lines_appear_when_stdout_is_not_a_terminal(start_app):
    app = await start_app(handler_factory=recording_factory())
    args = (
        ws_url(app),
        "--api-key",
        API_KEY,
        "--speech",
        "0.6",
        "--listen",
        "1.4",
        "--progress-every",
        "0.4",
    )
    code, out, err = await run_cli(*args)
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if line.startswith("progress [")]
    assert len(lines) >= 3
    assert all(" s sent | bot " in line and " s received | last: " in line for line in lines)
    assert any("last: <- opened" in line for line in lines)
    sent = [float(line.split("] caller ")[1].split(" s sent")[0]) for line in lines]
    assert sent == sorted(sent) and sent[-1] > sent[0]
    code, out, _ = await run_cli(*args, "--quiet")
    assert code == 0 and "progress [" not in out and "-> open" not in out and "closed:" in out


def talks_twice(gap: float):
    async def script(handler: RecordingHandler) -> None:
        await asyncio.sleep(0.2)
        handler.session.play(Utterance("item_1"), speech_like(0.4, seed=3))
        await asyncio.sleep(gap)
        handler.session.play(Utterance("item_2"), speech_like(0.4, seed=4))

    return recording_factory(script)


async def test_saved_bot_audio_keeps_the_gaps_the_caller_heard(start_app, tmp_path):
    app = await start_app(handler_factory=talks_twice(gap=2.0))
    saved = tmp_path / "bot.wav"
    code, out, err = await run_cli(
        ws_url(app),
        *("--api-key", API_KEY, "--speech", "0.2", "--listen", "3", "--quiet"),
        *("--save-bot", str(saved), "--save-format", "pcm16", "--timeline", str(tmp_path / "call.html")),
    )
    assert code == 0, out + err
    with wave.open(str(saved), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        heard = w.readframes(w.getnframes())
    first = audioop.ulaw2lin(speech_like(0.4, seed=3), 2)
    second = audioop.ulaw2lin(speech_like(0.4, seed=4), 2)
    at_first, at_second = heard.find(first), heard.find(second)
    assert 0 <= at_first < at_second
    between = heard[at_first + len(first) : at_second]
    assert len(between) >= 2 * 8000 * 1.0  # about 1.6 s of silence in 16-bit samples
    assert between == bytes(len(between))
    assert "bot audio saved to" in out and "pcm16" in out
    # The timeline shows the same two bot turns, and the caller's audio.
    page = (tmp_path / "call.html").read_text(encoding="utf-8")
    data = json.loads(page.split('id="call-data">')[1].split("</script>")[0])
    lanes = {lane["name"]: lane["frames"] for lane in data["lanes"]}
    assert lanes["caller"] and abs(sum(seconds for _, seconds, _ in lanes["bot"]) - 0.8) < 0.01
    starts = [start for start, _, _ in lanes["bot"]]
    assert max(b - a for a, b in itertools.pairwise(starts)) >= 1.0
