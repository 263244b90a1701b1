"""The Gemini Live backend (BidiGenerateContent over one WebSocket per connection, raw JSON).

What is here speaks the Live protocol and nothing else (gemini-live.md): the `setup` shape, the
client messages, the transcoding both ways (`transcoding.py`), and `GeminiSession`, which turns
one connection's server messages into the call core's typed events (`model_backend`) and the
core's commands into client messages. What a call *does* (barge-in on the Genesys side, tools,
the ending, limits, reconnecting) is the core's, in `call_bridge.py`.

Gemini differs from the Realtime API where the core can see it only through `Capabilities`: no
truncation (the server assumes real-time playback), no caller speech events (`interrupted` is the
one barge-in signal), tool results that can be silent (`scheduling`), the farewell as the model's
own continuation of `end_conversation_*`, and the summary as a separate `generateContent` call.
A connection lives about ten minutes: `goAway` announces its end, and the session is resumed on a
new connection from the latest resumable handle (`handover`), or started afresh with the
conversation so far when there is none or the service refuses it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from websockets.exceptions import ConnectionClosed, InvalidStatus

from call_control import CALL_CONTROL_NAMES, SUMMARY_INSTRUCTIONS, summary_json
from metrics import Metrics
from model_backend import (
    BotAudio,
    BotText,
    CallerTurn,
    CallSpec,
    Capabilities,
    Event,
    EventSink,
    FarewellDone,
    Interrupted,
    ModelFailed,
    ModelRefused,
    Ready,
    SessionEnd,
    SessionStart,
    ToolCall,
    ToolCancelled,
    Usage,
    UsageReport,
    Utterance,
    UtteranceDone,
    UtteranceStarted,
)
from model_backend import peer_count as _count
from model_backend import peer_field as _field
from model_socket import ModelSocket
from text_api import TextApi, TextApiError
from transcoding import CallerToGemini, GeminiToCaller
from utils import audioop

log = logging.getLogger("gemini")

INPUT_MIME = "audio/pcm;rate=16000"
OUTPUT_MIME = re.compile(r"audio/pcm;\s*rate=24000")
BLOCKING = "BLOCKING"
NON_BLOCKING = "NON_BLOCKING"
HEALTHY_AFTER_SECONDS = 3.0  # a confirmed connection alive this long has proved the outage over
MAX_EARLY_AUDIO_BYTES = 12 * 32_000  # PCM16 16 kHz held until `setupComplete` (the core keeps 10 s)
MAX_AUDIO_MESSAGE_BYTES = 6_400  # 200 ms of PCM16 16 kHz per realtimeInput.audio
SPEECH_RMS = 600  # PCM16 level of caller speech (the core's and the simulators' level)
CALLER_QUIET_SECONDS = 1.0  # no caller speech for this long: not mid-utterance
RECYCLE_MARGIN_SECONDS = 2.0  # close a connection this long before goAway's timeLeft runs out
RECYCLE_POLL_SECONDS = 0.1  # how often a connection past goAway checks for a quiet moment
DEFAULT_TIME_LEFT = 10.0  # a goAway without (a readable) timeLeft
RESUME_ATTEMPTS = 3  # connections in a row closed before resuming one handle: then start afresh
# The turn that made the call-control call spoke before it and ended after audio that may have
# been the rest of that speech: a turn starting within this long is the farewell.
FAREWELL_NEXT_TURN_SECONDS = 1.5
# Sliding-window compression keeps calls over 15 minutes going (gemini-live.md §10).
COMPRESSION = {"triggerTokens": 25_600, "slidingWindow": {"targetTokens": 12_800}}
HISTORY_TURNS = 64  # of the conversation so far, in a fresh replacement session's instructions
HISTORY_CHARS = 12_000
MAX_TEXT_CHARS = 4_000  # of one utterance's or caller turn's transcription
CALLS_REMEMBERED = 256  # answered and cancelled call ids: a repeated id never runs twice
SUMMARY_TIMEOUT = 10.0
NUDGE = {"realtimeInput": {"text": " "}}  # 3.x runs inference on clientContent at the next input
MODEL_NOT_FOUND = re.compile(r"is not found for API version|not supported for bidiGenerateContent", re.I)
QUOTA_WORDS = ("quota", "resource_exhausted", "resource has been exhausted")
DURATION = re.compile(r"(\d+(?:\.\d*)?)s")
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")


# -- setup ---------------------------------------------------------------------------------------


def behavior(tool_name: str) -> str:
    """Call control holds the model until it is answered; Data Actions leave it free to talk
    (a holding phrase) while they run. New input cancels a pending BLOCKING call on 3.8, but none
    can come between: the core answers call control inside the `ToolCall` dispatch."""
    return BLOCKING if tool_name in CALL_CONTROL_NAMES else NON_BLOCKING


def language_code(language: str | None) -> str | None:
    """A BCP-47 tag as Gemini wants it (`es-es` -> `es-ES`), or None when it is not one."""
    if not language:
        return None
    subtags = language.strip().split("-")
    tag = "-".join(
        [subtags[0].lower()]
        + [s.upper() if len(s) == 2 else s.title() if len(s) == 4 else s for s in subtags[1:]]
    )
    return tag if LANGUAGE_CODE.fullmatch(tag) else None


def with_history(instructions: str, history: tuple[tuple[str, str], ...]) -> str:
    """The instructions of a fresh session that replaces a lost one, with the newest turns of
    the conversation so far (a handle would have restored them)."""
    lines: list[str] = []
    size = 0
    for role, text in reversed(history[-HISTORY_TURNS:]):
        line = f"{'Caller' if role == 'user' else 'Assistant'}: {text}"
        size += len(line) + 1
        if size > HISTORY_CHARS:
            break
        lines.append(line)
    if not lines:
        return instructions
    return (
        f"{instructions}\n\n# The conversation so far\nThe connection was replaced during the call. "
        "This is what was said, oldest first; go on from it and do not greet the caller again.\n"
        + "\n".join(reversed(lines))
    )


def setup_message(start: SessionStart, model: str, resume: str | None) -> dict[str, Any]:
    """The `setup` (camelCase, every field the Gemini API takes for this call)."""
    spec, call = start.spec, start.spec.call
    speech: dict[str, Any] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": call.gemini_voice}}}
    code = language_code(call.language)
    if code is not None:
        speech["languageCode"] = code
    declarations = [
        {
            "name": tool.name,
            "description": tool.description,
            "parametersJsonSchema": tool.parameters,
            "behavior": behavior(tool.name),
        }
        for tool in spec.tools
    ]
    setup: dict[str, Any] = {
        "model": f"models/{model}",
        "generationConfig": {"responseModalities": ["AUDIO"], "speechConfig": speech},
        "systemInstruction": {
            "parts": [
                {"text": spec.instructions if resume else with_history(spec.instructions, start.history)}
            ]
        },
        "realtimeInputConfig": {
            "automaticActivityDetection": {
                "startOfSpeechSensitivity": f"START_SENSITIVITY_{call.gemini_vad_start.upper()}",
                "endOfSpeechSensitivity": f"END_SENSITIVITY_{call.gemini_vad_end.upper()}",
                "prefixPaddingMs": call.gemini_vad_prefix_padding_ms,
                "silenceDurationMs": call.gemini_vad_silence_ms,
            }
        },
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
        "sessionResumption": {"handle": resume} if resume else {},
        "contextWindowCompression": COMPRESSION,
    }
    if declarations:
        setup["tools"] = [{"functionDeclarations": declarations}]
    return {"setup": setup}


# -- client messages -----------------------------------------------------------------------------


def audio_message(pcm: bytes) -> str:
    """`realtimeInput.audio`, serialized directly: this runs for every caller frame."""
    data = base64.b64encode(pcm).decode()
    return '{"realtimeInput":{"audio":{"mimeType":"' + INPUT_MIME + '","data":"' + data + '"}}}'


def text_message(text: str) -> dict[str, Any]:
    return {"realtimeInput": {"text": text}}


def user_turn(text: str) -> dict[str, Any]:
    return {"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": True}}


def tool_output(output: str) -> Any:
    """A tool's result as the `response.output` Gemini reads: its JSON, or the text itself."""
    try:
        return json.loads(output)
    except (ValueError, RecursionError):
        return output


