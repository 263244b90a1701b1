"""The OpenAI Realtime backend (GA protocol, μ-law both ways), for OpenAI and Azure OpenAI.

What is here speaks the Realtime protocol and nothing else: the `session.update` shape, the
client events, the one-response-at-a-time gate, and `RealtimeSession`, which turns one socket's
server events into the call core's typed events (`model_backend`) and its commands into client
events. What a call *does* (barge-in on the Genesys side, tools, the ending, limits) is the
core's, in `call_bridge.py`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from websockets.exceptions import ConnectionClosed, InvalidStatus

from call_control import SUMMARY_INSTRUCTIONS, summary_json
from config import ApprovalPolicy, iso_639_1
from metrics import Metrics
from model_backend import (
    BotAudio,
    BotText,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerTurn,
    CallSpec,
    Capabilities,
    EventSink,
    FarewellDone,
    ModelFailed,
    ModelRefused,
    Ready,
    SessionEnd,
    SessionStart,
    ToolCall,
    Usage,
    UsageReport,
    Utterance,
    UtteranceStarted,
)
from model_backend import peer_count as _count
from model_backend import peer_field as _at
from model_backend import peer_number as _number
from model_backend import peer_text as _text
from model_socket import ModelSocket
from utils import ULAW_SILENCE

log = logging.getLogger("openai")

PCMU = {"type": "audio/pcmu"}
SESSION_LIFETIME = 3600.0  # OpenAI's documented session limit, when the session does not say
RECYCLE_MARGIN_SECONDS = 120.0  # replace the session this long before it expires
HEALTHY_AFTER_SECONDS = 3.0  # a confirmed socket alive this long has proved the outage over
OWN_ID = "cx"  # the prefix of every id we create (at most 32 characters in all)
ITEMS_TRACKED = 64  # assistant items whose utterance is remembered, oldest forgotten first
PAUSE_SILENCE_BYTES = 6400  # 0.8 s: enough for turn detection to hear the caller stop
OUT_OF_BAND = "summary"  # the purpose of the one response that runs outside the conversation
# Errors no retry can cure: the call ends at once, with escalation.
FATAL_ERROR_CODES = frozenset(
    {
        "beta_api_shape_disabled",
        "model_not_found",
        "invalid_api_key",
        "insufficient_quota",
        "account_deactivated",
        "billing_hard_limit_reached",
        "credit_balance_exhausted",
    }
)
HARMLESS_ERROR_CODES = frozenset({"response_cancel_not_active", "input_audio_buffer_commit_empty"})


@dataclass(frozen=True)
class RealtimeConfig:
    """Everything `session.update` carries for one call."""

    model: str
    voice: str
    instructions: str
    turn_detection: str = "semantic_vad"  # or "server_vad"
    vad_threshold: float = 0.5
    vad_silence_ms: int = 500
    vad_prefix_padding_ms: int = 300
    vad_eagerness: str = "auto"
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    transcription_language: str | None = None
    noise_reduction: str | None = "near_field"
    max_output_tokens: int | str = "inf"
    tools: tuple[dict[str, Any], ...] = ()


def turn_detection(cfg: RealtimeConfig, *, interruptible: bool = True) -> dict[str, Any]:
    """VAD settings. Not interruptible: the caller's speech neither cuts nor starts a response."""
    flags = {"create_response": interruptible, "interrupt_response": interruptible}
    if cfg.turn_detection == "server_vad":
        return {
            "type": "server_vad",
            "threshold": cfg.vad_threshold,
            "prefix_padding_ms": cfg.vad_prefix_padding_ms,
            "silence_duration_ms": cfg.vad_silence_ms,
            **flags,
        }
    return {"type": "semantic_vad", "eagerness": cfg.vad_eagerness, **flags}


def session_update(cfg: RealtimeConfig, *, event_id: str, interruptible: bool = True) -> dict[str, Any]:
    audio_input: dict[str, Any] = {
        "format": PCMU,
        "turn_detection": turn_detection(cfg, interruptible=interruptible),
        "noise_reduction": {"type": cfg.noise_reduction} if cfg.noise_reduction else None,
        "transcription": None,
    }
    if cfg.transcription_model:
        transcription: dict[str, Any] = {"model": cfg.transcription_model}
        if cfg.transcription_language:
            transcription["language"] = cfg.transcription_language
        audio_input["transcription"] = transcription
    return {
        "type": "session.update",
        "event_id": event_id,
        "session": {
            "type": "realtime",
            "model": cfg.model,
            "output_modalities": ["audio"],
            "instructions": cfg.instructions,
            "audio": {"input": audio_input, "output": {"format": PCMU, "voice": cfg.voice}},
            "tools": list(cfg.tools),
            "tool_choice": "auto",
            "max_output_tokens": cfg.max_output_tokens,
        },
    }


