"""A Genesys Cloud stand-in: dials a connector the way Audio Connector does and checks its answers.

As a library (tests, benchmarks, the demo): `GenesysCall` opens a session with the right headers
(and a signature when a client secret is given), streams caller audio at real time, answers pings,
`pause`/`resume` and `disconnect`, and records everything the server sends, flagging every
protocol violation it sees (sequence gaps, bad `pong.clientseq`, malformed messages...).

As a command: `python -m simulators.call_simulator ws://localhost:8080/audiohook --api-key KEY ...`; see
`--help` (exit codes included) and README.md. It says what went wrong in one line, shows progress
while it streams, can speak real words (`--say`, with eSpeak NG), saves the bot audio as the caller
heard it (`--save-bot`) and draws the call as an HTML page (`--timeline`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import enum
import json
import math
import os
import secrets
import shutil
import signal
import struct
import sys
import time
import urllib.parse
import uuid
import wave
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from audiohook_protocol import (
    DTMF_DIGITS,
    MAX_MESSAGE_CHARS,
    MAX_OUTBOUND_BYTES,
    NULL_UUID,
    format_duration,
)
from genesys_auth import sign_request
from simulators import speech
from simulators.audio import RATE, read_wav, silence, speech_like, ulaw_to_pcm16, write_wav
from utils import ULAW_SILENCE, audioop, ulaw_rms

SERVER_TYPES = frozenset({"opened", "closed", "pong", "pause", "resume", "updated", "event", "disconnect"})
MONO = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
CALLER_FRAMES_KEPT = 36_000  # send times and levels of the last two hours of 200 ms frames
QUIET_TYPES = frozenset({"ping", "pong"})  # too frequent to be anyone's "last event"


class CallError(Exception):
    pass


@dataclass
class CallRecord:
    """Everything the server sent, with arrival times (monotonic seconds)."""

    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    audio_frames: list[tuple[float, int]] = field(default_factory=list)
    bot_audio: bytearray = field(default_factory=bytearray)
    bot_audio_bytes: int = 0  # counted even when the audio itself is not kept
    # What the caller sent, for timelines: (send time, bytes per channel, RMS level), when kept.
    caller_frames: deque[tuple[float, int, int]] = field(
        default_factory=lambda: deque(maxlen=CALLER_FRAMES_KEPT)
    )
    dtmf_sent: list[tuple[float, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    pong_rtts: list[float] = field(default_factory=list)
    opened_at: float | None = None
    disconnect: dict[str, Any] | None = None
    disconnect_at: float | None = None
    closed_at: float | None = None

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m.get("type") == type_]

    def events(self, entity_type: str) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, e)
            for t, m in self.messages
            if m.get("type") == "event"
            for e in m["parameters"].get("entities", [])
            if e.get("type") == entity_type
        ]

    @property
    def output_variables(self) -> dict[str, str] | None:
        if self.disconnect is None:
            return None
        return self.disconnect["parameters"].get("outputVariables")


class GenesysCall:
    """One simulated Audio Connector session."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str,
        client_secret: str | None = None,
        connector_id: str | None = None,
        organization_id: str | None = None,
        session_id: str | None = None,
        conversation_id: str | None = None,
        input_variables: dict[str, str] | None = None,
        media: list[dict[str, Any]] | None = None,
        probe: bool = False,
        extra_headers: dict[str, str] | None = None,
        ping_interval: float | None = 5.0,
        playback_events: bool = False,
        language: str | None = "en-US",
        ask_languages: bool = False,
        playback_delay: float = 0.0,
        auto_close: bool = True,
        verbose: bool = False,
        keep_audio: bool = True,
        frame_tap: Callable[[float, bytes], None] | None = None,
        printer: Callable[[str], None] | None = None,
    ) -> None:
        self.base_url = url.rstrip("/")
        self.url = self.base_url + (f"/{urllib.parse.quote(connector_id)}" if connector_id else "")
        self.api_key = api_key
        self.client_secret = client_secret
        self.organization_id = organization_id or str(uuid.uuid4())
        self.session_id = session_id or str(uuid.uuid4())
        self.correlation_id = str(uuid.uuid4())
        self.probe = probe
        self.conversation_id = NULL_UUID if probe else (conversation_id or str(uuid.uuid4()))
        self.participant_id = NULL_UUID if probe else str(uuid.uuid4())
        self.input_variables = input_variables or {}
        self.language = language  # the flow's language, as `open` carries it
        self.ask_languages = ask_languages  # `supportedLanguages: true` in `open`
        self.media = media if media is not None else [MONO]
        self.extra_headers = extra_headers or {}
        self.ping_interval = ping_interval
        self.playback_events = playback_events
        self.playback_delay = playback_delay  # report playback_completed this much late
        self.auto_close = auto_close
        self.verbose = verbose
        self.keep_audio = keep_audio  # False: frames are only counted (long or large runs)
        self.frame_tap = frame_tap
        self.printer = printer  # where verbose lines go (default: stdout)
        self.record = CallRecord()
        self.ws: ClientConnection | None = None
        self.seq = 0
        self.server_seq = 0
        self.audio_seconds_sent = 0.0
        self.paused = False
        self.sent_at: dict[int, float] = {}
        self.sent_log: list[tuple[float, str]] = []
        self._pings: deque[tuple[int, float]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._answered = asyncio.Event()  # the open transaction got an answer (or the socket went)
        self._ended = asyncio.Event()  # disconnect or closed received, or the socket went
        self._closed = asyncio.Event()
        self._playout_end = 0.0
        self._playout_clock = 0.0  # when the bot audio received so far ends, for progress lines
        self._playing = False
        self.last_event = ""  # the last message either way but pings and audio, for progress lines
        self._t0 = time.monotonic()

    # -- connection --------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        headers = {
            "Audiohook-Organization-Id": self.organization_id,
            "Audiohook-Session-Id": self.session_id,
            "Audiohook-Correlation-Id": self.correlation_id,
            "X-API-KEY": self.api_key,
            "User-Agent": "GenesysCloud-AudioHook-Client (simulator)",
        }
        if self.client_secret:
            parts = urllib.parse.urlsplit(self.url)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            created = int(time.time())
            headers.update(
                sign_request(
                    target=target,
                    authority=parts.netloc,
                    headers=headers,
                    api_key=self.api_key,
                    secret=base64.b64decode(self.client_secret),
                    nonce=base64.b64encode(secrets.token_bytes(18)).decode(),
                    created=created,
                    expires=created + 30,
                )
            )
        headers.update(self.extra_headers)
        return headers

    async def connect(self, timeout: float = 10.0) -> None:
        """Open the WebSocket. Raises InvalidStatus when the server answers with an HTTP error."""
        async with asyncio.timeout(timeout):
            self.ws = await connect(
                self.url,
                additional_headers=self.headers(),
                max_size=2**20,
                ping_interval=None,
                compression=None,
                open_timeout=timeout,
                close_timeout=2,
            )
        self._tasks.append(asyncio.create_task(self._reader(), name="sim-reader"))

    async def __aenter__(self) -> GenesysCall:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self.ws.close()

    @property
    def started_at(self) -> float:
        """When this call was created (monotonic seconds): the origin of `elapsed()`."""
        return self._t0

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    @property
    def close_sent(self) -> bool:
        return any(type_ == "close" for _, type_ in self.sent_log)

    @property
    def bot_audio_seconds(self) -> float:
        return self.record.bot_audio_bytes / RATE

    @property
    def bot_playing_until(self) -> float:
        """When the bot audio received so far has played out (monotonic seconds)."""
        return self._playout_clock

    def _say(self, text: str) -> None:
        if self.verbose:
            line = f"[{self.elapsed():6.2f}s] {text}"
            if self.printer is not None:
                self.printer(line)
            else:
                print(line, flush=True)

    # -- sending -----------------------------------------------------------------------------

    async def send_message(self, type_: str, parameters: dict[str, Any] | None = None) -> int:
        assert self.ws is not None
        self.seq += 1
        message = {
            "version": "2",
            "id": self.session_id,
            "type": type_,
            "seq": self.seq,
            "serverseq": self.server_seq,
            "position": format_duration(self.audio_seconds_sent),
            "parameters": parameters or {},
        }
        self.sent_at[self.seq] = time.monotonic()
        self.sent_log.append((self.sent_at[self.seq], type_))
        await self.ws.send(json.dumps(message))
        if type_ not in QUIET_TYPES:
            self.last_event = f"-> {type_}"
            self._say(f"-> {type_} {json.dumps(parameters or {})[:120]}")
        return self.seq

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    async def open(self, timeout: float = 5.0) -> dict[str, Any]:
        """Send `open` and wait for `opened` (or a `disconnect`)."""
        params: dict[str, Any] = {
            "organizationId": self.organization_id,
            "conversationId": self.conversation_id,
            "participant": {
                "id": self.participant_id,
                "ani": "" if self.probe else "+13175550100",
                "aniName": "" if self.probe else "Simulated Caller",
                "dnis": "" if self.probe else "+13175550199",
            },
            "media": self.media,
        }
        if not self.probe:
            params["inputVariables"] = self.input_variables
        if self.language is not None:
            params["language"] = self.language
        if self.ask_languages:
            params["supportedLanguages"] = True
        await self.send_message("open", params)
        async with asyncio.timeout(timeout):
            await self._answered.wait()
        opened = self.record.of_type("opened")
        if not opened:
            raise CallError(f"no opened: {self.record.disconnect}")
        if self.ping_interval:
            self._tasks.append(asyncio.create_task(self._pinger(), name="sim-pinger"))
        return opened[0]

    async def send_audio(self, frame: bytes) -> None:
        if self.paused:
            return
        await self.send_raw(frame)
        channels = self.media[0]["channels"]
        if self.keep_audio:
            caller = frame if len(channels) == 1 else frame[channels.index("external") :: len(channels)]
            self.record.caller_frames.append((time.monotonic(), len(caller), ulaw_rms(caller)))
        self.audio_seconds_sent += len(frame) / 8000 / len(channels)

    async def stream(self, audio: bytes, *, frame_ms: int = 200, realtime: bool = True) -> None:
        """Send PCMU in frames at real time (or as fast as possible), stopping if the call ends."""
        channels = len(self.media[0]["channels"])
        step = 8 * frame_ms
        start = time.monotonic()
        for n, i in enumerate(range(0, len(audio), step)):
            if self._ended.is_set():
                return
            chunk = audio[i : i + step]
            if channels == 2:  # the caller on `external`, silence on the other channel
                ext = self.media[0]["channels"].index("external")
                pair = [chunk, b"\xff" * len(chunk)] if ext == 0 else [b"\xff" * len(chunk), chunk]
                chunk = bytes(b for two in zip(*pair, strict=True) for b in two)
            await self.send_audio(chunk)
            if realtime:
                delay = start + (n + 1) * frame_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def send_dtmf(self, digits: str, gap: float = 0.15) -> None:
        for digit in digits:
            await self.send_message("dtmf", {"digit": digit})
            self.record.dtmf_sent.append((time.monotonic(), digit))
            await asyncio.sleep(gap)

    async def close(self, reason: str = "end", timeout: float = 10.0) -> dict[str, Any] | None:
        """Send `close` and wait for `closed`."""
        if self._closed.is_set():  # answered already, or the socket went
            closed = self.record.of_type("closed")
            return closed[0] if closed else None
        await self.send_message("close", {"reason": reason})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._closed.wait()
        closed = self.record.of_type("closed")
        return closed[0] if closed else None

    async def wait_disconnect(self, timeout: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            await self._ended.wait()
        if self.record.disconnect is None:
            raise CallError("the call ended without a disconnect")
        if self.auto_close:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._closed.wait()
        return self.record.disconnect

    async def wait_closed(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._closed.wait()

    # -- receiving ---------------------------------------------------------------------------

    async def _reader(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    self._on_audio(now, message)
                else:
                    await self._on_text(now, message)
        except ConnectionClosed:
            pass
        finally:
            self._answered.set()
            self._ended.set()
            self._closed.set()

    def _violation(self, text: str) -> None:
        self.record.violations.append(text)
        self._say(f"!! {text}")

    def _on_audio(self, now: float, data: bytes) -> None:
        if len(data) > MAX_OUTBOUND_BYTES:
            self._violation(f"binary frame of {len(data)} bytes")
        if self.record.opened_at is None:
            self._violation("audio before opened")
        if self.record.closed_at is not None:
            self._violation("audio after closed")
        if self._playout_clock < now - 0.3:
            self._say("<- bot audio")
        self._playout_clock = max(self._playout_clock, now) + len(data) / 8000
        self.record.audio_frames.append((now, len(data)))
        self.record.bot_audio_bytes += len(data)
        if self.keep_audio:
            self.record.bot_audio += data
        if self.frame_tap is not None:
            self.frame_tap(now, data)
        if self.playback_events:
            if not self._playing:
                self._playing = True
                self._tasks.append(asyncio.create_task(self._playback(), name="sim-playback"))
            self._playout_end = max(self._playout_end, now) + len(data) / 8000

    async def _playback(self) -> None:
        """Like Genesys: playback_started when audio starts, playback_completed when it runs out."""
        with contextlib.suppress(ConnectionClosed):
            await self.send_message("playback_started")
            while time.monotonic() < self._playout_end:
                await asyncio.sleep(self._playout_end - time.monotonic())
            self._playing = False
            await asyncio.sleep(self.playback_delay)
            if not self._ended.is_set():
                await self.send_message("playback_completed")

    async def _on_text(self, now: float, text: str) -> None:
        if len(text) > MAX_MESSAGE_CHARS:
            self._violation("text message over 65,535 characters")
        try:
            msg = json.loads(text)
        except ValueError:
            self._violation("malformed JSON")
            return
        if not self._check_envelope(msg):
            return
        self.record.messages.append((now, msg))
        self._answered.set()
        type_ = msg["type"]
        params = msg["parameters"]
        if type_ not in QUIET_TYPES:
            self.last_event = _describe_received(type_, params)
            self._say(f"<- {type_} {json.dumps(params)[:160]}")
        if type_ == "opened":
            self._check_opened(params)
            self.record.opened_at = now
        elif type_ == "pong":
            self._check_pong(now, msg)
        elif type_ == "disconnect":
            self._check_disconnect(params)
            self.record.disconnect = msg
            self.record.disconnect_at = now
            self._ended.set()
            if self.auto_close:
                await self.send_message("close", {"reason": "disconnect"})
        elif type_ == "closed":
            if params:
                self._violation("closed with parameters")
            self.record.closed_at = now
            self._ended.set()
            self._closed.set()
        elif type_ == "pause":
            self.paused = True
            await self.send_message("paused")
        elif type_ == "resume":
            self.paused = False
            await self.send_message(
                "resumed", {"start": format_duration(self.audio_seconds_sent), "discarded": "PT0S"}
            )
        elif type_ == "event":
            self._check_event(now, params)

    def _check_envelope(self, msg: Any) -> bool:
        if not isinstance(msg, dict):
            self._violation("message is not an object")
            return False
        problems = []
        if msg.get("version") != "2":
            problems.append("version")
        if msg.get("id") != self.session_id:
            problems.append("id")
        if msg.get("type") not in SERVER_TYPES:
            problems.append(f"type {msg.get('type')!r}")
        if not isinstance(msg.get("parameters"), dict):
            problems.append("parameters")
        seq = msg.get("seq")
        if seq != self.server_seq + 1:
            problems.append(f"seq {seq} after {self.server_seq}")
        clientseq = msg.get("clientseq")
        if not isinstance(clientseq, int) or not 0 <= clientseq <= self.seq:
            problems.append(f"clientseq {clientseq}")
        if isinstance(seq, int):
            self.server_seq = seq
        if problems:
            self._violation(f"bad {msg.get('type')}: " + ", ".join(problems))
            return isinstance(msg.get("parameters"), dict) and msg.get("type") in SERVER_TYPES
        return True

    def _check_opened(self, params: dict[str, Any]) -> None:
        media = params.get("media")
        if not isinstance(media, list) or len(media) != 1 or media[0] not in self.media:
            self._violation(f"opened media {media!r} is not exactly one offered entry")

    def _check_pong(self, now: float, msg: dict[str, Any]) -> None:
        if not self._pings:
            self._violation("pong without ping")
            return
        ping_seq, sent = self._pings.popleft()
        if msg["clientseq"] != ping_seq:
            self._violation(f"pong clientseq {msg['clientseq']} for ping {ping_seq}")
        self.record.pong_rtts.append(now - sent)

    def _check_disconnect(self, params: dict[str, Any]) -> None:
        if params.get("reason") not in ("completed", "unauthorized", "error"):
            self._violation(f"disconnect reason {params.get('reason')!r}")
        variables = params.get("outputVariables", {})
        if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
            self._violation("outputVariables must map strings to strings")

    def _check_event(self, now: float, params: dict[str, Any]) -> None:
        entities = params.get("entities")
        if not isinstance(entities, list) or not all(
            isinstance(e, dict) and isinstance(e.get("type"), str) and "data" in e for e in entities
        ):
            self._violation("malformed event entities")
            return
        if any(e["type"] == "barge_in" for e in entities) and self.playback_events:
            self._playout_end = now  # Genesys flushes what it buffered

    async def ping(self) -> int:
        seq = await self.send_message("ping")
        self._pings.append((seq, self.sent_at[seq]))
        return seq

    async def _pinger(self) -> None:
        """Like the reference client: first ping at +1 s, then every `ping_interval`."""
        assert self.ping_interval
        with contextlib.suppress(ConnectionClosed):
            await asyncio.sleep(1.0)
            while not self._ended.is_set():
                if self._pings and time.monotonic() - self._pings[0][1] > self.ping_interval:
                    self._violation("pong timeout")
                await self.ping()
                await asyncio.sleep(self.ping_interval)


def _describe_received(type_: str, params: dict[str, Any]) -> str:
    if type_ == "event" and isinstance(params.get("entities"), list):
        kinds = [str(e.get("type")) for e in params["entities"] if isinstance(e, dict)]
        return "<- event " + ",".join(kinds)
    if type_ == "disconnect":
        return f"<- disconnect {params.get('reason')}"
    return f"<- {type_}"


# -- what the caller heard -------------------------------------------------------------------


@dataclass(frozen=True)
class Played:
    """A piece of bot audio on the caller's playout timeline, from `start` samples after the origin."""

    start: int
    audio: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


def playout(frames: Iterable[tuple[float, bytes]], barge_ins: Iterable[float], origin: float) -> list[Played]:
    """What a caller hears of bot frames (arrival time, PCMU) played the way Genesys plays them.

    A frame plays from its arrival or from the end of the frame before, whichever is later; a
    barge-in at time t flushes what had not been played by t. Positions are whole samples, so
    back-to-back frames stay back to back however long the call.
    """
    events = sorted(
        [(t, 0, b"") for t in barge_ins] + [(t, 1, data) for t, data in frames], key=lambda e: e[:2]
    )
    played: list[Played] = []
    end = 0
    for t, kind, data in events:
        at = max(0, round((t - origin) * RATE))
        if kind == 0:
            while played and played[-1].start >= at:
                played.pop()
            if played and played[-1].end > at:
                cut = played.pop()
                played.append(Played(cut.start, cut.audio[: at - cut.start]))
            end = min(end, at)
        elif data:
            start = max(at, end)
            played.append(Played(start, data))
            end = start + len(data)
    return played


def heard_audio(played: Sequence[Played]) -> bytes:
    """The played pieces as one PCMU stream from the origin, with silence where the bot was silent."""
    out = bytearray()
    for piece in played:
        out += ULAW_SILENCE * (piece.start - len(out))
        out += piece.audio
    return bytes(out)


def received_frames(record: CallRecord) -> list[tuple[float, bytes]]:
    """(arrival time, PCMU) of every bot frame received; empty audio unless the call kept it."""
    frames = []
    offset = 0
    for t, size in record.audio_frames:
        frames.append((t, bytes(record.bot_audio[offset : offset + size])))
        offset += size
    return frames


def bot_playout(call: GenesysCall, origin: float | None = None) -> list[Played]:
    """The call's bot audio as its caller heard it, from `origin` (default: when it was opened)."""
    record = call.record
    if origin is None:
        origin = record.opened_at if record.opened_at is not None else call.started_at
    return playout(received_frames(record), [t for t, _ in record.events("barge_in")], origin)


SAVE_FORMATS = ("mulaw", "pcm16")


def save_audio(path: str | Path, pcmu: bytes, fmt: str = "mulaw") -> None:
    """PCMU mono 8 kHz as a μ-law WAV (the bytes kept exactly) or a 16-bit PCM WAV."""
    if fmt == "mulaw":
        write_wav(path, pcmu)
    elif fmt == "pcm16":
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(ulaw_to_pcm16(pcmu))
    else:
        raise ValueError(f"unknown WAV format {fmt!r}; expected one of {', '.join(SAVE_FORMATS)}")


# -- command line --------------------------------------------------------------------------


class Exit(enum.IntEnum):
    """What the command's exit code says about the call."""

    COMPLETED = 0
    UNREACHABLE = 1
    USAGE = 2
    ENDED_IN_ERROR = 3
    TIMEOUT = 4
    VIOLATIONS = 5
    INTERRUPTED = 130


EXIT_CODES_HELP = """\
exit codes:
  0    the call completed: our close was answered with closed, or the connector
       ended it with disconnect "completed" (and answered our close)
  1    the connector refused the WebSocket upgrade (the HTTP status is shown),
       or could not be reached
  2    bad arguments: URL, --wav file, --dtmf, --var, no API key
  3    the connector ended the call with disconnect "error" or "unauthorized"
  4    timed out: no opened after open, or no closed after close
  5    protocol violations seen (listed in the summary)
  130  interrupted (Ctrl-C): close was sent and closed awaited up to 3 s;
       a second Ctrl-C exits at once
"""

PROG = "call_simulator"
WAV_ACCEPTED = "accepted: PCM 8/16-bit or μ-law WAV, mono or stereo, any rate"
OPEN_TIMEOUT = 5.0  # the reference client's open transaction timeout
CLOSE_TIMEOUT = 10.0  # and its close transaction timeout
INTERRUPTED_CLOSE_TIMEOUT = 3.0
UNOPENED_CLOSE_TIMEOUT = 1.0  # a connector that did not answer open will hardly answer close
CONNECT_TIMEOUT = 10.0


class UsageError(Exception):
    """A bad argument, said in one line."""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line: argparse would print the whole usage before them."""

    def error(self, message: str) -> NoReturn:
        self.exit(Exit.USAGE, f"{PROG}: {message} (see --help)\n")


def websocket_url(text: str) -> tuple[str, str | None]:
    """The connector URL as ws:// or wss://, and a note when it was given as http(s)://
    (the address App Platform shows)."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        _ = parts.port  # raises ValueError when out of range
    except ValueError as exc:
        raise ValueError(f"{exc} in {text!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https"):
        raise ValueError(f"expected a ws://, wss://, http:// or https:// URL, got {text!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {text!r}")
    if scheme in ("ws", "wss"):
        return urllib.parse.urlunsplit(parts), None
    secure = "wss" if scheme == "https" else "ws"
    url = urllib.parse.urlunsplit(parts._replace(scheme=secure))
    return url, f"note: {scheme}:// taken as {secure}:// ({url})"


def _connector_url(text: str) -> str:
    try:
        websocket_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def dtmf_press(text: str) -> tuple[float, str]:
    """`SECONDS:DIGITS` (keys pressed that long after opened) as (seconds, digits)."""
    at, sep, digits = text.partition(":")
    try:
        seconds = float(at)
    except ValueError:
        seconds = math.nan
    if not sep or not digits or not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"expected SECONDS:DIGITS such as 2.5:12#, got {text!r}")
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"the time cannot be negative, got {text!r}")
    wrong = "".join(sorted(set(digits) - DTMF_DIGITS))
    if wrong:
        raise argparse.ArgumentTypeError(f"{wrong!r} in {text!r}: the keys are 0-9, *, # and A-D")
    return seconds, digits


def input_variable(text: str) -> tuple[str, str]:
    """`NAME=VALUE` as (name, value)."""
    name, sep, value = text.partition("=")
    if not sep or not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with no space in NAME, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        description="Dial a connector like Genesys Cloud Audio Connector does, and report what it answers.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "url",
        type=_connector_url,
        help="connector URL, e.g. ws://localhost:8080/audiohook or wss://host/audiohook"
        " (http:// and https:// are taken as ws:// and wss://)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("GENESYS_API_KEY"),
        help="X-API-KEY (default: $GENESYS_API_KEY)",
    )
    p.add_argument(
        "--client-secret",
        default=os.environ.get("GENESYS_AUDIOHOOK_CLIENT_SECRET"),
        help="base64 client secret: requests are then signed (default: $GENESYS_AUDIOHOOK_CLIENT_SECRET)",
    )
    p.add_argument("--connector-id", help="appended to the URL path, as Genesys does")
    p.add_argument("--org-id", help="organization id (default: random)")
    p.add_argument(
        "--var",
        action="append",
        default=[],
        type=input_variable,
        metavar="NAME=VALUE",
        help="an input variable (repeatable)",
    )
    p.add_argument("--wav", help="caller audio: WAV file (PCM 8/16-bit or μ-law, any rate, mono or stereo)")
    p.add_argument(
        "--say",
        action="append",
        default=[],
        metavar="TEXT",
        help="a caller turn spoken with eSpeak NG, then --listen seconds of silence (repeatable;"
        " after --wav if both); speech-like audio of a similar length when the engine is missing",
    )
    p.add_argument(
        "--speech",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="generated speech-like caller audio when there is no --wav or --say (default 3)",
    )
    p.add_argument(
        "--listen",
        type=float,
        default=8.0,
        metavar="SECONDS",
        help="silence streamed after each caller turn, while the bot answers (default 8)",
    )
    p.add_argument(
        "--dtmf",
        action="append",
        default=[],
        type=dtmf_press,
        metavar="SECONDS:DIGITS",
        help="press keys (0-9, *, #, A-D) this long after opened (repeatable)",
    )
    p.add_argument("--stereo", action="store_true", help="offer stereo media (external + internal)")
    p.add_argument("--probe", action="store_true", help="run a connection probe instead of a call")
    p.add_argument(
        "--playback-events",
        action="store_true",
        help="send playback_started/playback_completed like Genesys",
    )
    p.add_argument(
        "--save-bot",
        metavar="WAV",
        help="write the bot audio as the caller heard it (silence in the gaps, barge-ins flushed)",
    )
    p.add_argument(
        "--save-format",
        choices=SAVE_FORMATS,
        default="mulaw",
        help="--save-bot as μ-law (the bytes received, default) or 16-bit PCM",
    )
    p.add_argument("--timeline", metavar="HTML", help="draw the call on a self-contained HTML page")
    p.add_argument(
        "--wait-disconnect",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the audio, wait this long for the bot to disconnect before closing",
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="when stdout is not a terminal, a progress line this often (default 5; 0: none)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


@dataclass(frozen=True)
class CallerTurn:
    """Something the caller says, then the silence while it listens."""

    label: str
    audio: bytes
    listen: float


def load_wav(path: str) -> bytes:
    """`read_wav`, with what went wrong in one line."""
    try:
        return read_wav(path)
    except OSError as exc:
        raise UsageError(f"--wav {path}: {exc.strerror or exc}; {WAV_ACCEPTED}") from None
    except (ValueError, struct.error, audioop.error) as exc:
        problem = str(exc).removeprefix(f"{path}: ")
        raise UsageError(f"--wav {path}: {problem}; {WAV_ACCEPTED}") from None


def caller_turns(args: argparse.Namespace) -> list[CallerTurn]:
    turns = []
    if args.wav:
        audio = load_wav(args.wav)
        turns.append(CallerTurn(f"plays {args.wav} ({len(audio) / RATE:.1f} s)", audio, args.listen))
    for n, text in enumerate(args.say):
        audio, words = speech.spoken(text, seed=n + 1)
        how = "says" if words else "says (speech-like audio)"
        turns.append(CallerTurn(f"{how} {text!r}", audio, args.listen))
    if not turns:
        audio = speech_like(args.speech, seed=1)
        turns.append(CallerTurn(f"speaks ({args.speech:g} s of speech-like audio)", audio, args.listen))
    return turns


class Progress:
    """How the call is going, on stdout: one line rewritten in place on a terminal, otherwise a
    plain line every `every` seconds (none when 0). Event lines go through `line`, above it."""

    REDRAW = 0.5  # seconds between redraws on a terminal

    def __init__(self, call: GenesysCall, *, every: float, tty: bool, out: TextIO | None = None) -> None:
        self.call = call
        self.every = every
        self.tty = tty
        self.out = out or sys.stdout
        self._shown = False

    def status(self) -> str:
        call = self.call
        return (
            f"[{call.elapsed():6.1f}s] caller {call.audio_seconds_sent:.1f} s sent"
            f" | bot {call.bot_audio_seconds:.1f} s received | last: {call.last_event or '-'}"
        )

    def line(self, text: str) -> None:
        self.clear()
        print(text, file=self.out, flush=True)
        if self.tty:
            self._draw()

    def clear(self) -> None:
        if self._shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._shown = False

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns - 1
        self.out.write("\r" + self.status()[:width] + "\x1b[K")
        self.out.flush()
        self._shown = True

    async def run(self) -> None:
        if self.tty:
            while True:
                self._draw()
                await asyncio.sleep(self.REDRAW)
        while self.every > 0:
            await asyncio.sleep(self.every)
            print(f"progress {self.status()}", file=self.out, flush=True)


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a task of ours and wait for it, without swallowing a cancellation of our own."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


class Dialler:
    """One call from the command line: dial, talk, hang up (on Ctrl-C too), say how it went."""

    def __init__(
        self,
        call: GenesysCall,
        args: argparse.Namespace,
        turns: list[CallerTurn],
        progress: Progress | None,
    ) -> None:
        self.call = call
        self.args = args
        self.turns = turns
        self.progress = progress
        self.refused: str | None = None  # the upgrade was refused or the connection failed
        self.problem: str | None = None  # a transaction that timed out
        self.interrupted = False
        self._interrupt = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
            loop.add_signal_handler(signal.SIGINT, self._on_interrupt)
        talk = asyncio.create_task(self._talk(), name="cli-call")
        interrupt = asyncio.create_task(self._interrupt.wait(), name="cli-interrupt")
        shown = asyncio.create_task(self.progress.run(), name="cli-progress") if self.progress else None
        try:
            await asyncio.wait({talk, interrupt}, return_when=asyncio.FIRST_COMPLETED)
            if not talk.done():
                self.interrupted = True
                await _cancel_and_wait(talk)
                await self._hang_up_now()
            else:
                talk.result()
        finally:
            for task in (interrupt, shown):
                if task is not None:
                    await _cancel_and_wait(task)
            await self.call.aclose()
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signal.SIGINT)
            if self.progress is not None:
                self.progress.clear()

    def _on_interrupt(self) -> None:
        if self.progress is not None:
            self.progress.clear()
        if self._interrupt.is_set():
            sys.stdout.flush()
            print(f"{PROG}: interrupted again: exiting now", file=sys.stderr, flush=True)
            os._exit(Exit.INTERRUPTED)  # at once, as asked: no close, no summary
        print(f"{PROG}: interrupted: hanging up (Ctrl-C again to exit at once)", file=sys.stderr, flush=True)
        self._interrupt.set()

    async def _talk(self) -> None:
        call = self.call
        try:
            await call.connect(CONNECT_TIMEOUT)
        except InvalidStatus as exc:
            self.refused = f"connection refused: HTTP {exc.response.status_code} {exc.response.reason_phrase}"
            return
        except TimeoutError:
            self.refused = f"cannot connect to {call.url}: no answer within {CONNECT_TIMEOUT:g} s"
            return
        except (OSError, WebSocketException) as exc:
            self.refused = f"cannot connect to {call.url}: {exc}"
            return
        with contextlib.suppress(ConnectionClosed):  # the summary says what was missing
            await self._converse()

    async def _converse(self) -> None:
        call = self.call
        try:
            await call.open(timeout=OPEN_TIMEOUT)
        except TimeoutError:
            self.problem = f"no opened within {OPEN_TIMEOUT:g} s of open"
            await call.close("error", timeout=UNOPENED_CLOSE_TIMEOUT)
            return
        except CallError:  # a disconnect instead of opened: the reader answers it with close
            await self._await_closed()
            return
        if not self.args.probe:
            await self._speak()
        if call.record.disconnect is None:
            if await call.close(timeout=CLOSE_TIMEOUT) is None:
                self.problem = f"no closed within {CLOSE_TIMEOUT:g} s of close"
        else:
            await self._await_closed()

    async def _await_closed(self) -> None:
        if self.call.record.disconnect is None:
            return  # the socket went, nothing to wait for
        try:
            await self.call.wait_closed(CLOSE_TIMEOUT)
        except TimeoutError:
            self.problem = f"no closed within {CLOSE_TIMEOUT:g} s of close"

    async def _speak(self) -> None:
        call, args = self.call, self.args
        presses = [
            asyncio.create_task(self._press_later(at, digits), name="cli-dtmf") for at, digits in args.dtmf
        ]
        try:
            for turn in self.turns:
                if call.record.disconnect is not None:
                    break
                call._say(f"caller {turn.label}")
                await call.stream(turn.audio + silence(turn.listen))
            if args.wait_disconnect and call.record.disconnect is None:
                with contextlib.suppress(TimeoutError, CallError):
                    await call.wait_disconnect(args.wait_disconnect)
        finally:
            for task in presses:
                await _cancel_and_wait(task)

    async def _press_later(self, at: float, digits: str) -> None:
        await asyncio.sleep(at)
        with contextlib.suppress(ConnectionClosed):
            await self.call.send_dtmf(digits)

    async def _hang_up_now(self) -> None:
        """After Ctrl-C: close (unless sent already), and wait a little for closed."""
        call = self.call
        if call.ws is None or call.record.closed_at is not None:
            return
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            if call.close_sent:
                await call.wait_closed(INTERRUPTED_CLOSE_TIMEOUT)
            else:
                await call.close(timeout=INTERRUPTED_CLOSE_TIMEOUT)

    def outcome(self) -> tuple[Exit, str]:
        """The exit code and, in a few words, why."""
        return call_outcome(
            self.call, refused=self.refused, problem=self.problem, interrupted=self.interrupted
        )


