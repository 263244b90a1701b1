"""A local stand-in for OpenAI GPT-Live (the full-duplex voice API), for tests and the demo.

It follows the project's GPT-Live specification: `session.start` first, one continuous output track of
100 ms `session.output_audio.delta` frames at real time (silence included) that runs at most
~2.5 s ahead of the caller's audio and freezes when input stops, turn taking and barge-in decided
by the model itself (no event says so), timeline-stamped transcripts with no done events,
commentary/thinking/instructions appends acknowledged once placed on the timeline, Responses
delegation with function calls wrapped in `response.event`, cumulative usage in seconds, and
`session.close` -> `session.closed`. One port also serves the Responses API text call the connector
uses for the call summary, and the Azure spellings of both paths.

Every client event is validated against the `openai` package's own types (`openai.types.live`,
see `LiveValidator`), so an off-spec field fails the test that sent it. Every error a client event
causes (a partial batch, an append never placed, ...) is also recorded in `violations`: the
connector should cause none. Codes the spec leaves open are this simulator's choice:
`session_not_started`, `session_already_started`, `response_in_progress`,
`unsupported_for_delegation`, `fixture_active`, `too_many_pending_appends`, `invalid_json`.
Token limits use `estimate_tokens` (characters / 4).

What the model says (spec §10 and the connector's texts follow this heuristic): a commentary with
a double-quoted phrase speaks that phrase; one containing "goodbye" speaks `script.farewell`; one
containing "keypad" answers with the next scripted turn; any other commentary speaks
`script.filler`. A commentary for a client delegation (`delegation_id` set) is spoken as given.
Thinking and instructions appends are silent context. A turn's `more` parts are said one after
another (a barge-in drops the rest). Scripted MCP turns are not simulated (hosted tools run inside
the backend, out of the connector's sight): they are spoken as their `say`. Input faster than real
time is heard at once; transcripts and answers still follow the output clock.

As a command: `python -m simulators.live_simulator --port 8082`; point `OPENAI_LIVE_URL` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import heapq
import itertools
import json
import logging
import math
import random
import re
import sys
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from simulators import speech
from simulators.audio import read_wav, speech_like
from simulators.realtime_simulator import SPEECH_RMS
from simulators.script import Script, Turn
from utils import audioop, ulaw_rms

log = logging.getLogger("live-simulator")

FRAME_MS = 100  # output delta size, as observed
LEAD_MS = 2500  # how far output may run ahead of the input received before it freezes
WINDOW_MS = 20  # VAD window
SPEECH_WINDOWS_TO_START = 3
END_OF_TURN_MS = 500  # caller silence that ends a caller turn
ANSWER_DELAY_MS = 300  # from the end of a caller turn to the model's answer
BARGE_IN_MS = 300  # caller speech over the model's that makes it stop
INPUT_TRANSCRIPT_DELAY_MS = 700
INPUT_WORD_MS = 400  # one input transcript fragment per this much caller speech
OUTPUT_FRAGMENT_MS = 200
PLACEMENT_MS = 200  # from receiving an append to placing it on the timeline
USAGE_EVERY_MS = 15_000
MAX_CATCH_UP_S = 0.5  # after a stall, frames catch up at most this much, then the schedule resets
DRAIN_SECONDS = 10.0
SEND_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0

MAX_APPEND_TOKENS = 500
MAX_INSTRUCTIONS_TOKENS = 16_384
MAX_INPUT_MESSAGES = 128
MAX_INPUT_TOKENS = 8_192
MAX_FIXTURE_BYTES = 30 * 24_000 * 2  # 30 s of PCM16 24 kHz
MAX_PENDING_APPENDS = 64
MAX_SCHEDULED = 1024
MAX_QUEUED_SPEECH = 16

END_CALL_TOOLS = frozenset({"end_conversation_successfully", "end_conversation_with_escalation"})
APPEND_EVENTS = frozenset(
    {"session.instructions.append", "session.thinking.append", "session.commentary.append"}
)
INPUT_AUDIO = "session.input_audio.append"
OUTPUT_AUDIO = "session.output_audio.delta"

# Voices the docs name besides the SDK's literal list (spec §3).
DOC_VOICES = frozenset(
    {"nuri", "juni", "flitz", "brise", "sillage", "nira", "harema", "shida", "noeul", "aster"}
)

FATAL_ERRORS = {
    "invalid_api_key": ("invalid_request_error", "Incorrect API key provided."),
    "insufficient_quota": (
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "model_not_found": ("invalid_request_error", "The model does not exist or you do not have access to it."),
    "credit_balance_exhausted": ("insufficient_quota", "Your credit balance is exhausted."),
    "account_deactivated": ("invalid_request_error", "This account has been deactivated."),
    "billing_hard_limit_reached": ("insufficient_quota", "Billing hard limit has been reached."),
}


def estimate_tokens(text: str) -> int:
    """A cheap, deliberately simple token estimate: one token per four characters, rounded up."""
    return math.ceil(len(text) / 4)


# -- strict validation against the openai package's types -----------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an event, as the service would report it."""

    code: str  # unknown_parameter, missing_required_parameter, invalid_value, invalid_type
    message: str
    param: str | None = None

    def __str__(self) -> str:
        where = f", param {self.param}" if self.param else ""
        return f"{self.message} ({self.code}{where})"


class LiveValidator:
    """Dispatch on `type`, validate with the SDK's pydantic model, and flag every unknown field.

    The SDK's unions carry a `PropertyInfo` discriminator that pydantic does not use, so events
    are dispatched through a type -> model map. The SDK's models allow extra fields, so Realtime
    names and typos would validate silently: they are walked and reported here (the `*Param`
    TypedDicts would drop them instead). Rules the types do not carry are applied by hand (spec
    §15); nested Responses stream events inside `response.event` are checked too.
    """

    def __init__(self) -> None:
        from openai import BaseModel as OpenAIModel
        from openai.types.live import ClientEvent, ServerEvent
        from openai.types.responses import ResponseStreamEvent

        self._model = OpenAIModel
        self.client = _by_type(ClientEvent)
        self.server = _by_type(ServerEvent)
        self.responses = _by_type(ResponseStreamEvent)

    def check(self, event: Any, direction: str = "client") -> list[Problem]:
        models = self.client if direction == "client" else self.server
        found = self._check(event, models, "")
        if found:
            return found
        if direction == "client":
            return client_rules(event)
        if event["type"] == "response.event":
            return self._check(event["event"], self.responses, "event")
        return []

    def problems(self, event: Any, direction: str = "client") -> list[str]:
        kind = event.get("type") if isinstance(event, dict) else None
        return [f"{kind}: {problem}" for problem in self.check(event, direction)]

    def _check(self, event: Any, models: dict[str, Any], prefix: str) -> list[Problem]:
        if not isinstance(event, dict):
            return [Problem("invalid_type", "The event is not a JSON object.")]
        model = models.get(event.get("type"))
        if model is None:
            supported = ", ".join(repr(t) for t in sorted(models))
            return [
                Problem(
                    "invalid_value",
                    f"Invalid value: {event.get('type')!r}. Supported values are: {supported}.",
                    _join(prefix, "type"),
                )
            ]
        try:
            parsed = model.model_validate(event)
        except Exception as exc:  # pydantic.ValidationError
            return [_from_validation_error(exc, prefix)]
        unknown = [_join(prefix, path) for path in self.unknown_fields(parsed)]
        return [Problem("unknown_parameter", f"Unknown parameter: '{path}'.", path) for path in unknown]

    def unknown_fields(self, obj: Any, path: str = "") -> list[str]:
        out: list[str] = []
        if isinstance(obj, self._model):
            out += [_join(path, key) for key in obj.model_extra or {}]
            for name in type(obj).model_fields:
                out += self.unknown_fields(getattr(obj, name), _join(path, name))
        elif isinstance(obj, list | tuple):
            for i, value in enumerate(obj):
                out += self.unknown_fields(value, f"{path}[{i}]")
        return out