def lock_turns(cfg: RealtimeConfig, *, event_id: str) -> dict[str, Any]:
    """A `session.update` that only stops the caller's speech from cutting or starting responses."""
    return {
        "type": "session.update",
        "event_id": event_id,
        "session": {
            "type": "realtime",
            "audio": {"input": {"format": PCMU, "turn_detection": turn_detection(cfg, interruptible=False)}},
        },
    }


# -- client events ---------------------------------------------------------------------------


def append_audio(pcmu: bytes) -> str:
    """`input_audio_buffer.append`, serialized directly: this runs for every caller frame."""
    return '{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(pcmu).decode() + '"}'


def truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": max(0, int(audio_end_ms)),
    }


def response_create(
    request_id: str,
    purpose: str = "answer",
    *,
    instructions: str | None = None,
    out_of_band: bool = False,
    text_only: bool = False,
) -> dict[str, Any]:
    """`response.create` tagged with our request id, echoed back in `response.created`
    (`metadata.request`) and in the `error` refusing it (`event_id`): that is how the gate tells
    our responses from the ones server VAD starts on its own."""
    response: dict[str, Any] = {"metadata": {"purpose": purpose, "request": request_id}}
    if instructions is not None:
        response["instructions"] = instructions
    if purpose != "answer":
        # Our own phrases (greeting, holding phrase, farewell, summary) never call a tool: a
        # holding phrase could otherwise run the same Data Action again.
        response["tool_choice"] = "none"
    if out_of_band:
        # Outside the conversation, but seeing it (no `input`).
        response["conversation"] = "none"
    if text_only:
        response["output_modalities"] = ["text"]
    return {"type": "response.create", "event_id": request_id, "response": response}


