"""A local stand-in for the OpenAI Realtime API (GA shapes), for tests and for trying the connector.

It speaks the GA WebSocket protocol closely enough to exercise everything the connector does:
`session.created`/`session.updated`, server-VAD-like turn detection from the energy of the audio
it receives, spoken answers as speech-like PCMU (or slices of a WAV) streamed faster than real
time in uneven chunks with transcripts and usage, cancellation on speech, truncation with the
real errors, function calls, out-of-band text responses, remote MCP listing/calls/approvals, and
faults on demand (dropped sockets, refused connections, a session time limit).

Every client event is validated against the `openai` package's own types when it is installed
(`openai>=1.107.1`; see `RealtimeValidator`), so an off-spec field fails the test that sent it.

As a command: `python -m simulators.realtime_simulator --port 8081`; point `OPENAI_REALTIME_URL` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http
import itertools
import json
import logging
import random
import re
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from simulators import speech
from simulators.audio import read_wav, speech_like
from simulators.script import Script, Turn
from utils import ulaw_rms

log = logging.getLogger("realtime-simulator")

SESSION_LIMIT_REASON = "Your session hit the maximum duration of 60 minutes."
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
MAX_CLIENT_ID_CHARS = 32  # the live service refuses longer client-supplied ids ("string too long")
WINDOW_BYTES = 160  # 20 ms of PCMU
SPEECH_RMS = 600  # energy above this (16-bit scale) is speech
SPEECH_WINDOWS_TO_START = 3
EAGERNESS_SILENCE_MS = {"low": 800, "medium": 500, "auto": 500, "high": 300}


# -- strict validation against the openai package's types -----------------------------------


class RealtimeValidator:
    """Dispatch on `type`, validate with the SDK's pydantic model, and flag every unknown field.

    The SDK's models allow extra fields, so beta names and typos would validate silently; they
    are walked and reported here. `audio/pcm` without `rate` is refused by the API though the
    types allow it: a hand rule.
    """

    def __init__(self) -> None:
        from openai import BaseModel as OpenAIModel
        from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent

        self._model = OpenAIModel
        self.client = self._by_type(RealtimeClientEvent)
        self.server = self._by_type(RealtimeServerEvent)

    @staticmethod
    def _by_type(alias: Any) -> dict[str, Any]:
        members = typing.get_args(typing.get_args(alias)[0])
        return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}

    def problems(self, event: Any, direction: str = "client") -> list[str]:
        if not isinstance(event, dict):
            return ["event is not a JSON object"]
        models = self.client if direction == "client" else self.server
        model = models.get(event.get("type"))
        if model is None:
            return [f"unknown {direction} event type {event.get('type')!r}"]
        try:
            parsed = model.model_validate(event)
        except Exception as exc:  # pydantic.ValidationError, kept short
            return [f"{event['type']}: {str(exc).splitlines()[0]} {_first_error(exc)}"]
        extras = [p for p in self._unknown_fields(parsed) if p not in _SESSION_FIELDS_NOT_IN_SDK]
        found = [f"{event['type']}: unknown field {p}" for p in extras]
        if direction == "client":
            found += _server_rules(event)
        return found

    def _unknown_fields(self, obj: Any, path: str = "$") -> list[str]:
        out: list[str] = []
        if isinstance(obj, self._model):
            out += [f"{path}.{k}" for k in (obj.model_extra or {})]
            for name in type(obj).model_fields:
                out += self._unknown_fields(getattr(obj, name), f"{path}.{name}")
        elif isinstance(obj, list | tuple):
            for i, value in enumerate(obj):
                out += self._unknown_fields(value, f"{path}[{i}]")
        return out


# The live API's session object carries these; the SDK models the session as the request type.
_SESSION_FIELDS_NOT_IN_SDK = frozenset(
    {"$.session.object", "$.session.id", "$.session.created_at", "$.session.expires_at"}
)


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return ""
    first = errors()[0] if errors() else {}
    return f"at {'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', '')}"


def _server_rules(event: dict[str, Any]) -> list[str]:
    session = event.get("session") if event.get("type") == "session.update" else None
    found = []
    for side in ("input", "output"):
        fmt = (((session or {}).get("audio") or {}).get(side) or {}).get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "audio/pcm" and fmt.get("rate") != 24000:
            found.append(f"session.audio.{side}.format: audio/pcm needs rate 24000")
    return found


def load_validator(required: bool) -> RealtimeValidator | None:
    try:
        return RealtimeValidator()
    except ImportError:
        if required:
            raise
        log.warning("the openai package is not installed: client events are not validated")
        return None


# -- the server ------------------------------------------------------------------------------


@dataclass
class SessionFailure:
    """Accept a socket, then fail it: an `error` (e.g. `insufficient_quota`, `server_error`) and a
    close, right after `session.created` or after the first `session.updated`."""

    error_code: str | None = "server_error"
    after: str = "created"  # or "updated"
    close_code: int | None = 1011  # None: the socket stays open after the error
    sessions: int | None = None  # how many sessions fail; None: every one


class RealtimeSimulator:
    def __init__(
        self,
        script: Script | None = None,
        *,
        speed: float = 4.0,
        session_seconds: float = 3600.0,
        strict: bool = True,
        validate_server: bool = False,
        bot_audio: bytes | None = None,
        seed: int = 7,
        speak_words: bool = False,
    ) -> None:
        self.script = script or Script()
        self.speak_words = speak_words  # voice the transcript with eSpeak NG when it is there
        self.speed = speed
        self.session_seconds = session_seconds
        self.validator = load_validator(required=strict)
        self.validate_server = validate_server
        self.bot_audio = bot_audio
        self.rng = random.Random(seed)
        self.server: Server | None = None
        self.sessions: list[SimSession] = []
        self.violations: list[str] = []
        self.usage_sent: list[dict[str, Any]] = []
        # Faults on demand.
        self.refuse_next = 0  # answer the next N connection attempts with HTTP 503
        self.refuse_all = False
        self.connect_delay = 0.0
        self.mute_next = 0  # accept the next N sockets and then say nothing at all (no session.created)
        self.drop_on: Callable[[dict[str, Any]], bool] | None = None  # drop the socket on a match
        self.response_delay = 0.05  # first delta this long after response.created
        self.keep_audio = True  # False: audio is not kept per session (long or large runs)
        # Validate one `input_audio_buffer.append` in this many (always the first of a session);
        # every other event is always validated. Above 1 only for load runs, where appends are
        # most of the traffic and validating each one would load the generator core.
        self.check_appends_every = 1
        # Observation hooks (the load benchmark stamps and times audio with them).
        self.append_tap: Callable[[SimSession, bytes], None] | None = None
        self.delta_tap: Callable[[SimSession, SimResponse, bytes], bytes] | None = None
        self.force_output_format: dict[str, Any] | None = None  # misbehave: ignore the asked format
        self.session_failure: SessionFailure | None = None
        # While this event is not set, the caller's silence never ends their turn (no
        # `speech_stopped`): the caller is still speaking as far as the server knows.
        self.hold_speech_stopped: asyncio.Event | None = None
        self.clock_offset = 0.0  # seconds the simulator's wall clock is ahead of the host's
        self.created_delay = 0.0  # `response.created` this long after the response was asked for
        # Refusals on demand: the error code to answer a matching client event with, or None.
        self.refuse_create: Callable[[dict[str, Any]], str | None] | None = None
        self.refuse_update: Callable[[dict[str, Any]], str | None] | None = None
        self.connections = 0
        self._ids = itertools.count(1)

    # -- serving

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> RealtimeSimulator:
        self.server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=None,
            compression=None,
            ping_interval=None,
        )
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}/v1/realtime"

    @property
    def azure_endpoint(self) -> str:
        """What `AZURE_OPENAI_ENDPOINT` would be if this were an Azure OpenAI resource."""
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def _fails(self) -> SessionFailure | None:
        failure = self.session_failure
        if failure is None or failure.sessions == 0:
            return None
        if failure.sessions is not None:
            failure.sessions -= 1
        return failure

    def new_id(self, prefix: str) -> str:
        """Ids shaped like the service's (`item_` and 21 characters): unique, and as long."""
        tail = "".join(self.rng.choices(_ID_ALPHABET, k=15))
        return f"{prefix}_{next(self._ids):06d}{tail}"

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.connections += 1
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        if self.refuse_all or self.refuse_next > 0:
            self.refuse_next = max(0, self.refuse_next - 1)
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "unavailable\n")
        path = request.path.split("?", 1)[0]
        if path == "/openai/v1/realtime":  # Azure OpenAI: the key in `api-key`, no bearer token
            if not request.headers.get("api-key") or request.headers.get("Authorization"):
                self.violations.append("Azure connection without api-key (or with Authorization)")
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing api-key\n")
        elif path == "/v1/realtime":
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
                self.violations.append("connection without Authorization: Bearer")
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing bearer token\n")
        else:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        if "model=" not in request.path:
            self.violations.append("connection without ?model=")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        session = SimSession(self, ws, _model_from_path(request.path))
        session.path = request.path
        self.sessions.append(session)
        if request.headers.get("OpenAI-Beta"):
            self.violations.append("OpenAI-Beta header sent")
            await session.emit(
                "error",
                error={
                    "type": "invalid_request_error",
                    "code": "beta_api_shape_disabled",
                    "message": "The Realtime Beta API is no longer supported. "
                    "Please use /v1/realtime for the GA API.",
                },
            )
            await ws.close(4000, "beta_api_shape_disabled")
            return
        if self.mute_next > 0:
            self.mute_next -= 1
            async for _ in ws:  # read (and so answer a close) but never say anything
                pass
            return
        await session.run()

    # -- controls for tests

    def drop_all(self) -> None:
        """Cut every live connection at the TCP level."""
        for session in self.sessions:
            session.drop()

    @property
    def client_events(self) -> list[dict[str, Any]]:
        return [e for s in self.sessions for e in s.received]

    def events_of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.client_events if e.get("type") == type_]

    def usage_totals(self) -> dict[str, int]:
        totals = dict.fromkeys(
            (
                "input_text",
                "input_cached_text",
                "input_audio",
                "input_cached_audio",
                "output_text",
                "output_audio",
            ),
            0,
        )
        for usage in self.usage_sent:
            given = usage["input_token_details"]
            totals["input_text"] += given["text_tokens"]
            totals["input_audio"] += given["audio_tokens"]
            totals["input_cached_text"] += given["cached_tokens_details"]["text_tokens"]
            totals["input_cached_audio"] += given["cached_tokens_details"]["audio_tokens"]
            totals["output_text"] += usage["output_token_details"]["text_tokens"]
            totals["output_audio"] += usage["output_token_details"]["audio_tokens"]
        return totals


