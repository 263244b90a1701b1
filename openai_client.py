"""The OpenAI side of a call: Realtime (GA) over WebSocket, G.711 μ-law both ways.

What is here speaks the OpenAI protocol and nothing else: the `session.update` shape, the client
events, usage totals, the one-response-at-a-time gate, the conversation transcript (kept for the
summary and to restore a replaced session), and the connection with its single writer task. What
the events *mean* for a call is decided in `call_bridge.py`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from utils import cancel_and_wait, send_within

log = logging.getLogger("openai")

PCMU = {"type": "audio/pcmu"}
SEND_TIMEOUT = 10.0
MAX_PENDING_EVENTS = 1000


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


# -- usage -----------------------------------------------------------------------------------


@dataclass
class Usage:
    """Token totals over every `response.done` of a call, on every socket it used."""

    input_text: int = 0
    input_cached_text: int = 0
    input_audio: int = 0
    input_cached_audio: int = 0
    output_text: int = 0
    output_audio: int = 0

    def add(self, usage: dict[str, Any] | None) -> None:
        given = _object(usage, "input_token_details")
        cached = _object(given, "cached_tokens_details")
        out = _object(usage, "output_token_details")
        self.input_text += _int(given.get("text_tokens"))
        self.input_audio += _int(given.get("audio_tokens"))
        self.input_cached_text += _int(cached.get("text_tokens"))
        self.input_cached_audio += _int(cached.get("audio_tokens"))
        self.output_text += _int(out.get("text_tokens"))
        self.output_audio += _int(out.get("audio_tokens"))

    def as_variables(self) -> dict[str, str]:
        return {
            "TOTAL_INPUT_TEXT_TOKENS": str(self.input_text),
            "TOTAL_INPUT_CACHED_TEXT_TOKENS": str(self.input_cached_text),
            "TOTAL_INPUT_AUDIO_TOKENS": str(self.input_audio),
            "TOTAL_INPUT_CACHED_AUDIO_TOKENS": str(self.input_cached_audio),
            "TOTAL_OUTPUT_TEXT_TOKENS": str(self.output_text),
            "TOTAL_OUTPUT_AUDIO_TOKENS": str(self.output_audio),
        }


def _object(parent: Any, key: str) -> dict[str, Any]:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


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


# -- what was said ---------------------------------------------------------------------------


@dataclass
class Transcript:
    """Both sides of the conversation, in conversation order, by item id."""

    _turns: dict[str, list[str]] = field(default_factory=dict)  # item id -> [role, text]
    max_turns: int = 200

    def add_item(self, item_id: str, role: str) -> None:
        if role in ("user", "assistant") and item_id not in self._turns:
            self._turns[item_id] = [role, ""]
            while len(self._turns) > self.max_turns:
                del self._turns[next(iter(self._turns))]

    def set_text(self, item_id: str, role: str, text: str) -> None:
        self.add_item(item_id, role)
        if item_id in self._turns:
            self._turns[item_id][1] = text.strip()

    def cut(self, item_id: str, fraction: float) -> None:
        """The caller heard only part of an assistant turn: keep that part of its text."""
        turn = self._turns.get(item_id)
        if turn and turn[1]:
            words = turn[1].split()
            turn[1] = " ".join(words[: round(len(words) * max(0.0, min(1.0, fraction)))])

    def text(self, item_id: str) -> str:
        turn = self._turns.get(item_id)
        return turn[1] if turn else ""

    def add_text(self, role: str, text: str, key: str) -> None:
        """A turn that is not an audio item (keyed digits, a restored session's history)."""
        self.set_text(key, role, text)

    def turns(self) -> list[tuple[str, str]]:
        return [(role, text) for role, text in self._turns.values() if text]

    def as_text(self) -> str:
        return "\n".join(f"{'Caller' if r == 'user' else 'Assistant'}: {t}" for r, t in self.turns())


def history_events(transcript: Transcript, new_id: Callable[[], str]) -> list[dict[str, Any]]:
    """The conversation so far as items for a new session, under ids of ours (so that their
    echoes are known for what they are)."""
    return [
        user_text(t, new_id()) if role == "user" else assistant_text(t, new_id())
        for role, t in transcript.turns()
    ]


# -- the connection --------------------------------------------------------------------------


def realtime_url(base: str, model: str) -> str:
    parts = urllib.parse.urlsplit(base)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "model"] + [("model", model)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class RealtimeConnection:
    """One Realtime WebSocket, with a single writer task draining a bounded queue."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._pending: deque[str] = deque()
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write(), name="openai-writer")

    @classmethod
    async def open(cls, url: str, model: str, api_key: str, timeout: float) -> RealtimeConnection:
        async with asyncio.timeout(timeout):
            ws = await connect(
                realtime_url(url, model),
                additional_headers={"Authorization": f"Bearer {api_key}"},
                max_size=None,
                compression=None,
                open_timeout=timeout,
                close_timeout=2,
                ping_interval=20,
                ping_timeout=20,
            )
        return cls(ws)

    def send(self, event: dict[str, Any] | str) -> None:
        """Queue a client event. A queue this full means OpenAI stopped reading: drop the socket."""
        if len(self._pending) >= MAX_PENDING_EVENTS:
            log.warning(
                "OpenAI is not reading (%d events pending); dropping the connection", len(self._pending)
            )
            self._pending.clear()
            self.ws.transport.abort()
            return
        self._pending.append(event if isinstance(event, str) else json.dumps(event))
        self._wake.set()

    async def recv(self) -> dict[str, Any]:
        """The next server event. Raises ConnectionClosed when the socket is gone."""
        while True:
            raw = await self.ws.recv()
            try:
                event = json.loads(raw)
            except ValueError:
                log.warning("OpenAI sent a frame that is not JSON; ignored")
                continue
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                return event
            log.warning("OpenAI sent an event without a type; ignored")

    async def _write(self) -> None:
        while True:
            while self._pending:
                message = self._pending.popleft()
                try:
                    await send_within(self.ws, message, SEND_TIMEOUT)
                except TimeoutError:
                    log.warning("a send to OpenAI blocked for %ss; dropping the connection", SEND_TIMEOUT)
                    self.ws.transport.abort()
                    return
                except ConnectionClosed:
                    return
            self._wake.clear()
            await self._wake.wait()

    async def close(self) -> None:
        await cancel_and_wait(self._writer)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await self.ws.close()