def call_outcome(
    call: GenesysCall, *, refused: str | None = None, problem: str | None = None, interrupted: bool = False
) -> tuple[Exit, str]:
    """How a call went, as an exit code and a few words. `refused`: why it could not connect;
    `problem`: a transaction that timed out; `interrupted`: the operator pressed Ctrl-C."""
    record = call.record
    if interrupted:
        if not call.close_sent:
            return Exit.INTERRUPTED, "interrupted before the call was up"
        answered = "closed received" if record.closed_at is not None else "no closed within 3 s"
        return Exit.INTERRUPTED, f"interrupted: close sent, {answered}"
    if refused is not None:
        return Exit.UNREACHABLE, refused
    if record.opened_at is None and record.disconnect is None:
        return Exit.TIMEOUT, problem or "the connection ended before opened"
    if record.violations:
        return Exit.VIOLATIONS, f"{len(record.violations)} protocol violation(s) seen"
    if record.disconnect is not None:
        params = record.disconnect["parameters"]
        if params.get("reason") != "completed":
            info = f" ({params['info']})" if params.get("info") else ""
            return (
                Exit.ENDED_IN_ERROR,
                f"the connector ended the call: disconnect {params.get('reason')}{info}",
            )
    if record.closed_at is None:
        return Exit.TIMEOUT, problem or "the connection ended without closed"
    ended_by = "the connector ended it" if record.disconnect is not None else "our close was answered"
    return Exit.COMPLETED, f"completed ({ended_by})"