def _model_from_path(path: str) -> str:
    match = re.search(r"[?&]model=([^&]+)", path)
    return match.group(1) if match else "gpt-realtime"


@dataclass
class SimItem:
    id: str
    type: str
    role: str | None = None
    call_id: str | None = None
    name: str | None = None
    audio_ms: int = 0
    transcript: str = ""


@dataclass
class SimResponse:
    id: str
    in_band: bool
    purpose: str | None
    params: dict[str, Any]
    cancelled: str | None = None  # the reason, once cancelled
    task: asyncio.Task[None] | None = None
    output: list[dict[str, Any]] = field(default_factory=list)  # the items, once done


def _default_session(model: str, created_at: int, expires_at: int, session_id: str) -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "created_at": created_at,
        "expires_at": expires_at,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "include": None,
        "truncation": "auto",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
        },
    }


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        replaced_whole = ("format", "turn_detection", "transcription", "noise_reduction")
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in replaced_whole:
            _merge(base[key], value)
        else:
            base[key] = value


_AUDIO_EVENTS = frozenset(
    {"input_audio_buffer.append", "response.output_audio.delta", "response.output_audio_transcript.delta"}
)


def _overlong_ids(event: dict[str, Any]) -> str | None:
    """The first client-supplied id over the service's length limit, by its parameter name."""
    item = event.get("item") if isinstance(event.get("item"), dict) else {}
    for name, value in (("event_id", event.get("event_id")), ("item.id", item.get("id"))):
        if isinstance(value, str) and len(value) > MAX_CLIENT_ID_CHARS:
            return name
    return None


