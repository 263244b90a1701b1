"""AudioHook protocol v2, server side, with no I/O.

Text in, validated messages out; server messages built here with gap-free `seq` numbers. The
session in `audiohook_server.py` only moves bytes and keeps time around this class.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

VERSION = "2"
MAX_MESSAGE_CHARS = 65_535
MAX_OUTBOUND_BYTES = 64_000
MAX_AUDIO_FRAME_BYTES = 65_536
NULL_UUID = "00000000-0000-0000-0000-000000000000"
DTMF_DIGITS = frozenset("0123456789*#ABCD")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DURATION = re.compile(r"^PT(\d*\.)?\d+S$")

CLIENT_TYPES = frozenset(
    {
        "open",
        "close",
        "ping",
        "update",
        "paused",
        "resumed",
        "discarded",
        "error",
        "dtmf",
        "playback_started",
        "playback_completed",
    }
)
# Messages a client may send before `open` without breaking the session.
_BEFORE_OPEN = frozenset({"open", "close", "ping", "error"})
CLOSE_REASONS = frozenset({"end", "error", "disconnect", "reconnect"})
DISCONNECT_REASONS = frozenset({"completed", "unauthorized", "error"})


class ProtocolError(Exception):
    """A client message that breaks the protocol; answered with `disconnect` reason `error`."""

    def __init__(self, info: str) -> None:
        super().__init__(info)
        self.info = info


class State(enum.Enum):
    AWAITING_OPEN = "awaiting-open"
    OPEN = "open"
    DISCONNECTING = "disconnecting"  # we sent `disconnect`, waiting for the client's `close`
    CLOSED = "closed"  # we sent `closed`


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID.match(value) is not None


def format_duration(seconds: float) -> str:
    """ISO-8601 seconds-only duration, never in exponent notation (`PT0.00001S`, not `PT1e-05S`)."""
    if seconds < 0:
        raise ValueError("durations are never negative")
    text = format(Decimal(repr(float(seconds))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"PT{text}S"


def parse_duration(text: object) -> float:
    if not isinstance(text, str) or _DURATION.match(text) is None:
        raise ValueError(f"not an AudioHook duration: {text!r}")
    return float(text[2:-1])


@dataclass(frozen=True)
class Media:
    """The media entry selected from the client's offer, echoed back unchanged in `opened`."""

    offer: dict[str, Any]
    channels: int
    external_index: int


@dataclass(frozen=True)
class OpenRequest:
    organization_id: str
    conversation_id: str
    participant: dict[str, Any]
    media: Media
    input_variables: dict[str, str]
    language: str | None
    probe: bool
    wants_languages: bool = False  # `supportedLanguages: true`: list them in `opened`


@dataclass(frozen=True)
class ClientMessage:
    type: str
    seq: int
    parameters: dict[str, Any]
    open: OpenRequest | None = None


def select_media(offered: list[Any]) -> Media | None:
    """Mono `["external"]` PCMU 8 kHz first, else a stereo PCMU entry that carries `external`."""
    candidates = [
        m
        for m in offered
        if isinstance(m, dict)
        and m.get("type") == "audio"
        and m.get("format") == "PCMU"
        and m.get("rate") == 8000
        and isinstance(m.get("channels"), list)
    ]
    for m in candidates:
        if m["channels"] == ["external"]:
            return Media(offer=m, channels=1, external_index=0)
    for m in candidates:
        channels = m["channels"]
        if len(channels) == 2 and "external" in channels and len(set(channels)) == 2:
            return Media(offer=m, channels=2, external_index=channels.index("external"))
    return None


def _is_probe(conversation_id: str, participant_id: str) -> bool:
    return NULL_UUID in (conversation_id.lower(), participant_id.lower())


def _parse_open(params: dict[str, Any]) -> OpenRequest:
    org = params.get("organizationId")
    conversation = params.get("conversationId")
    participant = params.get("participant")
    if not is_uuid(org):
        raise ProtocolError("open: organizationId must be a UUID")
    if not is_uuid(conversation):
        raise ProtocolError("open: conversationId must be a UUID")
    if not isinstance(participant, dict) or not is_uuid(participant.get("id")):
        raise ProtocolError("open: participant.id must be a UUID")
    offered = params.get("media")
    if not isinstance(offered, list):
        raise ProtocolError("open: media must be a list")
    media = select_media(offered)
    if media is None:
        raise ProtocolError("no supported media")
    raw_vars = params.get("inputVariables", {})
    if raw_vars is None:
        raw_vars = {}
    if not isinstance(raw_vars, dict):
        raise ProtocolError("open: inputVariables must be an object")
    input_variables = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in raw_vars.items()}
    language = params.get("language")
    return OpenRequest(
        organization_id=org.lower(),
        conversation_id=conversation.lower(),
        participant=participant,
        media=media,
        input_variables=input_variables,
        language=language if isinstance(language, str) else None,
        probe=_is_probe(conversation, participant["id"]),
        wants_languages=params.get("supportedLanguages") is True,
    )


