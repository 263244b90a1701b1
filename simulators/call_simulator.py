"""A Genesys Cloud stand-in: dials a connector the way Audio Connector does and checks its answers.

As a library (tests, benchmarks, the demo): `GenesysCall` opens a session with the right headers
(and a signature when a client secret is given), streams caller audio at real time, answers pings,
`pause`/`resume` and `disconnect`, and records everything the server sends, flagging every
protocol violation it sees (sequence gaps, bad `pong.clientseq`, malformed messages...).

As a command: `python -m simulators.call_simulator ws://localhost:8080/audiohook --api-key KEY ...`; see
`--help` and README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import sys
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from audiohook_protocol import MAX_MESSAGE_CHARS, MAX_OUTBOUND_BYTES, NULL_UUID, format_duration
from genesys_auth import sign_request
from simulators.audio import read_wav, silence, speech_like, write_wav

SERVER_TYPES = frozenset({"opened", "closed", "pong", "pause", "resume", "updated", "event", "disconnect"})
MONO = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}


class CallError(Exception):
    pass


@dataclass
class CallRecord:
    """Everything the server sent, with arrival times (monotonic seconds)."""

    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    audio_frames: list[tuple[float, int]] = field(default_factory=list)
    bot_audio: bytearray = field(default_factory=bytearray)
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
        playback_delay: float = 0.0,
        auto_close: bool = True,
        verbose: bool = False,
        keep_audio: bool = True,
        frame_tap: Callable[[float, bytes], None] | None = None,
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
        self.media = media if media is not None else [MONO]
        self.extra_headers = extra_headers or {}
        self.ping_interval = ping_interval
        self.playback_events = playback_events
        self.playback_delay = playback_delay  # report playback_completed this much late
        self.auto_close = auto_close
        self.verbose = verbose
        self.keep_audio = keep_audio  # False: frames are only counted (long or large runs)
        self.frame_tap = frame_tap
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

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"[{self.elapsed():6.2f}s] {text}", flush=True)

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
        if type_ not in ("ping",):
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
            "language": "en-US",
        }
        if not self.probe:
            params["inputVariables"] = self.input_variables
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
        self.audio_seconds_sent += len(frame) / 8000 / len(self.media[0]["channels"])

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
            await asyncio.sleep(gap)

    async def close(self, reason: str = "end", timeout: float = 10.0) -> dict[str, Any] | None:
        """Send `close` and wait for `closed`."""
        if self._closed.is_set():
            return self.record.of_type("closed")[0]
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
        if type_ != "pong":
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


# -- command line --------------------------------------------------------------------------


def _parse_vars(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--var expects NAME=VALUE, got {pair!r}")
        out[key] = value
    return out


def _parse_dtmf(specs: list[str]) -> list[tuple[float, str]]:
    out = []
    for spec in specs:
        at, sep, digits = spec.partition(":")
        if not sep:
            raise SystemExit(f"--dtmf expects SECONDS:DIGITS, got {spec!r}")
        out.append((float(at), digits))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Dial a connector like Genesys Cloud Audio Connector does, and report what it answers."
    )
    p.add_argument("url", help="connector URL, e.g. ws://localhost:8080/audiohook or wss://host/audiohook")
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
        metavar="NAME=VALUE",
        help="an input variable (repeatable)",
    )
    p.add_argument("--wav", help="caller audio: WAV file (PCM or μ-law, any rate, mono or stereo)")
    p.add_argument(
        "--speech",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="generated caller speech when no --wav (default 3)",
    )
    p.add_argument(
        "--listen",
        type=float,
        default=8.0,
        metavar="SECONDS",
        help="silence streamed after the caller audio, while the bot answers (default 8)",
    )
    p.add_argument(
        "--dtmf",
        action="append",
        default=[],
        metavar="SECONDS:DIGITS",
        help="press keys at a time after opened (repeatable)",
    )
    p.add_argument("--stereo", action="store_true", help="offer stereo media (external + internal)")
    p.add_argument("--probe", action="store_true", help="run a connection probe instead of a call")
    p.add_argument(
        "--playback-events",
        action="store_true",
        help="send playback_started/playback_completed like Genesys",
    )
    p.add_argument("--save-bot", metavar="WAV", help="write the bot audio received to this WAV file")
    p.add_argument(
        "--wait-disconnect",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the audio, wait this long for the bot to disconnect before closing",
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


async def run_cli(args: argparse.Namespace) -> int:
    if not args.api_key:
        print("call_simulator: --api-key (or GENESYS_API_KEY) is required", file=sys.stderr)
        return 2
    audio = read_wav(args.wav) if args.wav else speech_like(args.speech, seed=1)
    audio += silence(args.listen)
    call = GenesysCall(
        args.url,
        api_key=args.api_key,
        client_secret=args.client_secret,
        connector_id=args.connector_id,
        organization_id=args.org_id,
        input_variables=_parse_vars(args.var),
        media=[STEREO] if args.stereo else [MONO],
        probe=args.probe,
        playback_events=args.playback_events,
        verbose=not args.quiet,
    )
    try:
        await call.connect()
    except InvalidStatus as exc:
        print(f"connection refused: HTTP {exc.response.status_code}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:
        print(f"cannot connect: {exc}", file=sys.stderr)
        return 1
    try:
        await call.open()
        if not args.probe:
            dtmf = [
                asyncio.create_task(_press_later(call, at, digits)) for at, digits in _parse_dtmf(args.dtmf)
            ]
            await call.stream(audio)
            for task in dtmf:
                task.cancel()
            if args.wait_disconnect and call.record.disconnect is None:
                with contextlib.suppress(TimeoutError, CallError):
                    await call.wait_disconnect(args.wait_disconnect)
        if call.record.disconnect is None:
            await call.close()
        else:
            with contextlib.suppress(TimeoutError):
                await call.wait_closed(5)
    finally:
        await call.aclose()
    return _report(call, args)


async def _press_later(call: GenesysCall, at: float, digits: str) -> None:
    await asyncio.sleep(at)
    await call.send_dtmf(digits)


def _report(call: GenesysCall, args: argparse.Namespace) -> int:
    record = call.record
    seconds = len(record.bot_audio) / 8000
    print()
    print(f"session {call.session_id}")
    print(f"  bot audio received: {seconds:.1f} s in {len(record.audio_frames)} frames")
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
        write_wav(args.save_bot, bytes(record.bot_audio))
        print(f"  bot audio saved to  {args.save_bot}")
    if record.violations:
        print("  protocol violations:")
        for violation in record.violations:
            print(f"    {violation}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return asyncio.run(run_cli(args))


if __name__ == "__main__":
    sys.exit(main())