async def run_cli(args: argparse.Namespace) -> int:
    try:
        url, note = websocket_url(args.url)
        if not args.api_key:
            raise UsageError("--api-key (or GENESYS_API_KEY) is required")
        turns = [] if args.probe else caller_turns(args)
    except (UsageError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return Exit.USAGE
    if note:
        print(f"{PROG}: {note}", file=sys.stderr)
    call = GenesysCall(
        url,
        api_key=args.api_key,
        client_secret=args.client_secret,
        connector_id=args.connector_id,
        organization_id=args.org_id,
        input_variables=dict(args.var),
        media=[STEREO] if args.stereo else [MONO],
        probe=args.probe,
        playback_events=args.playback_events,
        verbose=not args.quiet,
    )
    progress = None
    if not args.quiet:
        progress = Progress(call, every=args.progress_every, tty=sys.stdout.isatty())
        call.printer = progress.line
    dialler = Dialler(call, args, turns, progress)
    await dialler.run()
    code, why = dialler.outcome()
    if code is Exit.UNREACHABLE:
        print(f"{PROG}: {why}", file=sys.stderr)
        return code
    _report(call, args, code, why)
    if code is not Exit.COMPLETED:
        print(f"{PROG}: {why}", file=sys.stderr)
    return code


def _report(call: GenesysCall, args: argparse.Namespace, code: Exit, why: str) -> None:
    record = call.record
    print()
    print(f"session {call.session_id}")
    print(f"  caller audio sent:  {call.audio_seconds_sent:.1f} s")
    print(f"  bot audio received: {call.bot_audio_seconds:.1f} s in {len(record.audio_frames)} frames")
    print(f"  barge-in events:    {len(record.events('barge_in'))}")
    if record.pong_rtts:
        print(
            f"  pong round trip:    max {max(record.pong_rtts) * 1000:.1f} ms"
            f" over {len(record.pong_rtts)} pings"
        )
    if record.disconnect:
        params = record.disconnect["parameters"]
        print(f"  disconnect:         {params.get('reason')} {params.get('info', '')}".rstrip())
        for key, value in sorted((record.output_variables or {}).items()):
            print(f"    {key} = {value}")
    print(f"  closed:             {'yes' if record.closed_at else 'no'}")
    if args.save_bot:
        heard = heard_audio(bot_playout(call))
        save_audio(args.save_bot, heard, args.save_format)
        print(
            f"  bot audio saved to  {args.save_bot} ({len(heard) / RATE:.1f} s as heard, {args.save_format})"
        )
    if args.timeline:
        from simulators.timeline import Timeline  # it builds on this module

        Timeline.from_call(call).write(args.timeline)
        print(f"  timeline drawn in   {args.timeline}")
    if record.violations:
        print("  protocol violations:")
        for violation in record.violations:
            print(f"    {violation}")
    print(f"  result:             {why} (exit {int(code)})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run_cli(args))
    except KeyboardInterrupt:  # before the call's own handler was in place
        return Exit.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
