"""A local stand-in for Google's Gemini Live API (BidiGenerateContent over WebSocket), for tests,
benchmarks and the no-account demo.

One aiohttp port serves the Live WebSocket (`WS_PATH`, key in `x-goog-api-key`) and the
`generateContent` REST call the connector uses for its summary. It follows the project's
Gemini Live specification: `setup` then `setupComplete`, server VAD from the energy of the
PCM16 it receives, spoken answers as 24 kHz PCM16 generated faster than real time in uneven
chunks with input and output transcriptions, `generationComplete`, `turnComplete` with
`usageMetadata`, barge-in (`interrupted`), BLOCKING and NON_BLOCKING function calls with
scheduling, `toolCallCancellation`, `goAway` and session resumption with handles, the real close
codes, and faults on demand.

Strict: every client message is validated with `google-genai`'s pydantic types (made as strict as
the wire, see `GeminiValidator`) and the rules the service applies on top (`client_rules`). The
service has no error event, so a violation is recorded in `violations` and closes the socket with
1007 "Request contains an invalid argument.", as the real one does.

As a command: `python -m simulators.gemini_simulator --port 8083`; point `GEMINI_LIVE_URL` and
`GEMINI_API_BASE_URL` at the printed addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import enum
import functools
import json
import logging
import random
import re
import sys
import time
import types as pytypes
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from simulators import speech
from simulators.audio import speech_like
from simulators.script import Script, Turn
from utils import audioop

log = logging.getLogger("gemini-simulator")

WS_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
REST_PATH = "/v1beta/models/{model}:generateContent"

INVALID_ARGUMENT = "Request contains an invalid argument."
BAD_KEY = "API key not valid. Please pass a valid API key."
QUOTA = "You exceeded your current quota, please check your plan and billing details."
DEADLINE = "Deadline expired before operation could complete."
INTERNAL = "Internal error occurred."

IN_RATE = 16000
OUT_RATE = 24000
WINDOW_BYTES = 640  # 20 ms of PCM16 at 16 kHz
SPEECH_RMS = 600  # energy above this (16-bit scale) is speech, as in the Realtime simulator
START_MS = {"START_SENSITIVITY_HIGH": 60, "START_SENSITIVITY_LOW": 120}
DEFAULT_SILENCE_MS = 500
BARGE_IN_MS = 300  # voiced caller audio that interrupts the model (3.8 interrupts "politely")
TOKENS_PER_SECOND = 25  # of audio, both ways (spec §1)
MAX_QUEUED = 8
SEND_TIMEOUT = 10.0  # a client that stops reading for this long is cut off
FAREWELL_CALLS = frozenset({"end_conversation_successfully", "end_conversation_with_escalation"})
SCHEDULING_URGENCY = {"SILENT": 0, "WHEN_IDLE": 1, "INTERRUPT": 2}
# What the turn that makes a BLOCKING call does until the response comes; models differ.
CALL_TURN_CONTINUES = "continues"  # it waits and goes on after the response (3.x; adk-python#5407)
# It ends at once with the call (turnComplete right after the toolCall); the continuation is a
# new turn (livekit/agents#3192, google/adk-python#5407).
CALL_TURN_ENDS = "ends"
# The end of the speech before the call comes after the toolCall, then the turn ends at once; the
# continuation is a new turn (livekit/agents#7195, #5742).
CALL_TURN_TRAILS = "trails"
CALL_TURNS = (CALL_TURN_CONTINUES, CALL_TURN_ENDS, CALL_TURN_TRAILS)
TRAILING_MS = 300  # of the speech before a call, sent after its toolCall (CALL_TURN_TRAILS)
TURNAROUND_SECONDS = 0.6  # a continuation in a new turn starts this long after the response

CLIENT_KINDS = ("setup", "clientContent", "realtimeInput", "toolResponse", "contextUpdate")
REALTIME_FIELDS = ("audio", "audioStreamEnd", "activityStart", "activityEnd", "text", "video")
VOICES = frozenset(
    "Zephyr Puck Charon Kore Fenrir Leda Orus Aoede Callirrhoe Autonoe Enceladus Iapetus Umbriel "
    "Algieba Despina Erinome Algenib Rasalgethi Laomedeia Achernar Alnilam Schedar Gacrux "
    "Pulcherrima Achird Zubenelgenubi Vindemiatrix Sadachbia Sadaltager Sulafat".split()
)
# generationConfig fields the Live API refuses ("only a subset of fields are supported").
LIVE_UNSUPPORTED_GENERATION = (
    "responseLogprobs",
    "responseMimeType",
    "logprobs",
    "responseSchema",
    "responseJsonSchema",
    "stopSequences",
    "routingConfig",
    "audioTimestamp",
    "modelSelectionConfig",
    "responseFormat",
    "enableEnhancedCivicAnswers",
    "translationConfig",
    "audioTranscriptionConfig",
)
FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")
PCM_MIME = re.compile(r"audio/pcm;rate=(\d+)")


@dataclass(frozen=True)
class ModelTraits:
    """What differs between the Live models (spec §1, §3, §8)."""

    default_behavior: str  # of a function declared without `behavior`
    blocking_only: bool  # NON_BLOCKING declarations behave as BLOCKING
    thinking: str | None  # the thinkingConfig field allowed, None: no thinkingConfig at all
    proactivity: str  # "always" (proactiveAudio false refused), "unsupported" or "optional"
    affective_dialog: bool  # enableAffectiveDialog accepted
    bundles_transcription: bool  # outputTranscription rides in the audio's serverContent
    needs_realtime_input: bool  # a clientContent turn is answered at the next realtimeInput
    thoughts: bool = False  # usage carries thoughtsTokenCount


_LIVE_38 = ModelTraits(
    default_behavior="NON_BLOCKING",
    blocking_only=False,
    thinking=None,
    proactivity="always",
    affective_dialog=False,
    bundles_transcription=True,
    needs_realtime_input=True,
)
_LIVE_25 = ModelTraits(
    default_behavior="BLOCKING",
    blocking_only=False,
    thinking="thinkingBudget",
    proactivity="optional",
    affective_dialog=True,
    bundles_transcription=False,
    needs_realtime_input=False,
)
MODELS: dict[str, ModelTraits] = {
    "gemini-3.8-live": _LIVE_38,
    "gemini-3.8-live-extended-thinking": dataclasses.replace(
        _LIVE_38, thinking="thinkingLevel", thoughts=True
    ),
    "gemini-3.1-flash-live-preview": dataclasses.replace(
        _LIVE_38,
        default_behavior="BLOCKING",
        blocking_only=True,
        thinking="thinkingLevel",
        proactivity="unsupported",
    ),
    "gemini-2.5-flash-native-audio-preview-12-2025": _LIVE_25,
    "gemini-2.5-flash-native-audio-preview-09-2025": _LIVE_25,
}


# -- wire helpers ----------------------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _get(obj: Any, camel: str) -> Any:
    """A field in either spelling: the service reads both (`GeminiValidator` flags snake_case)."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(camel)
    return obj.get(_snake(camel)) if value is None else value


def message_kind(message: Any) -> str | None:
    """The client message's one field, camelCase; None unless there is exactly one known field."""
    if not isinstance(message, dict) or len(message) != 1:
        return None
    key = next(iter(message))
    return next((kind for kind in CLIENT_KINDS if key in (kind, _snake(kind))), None)


def _is_audio_input(message: Any) -> bool:
    body = _get(message, "realtimeInput")
    return isinstance(body, dict) and "audio" in body


def _b64decode(data: str) -> bytes:
    # Both alphabets are accepted on the wire (the SDK sends URL-safe).
    return base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)