def _check_duration(params: dict[str, Any], name: str, *, required: bool, type_: str) -> None:
    if name not in params and not required:
        return
    try:
        parse_duration(params.get(name))
    except ValueError:
        raise ProtocolError(f"{type_}: {name} must be an ISO-8601 duration") from None


def _check_parameters(type_: str, params: dict[str, Any]) -> None:
    if type_ in ("resumed", "discarded"):
        _check_duration(params, "start", required=True, type_=type_)
        _check_duration(params, "discarded", required=True, type_=type_)
    elif type_ == "ping":
        _check_duration(params, "rtt", required=False, type_=type_)
    elif type_ == "error":
        code = params.get("code")
        if not isinstance(code, int) or isinstance(code, bool) or not 400 <= code <= 9999:
            raise ProtocolError("error: code must be an integer from 400 to 9999")
        if not isinstance(params.get("message", ""), str):
            raise ProtocolError("error: message must be a string")
        _check_duration(params, "retryAfter", required=False, type_=type_)
    elif type_ == "dtmf":
        digit = params.get("digit")
        if not isinstance(digit, str) or digit not in DTMF_DIGITS:
            raise ProtocolError("dtmf: digit must be one of 0-9, *, #, A-D")
    elif type_ == "update":
        language = params.get("language")
        if language is not None and not isinstance(language, str):
            raise ProtocolError("update: language must be a string")