def response_cancel(response_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.cancel"}
    if response_id:
        event["response_id"] = response_id
    return event


def function_output(call_id: str, output: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def _message(role: str, kind: str, text: str, item_id: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
    if item_id is not None:
        item["id"] = item_id
    return {"type": "conversation.item.create", "item": item}


def user_text(text: str, item_id: str | None = None) -> dict[str, Any]:
    return _message("user", "input_text", text, item_id)


def system_text(text: str, item_id: str | None = None) -> dict[str, Any]:
    return _message("system", "input_text", text, item_id)


def assistant_text(text: str, item_id: str | None = None) -> dict[str, Any]:
    return _message("assistant", "output_text", text, item_id)


# -- usage ---------------------------------------------------------------------------------------


def realtime_usage(usage: Any) -> Usage:
    """A `response.done` usage object as the call's token counts (anything missing counts 0)."""
    given = _object(usage, "input_token_details")
    cached = _object(given, "cached_tokens_details")
    out = _object(usage, "output_token_details")
    return Usage(
        input_text=_count(given.get("text_tokens")),
        input_audio=_count(given.get("audio_tokens")),
        input_cached_text=_count(cached.get("text_tokens")),
        input_cached_audio=_count(cached.get("audio_tokens")),
        output_text=_count(out.get("text_tokens")),
        output_audio=_count(out.get("audio_tokens")),
    )


def _object(parent: Any, key: str) -> dict[str, Any]:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else {}


# -- one in-band response at a time ----------------------------------------------------------

PLAIN = "answer"  # a request that only lets the model go on from what was just added
IN_FLIGHT_TIMEOUT = 5.0  # a create never answered (neither created nor refused) is given up
REQUEUED_ON_RACE = frozenset({"greeting", "filler", "farewell"})


@dataclass
class Request:
    """One `response.create` of ours."""

    id: str
    purpose: str
    event: dict[str, Any]
    sent_at: float = 0.0
    cancel: bool = False  # a key was pressed meanwhile: cancel it as soon as it starts

    @property
    def plain(self) -> bool:
        return self.purpose == PLAIN


@dataclass
class ResponseGate:
    """`response.create` only when no in-band response runs and the caller is not speaking (not
    even the farewell: it waits for the caller's pause, within the farewell timeout).

    Responses are matched to requests by the request id in their metadata, never by "the next
    `response.created`": server VAD starts responses of its own, which carry none. A plain "go on"
    request is dropped when a server response or the caller's own turn makes it needless (turn
    detection answers once the caller stops, and that answer sees what was just added).
    """

    active: str | None = None  # id of the in-band response in progress (ours or the server's)
    in_flight: Request | None = None  # sent, neither created nor refused yet
    queued: Request | None = None
    caller_speaking: bool = False
    turns_locked: bool = False  # the caller's speech no longer starts responses (the ending)

    @property
    def busy(self) -> bool:
        return self.active is not None or self.in_flight is not None

    def request(self, request: Request, now: float) -> Request | None:
        """The request to send now, or None when it waits (or, plain, is not needed)."""
        if self.queued is None or not request.plain:
            self.queued = request
        return self._release(now)

    def created(self, response_id: str, request_id: str | None) -> Request | None:
        """A response started; ours (the request it answers) or None for the server's own."""
        self.active = response_id
        if self.in_flight is not None and request_id == self.in_flight.id:
            started, self.in_flight = self.in_flight, None
            return started
        if request_id is None and self.queued is not None and self.queued.plain:
            self.queued = None  # the server's response already sees what the request was for
        return None

    def done(self, response_id: str, now: float) -> Request | None:
        if response_id != self.active:
            return None
        self.active = None
        return self._release(now)

    def refused(self, request_id: str, code: str | None, now: float) -> Request | None:
        """The server answered our create with an error: nothing of it runs."""
        if self.in_flight is None or self.in_flight.id != request_id:
            return None
        refused, self.in_flight = self.in_flight, None
        lost_race = code == "conversation_already_has_active_response"
        if lost_race and refused.purpose in REQUEUED_ON_RACE and (self.queued is None or self.queued.plain):
            self.queued = refused  # a VAD answer won the race: ours goes after it
        return self._release(now)

    def speech_started(self) -> None:
        self.caller_speaking = True

    def speech_stopped(self, now: float) -> Request | None:
        self.caller_speaking = False
        if self.queued is not None and self.queued.plain and not self.turns_locked:
            self.queued = None  # turn detection answers the caller, seeing what was added
        return self._release(now)

    def expire(self, now: float) -> Request | None:
        """Give up a request the server never answered."""
        if self.in_flight is not None and now - self.in_flight.sent_at > IN_FLIGHT_TIMEOUT:
            self.in_flight = None
            return self._release(now)
        return None

    def discard(self, purpose: str) -> None:
        """Drop a queued request for this purpose (a holding phrase no longer needed)."""
        if self.queued is not None and self.queued.purpose == purpose:
            self.queued = None

    def reset(self) -> bool:
        """A new socket: nothing is running. True if a response was running or wanted."""
        wanted = self.busy or self.queued is not None
        self.active = self.in_flight = self.queued = None
        self.caller_speaking = False
        return wanted

    def _release(self, now: float) -> Request | None:
        if self.busy or self.queued is None or self.caller_speaking:
            return None
        request, self.queued = self.queued, None
        request.sent_at = now
        self.in_flight = request
        return request


# -- the session ---------------------------------------------------------------------------------


def realtime_config(spec: CallSpec, model: str, language: str | None = None) -> RealtimeConfig:
    call = spec.call
    tools = tuple(
        {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
        for t in spec.tools
    )
    return RealtimeConfig(
        model=model,
        voice=call.voice,
        instructions=spec.instructions,
        turn_detection=call.turn_detection,
        vad_threshold=call.vad_threshold,
        vad_silence_ms=call.vad_silence_ms,
        vad_prefix_padding_ms=call.vad_prefix_padding_ms,
        vad_eagerness=call.vad_eagerness,
        transcription_model=call.transcription_model,
        transcription_language=iso_639_1(language or call.language),
        noise_reduction=call.noise_reduction,
        max_output_tokens=call.max_output_tokens,
        tools=(*tools, *spec.mcp_tools),
    )


def realtime_url(base: str, model: str) -> str:
    parts = urllib.parse.urlsplit(base)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "model"] + [("model", model)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class RealtimeSession:
    """One Realtime socket: its server events as the core's typed events, the core's commands as
    client events. Everything here lives and dies with the socket."""

    capabilities: ClassVar[Capabilities] = Capabilities(truncation=True, caller_speech_events=True)
    # Server event type -> method name. Names, not bound methods: a table of bound methods on the
    # instance would be a reference cycle keeping every finished call until a full collection.
    _HANDLERS: ClassVar[dict[str, str]] = {
        "session.created": "on_session_created",
        "session.updated": "on_session_updated",
        "input_audio_buffer.speech_started": "on_speech_started",
        "input_audio_buffer.speech_stopped": "on_speech_stopped",
        "conversation.item.added": "on_item_added",
        "conversation.item.created": "on_item_added",
        "conversation.item.input_audio_transcription.completed": "on_caller_transcript",
        "response.created": "on_response_created",
        "response.output_item.added": "on_output_item",
        "response.output_item.done": "on_output_item_done",
        "response.output_audio.delta": "on_audio_delta",
        "response.output_audio_transcript.done": "on_bot_transcript",
        "response.function_call_arguments.done": "on_function_call",
        "mcp_list_tools.completed": "on_mcp_event",
        "mcp_list_tools.failed": "on_mcp_event",
        "response.mcp_call.completed": "on_mcp_event",
        "response.mcp_call.failed": "on_mcp_event",
        "response.done": "on_response_done",
        "rate_limits.updated": "on_rate_limits",
        "error": "on_error",
    }

    def __init__(
        self,
        socket: ModelSocket,
        model: str,
        *,
        clock: Callable[[], float],
        approval: ApprovalPolicy,
        metrics: Metrics,
    ) -> None:
        self.socket = socket
        self.model = model
        self.number = 0  # the call's socket number, from `begin`
        self.config: RealtimeConfig | None = None
        self.clock = clock
        self.approval = approval
        self.metrics = metrics
        self.gate = ResponseGate()
        self.format_ok = False  # OpenAI confirmed audio/pcmu output on this socket
        self.confirmed_at: float | None = None
        self.completed = False  # a response completed on this socket
        self.recycle_at: float | None = None
        self.held_errors: list[str] = []  # errors before the socket proved healthy
        self.rate_limits: list[dict[str, Any]] = []
        self._events: EventSink = lambda event: None
        self._ids = itertools.count(1)
        self._items: OrderedDict[str, Utterance] = OrderedDict()  # assistant item id -> utterance
        self._by_response: dict[str, list[Utterance]] = {}  # until the response is done
        self._purposes: dict[str, str] = {}  # response id -> purpose (ours); absent: the server's
        self._stale: set[str] = set()  # responses whose audio must not reach the caller
        self._out_of_band: set[str] = set()
        self._truncated: set[str] = set()
        self._farewell: str | None = None  # the farewell's response id
        self._summary: asyncio.Future[str | None] | None = None
        self._mcp_items: dict[str, str] = {}  # MCP item id -> "label" or "label/tool", for logs
        self._buffer_full_warned = False
        self._own_audio_bytes = 0  # silence we appended, not the caller's (a pause)

    def begin(self, start: SessionStart) -> None:
        """The first frames: the configuration, and the conversation so far on a replacement."""
        self.number = start.socket
        self.config = realtime_config(start.spec, self.model)
        self.socket.send(session_update(self.config, event_id=f"session-update-{self.number}"))
        for role, text in start.history:
            message = user_text if role == "user" else assistant_text
            self.socket.send(message(text, self.new_id("h")))

    def new_id(self, kind: str) -> str:
        """An id for something we create: short (the service takes at most 32 characters) and
        recognisable (its echoes are ours)."""
        return f"{OWN_ID}{self.number}{kind}{next(self._ids)}"

    # -- commands

    def send_audio(self, pcmu: bytes) -> None:
        self.socket.send(append_audio(pcmu))

    def say(self, purpose: str, instructions: str) -> None:
        self._request(purpose, f"{self.config.instructions}\n\n{instructions}")

    def user_input(self, text: str) -> None:
        self.socket.send(user_text(text, self.new_id("k")))
        self._request()

    def note(self, text: str) -> None:
        self.socket.send(system_text(text, self.new_id("t")))
        if not self.gate.turns_locked:  # after the goodbye nothing more is said
            self._request()

    def tool_result(self, call_id: str, output: str, *, respond: bool = True) -> None:
        self.socket.send(function_output(call_id, output))
        self.gate.discard("filler")  # the holding phrase is not needed any more
        if respond and not self.gate.turns_locked:
            self._request()

    def farewell(self, instructions: str, call_id: str | None = None, output: str | None = None) -> None:
        if call_id is not None:
            self.socket.send(function_output(call_id, output or "{}"))
        # The caller's voice must neither cut the farewell nor start another answer.
        self.socket.send(lock_turns(self.config, event_id=self.new_id("lock")))
        self.gate.turns_locked = True
        self.say("farewell", instructions)

    def heard(self, cuts: list[Utterance]) -> None:
        for utterance in cuts:
            if utterance.socket != self.number or utterance.key in self._truncated:
                continue  # the item lives in a replaced session
            heard_ms = min(utterance.heard_ms or 0, utterance.received_ms)
            self.socket.send(truncate(utterance.key, heard_ms))
            self._truncated.add(utterance.key)

    def cancel_answer(self) -> None:
        if self.gate.active is not None:
            self._stale.add(self.gate.active)
            self.socket.send(response_cancel())
        if self.gate.in_flight is not None:
            self.gate.in_flight.cancel = True
        self.gate.discard("answer")

    def set_language(self, spec: CallSpec) -> None:
        self.config = realtime_config(spec, self.config.model)
        if not self.gate.turns_locked:
            self.socket.send(session_update(self.config, event_id=self.new_id("lang")))

    def caller_paused(self) -> None:
        """Close the caller's turn with a little silence, so that no one waits on the end of an
        utterance that will not come."""
        if self.gate.caller_speaking:
            self.send_audio(ULAW_SILENCE * PAUSE_SILENCE_BYTES)
            self._own_audio_bytes += PAUSE_SILENCE_BYTES

    def update_tools(self, spec: CallSpec) -> None:
        """Data Actions became ready after the session started."""
        if self.gate.turns_locked:
            return  # ending: no tool is wanted any more, and turns stay locked
        self.config = realtime_config(spec, self.config.model)
        self.socket.send(session_update(self.config, event_id=f"tools-update-{self.number}"))

    def _request(self, purpose: str = "answer", instructions: str | None = None) -> None:
        request_id = self.new_id("r")
        event = response_create(request_id, purpose, instructions=instructions)
        self._send_request(self.gate.request(Request(request_id, purpose, event), self.clock()))

    def _send_request(self, request: Request | None) -> None:
        if request is not None:
            self.socket.send(request.event)

    # -- life cycle

    @property
    def healthy(self) -> bool:
        if self.confirmed_at is None:
            return False
        return self.completed or self.clock() - self.confirmed_at >= HEALTHY_AFTER_SECONDS

    async def run(self, events: EventSink, quiet: Callable[[], bool]) -> SessionEnd:
        self._events = events
        try:
            while True:
                try:
                    # One timer for many events (one per event costs CPU): re-entered when the
                    # session's expiry becomes known, or when it was not a quiet moment to recycle.
                    async with asyncio.timeout(self._recycle_wait()) as timer:
                        while timer.when() is not None or self.recycle_at is None:
                            self.handle(await self.socket.recv())
                except TimeoutError:
                    if quiet() and not self.gate.busy:
                        return SessionEnd.RECYCLED
                except ConnectionClosed:
                    return SessionEnd.DROPPED
        finally:
            self._events = lambda event: None
            if self._summary is not None and not self._summary.done():
                self._summary.set_result(None)

    def _recycle_wait(self) -> float | None:
        if self.recycle_at is None:
            return None
        return max(0.5, self.recycle_at - self.clock())

    def tick(self) -> None:
        """Once a second from the core: errors held back, requests never answered."""
        self._log_held_errors()
        expired = self.gate.expire(self.clock())
        if expired is not None:
            log.warning("OpenAI never answered a response.create; going on without it")
            self._send_request(expired)

    def handover(self) -> object | None:
        return None  # a new Realtime session is restored from the transcript

    def unfinished(self) -> bool:
        return self.gate.busy or self.gate.queued is not None

    def last_error(self) -> str | None:
        return self.held_errors[-1].split(":", 1)[0] if self.held_errors else None

    async def summary(self, transcript: str) -> tuple[str | None, Usage]:
        """An out-of-band text response on this socket; its usage arrives with its
        `response.done` like every other response's."""
        self._summary = asyncio.get_running_loop().create_future()
        request_id = self.new_id("s")
        self.socket.send(
            response_create(
                request_id, OUT_OF_BAND, instructions=SUMMARY_INSTRUCTIONS, out_of_band=True, text_only=True
            )
        )
        return await self._summary, Usage()

    async def finish(self, timeout: float) -> None:
        return None  # nothing to say goodbye to: closing the socket ends the session

    async def close(self) -> None:
        await self.socket.close()

    # -- server events

    def handle(self, event: dict[str, Any]) -> None:
        name = self._HANDLERS.get(_text(event.get("type")))
        if name is not None:
            getattr(self, name)(event)

    def on_session_created(self, event: dict[str, Any]) -> None:
        # The session's own two stamps, when it gives both: the host clock need not agree with
        # OpenAI's. Otherwise the documented lifetime, counted from now.
        created, expires = _at(event, "session", "created_at"), _at(event, "session", "expires_at")
        lifetime = SESSION_LIFETIME
        if _number(created) and _number(expires) and expires > created:
            lifetime = expires - created
        margin = min(RECYCLE_MARGIN_SECONDS, lifetime / 4)
        self.recycle_at = self.clock() + lifetime - margin

    def on_session_updated(self, event: dict[str, Any]) -> None:
        output = _at(event, "session", "audio", "output", "format")
        kind = output.get("type") if isinstance(output, dict) else output
        if kind != "audio/pcmu":
            raise ModelFailed(f"OpenAI output format is {kind!r}, not audio/pcmu")
        self.format_ok = True
        if self.confirmed_at is None:
            self.confirmed_at = self.clock()
            self._events(Ready())

    def on_speech_started(self, event: dict[str, Any]) -> None:
        self.gate.speech_started()
        if not self.gate.turns_locked:
            if self.gate.active is not None:
                self._stale.add(self.gate.active)  # server VAD cancels it: drop its late deltas
            if self.gate.in_flight is not None and self.gate.in_flight.plain:
                # Asked for before the caller began: it would start over them, so it is cancelled
                # once created, and turn detection answers when they stop.
                self.gate.in_flight.cancel = True
        start_ms = event.get("audio_start_ms")
        # The offset is in the caller's audio: the silence we appended ourselves is not theirs.
        offset = start_ms * 8 - self._own_audio_bytes if _number(start_ms) else None
        self._events(CallerSpeechStarted(offset))

    def on_speech_stopped(self, event: dict[str, Any]) -> None:
        self._send_request(self.gate.speech_stopped(self.clock()))
        self._events(CallerSpeechStopped())

    def on_item_added(self, event: dict[str, Any]) -> None:
        kind, item_id = _at(event, "item", "type"), _at(event, "item", "id")
        if not isinstance(item_id, str) or item_id.startswith(OWN_ID):
            return  # an echo of an item of ours (restored history, digits): already known
        if kind == "message" and _at(event, "item", "role") == "user":
            self._events(CallerTurn(item_id))
        elif kind == "mcp_list_tools":
            self._mcp_items[item_id] = str(_at(event, "item", "server_label"))

    def on_caller_transcript(self, event: dict[str, Any]) -> None:
        text = _text(event.get("transcript"))
        self._events(CallerTurn(_text(event.get("item_id")), text))
        log.debug("caller: %s", text)

    def on_response_created(self, event: dict[str, Any]) -> None:
        response_id = _text(_at(event, "response", "id"))
        purpose = _at(event, "response", "metadata", "purpose")
        if purpose == OUT_OF_BAND:
            self._out_of_band.add(response_id)
            return
        fmt = _at(event, "response", "audio", "output", "format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "audio/pcmu"):
            raise ModelFailed(f"OpenAI response format is {fmt.get('type')!r}, not audio/pcmu")
        request_id = _at(event, "response", "metadata", "request")
        started = self.gate.created(response_id, request_id if isinstance(request_id, str) else None)
        if started is None:
            return
        self._purposes[response_id] = started.purpose
        if started.cancel:
            # A key was pressed after we asked for this one: it must not be heard.
            self._stale.add(response_id)
            self.socket.send(response_cancel(response_id))
        if started.purpose == "farewell":
            self._farewell = response_id

    def on_output_item(self, event: dict[str, Any]) -> None:
        item = _at(event, "item")
        response_id = _text(event.get("response_id"))
        if _at(item, "type") == "mcp_call":
            self._mcp_items[str(item.get("id"))] = f"{item.get('server_label')}/{item.get('name')}"
        elif _at(item, "type") == "message" and response_id not in self._out_of_band:
            self._utterance(_text(_at(item, "id")), response_id)

    def _utterance(self, item_id: str, response_id: str) -> Utterance:
        utterance = self._items.get(item_id)
        if utterance is None:
            purpose = self._purposes.get(response_id, "answer")
            utterance = Utterance(item_id, purpose, self.number)
            self._items[item_id] = utterance
            self._by_response.setdefault(response_id, []).append(utterance)
            while len(self._items) > ITEMS_TRACKED:
                self._items.popitem(last=False)
            self._events(UtteranceStarted(utterance))
        return utterance

    def on_audio_delta(self, event: dict[str, Any]) -> None:
        response_id = _text(event.get("response_id"))
        if response_id in self._out_of_band:
            return
        if not self.format_ok:
            raise ModelFailed("OpenAI sent audio before confirming audio/pcmu output")
        try:
            audio = base64.b64decode(_text(event.get("delta")), validate=True)
        except ValueError:
            log.warning("OpenAI sent an audio delta that is not base64; ignored")
            return
        utterance = self._utterance(_text(event.get("item_id")), response_id)
        if response_id in self._stale or utterance.stale:
            self._stale.add(response_id)
            return
        utterance.received_bytes += len(audio)
        self._events(BotAudio(utterance, audio))

    def on_bot_transcript(self, event: dict[str, Any]) -> None:
        if _text(event.get("response_id")) in self._out_of_band:
            return
        utterance = self._items.get(_text(event.get("item_id")))
        if utterance is not None:
            utterance.text = _text(event.get("transcript")).strip()
            self._events(BotText(utterance))
            log.debug("assistant: %s", utterance.text)

    def on_function_call(self, event: dict[str, Any]) -> None:
        call_id, name = _text(event.get("call_id")), _text(event.get("name"))
        self._events(ToolCall(call_id, name, _text(event.get("arguments"))))

    def on_output_item_done(self, event: dict[str, Any]) -> None:
        item = _at(event, "item")
        if _at(item, "type") != "mcp_approval_request" or not isinstance(item.get("id"), str):
            return
        label, tool = str(item.get("server_label")), str(item.get("name"))
        approve = self.approval.approves(label, tool)
        log.info("MCP approval request for %s/%s: %s", label, tool, "approved" if approve else "denied")
        self.metrics.mcp_events.labels("approval_" + ("approved" if approve else "denied")).inc()
        response: dict[str, Any] = {
            "type": "mcp_approval_response",
            "id": self.new_id("a"),
            "approval_request_id": item.get("id"),
            "approve": approve,
        }
        if not approve:
            response["reason"] = "not approved for phone calls"
        self.socket.send({"type": "conversation.item.create", "item": response})
        self._request()

    def on_mcp_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        self.metrics.mcp_events.labels(kind).inc()
        item_id = str(event.get("item_id"))
        what = self._mcp_items.get(item_id, item_id)
        listing = "tool listing" if kind.startswith("mcp_list") else "call"
        if kind.endswith("failed"):
            log.warning("MCP %s failed: %s", listing, what)
        else:
            log.info("MCP %s completed: %s", listing, what)

    def on_response_done(self, event: dict[str, Any]) -> None:
        response = _at(event, "response")
        if not isinstance(response, dict):
            return
        response_id = _text(response.get("id"))
        self._events(UsageReport(realtime_usage(response.get("usage"))))
        status = response.get("status")
        if status == "failed":
            error = _at(response, "status_details", "error")
            log.warning("OpenAI response failed: %s", _at(error, "code") or _at(error, "type") or "-")
        elif status == "completed":
            self.completed = True
            self._log_held_errors()
        if response_id in self._out_of_band:
            self._out_of_band.discard(response_id)
            self._take_summary(response)
            return
        if response_id in self._stale:
            self._stale.discard(response_id)
            self._truncate_unheard(response)
        for utterance in self._by_response.pop(response_id, []):
            utterance.done = True
        if response_id == self._farewell:
            self._events(FarewellDone())
        self._purposes.pop(response_id, None)
        self._send_request(self.gate.done(response_id, self.clock()))

    def _truncate_unheard(self, response: dict[str, Any]) -> None:
        """Items of a cut response that the caller never heard a byte of (their audio came after
        the barge-in) are truncated to nothing, and so is what the transcript keeps of them."""
        output = response.get("output")
        for item in output if isinstance(output, list) else []:
            item_id = _at(item, "id")
            if _at(item, "role") != "assistant" or not isinstance(item_id, str) or item_id in self._truncated:
                continue
            self.socket.send(truncate(item_id, 0))
            self._truncated.add(item_id)
            utterance = self._items.get(item_id)
            if utterance is not None and utterance.heard_ms is None:
                utterance.heard_ms = 0

    def _take_summary(self, response: dict[str, Any]) -> None:
        output = response.get("output")
        texts = [
            _text(_at(part, "text")) or _text(_at(part, "transcript"))
            for item in (output if isinstance(output, list) else [])
            for part in (_at(item, "content") if isinstance(_at(item, "content"), list) else [])
        ]
        text = "".join(texts).strip()
        result = summary_json(text) if response.get("status") == "completed" and text else None
        if result is None:
            log.warning("the conversation summary failed (%s)", response.get("status"))
        if self._summary is not None and not self._summary.done():
            self._summary.set_result(result)

    def on_rate_limits(self, event: dict[str, Any]) -> None:
        limits = event.get("rate_limits")
        if isinstance(limits, list):
            self.rate_limits = limits
            log.debug("rate limits: %s", limits)

    def on_error(self, event: dict[str, Any]) -> None:
        error = _at(event, "error")
        code = _at(error, "code")
        code = code if isinstance(code, str) else None
        message = _text(_at(error, "message"))
        event_id = _text(_at(error, "event_id"))
        in_flight = self.gate.in_flight
        if in_flight is not None and event_id == in_flight.id:
            # One of our response.create was refused: nothing of it runs. The gate re-queues it
            # when a VAD answer only won the race, and goes on with the next request.
            log.debug("OpenAI refused a response.create (%s): %s", code, message[:200])
            self._send_request(self.gate.refused(event_id, code, self.clock()))
            return
        if code in HARMLESS_ERROR_CODES or "already shorter than" in message:
            log.debug("OpenAI: %s", message[:200])
        elif code in FATAL_ERROR_CODES or event_id == f"session-update-{self.number}":
            raise ModelFailed(f"OpenAI refused the session ({code or 'error'})")
        elif event_id.startswith("tools-update"):
            log.warning("OpenAI refused the Data Action tools (%s); going on without them", code or "error")
        else:
            kind = code or _text(_at(error, "type")) or "error"
            self.metrics.errors.labels(f"openai_{kind}"[:64]).inc()
            if self.healthy:
                log.warning("OpenAI error %s: %s", kind, message[:200])
            else:
                # A socket that fails before it proved healthy is one more attempt of an outage,
                # whose one WARNING names its last error; one that goes on logs it then.
                self.held_errors = [*self.held_errors[-4:], f"{kind}: {message[:200]}"]
                log.debug("OpenAI error %s: %s", kind, message[:200])

    def _log_held_errors(self) -> None:
        if self.held_errors and self.healthy:
            for error in self.held_errors:
                log.warning("OpenAI error %s", error)
            self.held_errors = []


# -- the backend ---------------------------------------------------------------------------------

Opener = Callable[[str, dict[str, str], float], Any]  # url, headers, timeout -> awaitable socket


@dataclass
class RealtimeBackend:
    """OpenAI Realtime for one call: OpenAI itself (bearer key) or Azure OpenAI (`api-key`)."""

    vendor: str
    label: str
    model: str
    url: str
    headers: dict[str, str]
    approval: ApprovalPolicy
    metrics: Metrics
    clock: Callable[[], float]
    opener: Opener | None = None
    capabilities: ClassVar[Capabilities] = RealtimeSession.capabilities

    async def connect(self, timeout: float) -> RealtimeSession:
        url = realtime_url(self.url, self.model)
        try:
            if self.opener is not None:
                socket = await self.opener(url, self.headers, timeout)
            else:
                socket = await ModelSocket.open(url, self.headers, timeout, vendor="OpenAI")
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403, 404):
                raise ModelRefused(f"OpenAI refused the connection (HTTP {status})") from None
            raise
        return RealtimeSession(
            socket, self.model, clock=self.clock, approval=self.approval, metrics=self.metrics
        )
