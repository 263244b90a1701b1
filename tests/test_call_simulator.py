"""The call simulator as operators use it (command line), and its WAV handling."""

from __future__ import annotations

import asyncio
import struct
import sys
import wave
from array import array

from conftest import API_KEY, ROOT, RecordingHandler, recording_factory, ws_url

from simulators.audio import read_wav, speech_like, write_wav


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


def test_unsupported_wav_is_refused(tmp_path):
    path = tmp_path / "float.wav"
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 4) + b"\0\0\0\0"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    try:
        read_wav(path)
    except ValueError as exc:
        assert "unsupported" in str(exc)
    else:
        raise AssertionError("a float WAV was accepted")


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.call_simulator",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_help_lists_the_flags():
    code, out, _ = await run_cli("--help")
    assert code == 0
    for flag in (
        "--api-key",
        "--client-secret",
        "--connector-id",
        "--var",
        "--wav",
        "--dtmf",
        "--save-bot",
        "--probe",
    ):
        assert flag in out


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
    assert code == 1 and "HTTP 401" in err