class SimSession:
    """One simulated Realtime session (one WebSocket)."""

    def __init__(self, sim: RealtimeSimulator, ws: ServerConnection, model: str) -> None:
        self.sim = sim
        self.ws = ws
        self.session_id = sim.new_id("sess")
        self.conversation_id = sim.new_id("conv")
        self.created_at = time.time() + sim.clock_offset
        self.config = _default_session(
            model, int(self.created_at), int(self.created_at + sim.session_seconds), self.session_id
        )
        self.path = ""
        self.failure = sim._fails()
        self.received: list[dict[str, Any]] = []
        # (monotonic time, "in" or "out", event) of every event but audio, for timelines.
        self.timeline: list[tuple[float, str, dict[str, Any]]] = []
        self.items: list[SimItem] = []
        self.active: SimResponse | None = None
        self.responses: list[SimResponse] = []
        self.truncations: list[dict[str, Any]] = []
        self.audio_received = bytearray()  # every appended byte, in order
        self.audio_sent = bytearray()  # every in-band audio delta byte, in order
        self.close_code: int | None = None
        self.closed_at: float | None = None  # monotonic time the socket was gone
        self.buffer_ms = 0  # audio in the input buffer since the last commit
        self.committed_audio_ms = 0
        self.user_turns = 0
        self.assistant_audio_sent = False
        self._appends = 0
        self._carry = b""
        self._speaking = False
        self._voiced = 0
        self._silent_ms = 0
        self._speech_start_ms = 0
        self._speech_item: str | None = None
        self._answered = False  # an ordinary (VAD or plain) answer was given on this session
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

    # -- plumbing

    async def run(self) -> None:
        await self.emit("session.created", session=self.config)
        if self.failure is not None and self.failure.after == "created":
            await self._fail()
            return
        limit = asyncio.create_task(self._session_limit())
        try:
            async for raw in self.ws:
                await self._on_raw(raw)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed_at = time.monotonic()
            limit.cancel()
            for task in list(self._tasks):
                task.cancel()
            for task in [*list(self._tasks), limit]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _fail(self) -> None:
        failure = self.failure
        assert failure is not None
        if failure.error_code:
            await self.emit(
                "error",
                error={
                    "type": failure.error_code
                    if failure.error_code in ("server_error", "insufficient_quota")
                    else "invalid_request_error",
                    "code": failure.error_code,
                    "message": f"Simulated failure: {failure.error_code}.",
                    "param": None,
                    "event_id": None,
                },
            )
        if failure.close_code is None:
            await self.ws.wait_closed()
            return
        await self.ws.close(failure.close_code, failure.error_code or "")

    async def _session_limit(self) -> None:
        await asyncio.sleep(self.sim.session_seconds)
        await self.ws.close(1001, SESSION_LIMIT_REASON)

    def drop(self) -> None:
        self.ws.transport.abort()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def emit(self, type_: str, **fields: Any) -> None:
        event = {"type": type_, "event_id": self.sim.new_id("event"), **fields}
        if type_ not in _AUDIO_EVENTS:
            self.timeline.append((time.monotonic(), "out", event))
        if self.sim.validate_server and self.sim.validator is not None:
            for problem in self.sim.validator.problems(event, "server"):
                self.sim.violations.append(f"simulator sent an invalid event: {problem}")
        with contextlib.suppress(ConnectionClosed):
            async with self._send_lock:
                await self.ws.send(json.dumps(event))

    async def error(
        self, code: str | None, message: str, event_id: str | None = None, param: str | None = None
    ) -> None:
        await self.emit(
            "error",
            error={
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        )

    def _to_validate(self, event: dict[str, Any]) -> bool:
        if event.get("type") != "input_audio_buffer.append":
            return True
        self._appends += 1
        return (self._appends - 1) % self.sim.check_appends_every == 0

    async def _on_raw(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            self.sim.violations.append("client sent a frame that is not JSON")
            await self.error("invalid_json", "The server could not parse the event as JSON.")
            return
        if self.sim.keep_audio or event.get("type") != "input_audio_buffer.append":
            self.received.append(event)
        if event.get("type") not in _AUDIO_EVENTS:
            self.timeline.append((time.monotonic(), "in", event))
        if self.sim.drop_on is not None and self.sim.drop_on(event):
            self.drop()
            return
        if self.sim.validator is not None and self._to_validate(event):
            problems = self.sim.validator.problems(event)
            if problems:
                self.sim.violations.extend(problems)
                await self.error("invalid_event", "; ".join(problems)[:500], event.get("event_id"))
                return
        too_long = _overlong_ids(event)
        if too_long:
            self.sim.violations.append(f"{event.get('type')}: {too_long} longer than {MAX_CLIENT_ID_CHARS}")
            await self.error(
                "invalid_value",
                f"Invalid '{too_long}': string too long. Expected a string with maximum length "
                f"{MAX_CLIENT_ID_CHARS}.",
                event.get("event_id"),
                too_long,
            )
            return
        handler = getattr(self, "on_" + str(event.get("type", "")).replace(".", "_"), None)
        if handler is None:
            await self.error(
                "invalid_event", f"Unsupported event type {event.get('type')!r}", event.get("event_id")
            )
            return
        await handler(event)

    # -- session

    async def on_session_update(self, event: dict[str, Any]) -> None:
        update = event.get("session") or {}
        refusal = self.sim.refuse_update(event) if self.sim.refuse_update else None
        if refusal:
            await self.error(refusal, f"Simulated refusal: {refusal}.", event.get("event_id"), "session")
            return
        voice = ((update.get("audio") or {}).get("output") or {}).get("voice")
        if (
            voice is not None
            and voice != self.config["audio"]["output"]["voice"]
            and self.assistant_audio_sent
        ):
            await self.error(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                event.get("event_id"),
                "session.audio.output.voice",
            )
            return
        if update.get("model") not in (None, self.config["model"]):
            await self.error(
                "invalid_value",
                "The model of a session cannot change.",
                event.get("event_id"),
                "session.model",
            )
            return
        _merge(self.config, {k: v for k, v in update.items() if k != "type"})
        if self.sim.force_output_format is not None:
            self.config["audio"]["output"]["format"] = self.sim.force_output_format
        await self.emit("session.updated", session=self.config)
        if self.failure is not None and self.failure.after == "updated":
            await self._fail()
            return
        for tool in self.config.get("tools") or []:
            if tool.get("type") == "mcp":
                self._spawn(self._list_mcp_tools(tool))

    # -- input audio and turn detection

    async def on_input_audio_buffer_append(self, event: dict[str, Any]) -> None:
        try:
            audio = base64.b64decode(event.get("audio", ""), validate=True)
        except ValueError:
            await self.error("invalid_value", "Invalid base64 audio.", event.get("event_id"), "audio")
            return
        if self.sim.keep_audio:
            self.audio_received += audio
        if self.sim.append_tap is not None:
            self.sim.append_tap(self, audio)
        data = self._carry + audio
        whole = len(data) - len(data) % WINDOW_BYTES
        self._carry = data[whole:]
        for start in range(0, whole, WINDOW_BYTES):
            self.buffer_ms += 20
            await self._vad(data[start : start + WINDOW_BYTES])

    def _turn_detection(self) -> dict[str, Any] | None:
        return self.config["audio"]["input"].get("turn_detection")

    def _silence_ms(self, td: dict[str, Any]) -> int:
        if td.get("type") == "semantic_vad":
            return EAGERNESS_SILENCE_MS.get(td.get("eagerness") or "auto", 500)
        return int(td.get("silence_duration_ms") or 500)

    async def _vad(self, window: bytes) -> None:
        td = self._turn_detection()
        if not td:
            return
        voiced = ulaw_rms(window) > SPEECH_RMS
        position = self.committed_audio_ms + self.buffer_ms
        if not self._speaking:
            self._voiced = self._voiced + 1 if voiced else 0
            if self._voiced >= SPEECH_WINDOWS_TO_START:
                await self._speech_started(position, td)
            return
        self._silent_ms = 0 if voiced else self._silent_ms + 20
        held = self.sim.hold_speech_stopped is not None and not self.sim.hold_speech_stopped.is_set()
        if self._silent_ms >= self._silence_ms(td) and not held:
            await self._speech_stopped(position, td)

    async def _speech_started(self, position: int, td: dict[str, Any]) -> None:
        self._speaking = True
        self._silent_ms = 0
        self._speech_item = self.sim.new_id("item")
        padding = int(td.get("prefix_padding_ms") or 300)
        self._speech_start_ms = max(0, position - SPEECH_WINDOWS_TO_START * 20 - padding)
        await self.emit(
            "input_audio_buffer.speech_started",
            audio_start_ms=self._speech_start_ms,
            item_id=self._speech_item,
        )
        if td.get("interrupt_response", True) and self.active is not None and self.active.in_band:
            self._cancel(self.active, "turn_detected")

    async def _speech_stopped(self, position: int, td: dict[str, Any]) -> None:
        self._speaking = False
        self._voiced = 0
        item_id = self._speech_item or self.sim.new_id("item")
        await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=position, item_id=item_id)
        await self._commit(item_id)
        if td.get("create_response", True):
            await self._start_response({}, vad=True)

    async def _commit(self, item_id: str) -> None:
        previous = self.items[-1].id if self.items else None
        self.committed_audio_ms += self.buffer_ms
        self.buffer_ms = 0
        await self.emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        item = SimItem(id=item_id, type="message", role="user")
        self.items.append(item)
        self.user_turns += 1
        body = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.emit("conversation.item.added", item=body, previous_item_id=previous)
        await self.emit("conversation.item.done", item=body, previous_item_id=previous)
        if self.config["audio"]["input"].get("transcription"):
            self._spawn(self._transcribe(item))

    async def _transcribe(self, item: SimItem) -> None:
        await asyncio.sleep(0.02)
        scripted = self.sim.script.caller_transcripts
        text = scripted.pop(0) if scripted else f"This is what the caller said in turn {self.user_turns}."
        item.transcript = text
        await self.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item.id,
            content_index=0,
            transcript=text,
            usage={
                "type": "tokens",
                "input_tokens": 10,
                "output_tokens": len(text.split()),
                "total_tokens": 10 + len(text.split()),
            },
        )

    async def on_input_audio_buffer_commit(self, event: dict[str, Any]) -> None:
        if self.buffer_ms < 100:
            await self.error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of "
                f"audio, but buffer only has {self.buffer_ms}.00ms of audio.",
                event.get("event_id"),
            )
            return
        await self._commit(self.sim.new_id("item"))

    async def on_input_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        self.buffer_ms = 0
        await self.emit("input_audio_buffer.cleared")

    # -- conversation items

    async def on_conversation_item_create(self, event: dict[str, Any]) -> None:
        body = dict(event.get("item") or {})
        kind = body.get("type")
        if kind == "function_call_output" and not any(i.call_id == body.get("call_id") for i in self.items):
            await self.error(
                "invalid_value",
                f"No function call with call_id {body.get('call_id')!r}.",
                event.get("event_id"),
                "item.call_id",
            )
            return
        if kind == "mcp_approval_response" and not any(
            i.id == body.get("approval_request_id") for i in self.items
        ):
            await self.error(
                "invalid_value",
                "No MCP approval request with that id.",
                event.get("event_id"),
                "item.approval_request_id",
            )
            return
        body.setdefault("id", self.sim.new_id("item"))
        if kind in ("message", "function_call", "function_call_output"):
            body["object"] = "realtime.item"
            body["status"] = "completed"
        previous = self.items[-1].id if self.items else None
        self.items.append(
            SimItem(id=body["id"], type=kind or "", role=body.get("role"), call_id=body.get("call_id"))
        )
        await self.emit("conversation.item.added", item=body, previous_item_id=previous)
        await self.emit("conversation.item.done", item=body, previous_item_id=previous)
        if kind == "mcp_approval_response":
            request = next(i for i in self.items if i.id == body["approval_request_id"])
            request.transcript = "approved" if body.get("approve") else "denied"

    async def on_conversation_item_truncate(self, event: dict[str, Any]) -> None:
        item = next((i for i in self.items if i.id == event.get("item_id")), None)
        end = int(event.get("audio_end_ms", 0))
        self.truncations.append(
            {
                "item_id": event.get("item_id"),
                "audio_end_ms": end,
                "item_audio_ms": item.audio_ms if item else None,
            }
        )
        if item is None or item.role != "assistant":
            await self.error(
                "invalid_value",
                f"Item {event.get('item_id')!r} is not an assistant message.",
                event.get("event_id"),
                "item_id",
            )
            return
        if end > item.audio_ms:
            await self.error(None, f"Audio content of {item.audio_ms}ms is already shorter than {end}ms")
            return
        item.audio_ms = end
        await self.emit("conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end)

    async def on_conversation_item_delete(self, event: dict[str, Any]) -> None:
        self.items = [i for i in self.items if i.id != event.get("item_id")]
        await self.emit("conversation.item.deleted", item_id=event.get("item_id"))

    async def on_conversation_item_retrieve(self, event: dict[str, Any]) -> None:
        await self.error("invalid_value", "Retrieving items is not simulated.", event.get("event_id"))

    async def on_output_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        self.sim.violations.append("output_audio_buffer.clear is for WebRTC/SIP only")
        await self.error(
            "invalid_event",
            "output_audio_buffer.clear is not supported over WebSocket.",
            event.get("event_id"),
        )

    # -- responses

    async def on_response_create(self, event: dict[str, Any]) -> None:
        params = event.get("response") or {}
        refusal = self.sim.refuse_create(event) if self.sim.refuse_create else None
        if refusal:
            await self.error(refusal, f"Simulated refusal: {refusal}.", event.get("event_id"), "response")
            return
        in_band = params.get("conversation", "auto") != "none"
        if in_band and self.active is not None and self.active.in_band:
            await self.error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
                event.get("event_id"),
            )
            return
        await self._start_response(params)

    async def on_response_cancel(self, event: dict[str, Any]) -> None:
        target = self.active
        wanted = event.get("response_id")
        if wanted:
            target = next(
                (
                    r
                    for r in self.responses
                    if r.id == wanted and r.cancelled is None and r.task and not r.task.done()
                ),
                None,
            )
        if target is None:
            await self.error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                event.get("event_id"),
            )
            return
        self._cancel(target, "client_cancelled")

    def _cancel(self, response: SimResponse, reason: str) -> None:
        if response.cancelled is None:
            response.cancelled = reason

    async def _start_response(self, params: dict[str, Any], vad: bool = False) -> None:
        purpose = (params.get("metadata") or {}).get("purpose")
        response = SimResponse(
            self.sim.new_id("resp"), params.get("conversation", "auto") != "none", purpose, params
        )
        self.responses.append(response)
        if response.in_band:
            self.active = response
        if self.sim.created_delay:
            await asyncio.sleep(self.sim.created_delay)
        # Announced at once, as the service does: a client's create that races a VAD response
        # sees `response.created` of the VAD response before its own refusal.
        await self.emit("response.created", response=self._response_body(response, "in_progress", [], None))
        response.task = self._spawn(self._respond(response))

    def _response_body(
        self,
        response: SimResponse,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        params = response.params
        modalities = params.get("output_modalities") or self.config["output_modalities"]
        details = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": reason}
        return {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": self.conversation_id if response.in_band else None,
            "output_modalities": modalities,
            "max_output_tokens": params.get("max_output_tokens", self.config["max_output_tokens"]),
            "audio": {
                "output": {
                    "format": self.config["audio"]["output"]["format"],
                    "voice": self.config["audio"]["output"]["voice"],
                }
            },
            "usage": usage,
            "metadata": params.get("metadata"),
        }

    async def _respond(self, response: SimResponse) -> None:
        try:
            await self.emit(
                "rate_limits.updated",
                rate_limits=[
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 40000, "remaining": 35000, "reset_seconds": 7.5},
                ],
            )
            params = response.params
            modalities = params.get("output_modalities") or self.config["output_modalities"]
            if modalities == ["text"]:
                await self._text_response(response)
                return
            first = response.purpose is None and not self._answered
            self._answered = self._answered or response.purpose is None
            turn = self.sim.script.answer(response.purpose, params.get("instructions"), first)
            await asyncio.sleep(self.sim.response_delay)
            if turn.function_calls():
                await self._function_call_response(response, turn)
            elif turn.mcp:
                await self._mcp_call_response(response, turn)
            elif turn.approval:
                await self._approval_response(response, turn)
            else:
                await self._audio_response(response, turn)
        finally:
            if self.active is response:
                self.active = None

    def _usage(self, out_text: int, out_audio: int) -> dict[str, Any]:
        context_text = 40 + 6 * len(self.items) + len(self.config.get("instructions") or "") // 20
        context_audio = self.committed_audio_ms // 100
        cached_text = context_text // 2 if len(self.responses) > 1 else 0
        cached_audio = context_audio // 2 if len(self.responses) > 1 else 0
        usage = {
            "total_tokens": context_text + context_audio + out_text + out_audio,
            "input_tokens": context_text + context_audio,
            "output_tokens": out_text + out_audio,
            "input_token_details": {
                "text_tokens": context_text,
                "audio_tokens": context_audio,
                "image_tokens": 0,
                "cached_tokens": cached_text + cached_audio,
                "cached_tokens_details": {
                    "text_tokens": cached_text,
                    "audio_tokens": cached_audio,
                    "image_tokens": 0,
                },
            },
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
        }
        self.sim.usage_sent.append(usage)
        return usage

    async def _done(
        self, response: SimResponse, output: list[dict[str, Any]], out_text: int, out_audio: int
    ) -> None:
        status = "cancelled" if response.cancelled else "completed"
        response.output = output
        body = self._response_body(
            response, status, output, self._usage(out_text, out_audio), response.cancelled
        )
        await self.emit("response.done", response=body)

    async def _text_response(self, response: SimResponse) -> None:
        script = self.sim.script
        if script.summary_delay:
            await asyncio.sleep(script.summary_delay)
        text = script.summary_text
        item_id = self.sim.new_id("item")
        message = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await self.emit("response.output_item.added", response_id=response.id, output_index=0, item=message)
        ids = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.emit("response.content_part.added", **ids, part={"type": "text", "text": ""})
        await self.emit("response.output_text.delta", **ids, delta=text)
        await self.emit("response.output_text.done", **ids, text=text)
        await self.emit("response.content_part.done", **ids, part={"type": "text", "text": text})
        done_item = dict(message, status="completed", content=[{"type": "output_text", "text": text}])
        await self.emit("response.output_item.done", response_id=response.id, output_index=0, item=done_item)
        await self._done(response, [done_item], len(text.split()), 0)

    async def _audio_response(self, response: SimResponse, turn: Turn) -> None:
        outputs = []
        for index, part in enumerate([turn, *(turn.more or [])]):
            if response.cancelled and index:
                break
            outputs.append(await self._audio_item(response, part, index))
        heard = [o["content"][0]["transcript"] for o in outputs]
        words = sum(len(t.split()) for t in heard)
        audio_ms = sum(i.audio_ms for i in self.items if i.id in {o["id"] for o in outputs})
        await self._done(response, outputs, words, audio_ms // 50)

    async def _audio_item(self, response: SimResponse, turn: Turn, index: int) -> dict[str, Any]:
        """One assistant audio item of a response, streamed; its final form."""
        text = turn.say or ""
        item = SimItem(id=self.sim.new_id("item"), type="message", role="assistant", transcript=text)
        ids = {"response_id": response.id, "item_id": item.id, "output_index": index, "content_index": 0}
        body = {
            "id": item.id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        previous = self.items[-1].id if self.items else None
        if response.in_band:
            self.items.append(item)
        await self.emit("response.output_item.added", response_id=response.id, output_index=index, item=body)
        if response.in_band:
            await self.emit("conversation.item.added", item=body, previous_item_id=previous)
        await self.emit("response.content_part.added", **ids, part={"type": "audio", "transcript": ""})
        audio = await self._voice(turn)
        words = text.split()
        sent_words = 0
        position = 0
        while position < len(audio) and not response.cancelled:
            size = self.sim.rng.randrange(320, 1920)  # 40 to 240 ms, uneven
            chunk = audio[position : position + size]
            position += len(chunk)
            if self.sim.delta_tap is not None:
                chunk = self.sim.delta_tap(self, response, chunk)
            item.audio_ms = position // 8
            self.assistant_audio_sent = True
            if response.in_band and self.sim.keep_audio:
                self.audio_sent += chunk
            await self.emit("response.output_audio.delta", **ids, delta=base64.b64encode(chunk).decode())
            due = round(len(words) * position / len(audio))
            if due > sent_words:
                await self.emit(
                    "response.output_audio_transcript.delta",
                    **ids,
                    delta=" ".join(words[sent_words:due]) + " ",
                )
                sent_words = due
            await asyncio.sleep(len(chunk) / 8000 / self.sim.speed)
        heard_text = " ".join(words[:sent_words]) if response.cancelled else text
        await self.emit("response.output_audio.done", **ids)
        await self.emit("response.output_audio_transcript.done", **ids, transcript=heard_text)
        await self.emit("response.content_part.done", **ids, part={"type": "audio", "transcript": heard_text})
        status = "incomplete" if response.cancelled else "completed"
        done_item = dict(body, status=status, content=[{"type": "output_audio", "transcript": heard_text}])
        await self.emit(
            "response.output_item.done", response_id=response.id, output_index=index, item=done_item
        )
        if response.in_band:
            await self.emit("conversation.item.done", item=done_item, previous_item_id=previous)
        return done_item

    async def _voice(self, turn: Turn) -> bytes:
        """The turn's words spoken when asked to (`speak_words`) and a speech engine is there;
        otherwise speech-like audio of the scripted length."""
        if self.sim.speak_words and turn.say:
            audio = await asyncio.to_thread(speech.synthesize, turn.say)
            if audio:
                return audio
        return self._speech(turn.audio_seconds())

    def _speech(self, seconds: float) -> bytes:
        size = int(seconds * 8000)
        if self.sim.bot_audio:
            source = self.sim.bot_audio
            start = self.sim.rng.randrange(max(1, len(source) - size)) if len(source) > size else 0
            return (source * (size // max(1, len(source)) + 1))[start : start + size]
        return speech_like(round(seconds, 2), seed=self.sim.rng.randrange(4))[:size]

    async def _function_call_response(self, response: SimResponse, turn: Turn) -> None:
        """One function_call item per call of the turn, all in this one response."""
        outputs = []
        for index, (name, arguments) in enumerate(turn.function_calls()):
            outputs.append(await self._function_call_item(response, index, name, json.dumps(arguments)))
        tokens = sum(len(o["arguments"]) for o in outputs) // 4
        await self._done(response, outputs, tokens, 0)

    async def _function_call_item(
        self, response: SimResponse, index: int, name: str, arguments: str
    ) -> dict[str, Any]:
        call_id = self.sim.new_id("call")
        item = SimItem(id=self.sim.new_id("item"), type="function_call", call_id=call_id, name=name)
        body = {
            "id": item.id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        previous = self.items[-1].id if self.items else None
        self.items.append(item)
        await self.emit("response.output_item.added", response_id=response.id, output_index=index, item=body)
        await self.emit("conversation.item.added", item=body, previous_item_id=previous)
        ids = {"response_id": response.id, "item_id": item.id, "output_index": index, "call_id": call_id}
        await self.emit("response.function_call_arguments.delta", **ids, delta=arguments)
        await self.emit("response.function_call_arguments.done", **ids, name=name, arguments=arguments)
        done_item = dict(body, status="completed", arguments=arguments)
        await self.emit(
            "response.output_item.done", response_id=response.id, output_index=index, item=done_item
        )
        await self.emit("conversation.item.done", item=done_item, previous_item_id=previous)
        return done_item

    # -- remote MCP

    async def _list_mcp_tools(self, tool: dict[str, Any]) -> None:
        item_id = self.sim.new_id("mcpl")
        await self.emit("mcp_list_tools.in_progress", item_id=item_id)
        tools = [
            {"name": name, "input_schema": {"type": "object"}}
            for name in (tool.get("allowed_tools") or ["lookup"])
            if isinstance(name, str)
        ]
        body = {"id": item_id, "type": "mcp_list_tools", "server_label": tool["server_label"], "tools": tools}
        self.items.append(SimItem(id=item_id, type="mcp_list_tools"))
        await self.emit("conversation.item.added", item=body, previous_item_id=None)
        await self.emit("mcp_list_tools.completed", item_id=item_id)
        await self.emit("conversation.item.done", item=body, previous_item_id=None)

    async def _mcp_call_response(self, response: SimResponse, turn: Turn) -> None:
        spec = turn.mcp or {}
        item_id = self.sim.new_id("mcp")
        arguments = json.dumps(spec.get("arguments") or {})
        body = {
            "id": item_id,
            "type": "mcp_call",
            "server_label": spec["server_label"],
            "name": spec["name"],
            "arguments": "",
        }
        self.items.append(SimItem(id=item_id, type="mcp_call"))
        await self.emit("response.output_item.added", response_id=response.id, output_index=0, item=body)
        await self.emit(
            "response.mcp_call_arguments.delta",
            response_id=response.id,
            item_id=item_id,
            output_index=0,
            delta=arguments,
        )
        await self.emit(
            "response.mcp_call_arguments.done",
            response_id=response.id,
            item_id=item_id,
            output_index=0,
            arguments=arguments,
        )
        await self.emit("response.mcp_call.in_progress", item_id=item_id, output_index=0)
        done_item = dict(body, arguments=arguments)
        if "error" in spec:
            done_item["error"] = {"type": "tool_execution_error", "message": spec["error"]}
            await self.emit("response.mcp_call.failed", item_id=item_id, output_index=0)
        else:
            done_item["output"] = spec.get("output", "ok")
            await self.emit("response.mcp_call.completed", item_id=item_id, output_index=0)
        await self.emit("response.output_item.done", response_id=response.id, output_index=0, item=done_item)
        await self._done(response, [done_item], 5, 0)

    async def _approval_response(self, response: SimResponse, turn: Turn) -> None:
        spec = turn.approval or {}
        item_id = self.sim.new_id("mcpr")
        body = {
            "id": item_id,
            "type": "mcp_approval_request",
            "server_label": spec["server_label"],
            "name": spec["name"],
            "arguments": json.dumps(spec.get("arguments") or {}),
        }
        previous = self.items[-1].id if self.items else None
        self.items.append(SimItem(id=item_id, type="mcp_approval_request"))
        await self.emit("response.output_item.added", response_id=response.id, output_index=0, item=body)
        await self.emit("conversation.item.added", item=body, previous_item_id=previous)
        await self.emit("response.output_item.done", response_id=response.id, output_index=0, item=body)
        await self.emit("conversation.item.done", item=body, previous_item_id=previous)
        await self._done(response, [body], 5, 0)


# -- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A local OpenAI Realtime (GA) stand-in for trying the connector.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--wav", help="speak slices of this WAV instead of generated speech-like audio")
    p.add_argument(
        "--speed",
        type=float,
        default=4.0,
        help="how much faster than real time audio is generated (default 4)",
    )
    p.add_argument("--session-seconds", type=float, default=3600.0, help="session time limit (default 3600)")
    p.add_argument(
        "--speak", action="store_true", help="voice the answers' words with eSpeak NG when it is installed"
    )
    return p


async def _serve(args: argparse.Namespace) -> None:
    sim = RealtimeSimulator(
        speed=args.speed,
        session_seconds=args.session_seconds,
        strict=False,
        bot_audio=read_wav(args.wav) if args.wav else None,
        speak_words=args.speak,
    )
    await sim.start(args.host, args.port)
    print(f"Realtime simulator on {sim.url}  (set OPENAI_REALTIME_URL to it)", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