def _texts(content: Any) -> list[str]:
    parts = _get(content, "parts")
    return [p["text"] for p in parts or [] if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _pcm_rate(mime: Any) -> int | None:
    match = PCM_MIME.fullmatch(mime) if isinstance(mime, str) else None
    return int(match.group(1)) if match else None


def _duration(seconds: float) -> str:
    """A proto Duration in JSON ("50s", "0.5s")."""
    return f"{round(seconds, 3):g}s"


def _not_found(model: str, method: str) -> str:
    return f"models/{model} is not found for API version v1beta, or is not supported for {method}"


def _google_error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


# -- rules the service applies on top of the types (no SDK needed) ---------------------------


def client_rules(message: Any) -> list[str]:
    """The hand rules of spec §14 that need no session state."""
    if not isinstance(message, dict):
        return ["message is not a JSON object"]
    kind = message_kind(message)
    if kind is None:
        return [f"a client message has exactly one of {', '.join(CLIENT_KINDS)}; got {sorted(message)}"]
    body = next(iter(message.values()))
    if not isinstance(body, dict):
        return [f"{kind} is not an object"]
    rules: dict[str, Callable[[dict[str, Any]], list[str]]] = {
        "setup": setup_rules,
        "realtimeInput": realtime_input_rules,
        "clientContent": client_content_rules,
        "toolResponse": tool_response_rules,
        "contextUpdate": context_update_rules,
    }
    return rules[kind](body)


def setup_rules(setup: dict[str, Any]) -> list[str]:
    found: list[str] = []
    model = _get(setup, "model")
    if not isinstance(model, str) or not model.startswith("models/"):
        found.append(f"setup.model must be 'models/<id>', got {model!r}")
    config = _get(setup, "generationConfig") or {}
    modalities = _get(config, "responseModalities")
    if modalities is not None and modalities != ["AUDIO"]:
        found.append(f'setup.generationConfig.responseModalities must be ["AUDIO"], got {modalities!r}')
    found += [
        f"setup.generationConfig.{name} is not supported by the Live API"
        for name in LIVE_UNSUPPORTED_GENERATION
        if _get(config, name) is not None
    ]
    speech = _get(config, "speechConfig") or {}
    voice = _get(_get(_get(speech, "voiceConfig"), "prebuiltVoiceConfig"), "voiceName")
    if voice is not None and voice not in VOICES:
        found.append(f"setup: {voice!r} is not a Gemini prebuilt voice")
    language = _get(speech, "languageCode")
    if language is not None and not (isinstance(language, str) and LANGUAGE_CODE.fullmatch(language)):
        found.append(f"setup: languageCode {language!r} is not a BCP-47 code")
    instruction = _get(setup, "systemInstruction")
    if instruction is not None:
        found += _content_rules(instruction, "setup.systemInstruction", roles=("user",), role_required=False)
    found += _tools_rules(_get(setup, "tools"), "setup.tools")
    traits = MODELS.get(model.removeprefix("models/")) if isinstance(model, str) else None
    if traits is not None:
        found += _model_rules(traits, setup, config)
    return found


def _model_rules(traits: ModelTraits, setup: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Per-model refusals (spec §1, §3): these close with 1007 on the real service."""
    found = []
    proactivity = _get(setup, "proactivity")
    if proactivity is not None and traits.proactivity == "unsupported":
        found.append("setup.proactivity is not supported by this model")
    if traits.proactivity == "always" and _get(proactivity, "proactiveAudio") is False:
        found.append("setup.proactivity.proactiveAudio: false is refused (proactive audio is always on)")
    if _get(config, "enableAffectiveDialog") is not None and not traits.affective_dialog:
        found.append("setup.generationConfig.enableAffectiveDialog is not supported by this model")
    thinking = _get(config, "thinkingConfig")
    if thinking is not None:
        if traits.thinking is None:
            found.append("setup.generationConfig.thinkingConfig is not supported by this model")
        else:
            other = {"thinkingLevel": "thinkingBudget", "thinkingBudget": "thinkingLevel"}[traits.thinking]
            if _get(thinking, other) is not None:
                found.append(f"setup.generationConfig.thinkingConfig.{other} is not supported by this model")
    return found


def _tools_rules(tools: Any, where: str) -> list[str]:
    found: list[str] = []
    names: set[str] = set()
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if _get(tool, "mcpServers") is not None:
            found.append(f"{where}[{i}].mcpServers is not supported by the Live API")
        for j, declaration in enumerate(_get(tool, "functionDeclarations") or []):
            path = f"{where}[{i}].functionDeclarations[{j}]"
            name = _get(declaration, "name")
            if not (isinstance(name, str) and FUNCTION_NAME.fullmatch(name)):
                found.append(f"{path}.name {name!r} is not a valid function name")
            elif name in names:
                found.append(f"{path}.name {name!r} is declared twice")
            names.add(name if isinstance(name, str) else "")
            if _get(declaration, "parameters") is not None and _get(declaration, "parametersJsonSchema"):
                found.append(f"{path}: parameters and parametersJsonSchema are mutually exclusive")
    return found


def _content_rules(content: Any, where: str, roles: tuple[str, ...], role_required: bool) -> list[str]:
    if not isinstance(content, dict):
        return [f"{where} must be a Content object ({{parts: [{{text}}]}}), not {type(content).__name__}"]
    found = []
    role = _get(content, "role")
    if (role is not None or role_required) and role not in roles:
        found.append(f"{where}.role must be one of {roles}, got {role!r}")
    if not _get(content, "parts"):
        found.append(f"{where}.parts must not be empty")
    return found


def realtime_input_rules(body: dict[str, Any]) -> list[str]:
    if "mediaChunks" in body or "media_chunks" in body:
        return ["realtimeInput.mediaChunks is deprecated: the 3.x models close with 1007; send audio"]
    present = [name for name in REALTIME_FIELDS if _get(body, name) is not None]
    if len(present) != 1 or len(body) != 1:
        return [f"realtimeInput carries exactly one of {', '.join(REALTIME_FIELDS)}; got {sorted(body)}"]
    audio = _get(body, "audio")
    if audio is None:
        return []
    mime = _get(audio, "mimeType")
    rate = _pcm_rate(mime)
    if rate is None:
        return [f"realtimeInput.audio.mimeType must be 'audio/pcm;rate=N', got {mime!r}"]
    if not 8000 <= rate <= 48000:
        return [f"realtimeInput.audio: rate {rate} is out of range"]
    try:
        data = _b64decode(_get(audio, "data") or "")
    except (ValueError, TypeError, AttributeError):
        return ["realtimeInput.audio.data is not base64"]
    if len(data) % 2:
        return [f"realtimeInput.audio.data: {len(data)} bytes are not whole 16-bit samples"]
    return []


def client_content_rules(body: dict[str, Any]) -> list[str]:
    found = []
    for i, turn in enumerate(_get(body, "turns") or []):
        found += _content_rules(
            turn, f"clientContent.turns[{i}]", roles=("user", "model"), role_required=True
        )
    return found


def tool_response_rules(body: dict[str, Any]) -> list[str]:
    responses = _get(body, "functionResponses")
    if not isinstance(responses, list) or not responses:
        return ["toolResponse.functionResponses must not be empty"]
    found = []
    for i, response in enumerate(responses):
        if not isinstance(_get(response, "id"), str) or not _get(response, "id"):
            found.append(f"toolResponse.functionResponses[{i}].id is required on the Gemini API")
        if not isinstance(_get(response, "name"), str) or not _get(response, "name"):
            found.append(f"toolResponse.functionResponses[{i}].name is required")
    return found


def context_update_rules(body: dict[str, Any]) -> list[str]:
    found = []
    instruction = _get(body, "systemInstruction")
    if instruction is not None:
        found += _content_rules(instruction, "contextUpdate.systemInstruction", ("user",), False)
    return found + _tools_rules(_get(_get(body, "tools"), "tools"), "contextUpdate.tools.tools")


def request_rules(body: Any) -> list[str]:
    """Hand rules for the generateContent body."""
    if not isinstance(body, dict):
        return ["the request body is not a JSON object"]
    contents = _get(body, "contents")
    if not isinstance(contents, list) or not contents:
        return ["contents is required and must not be empty"]
    found = []
    for i, content in enumerate(contents):
        found += _content_rules(content, f"contents[{i}]", roles=("user", "model"), role_required=False)
    modalities = _get(_get(body, "generationConfig"), "responseModalities")
    if modalities is not None and modalities != ["TEXT"]:
        found.append(f"generationConfig.responseModalities {modalities!r}: the summary is text")
    return found


# -- strict validation against google-genai's types -----------------------------------------


class GeminiValidator:
    """Validate with `google.genai.types` made as strict as the wire (spec §14).

    The SDK's models forbid unknown fields but accept snake_case as well as camelCase, let
    `setup.systemInstruction`/`tools` be strings (the SDK converts them), lack
    `realtimeInputConfig` on `LiveClientSetup`, decode bytes from base64 only in
    `model_validate_json`, and accept unknown enum values with a UserWarning. So: wire models
    with `Content`, `list[Tool]` and `RealtimeInputConfig`, JSON validation, warnings caught,
    and a walk that flags snake_case keys and enum spellings other than the proto names. The
    Gemini-API-only refusals are the SDK's own converters (`_live_converters.*_to_mldev`).
    """

    def __init__(self) -> None:
        import pydantic
        from google.genai import _common, _live_converters
        from google.genai import types as gt

        self._validation_error = pydantic.ValidationError
        self._base = _common.BaseModel
        self._to_mldev = _live_converters._LiveClientMessage_to_mldev
        setup = pydantic.create_model(
            "WireSetup",
            __base__=gt.LiveClientSetup,
            system_instruction=(gt.Content | None, None),
            tools=(list[gt.Tool] | None, None),
            realtime_input_config=(gt.RealtimeInputConfig | None, None),
        )
        update_tools = pydantic.create_model(
            "WireContextUpdateTools",
            __base__=gt.LiveClientContextUpdateTools,
            tools=(list[gt.Tool] | None, None),
        )
        update = pydantic.create_model(
            "WireContextUpdate",
            __base__=gt.LiveClientContextUpdate,
            system_instruction=(gt.Content | None, None),
            tools=(update_tools | None, None),
        )
        self.client_model = pydantic.create_model(
            "WireClientMessage",
            __base__=gt.LiveClientMessage,
            setup=(setup | None, None),
            context_update=(update | None, None),
        )
        self.server_model = gt.LiveServerMessage
        self.request_model = pydantic.create_model(
            "WireGenerateContentRequest",
            __base__=_common.BaseModel,
            contents=(list[gt.Content], ...),
            system_instruction=(gt.Content | None, None),
            generation_config=(gt.GenerationConfig | None, None),
            tools=(list[gt.Tool] | None, None),
            tool_config=(gt.ToolConfig | None, None),
            safety_settings=(list[gt.SafetySetting] | None, None),
            cached_content=(str | None, None),
        )
        self.response_model = gt.GenerateContentResponse

    def client_problems(self, raw: str | bytes, message: Any) -> list[str]:
        """SDK-type problems of one client message (the hand rules are `client_rules`)."""
        found, parsed = self._parse(self.client_model, raw, message)
        if parsed is not None:
            try:
                self._to_mldev(_MLDEV, parsed.model_dump(exclude_none=True))
            except ValueError as exc:
                found.append(f"not on the Gemini API: {exc}")
        return found

    def server_problems(self, raw: str | bytes, message: dict[str, Any]) -> list[str]:
        found, _ = self._parse(self.server_model, raw, message)
        kinds = [key for key in message if key != "usageMetadata"]
        if len(kinds) > 1:
            found.append(f"one message type per server message, got {kinds}")
        return found

    def request_problems(self, raw: bytes, body: Any) -> list[str]:
        return self._parse(self.request_model, raw, body)[0]

    def response_problems(self, body: dict[str, Any]) -> list[str]:
        return self._parse(self.response_model, json.dumps(body), body)[0]

    def _parse(self, model: Any, raw: str | bytes, message: Any) -> tuple[list[str], Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                parsed = model.model_validate_json(raw)
            except self._validation_error as exc:
                return [_validation_summary(exc)], None
        found = [f"unknown enum value: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
        return found + self._wire_form(message, parsed, "$"), parsed

    def _wire_form(self, raw: Any, obj: Any, path: str) -> list[str]:
        """snake_case keys and enum spellings the SDK accepted but the connector must not send."""
        found: list[str] = []
        if isinstance(obj, self._base) and isinstance(raw, dict):
            fields = type(obj).model_fields
            aliases = {info.alias or name: name for name, info in fields.items()}
            for key, value in raw.items():
                name = aliases.get(key, key if key in fields else None)
                if name is None:
                    continue
                alias = fields[name].alias or name
                if key != alias:
                    found.append(f"{path}.{key}: snake_case on the wire, send {alias}")
                found += self._wire_form(value, getattr(obj, name), f"{path}.{alias}")
        elif isinstance(obj, list) and isinstance(raw, list):
            for i, (raw_item, item) in enumerate(zip(raw, obj, strict=False)):
                found += self._wire_form(raw_item, item, f"{path}[{i}]")
        elif isinstance(obj, dict) and isinstance(raw, dict):
            for key, value in raw.items():
                if key in obj:
                    found += self._wire_form(value, obj[key], f"{path}.{key}")
        elif isinstance(obj, enum.Enum) and isinstance(raw, str) and raw != obj.value:
            found.append(f"{path}: enum value {raw!r} is not the proto name {obj.value!r}")
        return found


# The SDK's converters only ask the client whether it is Vertex.
_MLDEV = pytypes.SimpleNamespace(vertexai=False)


def _validation_summary(exc: Any) -> str:
    errors = exc.errors()[:3]
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors)


def load_validator(required: bool) -> GeminiValidator | None:
    try:
        return GeminiValidator()
    except ImportError:
        if required:
            raise
        log.warning("google-genai is not installed: only the hand rules are checked")
        return None


# -- audio -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def model_speech(seconds: float, seed: int, rate: int = OUT_RATE) -> bytes:
    """Speech-like PCM16 at `rate`: the 8 kHz test speech, resampled in one go."""
    pcm = audioop.ulaw2lin(speech_like(seconds, seed), 2)
    return pcm if rate == 8000 else audioop.ratecv(pcm, 2, 1, 8000, rate, None)[0]


def text_answer(script: Script, text: str, ordinary: Callable[[], Turn]) -> Turn:
    """What the model says to injected text (the connector's texts follow this):
    a double-quoted phrase is spoken (the greeting); "goodbye" gets the farewell; "keypad" gets
    the next ordinary answer (the digits); anything else gets the filler."""
    if re.search(r'"[^"]+"', text):
        return script.answer("greeting", text)
    lowered = text.lower()
    if "goodbye" in lowered:
        return script.answer("farewell", None)
    if "keypad" in lowered:
        return ordinary()
    return script.answer("filler", None)


# -- records ---------------------------------------------------------------------------------


@dataclass
class ConversationState:
    """What a resumption handle restores."""

    user_turns: int = 0
    answered: bool = False  # an ordinary answer was given (`Script.first` is used once)
    history: int = 0  # items in the context, for prompt token counts
    context_audio_ms: int = 0  # caller speech in the context


@dataclass(frozen=True)
class FunctionCallRecord:
    id: str
    name: str
    args: dict[str, Any]
    blocking: bool
    at: float


@dataclass(frozen=True)
class Interruption:
    at: float
    reason: str  # "speech", "activity", "text", "clientContent", "scheduling"
    cancelled_ids: tuple[str, ...]


@dataclass(frozen=True)
class Resumption:
    session_id: str
    handle: str
    at: float


@dataclass(frozen=True)
class HandleEntry:
    session: SimSession
    state: ConversationState


@dataclass
class CallBatch:
    """The function calls of one `toolCall` message."""

    names: list[str]
    blocking: bool
    open: set[str]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    scheduling: str | None = None  # the most urgent one its responses asked for

    @property
    def farewell(self) -> bool:
        return any(name in FAREWELL_CALLS for name in self.names)


@dataclass
class PendingCall:
    id: str
    name: str
    batch: CallBatch


@dataclass
class Generation:
    """One model turn: its task, unbilled output, and the blocking calls it waits for."""

    task: asyncio.Task[None] | None = None
    unbilled_ms: float = 0.0
    playback_end: float = 0.0  # when the server assumes the client's real-time playback ends
    waiting: CallBatch | None = None
    completing: bool = False  # turnComplete is being sent: too late to interrupt
    transcript: str | None = None  # of the caller turn it answers, sent first


class SimSession:
    """One conversation: its first connection and every resumption of it."""

    def __init__(self, sim: GeminiSimulator, model: str, setup: dict[str, Any]) -> None:
        self.sim = sim
        self.id = f"session-{len(sim.sessions) + 1}"
        self.model = model
        self.setup = setup  # the first connection's; each connection keeps its own
        self.state = ConversationState()
        self.connections: list[SimConnection] = []
        self.connection: SimConnection | None = None  # the open one
        self.closed_at: float | None = None
        self.received: list[dict[str, Any]] = []
        # (monotonic time, "in" or "out", message) of every message but audio, for timelines.
        self.timeline: list[tuple[float, str, dict[str, Any]]] = []
        self.audio_received = bytearray()  # decoded PCM16, in order
        self.input_ms = 0.0
        self.function_calls: list[FunctionCallRecord] = []
        self.tool_responses: list[dict[str, Any]] = []
        self.cancellations: list[list[str]] = []
        self.interruptions: list[Interruption] = []
        self.cancelled_ids: set[str] = set()
        self.handles: list[str] = []
        self.resumptions = 0

    def new_handle(self) -> str:
        handle = "Cg" + base64.urlsafe_b64encode(self.sim.rng.randbytes(24)).decode().rstrip("=")
        self.sim.handles[handle] = HandleEntry(self, dataclasses.replace(self.state))
        self.handles.append(handle)
        return handle

    def handle_expired(self, now: float) -> bool:
        if self.connection is not None or self.closed_at is None:
            return False
        return now - self.closed_at > self.sim.handle_seconds


# -- the server ------------------------------------------------------------------------------


class GeminiSimulator:
    """The Live WebSocket and the generateContent stub on one port; `start()`, then `url`."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        strict: bool = True,
        validate_server: bool = False,
        speed: float = 4.0,
        connection_seconds: float = 600.0,
        go_away_before: float = 1.0,
        seed: int = 7,
        cancel_blocking_on_speech: bool = True,
        speak_words: bool = False,
        blocking_call_turn: str = CALL_TURN_CONTINUES,
    ) -> None:
        if blocking_call_turn not in CALL_TURNS:
            raise ValueError(f"blocking_call_turn is one of {CALL_TURNS}, not {blocking_call_turn!r}")
        self.script = script or Script()
        self.speak_words = speak_words  # voice the words with eSpeak NG when it is there
        self.validator = load_validator(required=strict)
        self.validate_server = validate_server
        self.speed = speed
        self.connection_seconds = connection_seconds
        self.go_away_before = go_away_before
        self.cancel_blocking_on_speech = cancel_blocking_on_speech
        self.blocking_call_turn = blocking_call_turn
        self.rng = random.Random(seed)
        self.sessions: list[SimSession] = []
        self.connections: list[SimConnection] = []
        self.violations: list[str] = []
        self.usage_sent: list[dict[str, Any]] = []
        self.resumptions: list[Resumption] = []
        self.failed_resumptions: list[str] = []  # unknown or expired handles
        self.handles: dict[str, HandleEntry] = {}
        self.handle_seconds = 7200.0  # a handle lives this long after its session's last connection
        self.summary_requests: list[dict[str, Any]] = []
        self.summary_usage: list[dict[str, Any]] = []
        self.attempts = 0  # WebSocket upgrade requests, refused ones included
        self.keep_audio = True  # False: caller audio is not kept (long or large runs)
        # Validate one audio message in this many with the SDK (always a connection's first);
        # above 1 only for load runs, where audio is most of the traffic.
        self.check_audio_every = 1
        # turnComplete waits for the end of real-time playback, as the service assumes it.
        self.assume_playback = True
        # Misbehaviour on demand.
        self.bad_key = False
        self.quota_exceeded = False
        self.refuse_next = 0  # answer the next N upgrade requests with HTTP 503
        self.refuse_all = False
        self.connect_delay = 0.0
        self.drop_on: Callable[[dict[str, Any]], bool] | None = None  # abort TCP on a match
        self.close_with: tuple[int, str] | None = None  # close the next connection after setupComplete
        self.malformed_next: str | None = None  # "not_json" or "unknown_field": send one such message
        self.force_mime: str | None = None  # output audio with this mime type (and its rate)
        # Wire forms a client must read (spec §2, §6, §12), sent as is (the SDK types know the
        # canonical form only, which is what is validated): a top-level field of a newer API
        # version beside every audio serverContent, and top-level fields in proto snake_case.
        self.unknown_field_on_audio: str | None = None
        self.snake_case_fields = False
        self.summary_delay = 0.0
        self.summary_status: int | None = None  # answer generateContent with this HTTP error
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0

    # -- serving

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> GeminiSimulator:
        app = web.Application()
        app.router.add_get(WS_PATH, self._websocket)
        app.router.add_post(REST_PATH, self._generate_content)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._host, self._port = self._runner.addresses[0][:2]
        return self

    async def stop(self) -> None:
        self.drop_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}{WS_PATH}"

    @property
    def api_base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def _key_problems(self, request: web.Request) -> tuple[bool, list[str]]:
        found = []
        if "key" in request.query:
            found.append("API key in the URL (?key=): it leaks into logs; send x-goog-api-key")
        has_key = bool(request.headers.get("x-goog-api-key") or request.query.get("key"))
        if not has_key:
            found.append("request without x-goog-api-key")
        return has_key, found

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        if self.refuse_all or self.refuse_next > 0:
            self.refuse_next = max(0, self.refuse_next - 1)
            return web.Response(status=503, text="unavailable\n")
        has_key, problems = self._key_problems(request)
        self.violations += problems
        if not has_key:
            return web.json_response(
                _google_error(403, "PERMISSION_DENIED", "The caller does not have permission"), status=403
            )
        ws = web.WebSocketResponse(timeout=5.0, compress=False)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="a WebSocket upgrade is expected\n")
        transport = request.transport
        await ws.prepare(request)
        connection = SimConnection(self, ws, transport)
        self.connections.append(connection)
        await connection.run()
        return ws

    # -- generateContent (the summary)

    async def _generate_content(self, request: web.Request) -> web.Response:
        has_key, problems = self._key_problems(request)
        self.violations += problems
        if not has_key:
            return web.json_response(
                _google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."),
                status=403,
            )
        model = request.match_info["model"]
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.summary_requests.append({"model": model, "body": body})
        problems = request_rules(body)
        if body is not None and self.validator is not None:
            problems = self.validator.request_problems(raw, body) + problems
        if problems:
            self.violations += [f"generateContent: {p}" for p in problems]
            return web.json_response(_google_error(400, "INVALID_ARGUMENT", INVALID_ARGUMENT), status=400)
        if "live" in model or "native-audio" in model:
            error = _google_error(404, "NOT_FOUND", _not_found(model, "generateContent"))
            return web.json_response(error, status=404)
        delay = self.summary_delay or self.script.summary_delay
        if delay:
            await asyncio.sleep(delay)
        if self.summary_status is not None:
            status = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}.get(
                self.summary_status, "UNKNOWN"
            )
            return web.json_response(
                _google_error(self.summary_status, status, "simulated failure"), status=self.summary_status
            )
        answer = self._summary_response(model, body)
        if self.validate_server and self.validator is not None:
            self.violations += [
                f"simulator sent an invalid generateContent response: {p}"
                for p in self.validator.response_problems(answer)
            ]
        self.summary_usage.append(answer["usageMetadata"])
        return web.json_response(answer)

    def _summary_response(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        text = self.script.summary_text
        prompt_text = [*_texts(_get(body, "systemInstruction"))]
        for content in _get(body, "contents"):
            prompt_text += _texts(content)
        prompt = 4 + sum(len(t) for t in prompt_text) // 4
        output = max(1, len(text) // 4)
        return {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": prompt,
                "candidatesTokenCount": output,
                "totalTokenCount": prompt + output,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
                "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": output}],
            },
            "modelVersion": model,
            "responseId": base64.urlsafe_b64encode(self.rng.randbytes(12)).decode(),
        }

    # -- controls and observation for tests

    def drop_all(self) -> None:
        """Cut every open connection at the TCP level."""
        for connection in self.connections:
            if not connection.finished:
                connection.drop()

    def expire_handles(self) -> None:
        """Make every handle issued so far unknown, as after its two hours."""
        self.handles.clear()

    @property
    def client_messages(self) -> list[dict[str, Any]]:
        return [m for c in self.connections for m in c.received]

    def messages_of(self, kind: str) -> list[dict[str, Any]]:
        """Client messages of one kind ("setup", "realtimeInput", "toolResponse", …)."""
        return [m for m in self.client_messages if message_kind(m) == kind]

    @property
    def function_calls(self) -> list[FunctionCallRecord]:
        return [c for s in self.sessions for c in s.function_calls]

    @property
    def tool_responses(self) -> list[dict[str, Any]]:
        return [r for s in self.sessions for r in s.tool_responses]

    @property
    def cancellations(self) -> list[list[str]]:
        return [c for s in self.sessions for c in s.cancellations]

    @property
    def interruptions(self) -> list[Interruption]:
        return [i for s in self.sessions for i in s.interruptions]

    def usage_totals(self, include_summary: bool = False) -> dict[str, int]:
        """Every usageMetadata sent, summed by modality into the product's six variables
        (spec §9): the same keys as `RealtimeSimulator.usage_totals`."""
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
        wanted = (
            ("input_text", "promptTokensDetails", "TEXT"),
            ("input_audio", "promptTokensDetails", "AUDIO"),
            ("input_cached_text", "cacheTokensDetails", "TEXT"),
            ("input_cached_audio", "cacheTokensDetails", "AUDIO"),
            ("output_text", "responseTokensDetails", "TEXT"),
            ("output_audio", "responseTokensDetails", "AUDIO"),
            ("output_text", "candidatesTokensDetails", "TEXT"),
        )
        for usage in self.usage_sent + (self.summary_usage if include_summary else []):
            for key, details, modality in wanted:
                totals[key] += sum(
                    d["tokenCount"] for d in usage.get(details, []) if d["modality"] == modality
                )
        return totals