def tool_response(call_id: str, name: str, output: Any, scheduling: str | None) -> dict[str, Any]:
    response: dict[str, Any] = {"id": call_id, "name": name, "response": {"output": output}}
    if scheduling is not None:
        response["scheduling"] = scheduling
    return {"toolResponse": {"functionResponses": [response]}}


# -- server messages -----------------------------------------------------------------------------


def gemini_usage(metadata: Any, *, text_call: bool = False) -> Usage:
    """One `usageMetadata` as the call's token counts, by modality (gemini-live.md §9).

    Output details are `responseTokensDetails` on the Live API and `candidatesTokensDetails` on
    `generateContent` (and Vertex). A text call (`text_call`) that gives counts without details
    counts them as text; a Live turn's totals mix modalities, so nothing is derived from them.
    """
    prompt = _by_modality(_field(metadata, "promptTokensDetails"))
    cached = _by_modality(_field(metadata, "cacheTokensDetails"))
    output = _by_modality(_field(metadata, "responseTokensDetails"))
    for modality, count in _by_modality(_field(metadata, "candidatesTokensDetails")).items():
        output[modality] = output.get(modality, 0) + count
    if text_call:
        if not prompt:
            prompt["TEXT"] = _count(_field(metadata, "promptTokenCount"))
        if not output:
            output["TEXT"] = _count(_field(metadata, "candidatesTokenCount"))
    return Usage(
        input_text=prompt.get("TEXT", 0),
        input_audio=prompt.get("AUDIO", 0),
        input_cached_text=cached.get("TEXT", 0),
        input_cached_audio=cached.get("AUDIO", 0),
        output_text=output.get("TEXT", 0),
        output_audio=output.get("AUDIO", 0),
    )