@dataclass
class ServerProtocol:
    """Envelope validation, sequencing and message building for one AudioHook session."""

    session_id: str
    state: State = State.AWAITING_OPEN
    server_seq: int = 0
    client_seq: int = 0
    paused: bool = False
    media: Media | None = None
    audio_bytes_in: int = 0
    discarded_seconds: float = 0.0
    _violated: bool = field(default=False, repr=False)
    _odd_byte: bytes = field(default=b"", repr=False)  # half a stereo sample pair, for the next frame

    # -- client to server --------------------------------------------------------------------

    def receive_text(self, text: str) -> ClientMessage:
        """Validate one text frame. Raises ProtocolError on any violation."""
        if len(text) > MAX_MESSAGE_CHARS:
            raise ProtocolError("message too large")
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):  # nested deeper than the parser goes: malformed too
            raise ProtocolError("malformed JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError("message is not a JSON object")
        type_ = msg.get("type")
        if self._violated:
            # After a violation only the close transaction matters; be lenient about the rest.
            return self._after_violation(msg, type_)
        self._check_envelope(msg, type_)
        params: dict[str, Any] = msg["parameters"]
        self.client_seq = msg["seq"]
        if self.state is State.AWAITING_OPEN and type_ not in _BEFORE_OPEN:
            raise ProtocolError(f"expected open, got {type_}")
        if type_ == "open":
            if self.state is not State.AWAITING_OPEN:
                raise ProtocolError("unexpected open")
            request = _parse_open(params)
            self.media = request.media
            return ClientMessage(type_, self.client_seq, params, open=request)
        _check_parameters(type_, params)
        if type_ == "paused":
            self.paused = True
        elif type_ == "resumed":
            self.paused = False
            self.discarded_seconds += parse_duration(params["discarded"])
        elif type_ == "discarded":
            self.discarded_seconds += parse_duration(params["discarded"])
        return ClientMessage(type_, self.client_seq, params)

    def _check_envelope(self, msg: dict[str, Any], type_: Any) -> None:
        if msg.get("version") != VERSION:
            raise ProtocolError("unsupported version")
        msg_id = msg.get("id")
        if not isinstance(msg_id, str) or msg_id.lower() != self.session_id.lower():
            raise ProtocolError("id does not match the session")
        if not isinstance(type_, str):
            raise ProtocolError("missing type")
        seq = msg.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq != self.client_seq + 1:
            raise ProtocolError("invalid seq")
        serverseq = msg.get("serverseq", 0)
        if (
            not isinstance(serverseq, int)
            or isinstance(serverseq, bool)
            or not 0 <= serverseq <= self.server_seq
        ):
            raise ProtocolError("invalid serverseq")
        if not isinstance(msg.get("parameters"), dict):
            raise ProtocolError("parameters must be an object")
        if "position" in msg:
            try:
                parse_duration(msg["position"])
            except ValueError:
                raise ProtocolError("invalid position") from None
        if type_ not in CLIENT_TYPES:
            raise ProtocolError(f"unknown message type {type_[:40]!r}")

    def _after_violation(self, msg: dict[str, Any], type_: Any) -> ClientMessage:
        seq = msg.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and seq > self.client_seq:
            self.client_seq = seq
        params = msg.get("parameters")
        kind = type_ if type_ in ("close", "ping") else "ignored"
        return ClientMessage(kind, self.client_seq, params if isinstance(params, dict) else {})

    def mark_violation(self) -> None:
        self._violated = True

    def receive_audio(self, data: bytes) -> bytes | None:
        """The caller's (external channel) audio in a binary frame, or None when it is to be ignored."""
        if self._violated or self.state in (State.DISCONNECTING, State.CLOSED):
            return None
        if self.state is State.AWAITING_OPEN or self.media is None:
            raise ProtocolError("audio before open")
        if len(data) > MAX_AUDIO_FRAME_BYTES:
            raise ProtocolError("audio frame too large")
        if not data or self.paused:
            return None
        if self.media.channels == 2:
            # Samples interleave across frames: an odd-length frame leaves half a pair, which
            # belongs in front of the next frame, or the channels swap from then on.
            data = self._odd_byte + data
            whole = len(data) - len(data) % 2
            data, self._odd_byte = data[self.media.external_index : whole : 2], data[whole:]
        self.audio_bytes_in += len(data)
        return data

    @property
    def position(self) -> float:
        """Seconds of caller audio on the client's timeline: received plus reported discarded."""
        return self.audio_bytes_in / 8000 + self.discarded_seconds

    # -- server to client --------------------------------------------------------------------

    def _build(self, type_: str, parameters: dict[str, Any], clientseq: int | None = None) -> str:
        self.server_seq += 1
        return json.dumps(
            {
                "version": VERSION,
                "type": type_,
                "seq": self.server_seq,
                "clientseq": self.client_seq if clientseq is None else clientseq,
                "id": self.session_id,
                "parameters": parameters,
            },
            separators=(",", ":"),
        )

    def opened(self, supported_languages: tuple[str, ...] | None = None) -> str:
        """`opened` with the selected media; with the languages when `open` asked for them (and
        there are any to list)."""
        if self.media is None:
            raise RuntimeError("opened before a media selection")
        self.state = State.OPEN
        params: dict[str, Any] = {"media": [self.media.offer]}
        if supported_languages:
            params["supportedLanguages"] = list(supported_languages)
        return self._build("opened", params)

    def pong(self, ping_seq: int) -> str:
        return self._build("pong", {}, clientseq=ping_seq)

    def closed(self) -> str:
        self.state = State.CLOSED
        return self._build("closed", {})

    def pause(self) -> str:
        return self._build("pause", {})

    def resume(self) -> str:
        return self._build("resume", {})

    def updated(self) -> str:
        return self._build("updated", {})

    def event(self, entities: list[dict[str, Any]]) -> str:
        return self._build("event", {"entities": entities})

    def disconnect(
        self, reason: str, info: str | None = None, output_variables: dict[str, str] | None = None
    ) -> str:
        if reason not in DISCONNECT_REASONS:
            raise ValueError(f"unknown disconnect reason {reason!r}")
        params: dict[str, Any] = {"reason": reason}
        if info:
            params["info"] = info[:500]
        if output_variables is not None:
            params["outputVariables"] = _fit_output_variables(output_variables)
        self.state = State.DISCONNECTING
        return self._build("disconnect", params)


def barge_in_entity() -> dict[str, Any]:
    return {"type": "barge_in", "data": {}}


def bot_turn_entity(disposition: str, text: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"disposition": disposition}
    if text:
        data["text"] = text
    return {"type": "bot_turn_response", "data": data}


def _fit_output_variables(variables: dict[str, str]) -> dict[str, str]:
    """Strings only, and small enough that the `disconnect` stays under the outbound limit."""
    out = {str(k): str(v) for k, v in variables.items()}
    budget = MAX_OUTBOUND_BYTES - 2_000
    while len(json.dumps(out).encode()) > budget:
        longest = max(out, key=lambda k: len(out[k]))
        out[longest] = out[longest][: len(out[longest]) // 2]
    return out