class SimConnection:
    """One Live WebSocket: its setup, input, turn detection and the model's turns."""

    def __init__(self, sim: GeminiSimulator, ws: web.WebSocketResponse, transport: Any) -> None:
        self.sim = sim
        self.ws = ws
        self.transport = transport
        self.opened_at = time.monotonic()
        self.session: SimSession | None = None
        self.setup: dict[str, Any] | None = None
        self.traits = _LIVE_38
        self.received: list[dict[str, Any]] = []
        self.audio_received = bytearray()
        self.input_ms = 0.0
        self.close_code: int | None = None
        self.close_reason: str | None = None  # ours, when the simulator closed
        self.finished = False
        self.go_away_sent = False
        self.calls: dict[str, PendingCall] = {}
        self.generation: Generation | None = None
        self.queued: deque[Turn] = deque(maxlen=MAX_QUEUED)  # answers for when the model is idle
        self.awaiting_input: Turn | None = None  # a clientContent answer waiting for realtimeInput
        # From the setup.
        self.vad_enabled = True
        self.interrupts = True
        self.silence_ms = DEFAULT_SILENCE_MS
        self.start_ms = START_MS["START_SENSITIVITY_HIGH"]
        self.input_transcription = False
        self.output_transcription = False
        self.resumption = False
        self.behaviors: dict[str, str] = {}
        self.preamble_tokens = 40
        # Turn detection.
        self._carry = b""
        self._resample_state: Any = None
        self._speaking = False
        self._activity = False  # between activityStart and activityEnd (detection disabled)
        self._voiced_ms = 0
        self._silent_ms = 0
        self._turn_voiced_ms = 0
        self._barged = False
        self._audio_messages = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

    # -- plumbing

    async def run(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._on_frame(frame.data)
                elif frame.type == WSMsgType.ERROR:
                    break
        finally:
            self._finish()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _finish(self) -> None:
        self.finished = True
        if self.close_code is None:
            self.close_code = self.ws.close_code or 1006
        self.generation = None
        if self.session is not None and self.session.connection is self:
            self.session.connection = None
            self.session.closed_at = time.monotonic()

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator task failed", exc_info=task.exception())

    async def close(self, code: int, reason: str) -> None:
        if self.ws.closed:
            return
        self.close_code, self.close_reason = code, reason
        with contextlib.suppress(ConnectionError):
            await self.ws.close(code=code, message=reason.encode()[:123])

    async def _refuse(self, problems: list[str]) -> None:
        self.sim.violations.extend(problems)
        await self.close(1007, INVALID_ARGUMENT)

    async def send(self, message: dict[str, Any], audio: bool = False) -> None:
        if self.ws.closed:
            return
        if self.sim.malformed_next is not None and "setupComplete" not in message:
            kind, self.sim.malformed_next = self.sim.malformed_next, None
            await self._send_raw(_malformed(kind))
        data = json.dumps(message, separators=(",", ":")).encode()
        if self.sim.validate_server and self.sim.validator is not None:
            self.sim.violations += [
                f"simulator sent an invalid message: {p}"
                for p in self.sim.validator.server_problems(data, message)
            ]
        wire = self._wire_form(message, audio)
        if wire is not message:
            data = json.dumps(wire, separators=(",", ":")).encode()
        if not audio and self.session is not None:
            self.session.timeline.append((time.monotonic(), "out", message))
        if await self._send_raw(data) and "usageMetadata" in message:
            self.sim.usage_sent.append(message["usageMetadata"])

    def _wire_form(self, message: dict[str, Any], audio: bool) -> dict[str, Any]:
        wire = message
        if audio and self.sim.unknown_field_on_audio:
            wire = {**wire, self.sim.unknown_field_on_audio: {"note": "a field of a newer API version"}}
        if self.sim.snake_case_fields:
            wire = {_snake(key): value for key, value in wire.items()}
        return wire

    async def _send_raw(self, data: bytes) -> bool:
        # Binary frames holding UTF-8 JSON, as the service sends them.
        async with self._send_lock:
            if self.ws.closed:
                return False
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self.ws.send_bytes(data)
            except ConnectionError:
                return False
            except TimeoutError:
                self.drop()
                return False
        return True

    # -- client messages

    async def _on_frame(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            await self._refuse(["client sent a frame that is not JSON"])
            return
        audio = _is_audio_input(message)
        if self.sim.keep_audio or not audio:
            self.received.append(message)
            if self.session is not None:
                self.session.received.append(message)
        if not audio and self.session is not None:
            self.session.timeline.append((time.monotonic(), "in", message))
        if self.sim.drop_on is not None and self.sim.drop_on(message):
            self.drop()
            return
        problems = self._problems(raw, message, audio)
        if problems:
            await self._refuse(problems)
            return
        kind = message_kind(message)
        body = next(iter(message.values()))
        if self.setup is None and kind != "setup":
            await self._refuse([f"{kind} before setup: the first message must be setup"])
            return
        handlers = {
            "setup": self._on_setup,
            "realtimeInput": self._on_realtime_input,
            "clientContent": self._on_client_content,
            "toolResponse": self._on_tool_response,
            "contextUpdate": self._on_context_update,
        }
        await handlers[kind or ""](body)

    def _problems(self, raw: str | bytes, message: Any, audio: bool) -> list[str]:
        check_types = self.sim.validator is not None and isinstance(message, dict)
        if audio:
            self._audio_messages += 1
            check_types = check_types and (self._audio_messages - 1) % self.sim.check_audio_every == 0
        found = client_rules(message)
        if check_types and self.sim.validator is not None:
            found = self.sim.validator.client_problems(raw, message) + found
        return found

    # -- setup and resumption

    async def _on_setup(self, setup: dict[str, Any]) -> None:
        if self.setup is not None:
            await self._refuse(["setup sent twice on one connection"])
            return
        self.setup = setup
        if self.sim.bad_key:
            await self.close(1007, BAD_KEY)
            return
        if self.sim.quota_exceeded:
            await self.close(1011, QUOTA)
            return
        model = str(_get(setup, "model")).removeprefix("models/")
        traits = MODELS.get(model)
        if traits is None:
            await self.close(1008, _not_found(model, "bidiGenerateContent"))
            return
        handle = _get(_get(setup, "sessionResumption"), "handle")
        session = await self._resume(handle, model) if handle else SimSession(self.sim, model, setup)
        if session is None:
            return
        if not handle:
            self.sim.sessions.append(session)
        self._attach(session, traits, setup)
        await self.send({"setupComplete": {}})
        self._spawn(self._deadline())
        if self.sim.close_with is not None:
            (code, reason), self.sim.close_with = self.sim.close_with, None
            await self.close(code, reason)

    async def _resume(self, handle: str, model: str) -> SimSession | None:
        entry = self.sim.handles.get(handle)
        if entry is None or entry.session.handle_expired(time.monotonic()):
            self.sim.failed_resumptions.append(handle)
            await self.close(1007, INVALID_ARGUMENT)
            return None
        session = entry.session
        if session.model != model:
            await self._refuse(
                [f"setup.model {model!r} differs from the resumed session's {session.model!r}"]
            )
            return None
        if session.connection is not None and not session.connection.finished:
            self.sim.violations.append("resumed while the session's previous connection is still open")
            await self.close(1011, INTERNAL)
            return None
        session.state = dataclasses.replace(entry.state)
        session.resumptions += 1
        self.sim.resumptions.append(Resumption(session.id, handle, time.monotonic()))
        return session

    def _attach(self, session: SimSession, traits: ModelTraits, setup: dict[str, Any]) -> None:
        self.session = session
        self.traits = traits
        session.connection = self
        session.connections.append(self)
        session.received.append({"setup": setup})
        session.timeline.append((time.monotonic(), "in", {"setup": setup}))
        config = _get(setup, "realtimeInputConfig") or {}
        detection = _get(config, "automaticActivityDetection") or {}
        self.vad_enabled = not _get(detection, "disabled")
        self.interrupts = _get(config, "activityHandling") != "NO_INTERRUPTION"
        self.silence_ms = int(_get(detection, "silenceDurationMs") or DEFAULT_SILENCE_MS)
        start = START_MS.get(_get(detection, "startOfSpeechSensitivity"), START_MS["START_SENSITIVITY_HIGH"])
        self.start_ms = max(start, int(_get(detection, "prefixPaddingMs") or 0))
        self.input_transcription = _get(setup, "inputAudioTranscription") is not None
        self.output_transcription = _get(setup, "outputAudioTranscription") is not None
        self.resumption = _get(setup, "sessionResumption") is not None
        self._configure(_get(setup, "systemInstruction"), _get(setup, "tools"))

    def _configure(self, instruction: Any, tools: Any) -> None:
        declarations = [d for tool in tools or [] for d in _get(tool, "functionDeclarations") or []]
        for declaration in declarations:
            behavior = _get(declaration, "behavior") or self.traits.default_behavior
            self.behaviors[str(_get(declaration, "name"))] = (
                "BLOCKING" if self.traits.blocking_only else str(behavior)
            )
        self.preamble_tokens = 40 + sum(len(t) for t in _texts(instruction)) // 4 + 20 * len(declarations)

    async def _deadline(self) -> None:
        await asyncio.sleep(max(0.0, self.sim.connection_seconds - self.sim.go_away_before))
        self.go_away_sent = True
        await self.send({"goAway": {"timeLeft": _duration(self.sim.go_away_before)}})
        await asyncio.sleep(self.sim.go_away_before)
        await self.close(1011, DEADLINE)

    async def _on_context_update(self, body: dict[str, Any]) -> None:
        tools = _get(body, "tools")
        instruction = _get(body, "systemInstruction")
        self._configure(
            instruction if instruction is not None else _get(self.setup, "systemInstruction"),
            _get(tools, "tools") if tools is not None else _get(self.setup, "tools"),
        )

    # -- realtime input and turn detection

    async def _on_realtime_input(self, body: dict[str, Any]) -> None:
        if _get(body, "audio") is not None:
            await self._on_audio(_get(body, "audio"))
        elif _get(body, "text") is not None:
            await self._on_text(_get(body, "text"))
        elif _get(body, "audioStreamEnd") is not None:
            await self._on_stream_end()
        elif _get(body, "activityStart") is not None:
            await self._on_activity(start=True)
        elif _get(body, "activityEnd") is not None:
            await self._on_activity(start=False)
        if self.awaiting_input is not None and not self.ws.closed:
            # The 3.x models run inference on clientContent only at the next realtime input.
            turn, self.awaiting_input = self.awaiting_input, None
            self._answer(turn)

    async def _on_audio(self, audio: dict[str, Any]) -> None:
        assert self.session is not None
        rate = _pcm_rate(_get(audio, "mimeType")) or IN_RATE  # the rules refused any other type
        pcm = _b64decode(_get(audio, "data") or "")
        milliseconds = len(pcm) / 2 / rate * 1000
        self.input_ms += milliseconds
        self.session.input_ms += milliseconds
        if self.sim.keep_audio:
            self.audio_received += pcm
            self.session.audio_received += pcm
        if rate != IN_RATE:
            pcm, self._resample_state = audioop.ratecv(pcm, 2, 1, rate, IN_RATE, self._resample_state)
        data = self._carry + pcm
        whole = len(data) - len(data) % WINDOW_BYTES
        self._carry = data[whole:]
        for start in range(0, whole, WINDOW_BYTES):
            await self._window(data[start : start + WINDOW_BYTES])

    async def _window(self, window: bytes) -> None:
        assert self.session is not None
        if not self.vad_enabled:
            if self._activity:
                self.session.state.context_audio_ms += 20
            return
        voiced = audioop.rms(window, 2) > SPEECH_RMS
        if not self._speaking:
            self._voiced_ms = self._voiced_ms + 20 if voiced else 0
            if self._voiced_ms >= self.start_ms:
                self._speaking = True
                self._silent_ms = 0
                self._turn_voiced_ms = self._voiced_ms
                self.session.state.context_audio_ms += self._voiced_ms
            return
        self.session.state.context_audio_ms += 20
        self._silent_ms = 0 if voiced else self._silent_ms + 20
        self._turn_voiced_ms += 20 if voiced else 0
        if voiced and self._turn_voiced_ms >= BARGE_IN_MS and not self._barged:
            self._barged = True
            await self._barge_in("speech")
        if self._silent_ms >= self.silence_ms:
            await self._end_speech()

    async def _end_speech(self) -> None:
        self._speaking = False
        self._voiced_ms = 0
        self._barged = False
        await self._caller_turn_ended()

    async def _on_stream_end(self) -> None:
        if not self.vad_enabled:
            await self._refuse(["realtimeInput.audioStreamEnd is only for automatic activity detection"])
        elif self._speaking:
            await self._end_speech()

    async def _on_activity(self, start: bool) -> None:
        name = "activityStart" if start else "activityEnd"
        if self.vad_enabled:
            await self._refuse([f"realtimeInput.{name} needs automaticActivityDetection.disabled"])
        elif start == self._activity:
            await self._refuse([f"realtimeInput.{name} out of order"])
        elif start:
            self._activity = True
            await self._barge_in("activity")
        else:
            self._activity = False
            await self._caller_turn_ended()

    async def _barge_in(self, reason: str) -> None:
        gen = self.generation
        if gen is None or gen.completing or not self.interrupts:
            return
        if gen.waiting is not None and not self.sim.cancel_blocking_on_speech:
            return
        await self._interrupt(reason)

    async def _caller_turn_ended(self) -> None:
        assert self.session is not None
        state = self.session.state
        state.user_turns += 1
        state.history += 1
        transcript = self._caller_transcript(state.user_turns) if self.input_transcription else None
        gen = self.generation
        idle = gen is None or gen.completing
        if idle:
            self._answer(self._ordinary_answer(), transcript)
            return
        if transcript is not None:
            await self._input_transcription(transcript)
        if gen is not None and gen.waiting is None and not self.interrupts:
            self.queued.append(self._ordinary_answer())
        # Otherwise the model waits for a tool response (the turn is in its context), or the
        # speech was too short to interrupt: a backchannel, not a turn.

    def _caller_transcript(self, turn_number: int) -> str:
        scripted = self.sim.script.caller_transcripts
        return scripted.pop(0) if scripted else f"This is what the caller said in turn {turn_number}."

    async def _input_transcription(self, text: str) -> None:
        words = text.split(" ")
        half = max(1, len(words) // 2)
        for piece in (" ".join(words[:half]) + " ", " ".join(words[half:])):
            if piece.strip():
                await self.send({"serverContent": {"inputTranscription": {"text": piece}}})

    # -- text input

    async def _on_text(self, text: str) -> None:
        assert self.session is not None
        self.session.state.history += 1
        if not text.strip():
            return  # a nudge to run inference on earlier clientContent, not a turn of its own
        turn = text_answer(self.sim.script, text, self._ordinary_answer)
        gen = self.generation
        if gen is not None and gen.waiting is not None and not self.sim.cancel_blocking_on_speech:
            self.queued.append(turn)
            return
        await self._interrupt("text")  # real-time text may preempt the model
        self._answer(turn)

    async def _on_client_content(self, body: dict[str, Any]) -> None:
        assert self.session is not None
        turns = _get(body, "turns") or []
        self.session.state.history += len(turns)
        if not _get(body, "turnComplete"):
            return
        user = [t for turn in turns if _get(turn, "role") == "user" for t in _texts(turn)]
        await self._interrupt("clientContent")  # "will interrupt any current model generation"
        turn = text_answer(self.sim.script, " ".join(user), self._ordinary_answer)
        if self.traits.needs_realtime_input:
            self.awaiting_input = turn
        else:
            self._answer(turn)

    # -- the model's turns

    def _ordinary_answer(self) -> Turn:
        assert self.session is not None
        state = self.session.state
        turn = self.sim.script.answer(None, None, first=not state.answered)
        state.answered = True
        return turn

    def _answer(self, turn: Turn, transcript: str | None = None) -> None:
        """Speak now when idle, else after the current turn."""
        if self.generation is None:
            gen = Generation(transcript=transcript)
            self.generation = gen
            gen.task = self._spawn(self._generate(gen, turn))
        else:
            if transcript is not None:
                self._spawn(self._input_transcription(transcript))
            self.queued.append(turn)

    async def _generate(self, gen: Generation, turn: Turn) -> None:
        assert self.session is not None
        await self._resumption_update()
        if gen.transcript is not None:
            await self._input_transcription(gen.transcript)
        await self._speak(gen, turn)
        await self._complete_turn(gen)
        if self.generation is gen:
            self.generation = None
        await self._resumption_update()
        if self.generation is None and self.queued:
            self._answer(self.queued.popleft())

    async def _complete_turn(self, gen: Generation, *, at_once: bool = False) -> None:
        """generationComplete, then turnComplete with the turn's usage once the real-time
        playback the service assumes is over (`at_once`: without waiting for it)."""
        assert self.session is not None
        await self.send({"serverContent": {"generationComplete": True}})
        if self.sim.assume_playback and not at_once:
            await asyncio.sleep(max(0.0, gen.playback_end - time.monotonic()))
        gen.completing = True
        await self.send({"serverContent": {"turnComplete": True}, "usageMetadata": self._usage(gen)})
        self.session.state.history += 1

    async def _speak(self, gen: Generation, turn: Turn) -> None:
        """The turn's speech and calls; after BLOCKING calls, the continuation: in the same turn,
        or in a new one when the turn ends with the call (`blocking_call_turn`)."""
        while True:
            calls = turn.function_calls()
            trails = bool(calls) and self.sim.blocking_call_turn == CALL_TURN_TRAILS and self._blocking(calls)
            batch = None
            if turn.say:
                batch = await self._stream(gen, turn, calls_before_end=calls if trails else None)
            if not calls:
                return
            batch = batch or await self._tool_call(calls)
            if not batch.blocking:
                return
            gen.waiting = batch
            continues = self.sim.blocking_call_turn == CALL_TURN_CONTINUES
            if continues:
                await self.send({"usageMetadata": self._usage(gen)})
            else:
                await self._complete_turn(gen, at_once=True)
                await self._resumption_update()
                gen.completing = False  # still busy: the continuation is to come
            await batch.done.wait()  # bounded by the connection's deadline
            gen.waiting = None
            if not continues:
                await asyncio.sleep(TURNAROUND_SECONDS)  # a new turn: its time to first audio
            turn = self._continuation(batch)

    async def _stream(
        self, gen: Generation, turn: Turn, calls_before_end: list[tuple[str, dict[str, Any]]] | None = None
    ) -> CallBatch | None:
        """The turn's speech in uneven chunks, with its transcription. `calls_before_end`: the
        model calls them before the last TRAILING_MS of the speech went out; their toolCall
        goes first, the rest after it (the batch is returned)."""
        mime = self.sim.force_mime or f"audio/pcm;rate={OUT_RATE}"
        rate = _pcm_rate(mime) or OUT_RATE
        spoken = speech.synthesize(turn.say) if self.sim.speak_words and turn.say else None
        if spoken:  # cached; only the demo and the command voice words
            pcm = audioop.ulaw2lin(spoken, 2)
            pcm = pcm if rate == 8000 else audioop.ratecv(pcm, 2, 1, 8000, rate, None)[0]
        else:
            pcm = model_speech(round(turn.audio_seconds(), 2), self.sim.rng.randrange(4), rate)
        words = (turn.say or "").split()
        sent_words = 0
        position = 0
        batch = None
        trail_at = max(0, len(pcm) - TRAILING_MS * rate // 1000 * 2) if calls_before_end else None
        while position < len(pcm):
            if trail_at is not None and position >= trail_at:
                batch, trail_at = await self._tool_call(calls_before_end or []), None
                gen.waiting = batch if batch.blocking else None
            milliseconds = self.sim.rng.randrange(40, 241)  # uneven chunks
            end = position + milliseconds * rate // 1000 * 2
            chunk = pcm[position : end if trail_at is None else min(end, trail_at)]
            position += len(chunk)
            seconds = len(chunk) / 2 / rate
            gen.unbilled_ms += seconds * 1000
            gen.playback_end = max(gen.playback_end, time.monotonic()) + seconds
            content: dict[str, Any] = {
                "modelTurn": {
                    "parts": [{"inlineData": {"mimeType": mime, "data": base64.b64encode(chunk).decode()}}]
                }
            }
            due = round(len(words) * position / len(pcm))
            fragment = " ".join(words[sent_words:due]) + " " if due > sent_words else ""
            sent_words = max(sent_words, due)
            bundled = fragment and self.output_transcription and self.traits.bundles_transcription
            if bundled:
                content["outputTranscription"] = {"text": fragment}
            await self.send({"serverContent": content}, audio=True)
            if fragment and self.output_transcription and not bundled:
                await self.send({"serverContent": {"outputTranscription": {"text": fragment}}})
            await asyncio.sleep(seconds / self.sim.speed)
        return batch

    def _behavior(self, name: str) -> str:
        default = "BLOCKING" if self.traits.blocking_only else self.traits.default_behavior
        return self.behaviors.get(name, default)

    def _blocking(self, calls: list[tuple[str, dict[str, Any]]]) -> bool:
        return any(self._behavior(name) == "BLOCKING" for name, _ in calls)

    async def _tool_call(self, calls: list[tuple[str, dict[str, Any]]]) -> CallBatch:
        assert self.session is not None
        wire = []
        ids = []
        blocking = False
        for name, args in calls:
            call_id = f"function-call-{self.sim.rng.randrange(10**18, 10**19)}"
            behavior = self._behavior(name)
            blocking = blocking or behavior == "BLOCKING"
            ids.append(call_id)
            wire.append({"id": call_id, "name": name, "args": args})
            self.session.function_calls.append(
                FunctionCallRecord(call_id, name, args, behavior == "BLOCKING", time.monotonic())
            )
        batch = CallBatch(names=[name for name, _ in calls], blocking=blocking, open=set(ids))
        for call_id, (name, _) in zip(ids, calls, strict=True):
            self.calls[call_id] = PendingCall(call_id, name, batch)
        self.session.state.history += 1
        await self.send({"toolCall": {"functionCalls": wire}})
        return batch

    def _continuation(self, batch: CallBatch) -> Turn:
        return self.sim.script.answer("farewell", None) if batch.farewell else self._ordinary_answer()

    async def _interrupt(self, reason: str) -> None:
        """Stop the current turn: `interrupted`, its pending blocking calls cancelled, `turnComplete`."""
        assert self.session is not None
        gen = self.generation
        if gen is None or gen.completing:
            return
        self.generation = None
        await _cancel_and_wait(gen.task)
        cancelled = sorted(gen.waiting.open) if gen.waiting is not None else []
        self.session.interruptions.append(Interruption(time.monotonic(), reason, tuple(cancelled)))
        await self.send({"serverContent": {"interrupted": True}})
        if cancelled:
            for call_id in cancelled:
                self.calls.pop(call_id, None)
            self.session.cancelled_ids.update(cancelled)
            self.session.cancellations.append(cancelled)
            await self.send({"toolCallCancellation": {"ids": cancelled}})
        await self.send({"serverContent": {"turnComplete": True}, "usageMetadata": self._usage(gen)})
        self.session.state.history += 1
        await self._resumption_update()

    async def _resumption_update(self) -> None:
        if not self.resumption or self.session is None:
            return
        busy = self.generation is not None and not self.generation.completing
        if busy or self.calls:
            await self.send({"sessionResumptionUpdate": {}})  # resumable: false, no handle
            return
        handle = self.session.new_handle()
        await self.send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    def _usage(self, gen: Generation) -> dict[str, Any]:
        assert self.session is not None
        state = self.session.state
        text = self.preamble_tokens + 8 * state.history
        audio = state.context_audio_ms * TOKENS_PER_SECOND // 1000
        out = round(gen.unbilled_ms * TOKENS_PER_SECOND / 1000)
        gen.unbilled_ms = 0.0
        usage: dict[str, Any] = {
            "promptTokenCount": text + audio,
            "responseTokenCount": out,
            "totalTokenCount": text + audio + out,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": text},
                {"modality": "AUDIO", "tokenCount": audio},
            ],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": out}],
        }
        if self.traits.thoughts:
            usage["thoughtsTokenCount"] = 16  # observed: not in totalTokenCount
        return usage

    # -- tool responses

    async def _on_tool_response(self, body: dict[str, Any]) -> None:
        assert self.session is not None
        problems = []
        finished: list[CallBatch] = []
        for response in _get(body, "functionResponses"):
            self.session.tool_responses.append(response)
            call_id = _get(response, "id")
            call = self.calls.get(call_id)
            if call is None:
                if call_id not in self.session.cancelled_ids:  # a late answer to a cancelled call is harmless
                    problems.append(f"toolResponse: no pending function call with id {call_id!r}")
                continue
            if _get(response, "name") != call.name:
                problems.append(
                    f"toolResponse: id {call_id!r} is {call.name!r}, not {_get(response, 'name')!r}"
                )
                continue
            if _get(response, "willContinue"):
                continue  # more results for this id follow
            scheduling = _get(response, "scheduling") or _get(_get(response, "response"), "scheduling")
            self._resolve(call, scheduling, finished)
        if problems:
            await self._refuse(problems)
            return
        self.session.state.history += 1
        for batch in finished:
            if batch.blocking:
                batch.done.set()
            else:
                await self._scheduled(batch)
        if self.generation is None and not self.calls:
            await self._resumption_update()

    def _resolve(self, call: PendingCall, scheduling: Any, finished: list[CallBatch]) -> None:
        del self.calls[call.id]
        batch = call.batch
        batch.open.discard(call.id)
        if isinstance(scheduling, str) and scheduling in SCHEDULING_URGENCY:
            if (
                batch.scheduling is None
                or SCHEDULING_URGENCY[scheduling] > SCHEDULING_URGENCY[batch.scheduling]
            ):
                batch.scheduling = scheduling
        if not batch.open:
            finished.append(batch)

    async def _scheduled(self, batch: CallBatch) -> None:
        """A NON_BLOCKING batch is answered: its `scheduling` says what the model does now."""
        scheduling = batch.scheduling or "WHEN_IDLE"
        if scheduling == "SILENT":
            return
        gen = self.generation
        if scheduling == "INTERRUPT" and gen is not None and gen.waiting is None:
            await self._interrupt("scheduling")
        self._answer(self._continuation(batch))


async def _cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


def _malformed(kind: str) -> bytes:
    if kind == "not_json":
        return b"\x00{this is not JSON"
    return json.dumps({"serverContent": {"turnComplete": True}, "surpriseField": {"x": 1}}).encode()


# -- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A local Gemini Live API stand-in for trying the connector.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8083)
    p.add_argument(
        "--speed",
        type=float,
        default=4.0,
        help="how much faster than real time audio is generated (default 4)",
    )
    p.add_argument(
        "--connection-seconds",
        type=float,
        default=600.0,
        help="connection lifetime before goAway (default 600)",
    )
    p.add_argument(
        "--speak", action="store_true", help="voice the answers' words with eSpeak NG when it is installed"
    )
    return p


async def _serve(args: argparse.Namespace) -> None:
    sim = GeminiSimulator(
        strict=False, speed=args.speed, connection_seconds=args.connection_seconds, speak_words=args.speak
    )
    await sim.start(args.host, args.port)
    print(f"Gemini Live simulator on {sim.url}  (set GEMINI_LIVE_URL to it)", flush=True)
    print(f"generateContent on {sim.api_base_url}  (set GEMINI_API_BASE_URL to it)", flush=True)
    try:
        with contextlib.suppress(asyncio.CancelledError):
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