def _by_type(alias: Any) -> dict[str, Any]:
    members = typing.get_args(typing.get_args(alias)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_union_tag(part: Any) -> bool:
    """pydantic names the union member an error came from in its location; those are not fields."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in ("str", "int", "float"))


def _from_validation_error(exc: Exception, prefix: str) -> Problem:
    errors = exc.errors() if callable(getattr(exc, "errors", None)) else []  # type: ignore[attr-defined]
    if not errors:
        return Problem("invalid_value", str(exc).splitlines()[0])

    def rank(error: dict[str, Any]) -> int:
        # A union member that failed on its own tag is the wrong member: report another one's error.
        loc = [p for p in error["loc"] if not _is_union_tag(p)]
        return 1 if error["type"] == "literal_error" and loc and loc[-1] in ("type", "role") else 0

    first = min(errors, key=rank)
    param = prefix
    for part in first["loc"]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif not _is_union_tag(part):
            param = _join(param, str(part))
    if first["type"] == "missing":
        return Problem("missing_required_parameter", f"Missing required parameter: '{param}'.", param)
    if first["type"] in ("literal_error", "enum", "value_error", "union_tag_invalid"):
        return Problem("invalid_value", f"Invalid value for '{param}': {first['msg']}.", param)
    return Problem("invalid_type", f"Invalid type for '{param}': {first['msg']}.", param)


def client_rules(event: dict[str, Any]) -> list[Problem]:
    """The hand rules of spec §15 for an event whose shape the SDK types already accepted."""
    kind = event.get("type")
    if kind == "session.start":
        return _session_rules(event["session"])
    if kind in APPEND_EVENTS:
        found = []
        if "delegation_id" not in event:
            found.append(
                Problem(
                    "missing_required_parameter",
                    "Missing required parameter: 'delegation_id'.",
                    "delegation_id",
                )
            )
        if estimate_tokens(event["content"]) > MAX_APPEND_TOKENS:
            found.append(
                Problem("invalid_value", "Context append text must not exceed 500 tokens.", "content")
            )
        return found
    if kind == INPUT_AUDIO:
        return [] if decode_base64(event["audio"]) is not None else [_bad_base64()]
    if kind == "session.output_audio.fixture.play":
        audio = decode_base64(event["audio"])
        if audio is None:
            return [_bad_base64()]
        if len(audio) > MAX_FIXTURE_BYTES or len(audio) % 2:
            return [
                Problem(
                    "invalid_value",
                    "Audio fixtures must be whole PCM16 24 kHz samples, at most 30 seconds.",
                    "audio",
                )
            ]
    return []


def _session_rules(session: dict[str, Any]) -> list[Problem]:
    found = []
    fmt = (session.get("audio") or {}).get("format") or {}
    if fmt.get("type") in ("audio/pcmu", "audio/pcma") and fmt.get("rate") != 8000:
        found.append(Problem("invalid_value", "G.711 audio must use rate 8000.", "session.audio.format.rate"))
    if estimate_tokens(session.get("instructions") or "") > MAX_INSTRUCTIONS_TOKENS:
        found.append(
            Problem("invalid_value", "Instructions must not exceed 16384 tokens.", "session.instructions")
        )
    items = session.get("input") or []
    if len(items) > MAX_INPUT_MESSAGES:
        found.append(Problem("invalid_value", "Startup input must not exceed 128 messages.", "session.input"))
    for i, item in enumerate(items):
        if len(item.get("content") or []) != 1:
            found.append(
                Problem(
                    "invalid_value",
                    "Each startup input message needs exactly one text part.",
                    f"session.input[{i}].content",
                )
            )
    rendered = sum(
        estimate_tokens(part.get("text") or "") for item in items for part in item.get("content") or []
    )
    if rendered > MAX_INPUT_TOKENS:
        found.append(
            Problem("invalid_value", "Startup input must not exceed 8192 rendered tokens.", "session.input")
        )
    return found


def _bad_base64() -> Problem:
    return Problem("invalid_value", "Invalid base64 audio.", "audio")


def decode_base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def load_validator(required: bool) -> LiveValidator | None:
    try:
        return LiveValidator()
    except ImportError:
        if required:
            raise
        log.warning("the openai package is not installed: client events are not validated")
        return None


def known_voices() -> frozenset[str] | None:
    """The SDK's voices and the ones the docs name; None (no check) without the openai package."""
    try:
        from openai.types.live import BuiltInVoice
    except ImportError:
        return None
    return frozenset(typing.get_args(BuiltInVoice)) | DOC_VOICES


# -- audio formats ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFormat:
    """The one session format both directions use (spec §3)."""

    type: str = "audio/pcm"
    rate: int = 24_000

    @property
    def g711(self) -> bool:
        return self.type in ("audio/pcmu", "audio/pcma")

    def bytes_for(self, ms: int) -> int:
        return ms * self.rate // 1000 * (1 if self.g711 else 2)

    def silence(self, ms: int) -> bytes:
        byte = {"audio/pcmu": b"\xff", "audio/pcma": b"\xd5"}.get(self.type, b"\x00")
        return byte * self.bytes_for(ms)

    def level(self, window: bytes) -> int:
        """RMS on the 16-bit scale, as the Realtime simulator's VAD measures it."""
        if self.type == "audio/pcmu":
            return ulaw_rms(window)
        if self.type == "audio/pcma":
            return audioop.rms(audioop.alaw2lin(window, 2), 2)
        return audioop.rms(window, 2)

    def from_pcmu(self, pcmu: bytes) -> bytes:
        if self.type == "audio/pcmu":
            return pcmu
        pcm = audioop.ulaw2lin(pcmu, 2)
        if self.type == "audio/pcma":
            return audioop.lin2alaw(pcm, 2)
        return audioop.ratecv(pcm, 2, 1, 8000, self.rate, None)[0]

    def from_pcm24k(self, pcm: bytes) -> bytes:
        at_rate = audioop.ratecv(pcm, 2, 1, 24_000, self.rate if not self.g711 else 8000, None)[0]
        if self.type == "audio/pcmu":
            return audioop.lin2ulaw(at_rate, 2)
        if self.type == "audio/pcma":
            return audioop.lin2alaw(at_rate, 2)
        return at_rate


# -- the server ------------------------------------------------------------------------------


class LiveSimulator:
    def __init__(
        self,
        script: Script | None = None,
        *,
        strict: bool = True,
        validate_server: bool = False,
        session_seconds: float = 3600.0,
        seed: int = 7,
        bot_audio: bytes | None = None,
        speak_words: bool = False,
        acknowledgement: str | None = None,
    ) -> None:
        self.script = script or Script()
        self.validator = load_validator(required=strict)
        self.validate_server = validate_server
        self.session_seconds = session_seconds
        self.rng = random.Random(seed)
        self.bot_audio = bot_audio
        self.speak_words = speak_words  # voice the words with eSpeak NG when it is there
        self.acknowledgement = acknowledgement  # spoken when a delegation starts
        self.voices = known_voices()
        self.sessions: list[LiveSession] = []
        self.violations: list[str] = []
        self.usage_sent: list[dict[str, Any]] = []  # every backend and summary usage reported
        self.summary_requests: list[dict[str, Any]] = []
        self.summary_status = 200
        self.backend_delay = 0.05  # the Responses backend "thinks" this long before streaming
        # ... and reasons this long between its `response.created` and its output (hosted tools).
        self.backend_reasoning = 0.0
        # Faults on demand.
        self.refuse_next = 0  # answer the next N upgrade attempts with HTTP 503
        self.refuse_all = False
        self.connect_delay = 0.0
        self.start_delay = 0.0  # answer session.start this much later (refusing what comes meanwhile)
        self.drop_on: Callable[[dict[str, Any]], bool] | None = None  # abort when a client event matches
        self.force_format: dict[str, Any] | None = None  # report this format in session.started
        self.start_error: str | None = None  # answer session.start with this fatal error and close
        self.error_after_start: str | None = None  # send this fatal error after session.started, close 1011
        self.keep_audio = True  # False: appends are not kept per session (long or large runs)
        # Validate one `session.input_audio.append` in this many (always the first of a session);
        # every other event is always validated. Above 1 only for load runs.
        self.check_appends_every = 1
        self.connections = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port = 0

    # -- serving

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> LiveSimulator:
        app = web.Application()
        app.router.add_get("/v1/live/sessions", self._live)
        app.router.add_get("/openai/v1/live/sessions", self._live)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/openai/v1/responses", self._responses)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.drop_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/v1/live/sessions"

    @property
    def azure_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}{self.rng.randrange(16**8):08x}"

    def _authorize(self, request: web.Request) -> tuple[str, str | None]:
        """("bearer" | "api-key", the violation if the headers are wrong)."""
        headers = request.headers
        if request.path.startswith("/openai/"):
            if "Authorization" in headers:
                return "api-key", "Azure request with an Authorization header (send api-key only)"
            if not headers.get("api-key"):
                return "api-key", "Azure request without an api-key header"
            return "api-key", None
        bearer = headers.get("Authorization", "")
        if not bearer.startswith("Bearer ") or not bearer[len("Bearer ") :].strip():
            return "bearer", "request without Authorization: Bearer <key>"
        return "bearer", None

    async def _live(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        if self.refuse_all or self.refuse_next > 0:
            self.refuse_next = max(0, self.refuse_next - 1)
            return web.Response(status=503, text="unavailable\n")
        auth, problem = self._authorize(request)
        if problem is not None:
            self.violations.append(problem)
            return web.json_response(_error_body(problem, code="invalid_api_key"), status=401)
        if request.query_string:
            self.violations.append(
                f"query string on the Live URL: {request.query_string!r} (the model goes in session.start)"
            )
        for header in ("OpenAI-Beta", "OpenAI-Alpha"):
            if header in request.headers:
                self.violations.append(f"{header} header sent (GPT-Live takes none)")
        ws = web.WebSocketResponse(max_msg_size=0, compress=False, timeout=CLOSE_TIMEOUT)
        await ws.prepare(request)
        session = LiveSession(self, ws, request, auth)
        self.sessions.append(session)
        await session.run()
        return ws

    async def _responses(self, request: web.Request) -> web.Response:
        _, problem = self._authorize(request)
        if problem is not None:
            self.violations.append(f"POST /responses: {problem}")
            return web.json_response(_error_body(problem, code="invalid_api_key"), status=401)
        try:
            body = await request.json()
        except ValueError:
            self.violations.append("POST /responses: body is not JSON")
            return web.json_response(
                _error_body("The body is not valid JSON.", code="invalid_json"), status=400
            )
        problems = responses_body_problems(body)
        if problems:
            self.violations += [f"POST /responses: {p}" for p in problems]
            first = problems[0]
            return web.json_response(
                _error_body(first.message, param=first.param, code=first.code), status=400
            )
        self.summary_requests.append(body)
        if self.script.summary_delay:
            await asyncio.sleep(self.script.summary_delay)
        if self.summary_status != 200:
            return web.json_response(
                _error_body("The simulated server had an error.", type_="server_error", code="server_error"),
                status=self.summary_status,
            )
        return web.json_response(self._summary_response(body))

    def _summary_response(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self.script.summary_text
        prompt = estimate_tokens(json.dumps(body.get("input"))) + estimate_tokens(
            str(body.get("instructions") or "")
        )
        usage = make_usage(prompt, 0, estimate_tokens(text), 0)
        self.usage_sent.append(usage)
        response = {
            "id": self.new_id("resp"),
            "object": "response",
            "created_at": float(int(time.time())),
            "status": "completed",
            "model": body["model"],
            "output": [
                {
                    "type": "message",
                    "id": self.new_id("msg"),
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": None,
            "incomplete_details": None,
            "usage": usage,
        }
        if isinstance(body.get("instructions"), str):
            response["instructions"] = body["instructions"]
        self._check_sent_response(response)
        return response

    def _check_sent_response(self, response: dict[str, Any]) -> None:
        if self.validator is None:
            return
        from openai.types.responses import Response

        try:
            parsed = Response.model_validate(response)
        except Exception as exc:  # pydantic.ValidationError
            self.violations.append(f"simulator sent an invalid Response: {str(exc).splitlines()[0]}")
            return
        for path in self.validator.unknown_fields(parsed):
            self.violations.append(f"simulator sent a Response with an unknown field {path}")

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
        """The last billed seconds each session reported, summed, and every reported token count."""
        totals = {
            "seconds": sum(s.seconds_reported for s in self.sessions),
            "input_tokens": 0,
            "cached_tokens": 0,
            "output_tokens": 0,
            "reasoning_tokens": 0,
            "total_tokens": 0,
        }
        for usage in self.usage_sent:
            totals["input_tokens"] += usage["input_tokens"]
            totals["cached_tokens"] += usage["input_tokens_details"]["cached_tokens"]
            totals["output_tokens"] += usage["output_tokens"]
            totals["reasoning_tokens"] += usage["output_tokens_details"]["reasoning_tokens"]
            totals["total_tokens"] += usage["total_tokens"]
        return totals


def _responses_keys() -> frozenset[str] | None:
    try:
        from openai.types.responses import ResponseCreateParams
    except ImportError:
        return None
    return frozenset(k for member in typing.get_args(ResponseCreateParams) for k in member.__annotations__)


def responses_body_problems(body: Any) -> list[Problem]:
    """A Responses API create body: `model` and `input` required, only keys the SDK declares."""
    if not isinstance(body, dict):
        return [Problem("invalid_type", "The body must be a JSON object.")]
    known = _responses_keys()
    found = [
        Problem("unknown_parameter", f"Unknown parameter: '{key}'.", key)
        for key in body
        if known is not None and key not in known
    ]
    found += [
        Problem("missing_required_parameter", f"Missing required parameter: '{key}'.", key)
        for key in ("model", "input")
        if key not in body
    ]
    if body.get("stream"):
        found.append(Problem("invalid_value", "Streaming summaries are not simulated.", "stream"))
    return found


def _error_body(
    message: str, *, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def make_usage(input_tokens: int, cached: int, output_tokens: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def commentary_turn(script: Script, content: str) -> Turn:
    """What a commentary append makes the model say (the heuristic in the module docstring)."""
    if re.search(r'"[^"]+"', content):
        return script.answer("greeting", content)
    if "goodbye" in content.lower():
        return script.farewell
    if "keypad" in content.lower():
        return script.answer(None, None)
    return script.filler


# -- one session -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionCall:
    name: str
    call_id: str
    arguments: dict[str, Any]


@dataclass
class Batch:
    """The function calls of one backend response, waiting for their outputs."""

    delegation_id: str
    calls: list[FunctionCall] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    streaming: bool = True  # the response announcing the calls is still being sent
    create: dict[str, Any] | None = None  # a response.create that came while streaming

    def missing(self) -> list[str]:
        return [c.call_id for c in self.calls if c.call_id not in self.outputs]

    def ends_call(self) -> bool:
        return any(c.name in END_CALL_TOOLS for c in self.calls)


@dataclass
class Utterance:
    """Something the model says: its audio in the session format and the words of its transcript."""

    text: str
    audio: bytes
    fixture: dict[str, Any] | None = None  # the fixture.play event, when this is a fixture
    leading: str = ""  # " " when it follows the previous utterance without a pause
    position: int = 0
    words_sent: int = 0
    fragment_start_ms: int = 0

    @property
    def words(self) -> list[str]:
        return self.text.split()


@dataclass
class CallerTurn:
    number: int
    start_ms: int
    words: list[str]
    fragment_start_ms: int
    words_sent: int = 0
    silent_ms: int = 0
    over_model_ms: int = 0  # caller speech while the model was speaking


class LiveSession:
    """One simulated GPT-Live session (one primary WebSocket)."""

    def __init__(
        self, sim: LiveSimulator, ws: web.WebSocketResponse, request: web.Request, auth: str
    ) -> None:
        self.sim = sim
        self.ws = ws
        self.request = request
        self.auth = auth  # "bearer" or "api-key"
        self.start: dict[str, Any] | None = None  # the accepted session.start event
        self.model: str | None = None
        self.config: dict[str, Any] | None = None  # the resolved session resource
        self.fmt = AudioFormat()
        self.received: list[dict[str, Any]] = []
        # (monotonic time, "in" or "out", event) of every message but audio, for timelines.
        self.timeline: list[tuple[float, str, dict[str, Any]]] = []
        self.audio_received = bytearray()  # every appended byte that reached the model, in order
        self.audio_dropped = 0  # bytes appended before session.started
        self.audio_spoken = bytearray()  # the model's non-silent output, in order
        self.output_frames = 0
        self.input_ms = 0  # the input clock: audio received
        self.clock_ms = 0  # the session timeline: output produced
        self.utterances: list[str] = []  # what the model began to say, in order
        self.interruptions: list[tuple[int, str]] = []  # (timeline ms, text heard so far)
        self.function_calls: list[FunctionCall] = []
        self.function_outputs: dict[str, Any] = {}
        self.continuations: list[str] = []
        self.backend_items: list[dict[str, Any]] = []  # response.item.create items other than outputs
        self.delegations: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []  # the `error` payload of every error sent
        self.seconds_reported = 0  # the last cumulative usage seconds sent
        self.caller_turns = 0
        self.closed_reason: str | None = None
        self.close_code: int | None = None
        self._muted = False
        self._carry = b""
        self._voiced_run = 0
        self._caller: CallerTurn | None = None
        self._current: Utterance | None = None
        self._speech_end_ms = 0
        self._queue: collections.deque[Utterance] = collections.deque()
        self._scheduled: list[tuple[int, int, Callable[[], Awaitable[None]]]] = []
        self._order = itertools.count()
        self._pending_appends: list[dict[str, Any]] = []
        self._client_delegations: set[str] = set()
        self._batch: Batch | None = None
        self._backend: asyncio.Task[None] | None = None
        self._answered = False
        self._backend_responses = 0
        self._usage_reports = 0
        self._appends = 0
        self._finishing = False
        self._starting = False  # session.start accepted, its answer delayed
        self._frozen = False
        self._input_moved = asyncio.Event()
        self._changed = asyncio.Event()  # the pacer ticked, froze, or backend work ended
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pacer: asyncio.Task[None] | None = None
        self._finisher: asyncio.Task[None] | None = None

    # -- plumbing

    async def run(self) -> None:
        try:
            async for message in self.ws:
                if message.type == WSMsgType.TEXT:
                    await self._on_raw(message.data)
                elif message.type == WSMsgType.BINARY:
                    self.sim.violations.append("client sent a binary frame (events are JSON text)")
                    await self.error("invalid_json", "Events must be JSON text frames.")
        finally:
            if self._finisher is not None:
                await asyncio.wait({self._finisher}, timeout=DRAIN_SECONDS + 2 * CLOSE_TIMEOUT)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.close_code is None:
                self.close_code = self.ws.close_code

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("live simulator task failed", exc_info=task.exception())

    def drop(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def _close(self, code: int) -> None:
        self.close_code = code
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=code)

    async def emit(self, type_: str, **fields: Any) -> None:
        await self._send({"type": type_, "event_id": self.sim.new_id("event"), **fields})

    async def _send(self, event: dict[str, Any]) -> None:
        if event["type"] != OUTPUT_AUDIO:
            self.timeline.append((time.monotonic(), "out", event))
        if self.sim.validate_server and self.sim.validator is not None:
            for problem in self.sim.validator.problems(event, "server"):
                self.sim.violations.append(f"simulator sent an invalid event: {problem}")
        if self.ws.closed:
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                async with self._send_lock:
                    await self.ws.send_str(json.dumps(event))
        except ConnectionError:
            pass
        except TimeoutError:
            log.warning("live simulator: the client does not read; dropping the connection")
            self.drop()

    async def error(
        self,
        code: str,
        message: str,
        client_event_id: str | None = None,
        param: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        body: dict[str, Any] = {"type": type_, "code": code, "message": message}
        if param is not None:
            body["param"] = param
        if client_event_id is not None:
            body["client_event_id"] = client_event_id
        self.errors.append(body)
        top = {"client_event_id": client_event_id} if client_event_id is not None else {}
        await self.emit("error", **top, error=body)

    async def refuse(self, event: dict[str, Any], code: str, message: str, param: str | None = None) -> None:
        """Answer a client event the connector should not have sent: an error and a violation."""
        self.sim.violations.append(f"{event.get('type')}: {message} ({code})")
        await self.error(code, message, event.get("event_id"), param)

    def _acked(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"client_event_id": event["event_id"]} if event.get("event_id") is not None else {}

    def _to_validate(self, event: dict[str, Any]) -> bool:
        if event.get("type") != INPUT_AUDIO:
            return True
        self._appends += 1
        return (self._appends - 1) % self.sim.check_appends_every == 0

    async def _on_raw(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            self.sim.violations.append("client sent a frame that is not JSON")
            await self.error("invalid_json", "The server could not parse the event as JSON.")
            return
        kind = event.get("type") if isinstance(event, dict) else None
        if self.sim.keep_audio or kind != INPUT_AUDIO:
            self.received.append(event)
        if kind != INPUT_AUDIO:
            self.timeline.append((time.monotonic(), "in", event))
        if self.sim.drop_on is not None and self.sim.drop_on(event):
            self.drop()
            return
        if self.sim.validator is not None and self._to_validate(event):
            problems = self.sim.validator.check(event)
            if problems:
                self.sim.violations += [f"{kind}: {p}" for p in problems]
                first = problems[0]
                message = "; ".join(p.message for p in problems)[:500]
                await self.error(first.code, message, _event_id(event), first.param)
                return
        if not isinstance(event, dict):
            await self.error("invalid_type", "The event is not a JSON object.")
            return
        if self.config is None and kind != "session.start":
            await self._before_start(event)
            return
        handler = getattr(self, "on_" + str(kind).replace(".", "_"), None)
        if handler is None:
            await self.refuse(event, "invalid_value", f"Unsupported event type {kind!r}.", "type")
            return
        await handler(event)

    async def _before_start(self, event: dict[str, Any]) -> None:
        if event.get("type") == INPUT_AUDIO:
            self.audio_dropped += len(decode_base64(event.get("audio", "")) or b"")
        await self.refuse(
            event, "session_not_started", "Send session.start and wait for session.started first."
        )

    # -- session

    async def on_session_start(self, event: dict[str, Any]) -> None:
        if self.config is not None or self._starting:
            await self.refuse(event, "session_already_started", "The session has already started.")
            return
        session = event["session"]
        voice = ((session.get("audio") or {}).get("output") or {}).get("voice")
        if isinstance(voice, str) and self.sim.voices is not None and voice not in self.sim.voices:
            await self.refuse(
                event, "invalid_value", f"Invalid voice {voice!r}.", "session.audio.output.voice"
            )
            return
        self.start = event
        self.model = session["model"]
        if self.sim.start_delay:
            # A slow start: until session.started, every other event is refused (`_before_start`).
            self._starting = True
            self._spawn(self._answer_start_later(event))
            return
        await self._answer_start(event)

    async def _answer_start_later(self, event: dict[str, Any]) -> None:
        await asyncio.sleep(self.sim.start_delay)
        self._starting = False
        await self._answer_start(event)

    async def _answer_start(self, event: dict[str, Any]) -> None:
        session = event["session"]
        if self.sim.start_error is not None:
            await self._fatal(self.sim.start_error, event.get("event_id"))
            await self._close(1008)
            return
        fmt = (session.get("audio") or {}).get("format") or {}
        self.fmt = AudioFormat(fmt.get("type", "audio/pcm"), int(fmt.get("rate", 24_000)))
        self.config = self._resolve(session)
        await self.emit("session.started", **self._acked(event), session=self.config)
        if self.sim.error_after_start is not None:
            await self._fatal(self.sim.error_after_start, None)
            await self._close(1011)
            return
        self._pacer = self._spawn(self._pace())
        self._spawn(self._expire())

    def _resolve(self, session: dict[str, Any]) -> dict[str, Any]:
        given = json.loads(json.dumps(session))  # a private copy
        audio = given.get("audio") or {}
        resolved: dict[str, Any] = {
            "id": self.sim.new_id("live"),
            "expires_at": int(time.time() + self.sim.session_seconds),
            "status": "active",
            "model": given["model"],
            "instructions": given.get("instructions") or "",
            "audio": {
                "output": {"voice": (audio.get("output") or {}).get("voice") or "marin"},
                "format": self.sim.force_format
                or audio.get("format")
                or {"type": "audio/pcm", "rate": 24_000},
            },
            "delegation": given.get("delegation") or {"type": "client"},
            "input": given.get("input") or [],
        }
        for tool in (resolved["delegation"].get("responses") or {}).get("tools") or []:
            tool.pop("authorization", None)  # MCP credentials are never echoed
        for key in ("store", "safety_identifier", "triggers", "client"):
            if given.get(key) is not None:
                resolved[key] = given[key]
        return resolved

    def _delegation_type(self) -> str:
        assert self.config is not None
        return self.config["delegation"]["type"]

    async def _fatal(self, code: str, client_event_id: str | None) -> None:
        type_, message = FATAL_ERRORS.get(code, ("invalid_request_error", f"Simulated failure: {code}."))
        await self.error(code, message, client_event_id, type_=type_)

    async def on_session_update(self, event: dict[str, Any]) -> None:
        assert self.config is not None
        update = event["session"]
        if "delegation" in update:
            wanted = update["delegation"]
            if wanted is None or wanted.get("type") != self._delegation_type():
                await self.refuse(
                    event,
                    "immutable_field_update",
                    "The delegation type cannot change after session.start.",
                    "session.delegation.type",
                )
                return
            current = self.config["delegation"]
            for key, value in wanted.items():
                if isinstance(value, dict) and isinstance(current.get(key), dict):
                    current[key].update(value)
                else:
                    current[key] = value
        if update.get("triggers") is not None:
            self.config["triggers"] = update["triggers"]
        await self.emit("session.updated", **self._acked(event), session=self.config)

    async def on_session_close(self, event: dict[str, Any]) -> None:
        if self._finisher is None:
            self._finisher = self._spawn(self._finish("close_requested", event.get("event_id")))

    async def _expire(self) -> None:
        await asyncio.sleep(self.sim.session_seconds)
        if self._finisher is None:
            self._finisher = self._spawn(self._finish("expired", None))

    async def _finish(self, reason: str, client_event_id: str | None) -> None:
        """Stop speaking, drain backend work and placements (≤ 10 s), report, close 1000."""
        assert self.config is not None
        self._finishing = True
        self._current = None
        self._queue.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                await self._drained()
        if self._pacer is not None:
            self._pacer.cancel()
            await asyncio.gather(self._pacer, return_exceptions=True)
        for append in self._pending_appends:
            self.sim.violations.append(f"{append['type']}: never placed on the timeline (input stopped)")
            await self.error(
                "context_injection_incomplete",
                f"{append['type']} was not placed on the timeline before the session closed.",
                append.get("event_id"),
            )
        self._pending_appends.clear()
        seconds = self._seconds()
        await self.emit("session.usage.updated", usage={"seconds": seconds}, context_window=self._context())
        self.seconds_reported = seconds
        top = {"client_event_id": client_event_id} if client_event_id is not None else {}
        await self.emit(
            "session.closed", **top, reason=reason, session=self.config, usage={"seconds": seconds}
        )
        self.closed_reason = reason
        await self._close(1000)

    async def _drained(self) -> None:
        while self._backend_busy() or self._pending_appends:
            if self._frozen and not self._backend_busy():
                return  # appends cannot be placed while the timeline stands still
            self._changed.clear()
            await self._changed.wait()

    def _backend_busy(self) -> bool:
        return self._backend is not None and not self._backend.done()

    # -- input audio, turn taking, barge-in

    async def on_session_input_audio_append(self, event: dict[str, Any]) -> None:
        audio = decode_base64(event["audio"])
        if audio is None:
            await self.refuse(event, "invalid_value", "Invalid base64 audio.", "audio")
            return
        if self.sim.keep_audio:
            self.audio_received += audio
        data = self._carry + audio
        size = self.fmt.bytes_for(WINDOW_MS)
        whole = len(data) - len(data) % size
        self._carry = data[whole:]
        for start in range(0, whole, size):
            await self._hear(data[start : start + size])
        self._input_moved.set()

    async def _hear(self, window: bytes) -> None:
        heard = not self._muted and not self._fixture_playing()
        voiced = heard and self.fmt.level(window) > SPEECH_RMS
        self.input_ms += WINDOW_MS
        turn = self._caller
        if turn is None:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= SPEECH_WINDOWS_TO_START:
                self._begin_caller_turn(self.input_ms - SPEECH_WINDOWS_TO_START * WINDOW_MS)
            return
        turn.silent_ms = 0 if voiced else turn.silent_ms + WINDOW_MS
        if voiced and self._current is not None:
            turn.over_model_ms += WINDOW_MS
            if turn.over_model_ms >= BARGE_IN_MS:
                self._barge_in()
        if (
            voiced
            and self.input_ms - turn.fragment_start_ms >= INPUT_WORD_MS
            and turn.words_sent < len(turn.words)
        ):
            self._input_fragment(turn, turn.words_sent + 1, self.input_ms)
        if turn.silent_ms >= END_OF_TURN_MS:
            self._end_caller_turn(turn, self.input_ms - turn.silent_ms)

    def _begin_caller_turn(self, start_ms: int) -> None:
        self.caller_turns += 1
        scripted = self.sim.script.caller_transcripts
        text = scripted.pop(0) if scripted else f"This is what the caller said in turn {self.caller_turns}."
        self._caller = CallerTurn(self.caller_turns, start_ms, text.split(), fragment_start_ms=start_ms)
        if self._current is not None:
            self._caller.over_model_ms = SPEECH_WINDOWS_TO_START * WINDOW_MS

    def _input_fragment(self, turn: CallerTurn, upto: int, end_ms: int) -> None:
        text = " ".join(turn.words[turn.words_sent : upto])
        delta = f" {text}" if turn.words_sent else text
        start_ms = turn.fragment_start_ms
        turn.words_sent = upto
        turn.fragment_start_ms = end_ms

        async def send() -> None:
            await self.emit("session.input_transcript.delta", delta=delta, start_ms=start_ms, end_ms=end_ms)

        self._schedule(max(self.clock_ms, end_ms) + INPUT_TRANSCRIPT_DELAY_MS, send)

    def _end_caller_turn(self, turn: CallerTurn, speech_end_ms: int) -> None:
        if turn.words_sent < len(turn.words):
            self._input_fragment(turn, len(turn.words), max(speech_end_ms, turn.fragment_start_ms))
        self._caller = None
        self._voiced_run = 0
        self._schedule(max(self.clock_ms, self.input_ms) + ANSWER_DELAY_MS, self._answer_caller)

    def _barge_in(self) -> None:
        """The model stops by itself; nothing tells the client (spec §8)."""
        assert self._current is not None
        heard = " ".join(self._current.words[: self._current.words_sent])
        self.interruptions.append((self.clock_ms, heard))
        self._current = None
        self._queue.clear()

    def _fixture_playing(self) -> bool:
        return self._current is not None and self._current.fixture is not None

    def _idle(self) -> bool:
        return (
            self._current is None
            and not self._queue
            and self._caller is None
            and self._batch is None
            and not self._backend_busy()
            and not self._finishing
        )

    async def _answer_caller(self) -> None:
        if not self._idle():
            return
        turn = self.sim.script.answer(None, None, first=not self._answered)
        self._answered = True
        await self._answer(turn)

    async def _answer(self, turn: Turn) -> None:
        if turn.function_calls():
            await self._delegate(turn)
        else:
            self._speak(turn)

    def _speak(self, turn: Turn) -> None:
        """A turn and its further parts (`more`), said one after another."""
        for part in [turn, *(turn.more or [])]:
            self._say(part.say or "", part.audio_seconds())

    async def on_session_input_audio_mute(self, event: dict[str, Any]) -> None:
        self._muted = True
        await self.emit("session.input_audio.muted", **self._acked(event))

    async def on_session_input_audio_unmute(self, event: dict[str, Any]) -> None:
        self._muted = False
        await self.emit("session.input_audio.unmuted", **self._acked(event))

    # -- output: the pacer, speech and transcripts

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if self.clock_ms + FRAME_MS > self.input_ms + LEAD_MS:
                self._frozen = True
                self._changed.set()
                self._input_moved.clear()
                await self._input_moved.wait()
                self._frozen = False
                due = loop.time()  # no burst of the frames a freeze held back
                continue
            await self._tick()
            self._changed.set()
            due += FRAME_MS / 1000
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -MAX_CATCH_UP_S:
                due = loop.time()

    async def _tick(self) -> None:
        frame = self._next_frame()
        await self._send({"type": OUTPUT_AUDIO, "delta": base64.b64encode(frame).decode()})
        self.output_frames += 1
        self.clock_ms += FRAME_MS
        await self._transcribe_output()
        while self._scheduled and self._scheduled[0][0] <= self.clock_ms:
            _, _, action = heapq.heappop(self._scheduled)
            await action()
        if self.clock_ms // USAGE_EVERY_MS > self._usage_reports:
            self._usage_reports = self.clock_ms // USAGE_EVERY_MS
            self.seconds_reported = self._seconds()
            await self.emit(
                "session.usage.updated",
                usage={"seconds": self.seconds_reported},
                context_window=self._context(),
            )

    def _next_frame(self) -> bytes:
        size = self.fmt.bytes_for(FRAME_MS)
        if self._current is None and self._queue:
            self._current = self._queue.popleft()
            if self._speech_end_ms == self.clock_ms and self.clock_ms:
                self._current.leading = " "
            self._current.fragment_start_ms = self.clock_ms
            if self._current.fixture is None:
                self.utterances.append(self._current.text)
        speech = self._current
        if speech is None:
            return self.fmt.silence(FRAME_MS)
        chunk = speech.audio[speech.position : speech.position + size]
        speech.position += len(chunk)
        if self.sim.keep_audio:
            self.audio_spoken += chunk
        return chunk + self.fmt.silence(FRAME_MS)[len(chunk) :]

    async def _transcribe_output(self) -> None:
        speech = self._current
        if speech is None:
            return
        done = speech.position >= len(speech.audio)
        if not done and self.clock_ms - speech.fragment_start_ms < OUTPUT_FRAGMENT_MS:
            return
        words = speech.words
        due = len(words) if done else round(len(words) * speech.position / len(speech.audio))
        if due > speech.words_sent:
            text = " ".join(words[speech.words_sent : due])
            await self.emit(
                "session.output_transcript.delta",
                delta=f" {text}" if speech.words_sent else speech.leading + text,
                start_ms=speech.fragment_start_ms,
                end_ms=self.clock_ms,
            )
            speech.words_sent = due
        speech.fragment_start_ms = self.clock_ms
        if done:
            self._current = None
            self._speech_end_ms = self.clock_ms
            if speech.fixture is not None:
                await self.emit("session.output_audio.fixture.played", **self._acked(speech.fixture))

    def _say(self, text: str, seconds: float) -> None:
        if self._finishing:
            return
        if len(self._queue) >= MAX_QUEUED_SPEECH:
            log.warning("live simulator: too much queued speech; %r is not said", text)
            return
        self._queue.append(Utterance(text, self.fmt.from_pcmu(self._speech(seconds, text))))

    def _speech(self, seconds: float, text: str = "") -> bytes:
        if self.sim.speak_words and text:
            spoken = speech.synthesize(text)  # cached; only the demo and the command voice words
            if spoken:
                return spoken
        size = int(seconds * 8000)
        if self.sim.bot_audio:
            source = self.sim.bot_audio
            start = self.sim.rng.randrange(max(1, len(source) - size)) if len(source) > size else 0
            return (source * (size // max(1, len(source)) + 1))[start : start + size]
        return speech_like(round(seconds, 2), seed=self.sim.rng.randrange(4))[:size]

    def _schedule(self, due_ms: int, action: Callable[[], Awaitable[None]]) -> None:
        if len(self._scheduled) >= MAX_SCHEDULED:
            log.warning("live simulator: too much scheduled work; an action is dropped")
            return
        heapq.heappush(self._scheduled, (due_ms, next(self._order), action))

    def _seconds(self) -> int:
        return round(self.clock_ms / 1000)

    def _context(self) -> dict[str, float]:
        used = 0.002 + 0.0004 * self._seconds() + 0.001 * (len(self.function_calls) + len(self.utterances))
        return {"usage_ratio": round(min(used, 0.95), 4)}

    async def on_session_output_audio_fixture_play(self, event: dict[str, Any]) -> None:
        if self._fixture_playing():
            await self.refuse(event, "fixture_active", "Only one audio fixture can play at a time.")
            return
        pcm = decode_base64(event["audio"]) or b""
        self._queue.clear()
        self._current = Utterance(
            "", self.fmt.from_pcm24k(pcm), fixture=event, fragment_start_ms=self.clock_ms
        )
        await self.emit("session.output_audio.fixture.playing", **self._acked(event))

    # -- appends

    async def on_session_instructions_append(self, event: dict[str, Any]) -> None:
        await self._append(event)

    async def on_session_thinking_append(self, event: dict[str, Any]) -> None:
        await self._append(event)

    async def on_session_commentary_append(self, event: dict[str, Any]) -> None:
        await self._append(event)

    async def _append(self, event: dict[str, Any]) -> None:
        delegation_id = event.get("delegation_id")
        if delegation_id is not None and self._delegation_type() == "responses":
            await self.refuse(
                event,
                "invalid_value",
                "Non-null delegation_id is not accepted with Responses delegation.",
                "delegation_id",
            )
            return
        if delegation_id is not None and delegation_id not in self._client_delegations:
            await self.refuse(
                event, "invalid_value", f"Unknown delegation {delegation_id!r}.", "delegation_id"
            )
            return
        if self._fixture_playing():
            await self.refuse(event, "fixture_active", "Context appends are rejected while a fixture plays.")
            return
        if len(self._pending_appends) >= MAX_PENDING_APPENDS:
            await self.refuse(event, "too_many_pending_appends", "Too many appends wait for placement.")
            return
        self._pending_appends.append(event)

        async def place() -> None:
            await self._place(event)

        self._schedule(self.clock_ms + PLACEMENT_MS, place)

    async def _place(self, event: dict[str, Any]) -> None:
        if not any(pending is event for pending in self._pending_appends):
            return
        self._pending_appends = [pending for pending in self._pending_appends if pending is not event]
        acked = event["type"].removesuffix(".append") + ".appended"
        start = max(0, self.clock_ms - OUTPUT_FRAGMENT_MS)
        await self.emit(acked, **self._acked(event), start_ms=start, end_ms=self.clock_ms)
        if event["type"] != "session.commentary.append" or self._finishing:
            return
        if event.get("delegation_id") is not None:
            self._say(event["content"], max(0.6, len(event["content"]) / 14))
            return
        await self._answer(commentary_turn(self.sim.script, event["content"]))

    # -- delegation and the Responses backend

    async def _delegate(self, turn: Turn) -> None:
        if self.sim.acknowledgement:
            ack = Turn(say=self.sim.acknowledgement)
            self._say(ack.say or "", ack.audio_seconds())
        target = self._delegation_type()
        delegation: dict[str, Any] = {"id": self.sim.new_id("dlg"), "type": "delegation", "target": target}
        if target == "responses":
            delegation["response_id"] = self.sim.new_id("resp")
        else:
            self._client_delegations.add(delegation["id"])
        self.delegations.append(delegation)
        await self.emit("session.delegation.created", delegation=delegation, offset_ms=self.clock_ms)
        if target == "responses":
            self._backend = self._spawn(
                self._backend_calls(delegation["id"], delegation["response_id"], turn)
            )

    def _backend_model(self) -> str:
        assert self.config is not None
        return str(self.config["delegation"]["responses"]["model"])

    def _snapshot(self, response_id: str, status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
        """A lifecycle snapshot: input, instructions, tools and output cleared, as the service does."""
        body: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": float(int(time.time())),
            "status": status,
            "model": self._backend_model(),
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": None,
            "incomplete_details": None,
        }
        if usage is not None:
            body["usage"] = usage
        return body

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        assert self.config is not None
        context = 120 + estimate_tokens(self.config["instructions"]) + 20 * len(self.function_outputs)
        cached = context // 2 if self._backend_responses else 0
        self._backend_responses += 1
        usage = make_usage(context, cached, output_tokens + 8, 8)
        self.sim.usage_sent.append(usage)
        return usage

    async def _nested(self, delegation_id: str | None, event: dict[str, Any]) -> None:
        await self.emit("response.event", delegation_id=delegation_id, event=event)

    async def _backend_calls(self, delegation_id: str, response_id: str, turn: Turn) -> None:
        """A backend response that asks for function calls; the batch waits for their outputs."""
        await asyncio.sleep(self.sim.backend_delay)
        batch = self._batch = Batch(delegation_id)
        seq = itertools.count()
        await self._nested(
            delegation_id,
            {
                "type": "response.created",
                "sequence_number": next(seq),
                "response": self._snapshot(response_id, "in_progress", None),
            },
        )
        await asyncio.sleep(self.sim.backend_reasoning)
        produced = 0
        for index, (name, arguments) in enumerate(turn.function_calls()):
            call = FunctionCall(name, self.sim.new_id("call"), arguments)
            item_id = self.sim.new_id("fc")
            encoded = json.dumps(arguments)
            produced += estimate_tokens(encoded)
            item = {
                "type": "function_call",
                "id": item_id,
                "call_id": call.call_id,
                "name": name,
                "arguments": "",
            }
            ids = {"item_id": item_id, "output_index": index}
            await self._nested(
                delegation_id,
                {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": index,
                    "item": {**item, "status": "in_progress"},
                },
            )
            await self._nested(
                delegation_id,
                {
                    "type": "response.function_call_arguments.delta",
                    "sequence_number": next(seq),
                    **ids,
                    "delta": encoded,
                },
            )
            await self._nested(
                delegation_id,
                {
                    "type": "response.function_call_arguments.done",
                    "sequence_number": next(seq),
                    **ids,
                    "arguments": encoded,
                },
            )
            batch.calls.append(call)
            self.function_calls.append(call)
            await self._nested(
                delegation_id,
                {
                    "type": "response.output_item.done",
                    "sequence_number": next(seq),
                    "output_index": index,
                    "item": {**item, "arguments": encoded, "status": "completed"},
                },
            )
        await self._nested(
            delegation_id,
            {
                "type": "response.completed",
                "sequence_number": next(seq),
                "response": self._snapshot(response_id, "completed", self._usage(produced)),
            },
        )
        batch.streaming = False
        self._changed.set()
        if batch.create is not None:
            await self._continue_batch(batch.create)

    async def on_response_item_create(self, event: dict[str, Any]) -> None:
        if self._delegation_type() != "responses":
            await self.refuse(
                event, "unsupported_for_delegation", "response.item.create requires Responses delegation."
            )
            return
        item = event["item"]
        if item.get("type") != "function_call_output":
            self.backend_items.append(item)
            return
        call_id = item.get("call_id")
        batch = self._batch
        if batch is None or call_id not in {c.call_id for c in batch.calls}:
            await self.refuse(
                event,
                "invalid_value",
                f"No function call {call_id!r} is waiting for an output.",
                "item.call_id",
            )
            return
        if call_id in batch.outputs:
            await self.refuse(
                event, "invalid_value", f"Function call {call_id!r} already has an output.", "item.call_id"
            )
            return
        batch.outputs[call_id] = item.get("output")
        self.function_outputs[call_id] = item.get("output")

    async def on_response_create(self, event: dict[str, Any]) -> None:
        if self._delegation_type() != "responses":
            await self.refuse(
                event, "unsupported_for_delegation", "response.create requires Responses delegation."
            )
            return
        batch = self._batch
        if batch is not None and batch.streaming:
            batch.create = event  # answered when the response announcing the calls is complete
            return
        if self._backend_busy():
            await self.refuse(event, "response_in_progress", "A backend response is already in progress.")
            return
        if batch is None:  # application-initiated (spec §9 step 5)
            self._backend = self._spawn(self._continuation(None, ends_call=False))
            return
        await self._continue_batch(event)

    async def _continue_batch(self, event: dict[str, Any]) -> None:
        batch = self._batch
        assert batch is not None
        batch.create = None
        missing = batch.missing()
        if missing:
            await self.refuse(
                event,
                "function_call_outputs_required",
                f"Every function call needs an output before response.create; missing: {', '.join(missing)}.",
            )
            return
        self._batch = None
        self._backend = self._spawn(self._continuation(batch.delegation_id, batch.ends_call()))

    async def _continuation(self, delegation_id: str | None, ends_call: bool) -> None:
        """The backend's answer once the tool results are in; the live model speaks it."""
        await asyncio.sleep(self.sim.backend_delay)
        turn = self.sim.script.farewell if ends_call else self.sim.script.answer(None, None)
        response_id = self.sim.new_id("resp")
        if turn.function_calls() and delegation_id is not None:
            await self._backend_calls(delegation_id, response_id, turn)
            return
        text = " ".join(part.say or "" for part in [turn, *(turn.more or [])])
        seq = itertools.count()
        item_id = self.sim.new_id("msg")
        message = {"type": "message", "id": item_id, "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        ids = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events = [
            {"type": "response.created", "response": self._snapshot(response_id, "in_progress", None)},
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**message, "status": "in_progress"},
            },
            {"type": "response.content_part.added", **ids, "part": part},
            {"type": "response.output_text.delta", **ids, "delta": text, "logprobs": []},
            {"type": "response.output_text.done", **ids, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **ids, "part": {**part, "text": text}},
            {
                "type": "response.output_item.done",
                "output_index": 0,
                "item": {**message, "status": "completed", "content": [{**part, "text": text}]},
            },
            {
                "type": "response.completed",
                "response": self._snapshot(response_id, "completed", self._usage(estimate_tokens(text))),
            },
        ]
        for event in events:
            await self._nested(delegation_id, {**event, "sequence_number": next(seq)})
            if event["type"] == "response.created":
                await asyncio.sleep(self.sim.backend_reasoning)
        self.continuations.append(text)
        self._speak(turn)
        self._changed.set()

    # -- Decisions are not simulated

    async def on_decision_create(self, event: dict[str, Any]) -> None:
        await self.refuse(event, "unsupported_for_delegation", "Decisions are not simulated.")

    async def on_decision_item_create(self, event: dict[str, Any]) -> None:
        await self.refuse(event, "unsupported_for_delegation", "Decisions are not simulated.")

    async def on_decision_item_delete(self, event: dict[str, Any]) -> None:
        await self.refuse(event, "unsupported_for_delegation", "Decisions are not simulated.")


def _event_id(event: Any) -> str | None:
    return event.get("event_id") if isinstance(event, dict) else None


# -- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A local OpenAI GPT-Live stand-in for trying the connector.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8082)
    p.add_argument("--wav", help="speak slices of this WAV instead of generated speech-like audio")
    p.add_argument("--session-seconds", type=float, default=3600.0, help="session time limit (default 3600)")
    p.add_argument("--acknowledgement", help="what the model says when it delegates (default: nothing)")
    p.add_argument(
        "--speak", action="store_true", help="voice the answers' words with eSpeak NG when it is installed"
    )
    return p


async def _serve(args: argparse.Namespace) -> None:
    sim = LiveSimulator(
        strict=False,
        session_seconds=args.session_seconds,
        bot_audio=read_wav(args.wav) if args.wav else None,
        acknowledgement=args.acknowledgement,
        speak_words=args.speak,
    )
    await sim.start(args.host, args.port)
    print(
        f"GPT-Live simulator on {sim.url}  (set OPENAI_LIVE_URL to it; "
        f"OPENAI_API_BASE_URL={sim.api_base_url})",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