def _by_modality(details: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for detail in details if isinstance(details, list) else []:
        modality = _field(detail, "modality")
        if isinstance(modality, str):
            totals[modality] = totals.get(modality, 0) + _count(_field(detail, "tokenCount"))
    return totals


def duration_seconds(value: Any) -> float | None:
    """A proto Duration in JSON (`"50s"`, `"0.5s"`)."""
    match = DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    return float(match.group(1)) if match else None


def decode_audio(data: Any) -> bytes | None:
    """Base64 in either alphabet (the SDK sends URL-safe), None when it is not."""
    if not isinstance(data, str):
        return None
    try:
        return base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
    except ValueError:
        return None


def fatal_close(code: int, reason: str, *, at_setup: bool, resuming: bool) -> str | None:
    """The call-ending failure a close stands for (gemini-live.md §11), or None when a new
    connection may cure it."""
    lowered = reason.lower()
    said = f"{reason[:200]} (close {code})" if reason else f"close {code}"
    if "api key" in lowered:
        return f"Gemini refused the API key: {said}"
    if code == 1011 and any(word in lowered for word in QUOTA_WORDS):
        return f"Gemini quota exhausted: {said}"
    if code == 1008 and MODEL_NOT_FOUND.search(reason):
        return f"Gemini refused the model: {said}"
    if code == 1007 and "location is not supported" in lowered:
        return f"Gemini refused the region: {said}"
    if code == 1007 and at_setup and not resuming:
        return f"Gemini refused the session setup: {said}"
    return None


def _ignore(event: Event) -> None:
    return None


def _camel(name: str) -> str:
    """A proto field name in JSON's lowerCamelCase (`server_content` -> `serverContent`)."""
    return re.sub(r"_([a-z0-9])", lambda match: match.group(1).upper(), name)


# -- what outlives one connection ----------------------------------------------------------------


@dataclass
class GeminiCall:
    """What a call keeps across its Gemini connections: the caller's converter (its filter state
    runs for the whole call, so the audio Gemini gets over every connection is one stream) and
    the warnings given once per call."""

    inbound: CallerToGemini = field(default_factory=CallerToGemini)
    mcp_warned: bool = False
    warned: set[str] = field(default_factory=set)  # kinds of odd server messages already logged
    resume_failures: int = 0  # connections in a row that closed before resuming


@dataclass(frozen=True)
class Summarizer:
    """`generateContent` on a text model: the summary never goes through the live session."""

    text_api: TextApi
    url: str
    api_key: str = field(repr=False)

    async def summary(self, transcript: str) -> tuple[str | None, Usage]:
        if not transcript.strip():
            return None, Usage()
        body = {
            "systemInstruction": {"parts": [{"text": SUMMARY_INSTRUCTIONS}]},
            "contents": [{"role": "user", "parts": [{"text": transcript}]}],
        }
        try:
            answer = await self.text_api.post_json(
                self.url, {"x-goog-api-key": self.api_key}, body, SUMMARY_TIMEOUT
            )
        except TextApiError as exc:
            log.warning("the conversation summary failed: %s", exc)
            return None, Usage()
        usage = gemini_usage(_field(answer, "usageMetadata"), text_call=True)
        candidates = _field(answer, "candidates")
        first = candidates[0] if isinstance(candidates, list) and candidates else None
        parts = _field(_field(first, "content"), "parts")
        text = "".join(
            t
            for part in (parts if isinstance(parts, list) else [])
            if isinstance(t := _field(part, "text"), str)
        )
        if not text.strip():
            log.warning("the conversation summary came back empty (%s)", _field(first, "finishReason") or "-")
            return None, usage
        return summary_json(text), usage


# -- the session ---------------------------------------------------------------------------------


class GeminiSession:
    """One Live connection: its server messages as the core's typed events, the core's commands
    as client messages. Everything here lives and dies with the connection."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        truncation=False,
        caller_speech_events=False,
    )
    # Server message field -> method name, in the order the fields of one message are handled.
    # Names, not bound methods: a table of bound methods on the instance would be a reference
    # cycle keeping every finished call until a full collection.
    _HANDLERS: ClassVar[dict[str, str]] = {
        "setupComplete": "on_setup_complete",
        "serverContent": "on_server_content",
        "toolCall": "on_tool_call",
        "toolCallCancellation": "on_tool_call_cancellation",
        "sessionResumptionUpdate": "on_resumption_update",
        "goAway": "on_go_away",
        "voiceActivity": "on_voice_activity",
        "voiceActivityDetectionSignal": "on_voice_activity",
        "usageMetadata": "on_usage",
    }

    def __init__(
        self,
        socket: ModelSocket,
        model: str,
        *,
        call: GeminiCall,
        summarizer: Summarizer,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.socket = socket
        self.model = model
        self.call = call
        self.summarizer = summarizer
        self.metrics = metrics
        self.clock = clock
        self.number = 0  # the call's connection number, from `begin`
        self.behaviors: dict[str, str] = {}  # declared function -> BLOCKING / NON_BLOCKING
        self.resume_from: str | None = None  # the handle this connection's setup resumes
        self.resume_refused = False
        self.handle: str | None = None  # the latest resumable handle
        self.handle_fresh = False  # nothing happened since it was issued
        self.confirmed_at: float | None = None  # setupComplete
        self.completed = False  # a turn completed on this connection
        self.close_error: str | None = None
        self.go_away_deadline: float | None = None  # replace the connection by then
        self.reconfigure = False  # the call's configuration changed: move at a quiet moment
        self._timer: asyncio.Timeout | None = None  # around the read loop, while `run` runs
        self._events: EventSink = _ignore
        self._early: deque[tuple[str, int]] = deque()  # (frame, audio bytes) before setupComplete
        self._early_audio = 0
        self._early_warned = False
        self._calls: dict[str, str] = {}  # open function call id -> name
        self._finished: OrderedDict[str, bool] = OrderedDict()  # answered (False) or cancelled (True)
        self._locked = False  # the ending began: the caller's voice must not reach the model
        self._voice_at = float("-inf")  # caller audio last sounded like speech
        # The model's turns.
        self._outbound = GeminiToCaller()
        self._turns = 0  # started on this connection
        self._turn_open = False  # content seen, no turnComplete yet
        self._turn_said = False  # the open turn has audio or transcription
        self._generating = False  # content seen, not generated to the end yet
        self._absorb_turn_complete = False  # the turn was ended by `interrupted`: its turnComplete follows
        self._utterance: Utterance | None = None  # taking audio now
        self._last_utterance: Utterance | None = None  # of the open turn
        self._utterances = 0
        self._text = ""  # transcription of the current utterance
        self._pending_text = ""  # transcription that came before its utterance's audio
        self._purpose: str | None = None  # what the next utterance is for (greeting, filler)
        # The farewell: the turn that says it, from what the model said after our response.
        self._farewell_turn: int | None = None  # FarewellDone once this turn is generated
        self._farewell_call_turn = False  # it made the call: the farewell may be the next one
        self._farewell_unsure = False  # it spoke before the call: what follows may be the rest of that
        self._farewell_spoken = False  # audio came in it (after the call)
        self._farewell_wait_until: float | None = None  # a turn starting by then is the farewell
        self._farewell_ending = False  # FarewellDone given: its turnComplete (final usage) follows
        self._farewell_ended = asyncio.Event()
        # The caller's turns (input transcription).
        self._caller_key: str | None = None
        self._caller_text = ""
        self._caller_turns = 0

    # -- setup

    def begin(self, start: SessionStart) -> None:
        """The `setup`: a resumption with the handle the last connection left, else a new session
        (with the conversation so far, on a replacement)."""
        self.number = start.socket
        self.resume_from = start.resume if isinstance(start.resume, str) and start.resume else None
        self.behaviors = {tool.name: behavior(tool.name) for tool in start.spec.tools}
        if start.spec.mcp_tools and not self.call.mcp_warned:
            self.call.mcp_warned = True
            log.warning(
                "Gemini Live does not support remote MCP tools: %d MCP entr%s dropped for this call",
                len(start.spec.mcp_tools),
                "y" if len(start.spec.mcp_tools) == 1 else "ies",
            )
        if self.resume_from is not None:
            log.info("resuming the Gemini session on connection %d", self.number)
        elif start.socket > 1:
            self.metrics.resumptions.labels("fresh").inc()
            log.info(
                "starting a fresh Gemini session on connection %d with %d turns of the conversation",
                self.number,
                len(start.history),
            )
        self.socket.send(setup_message(start, self.model, self.resume_from))

    # -- commands

    def send_audio(self, pcmu: bytes) -> None:
        """Every caller frame, silence included (server VAD needs the whole stream), as 16 kHz
        PCM through the call's one converter. Once the ending began, the model hears silence
        instead: the caller's voice must neither cut the farewell nor start another answer, and
        the Live API cannot change its turn detection on an open connection."""
        pcm = self.call.inbound.convert(pcmu)
        if not pcm:
            return
        if audioop.rms(pcm, 2) > SPEECH_RMS:
            self._voice_at = self.clock()
        if self._locked:
            pcm = bytes(len(pcm))
        for start in range(0, len(pcm), MAX_AUDIO_MESSAGE_BYTES):
            piece = pcm[start : start + MAX_AUDIO_MESSAGE_BYTES]
            self._send(audio_message(piece), len(piece))

    def say(self, purpose: str, instructions: str) -> None:
        """The greeting as a user turn (the bot speaks first); a holding phrase or a limit's
        farewell as real-time text. A holding phrase while the model is speaking is not needed."""
        if purpose == "filler" and self._generating:
            log.debug("the model is speaking: no holding phrase needed")
            return
        self._purpose = purpose
        if purpose == "greeting":
            self._send(user_turn(instructions))
            self._send(NUDGE)
            return
        self._send_text(instructions)

    def user_input(self, text: str) -> None:
        """Keyed digits, as real-time text: the model treats it as the caller's turn."""
        self._send_text(text)

    def note(self, text: str) -> None:
        """Context for the model (a late tool result, a restored connection), as real-time text."""
        self._send_text(text)

    def tool_result(self, call_id: str, output: str, *, respond: bool = True) -> None:
        """A Data Action's result is spoken when the model is idle (`WHEN_IDLE`), or only taken
        into its context (`SILENT`); a BLOCKING call's result lets the model go on."""
        self._answer_call(call_id, tool_output(output), respond=respond and not self._locked)

    def farewell(self, instructions: str, call_id: str | None = None, output: str | None = None) -> None:
        """With the call-control call's id: its result tells the model to say goodbye, and the
        model's continuation is the farewell. Without one (a limit): a text asks for it. Either
        way the caller's voice no longer reaches the model (`send_audio`)."""
        self._locked = True
        if call_id is not None and call_id in self._calls:
            result = tool_output(output or "{}")
            result = {**result, "next": instructions} if isinstance(result, dict) else {"next": instructions}
            # The continuation is the rest of the turn that made the call (3.x), or the next turn
            # when the model ends that one with the call (`_farewell_generated`). Audio after the
            # call may still be the end of what the turn said before it (livekit/agents#7195).
            self._farewell_turn = self._turns if self._turn_open else self._turns + 1
            self._farewell_call_turn = self._turn_open
            self._farewell_unsure = self._turn_open and self._turn_said
            self._answer_call(call_id, result, respond=True)
            return
        self._farewell_turn = self._turns + 1
        self._send_text(f"(The call is ending now: {instructions}) Say goodbye.")

    def heard(self, cuts: list[Utterance]) -> None:
        """Nothing to tell: Gemini has no truncation. It assumes real-time playback and stops
        where the caller cut in (`capabilities.truncation` is False)."""

    def cancel_answer(self) -> None:
        """Nothing to send: Gemini has no cancel. The keyed digits follow as real-time text,
        which preempts the answer, and the core has already cut what was playing."""

    def set_language(self, spec: CallSpec) -> None:
        """The configuration is fixed for a connection: the new language (instructions and
        `languageCode`) applies from the next one, which the core sets up with `spec`. That one
        comes at the next quiet moment (the session resumes on it), not in ten minutes."""
        self.reconfigure = True
        self._watch()
        log.info("the call's language is now %s; Gemini takes it on a new connection", spec.call.language)

    def caller_paused(self) -> None:
        """`audioStreamEnd`: the caller's turn ends instead of waiting for audio that will not
        come; sending audio again resumes the stream."""
        if self.confirmed_at is not None:
            self.socket.send({"realtimeInput": {"audioStreamEnd": True}})

    def update_tools(self, spec: CallSpec) -> None:
        """The configuration is fixed for a connection: the Data Actions are offered from the
        next one, at the next quiet moment (as for `set_language`)."""
        self.reconfigure = True
        self._watch()
        log.info("Data Actions became ready after the Gemini session began; offered on a new connection")

    def tick(self) -> None:
        """Nothing to watch by the second: the goAway deadline has its own timer in `run`."""

    def _send(self, frame: dict[str, Any] | str, audio_bytes: int = 0) -> None:
        """To the socket once `setupComplete` came (nothing else may go before it), else held."""
        if not audio_bytes:
            self.handle_fresh = False  # the conversation moves on: the handle no longer covers it
        if self.confirmed_at is not None:
            self.socket.send(frame)
            return
        text = frame if isinstance(frame, str) else json.dumps(frame)
        self._early.append((text, audio_bytes))
        self._early_audio += audio_bytes
        while self._early_audio > MAX_EARLY_AUDIO_BYTES:
            index = next(i for i, (_, size) in enumerate(self._early) if size)
            self._early_audio -= self._early[index][1]
            del self._early[index]
            if not self._early_warned:
                self._early_warned = True
                log.warning("Gemini is slow to confirm the session; dropping the oldest caller audio")

    def _send_text(self, text: str) -> None:
        """Real-time text. Never into a pending BLOCKING call (new input cancels it on 3.8): only
        call control blocks, and it is answered before anything else is sent (`behavior`)."""
        self._send(text_message(text))

    def _answer_call(self, call_id: str, output: Any, *, respond: bool) -> None:
        if self._finished.get(call_id):
            log.info("the result of a tool call Gemini cancelled is discarded")
            return
        name = self._calls.pop(call_id, None)
        if name is None:
            log.warning("a tool result for a call this Gemini connection does not know; dropped")
            return
        self._remember(call_id, cancelled=False)
        blocking = self.behaviors.get(name) == BLOCKING
        scheduling = None if blocking else ("WHEN_IDLE" if respond else "SILENT")
        self._send(tool_response(call_id, name, output, scheduling))

    def _remember(self, call_id: str, *, cancelled: bool) -> None:
        self._finished[call_id] = cancelled
        while len(self._finished) > CALLS_REMEMBERED:
            self._finished.popitem(last=False)

    # -- life cycle

    @property
    def healthy(self) -> bool:
        if self.confirmed_at is None:
            return False
        return self.completed or self.clock() - self.confirmed_at >= HEALTHY_AFTER_SECONDS

    def unfinished(self) -> bool:
        return self._generating

    def last_error(self) -> str | None:
        return None if self.healthy else self.close_error

    def handover(self) -> object | None:
        """The latest resumable handle: this connection's own, or the one it was resuming when it
        closed before confirming (a drop is no refusal). None when there is none or the resume
        was refused (the next connection starts afresh with the conversation so far)."""
        if self.resume_refused:
            return None
        return self.handle if self.confirmed_at is not None else self.resume_from

    async def run(self, events: EventSink, quiet: Callable[[], bool]) -> SessionEnd:
        self._events = events
        try:
            while True:
                try:
                    # One timer for many messages (one per message costs CPU): none until the
                    # connection is to be replaced or the farewell waits for a turn.
                    async with asyncio.timeout(self._read_wait()) as self._timer:
                        while not self._may_recycle(quiet):
                            self.on_message(await self.socket.recv())
                    return SessionEnd.RECYCLED
                except TimeoutError:
                    self._farewell_overdue()
                    if self._may_recycle(quiet):
                        return SessionEnd.RECYCLED
        except ConnectionClosed as exc:
            return self._on_closed(exc)
        finally:
            self._events = _ignore
            self._timer = None
            self._farewell_ended.set()  # nothing more will come for `finish` to wait for

    def _watch(self) -> None:
        """Something is to be watched by the clock (replacing the connection, the farewell's
        turn): wake the read loop so that it sets its timer for it."""
        if self._timer is not None and not self._timer.expired():
            self._timer.reschedule(asyncio.get_running_loop().time())

    def _read_wait(self) -> float | None:
        """No timer until the connection is to be replaced (one per message costs CPU); then a
        short one, so that the quiet moment and the deadline are seen even when the server says
        nothing more. Until the farewell's turn is due, at most that long."""
        now = self.clock()
        waits = []
        if self.go_away_deadline is not None:
            waits.append(max(0.0, min(RECYCLE_POLL_SECONDS, self.go_away_deadline - now)))
        elif self.reconfigure:
            waits.append(RECYCLE_POLL_SECONDS)
        if self._farewell_wait_until is not None:
            waits.append(max(0.0, self._farewell_wait_until - now))
        return min(waits, default=None)

    def _may_recycle(self, quiet: Callable[[], bool]) -> bool:
        """At a resumable point nobody notices (nothing generating or pending, a handle issued
        since, the caller not mid-utterance), or at goAway's deadline whatever happens."""
        if self.go_away_deadline is None and not self.reconfigure:
            return False
        now = self.clock()
        if self.go_away_deadline is not None and now >= self.go_away_deadline:
            if self.unfinished() or not self.handle_fresh:
                log.info("Gemini's connection is about to end: moving the session now, at no quiet moment")
            return True
        return (
            not self._generating
            and self.handle_fresh
            and now - self._voice_at >= CALLER_QUIET_SECONDS
            and quiet()
        )

    def _on_closed(self, exc: ConnectionClosed) -> SessionEnd:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        self.close_error = f"close {code}: {reason[:200]}" if reason else f"close {code}"
        at_setup = self.confirmed_at is None
        fatal = fatal_close(code, reason, at_setup=at_setup, resuming=self.resume_from is not None)
        if fatal is not None:
            raise ModelFailed(fatal)
        if at_setup and self.resume_from is not None:
            self._resume_failed(code)
        elif code == 1007:
            self.handle = None  # resuming would bring back whatever the service refused
        log.debug("Gemini closed the connection (%s)", self.close_error)
        return SessionEnd.DROPPED

    def _resume_failed(self, code: int) -> None:
        """A refusal (1007, 1008 at setup) ends the handle: the next connection starts afresh.
        A drop or a service error (1006, 1011) does not (gemini-live.md §11): the next one resumes
        again, unless that failed RESUME_ATTEMPTS times in a row."""
        self.call.resume_failures += 1
        if code not in (1007, 1008) and self.call.resume_failures < RESUME_ATTEMPTS:
            log.info("Gemini closed the connection before resuming (%s); resuming again", self.close_error)
            return
        self.call.resume_failures = 0
        self.resume_refused = True
        self.metrics.resumptions.labels("refused").inc()
        log.info("Gemini did not resume the session (%s); the next one starts afresh", self.close_error)

    async def summary(self, transcript: str) -> tuple[str | None, Usage]:
        """The conversation summary from the transcriptions, by a separate text call (it works
        after the connection is gone)."""
        return await self.summarizer.summary(transcript)

    async def finish(self, timeout: float) -> None:
        """The farewell's turnComplete, which carries the usage of its turn (FarewellDone came
        once it was generated, and the core hangs up once it has played); `close` ends the
        session."""
        if self._farewell_ending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._farewell_ended.wait()

    async def close(self) -> None:
        # One turn of the loop first: the writer sends what is queued (caller audio) before the
        # socket goes, so that nothing is lost when the session moves to a new connection.
        await asyncio.sleep(0)
        await self.socket.close()

    # -- server messages

    def on_message(self, message: dict[str, Any]) -> None:
        """Every known field of the message, in either spelling (proto3 JSON allows snake_case);
        a field this client does not know (a newer service's) is skipped, not the message."""
        fields = {_camel(key): body for key, body in message.items()}
        unknown = sorted(key[:40] for key in fields if key not in self._HANDLERS)[:5]
        if unknown:
            self._unknown_fields(unknown)
        for key, name in self._HANDLERS.items():
            if key not in fields:
                continue
            body = fields[key]
            if not isinstance(body, dict):
                self._malformed(f"{key} that is not an object")
                continue
            getattr(self, name)(body)

    def _unknown_fields(self, names: list[str]) -> None:
        new = [name for name in names if name not in self.call.warned]
        if not new:
            log.debug("Gemini sent unknown fields (%s); ignored", ", ".join(names))
            return
        self.call.warned.update(new)
        log.warning("Gemini sent a message with unknown fields (%s); they are ignored", ", ".join(new))

    def _malformed(self, what: str) -> None:
        """Once a call at WARNING for each kind, then at DEBUG: a peer can repeat it forever."""
        if what in self.call.warned:
            log.debug("Gemini sent %s; ignored", what)
            return
        self.call.warned.add(what)
        log.warning("Gemini sent %s; ignored", what)

    def on_setup_complete(self, body: dict[str, Any]) -> None:
        if self.confirmed_at is not None:
            return
        self.confirmed_at = self.clock()
        if self.resume_from is not None:
            # The handle restored everything up to now: it stays the latest, and a point to move
            # from, until the conversation goes on.
            self.handle, self.handle_fresh = self.resume_from, True
            self.call.resume_failures = 0
            self.metrics.resumptions.labels("resumed").inc()
            log.info("Gemini resumed the session on connection %d", self.number)
        else:
            log.debug("Gemini session set up on connection %d", self.number)
        while self._early:
            self.socket.send(self._early.popleft()[0])
        self._early_audio = 0
        self._events(Ready())

    def on_server_content(self, content: dict[str, Any]) -> None:
        # Several fields may come in one message (3.x): all are read, in the order they happened.
        transcription = content.get("inputTranscription")
        if isinstance(transcription, dict):
            self._on_caller_text(transcription)
        parts = _field(content.get("modelTurn"), "parts")
        for part in parts if isinstance(parts, list) else []:
            self._on_part(part)
        said = _field(content.get("outputTranscription"), "text")
        if isinstance(said, str) and said:
            self._on_bot_text(said)
        if content.get("interrupted") is True:
            self._on_interrupted()
        if content.get("generationComplete") is True:
            self._generating = False
            self._end_utterance()
            self._farewell_generated(turn_ended=False)
        if content.get("turnComplete") is True:
            reason = content.get("turnCompleteReason")
            if isinstance(reason, str) and reason not in ("TURN_COMPLETE_REASON_UNSPECIFIED", ""):
                log.info("Gemini ended a turn: %s", reason[:64])
            self._on_turn_complete()

    def _on_part(self, part: Any) -> None:
        inline = _field(part, "inlineData")
        if inline is None:
            return  # text parts (thoughts): the caller hears only audio
        mime = _field(inline, "mimeType")
        if not (isinstance(mime, str) and OUTPUT_MIME.fullmatch(mime)):
            raise ModelFailed(f"Gemini output audio is {str(mime)[:60]!r}, not audio/pcm;rate=24000")
        pcm = decode_audio(_field(inline, "data"))
        if pcm is None:
            self._malformed("audio that is not base64")
            return
        self._content(said=True)
        utterance = self._utterance or self._start_utterance()
        audio = self._outbound.convert(pcm)
        if not audio or utterance.stale:
            return
        utterance.received_bytes += len(audio)
        self._farewell_spoken = self._farewell_spoken or self._in_farewell_turn()
        self._events(BotAudio(utterance, audio))

    def _in_farewell_turn(self) -> bool:
        """The open turn is the farewell's: the one that made the call (after it), or later."""
        return self._farewell_turn is not None and self._turns >= self._farewell_turn

    def _content(self, *, said: bool = False) -> None:
        """Something of a model turn arrived (`said`: audio or its transcription): the turn
        starts if none is open. A turn the farewell waited for is the farewell."""
        self._absorb_turn_complete = False
        self.handle_fresh = False
        if not self._turn_open:
            self._turns += 1
            self._turn_open = self._generating = True
            self._turn_said = False
            self._outbound.reset()
            self._last_utterance = None
            self._farewell_wait_until = None
        self._turn_said = self._turn_said or said

    def _start_utterance(self) -> Utterance:
        self._utterances += 1
        purpose, self._purpose = self._purpose or "answer", None
        if self._in_farewell_turn() and not self._farewell_unsure:
            purpose = "farewell"  # clearly the model's answer to our result, not the rest of before
        utterance = Utterance(f"g{self.number}-{self._utterances}", purpose, self.number)
        self._text, self._pending_text = self._pending_text, ""
        utterance.text = self._text.strip()
        self._utterance = self._last_utterance = utterance
        self._events(UtteranceStarted(utterance))
        return utterance

    def _on_bot_text(self, text: str) -> None:
        self._content(said=True)
        if self._utterance is None:
            self._pending_text = (self._pending_text + text)[:MAX_TEXT_CHARS]
            return
        self._text = (self._text + text)[:MAX_TEXT_CHARS]
        self._utterance.text = self._text.strip()

    def _end_utterance(self) -> None:
        utterance, self._utterance = self._utterance, None
        if utterance is None:
            return
        utterance.done = True
        self._events(UtteranceDone(utterance))
        if utterance.text:
            self._events(BotText(utterance))

    def _on_interrupted(self) -> None:
        """Barge-in: the core cuts the bot off on the Genesys side; this turn's late audio is
        dropped, and the next turn's audio starts a fresh conversion."""
        log.debug("Gemini: interrupted")
        if self._utterance is not None:
            self._utterance.stale = True
        self._end_utterance()
        self._outbound.reset()
        if self._turn_open:
            self._end_turn()
            self._absorb_turn_complete = True
        self._events(Interrupted())

    def _on_turn_complete(self) -> None:
        if self._absorb_turn_complete:
            self._absorb_turn_complete = False  # the end of the turn `interrupted` already ended
            return
        if not self._turn_open:
            self._turns += 1  # a turn without content (the model chose to say nothing)
        self._end_utterance()
        self.completed = True
        self._end_turn()

    def _end_turn(self) -> None:
        self._turn_open = self._generating = False
        self._outbound.reset()
        if self._pending_text.strip() and self._last_utterance is not None:
            # Transcription of the turn's last utterance that came after its audio ended.
            self._last_utterance.text = (self._last_utterance.text + " " + self._pending_text.strip()).strip()
        self._pending_text = ""
        self._close_caller_turn()
        self._farewell_generated(turn_ended=True)
        if self._farewell_ending:
            self._farewell_ended.set()

    def _farewell_generated(self, *, turn_ended: bool) -> None:
        """The farewell's turn was generated to the end (or ended). When it said something after
        our response, all of the farewell is with the core: FarewellDone, not later (a connection
        replaced before its turnComplete must not ask again). When it said nothing after the call
        (some models end the turn with it: livekit/agents#3192), the farewell is the next turn.
        When it spoke before the call and ended after audio that may have been the rest of that
        (livekit/agents#7195), a turn starting soon is the farewell; else that audio was
        (`_farewell_overdue`). FAREWELL_TIMEOUT_SECONDS in the core is the backstop."""
        if self._farewell_turn is None or self._turns < self._farewell_turn:
            return
        if self._farewell_spoken and not self._farewell_unsure:
            self._farewell_finished()
            return
        if not turn_ended:
            return  # a generationComplete while the turn may go on with the continuation
        if not self._farewell_call_turn:
            self._farewell_finished()  # the model chose to say nothing
            return
        if self._farewell_spoken:
            self._farewell_wait_until = self.clock() + FAREWELL_NEXT_TURN_SECONDS
            self._watch()
        self._farewell_turn = self._turns + 1
        self._farewell_call_turn = self._farewell_unsure = self._farewell_spoken = False

    def _farewell_overdue(self) -> None:
        """No turn followed the one that may have said the farewell: it did."""
        due = self._farewell_wait_until
        if due is not None and self.clock() >= due and not self._turn_open:
            log.debug("Gemini started no turn after the call's; what followed the call was the farewell")
            self._farewell_finished()

    def _farewell_finished(self) -> None:
        self._farewell_turn = self._farewell_wait_until = None
        self._farewell_ending = True
        if not self._turn_open:
            self._farewell_ended.set()  # its turn is over: `finish` has nothing to wait for
        self._events(FarewellDone())

    def _on_caller_text(self, transcription: dict[str, Any]) -> None:
        text = transcription.get("text")
        if isinstance(text, str) and text:
            if self._caller_key is None:
                self._caller_turns += 1
                self._caller_key = f"g{self.number}-in-{self._caller_turns}"
                self._caller_text = ""
                self._events(CallerTurn(self._caller_key))  # its place in the conversation
            self._caller_text = (self._caller_text + text)[:MAX_TEXT_CHARS]
        if transcription.get("finished") is True:
            self._close_caller_turn()

    def _close_caller_turn(self) -> None:
        key, self._caller_key = self._caller_key, None
        if key is not None:
            self._events(CallerTurn(key, self._caller_text.strip()))

    def on_tool_call(self, body: dict[str, Any]) -> None:
        calls = body.get("functionCalls")
        if not isinstance(calls, list):
            self._malformed("a toolCall without functionCalls")
            return
        self._content()
        self._end_utterance()  # what the model says after the call is another utterance
        for call in calls:
            call_id, name, args = _field(call, "id"), _field(call, "name"), _field(call, "args")
            if not (isinstance(call_id, str) and call_id and isinstance(name, str) and name):
                self._malformed("a function call without an id or a name")
                continue
            if call_id in self._calls or call_id in self._finished:
                log.info("Gemini repeated the tool call %s; it does not run twice", name[:64])
                continue
            self._calls[call_id] = name
            log.info("Gemini calls %s", name[:64])
            self._events(ToolCall(call_id, name, json.dumps(args if isinstance(args, dict) else {})))

    def on_tool_call_cancellation(self, body: dict[str, Any]) -> None:
        ids = body.get("ids")
        cancelled = (
            [i for i in ids if isinstance(i, str) and i in self._calls] if isinstance(ids, list) else []
        )
        for call_id in cancelled:
            del self._calls[call_id]
            self._remember(call_id, cancelled=True)
        if cancelled:
            log.info("Gemini cancelled %d tool call(s); their results will not be sent", len(cancelled))
            self._events(ToolCancelled(tuple(cancelled)))  # the core stops their work and filler

    def on_resumption_update(self, body: dict[str, Any]) -> None:
        handle = body.get("newHandle")
        if body.get("resumable") is True and isinstance(handle, str) and handle:
            self.handle = handle
            self.handle_fresh = True
        else:
            self.handle_fresh = False  # generating or running calls: not a point to resume from

    def on_go_away(self, body: dict[str, Any]) -> None:
        seconds = duration_seconds(body.get("timeLeft"))
        seconds = DEFAULT_TIME_LEFT if seconds is None else seconds
        deadline = self.clock() + seconds - min(RECYCLE_MARGIN_SECONDS, seconds / 2)
        if self.go_away_deadline is None or deadline < self.go_away_deadline:
            self.go_away_deadline = deadline
            self._watch()
            log.info("Gemini ends this connection in %g s; moving the session at a quiet moment", seconds)

    def on_voice_activity(self, body: dict[str, Any]) -> None:
        """Voice activity signals: `interrupted` is what barge-in acts on."""

    def on_usage(self, metadata: dict[str, Any]) -> None:
        self._events(UsageReport(gemini_usage(metadata)))
        thoughts, tools = (
            _count(metadata.get("thoughtsTokenCount")),
            _count(metadata.get("toolUsePromptTokenCount")),
        )
        if thoughts or tools:
            log.debug(
                "Gemini usage beyond the six totals: %d thought, %d tool-use prompt tokens", thoughts, tools
            )


# -- the backend ---------------------------------------------------------------------------------


@dataclass
class GeminiBackend:
    """Gemini Live for one call: the key in `x-goog-api-key`, never in a URL or a log line."""

    model: str
    url: str
    api_key: str = field(repr=False)
    api_base_url: str
    summary_model: str
    text_api: TextApi
    metrics: Metrics
    clock: Callable[[], float]
    vendor: str = "gemini"
    label: str = "Gemini"
    capabilities: ClassVar[Capabilities] = GeminiSession.capabilities
    call: GeminiCall = field(default_factory=GeminiCall, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = self.model.removeprefix("models/")  # AI_MODEL is the bare name

    async def connect(self, timeout: float) -> GeminiSession:
        try:
            socket = await ModelSocket.open(
                self.url, {"x-goog-api-key": self.api_key}, timeout, vendor="Gemini", ping_interval=None
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403, 404):
                raise ModelRefused(f"Gemini refused the connection (HTTP {status})") from None
            raise
        summary_model = self.summary_model.removeprefix("models/")
        summarizer = Summarizer(
            self.text_api,
            f"{self.api_base_url.rstrip('/')}/v1beta/models/{summary_model}:generateContent",
            self.api_key,
        )
        return GeminiSession(
            socket, self.model, call=self.call, summarizer=summarizer, metrics=self.metrics, clock=self.clock
        )
