"""The seam between the call core and a model backend.

The call core (`call_bridge.py`) owns the call and knows no model API. A backend speaks one
vendor's wire protocol on one socket (`ModelSession`) and turns what it reads into the few typed
events below; the core drives it with the session's commands. Each backend declares what it can
do in its `Capabilities`, and the core reads those flags instead of asking which vendor it talks
to. A session's own state (ids, response bookkeeping, clocks) is born with its socket and dies
with it; what outlives a socket (the transcript, usage, the outcome) is the core's.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from config import CallConfig

# -- reading what a peer sent ------------------------------------------------------------------
# Server events come from a peer: a field of the wrong type reads as absent, never as a crash.


def peer_field(value: Any, *path: str) -> Any:
    """A field deep in a JSON object, or None when any step is missing or not an object."""
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def peer_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def peer_number(value: Any) -> bool:
    """A JSON number (not a boolean) that is not negative."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def peer_count(value: Any) -> int:
    """A token count: a positive integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# -- what a backend can do ----------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What a backend does itself that changes what the core does; the core adapts to these,
    never to a vendor's name. Differences the backend absorbs on its own (how a tool result is
    handed over, whether the farewell is the model's continuation, where the summary is made)
    stay behind its commands and are not flags."""

    # It can be told how much of a cut utterance the caller heard (Realtime's truncate).
    truncation: bool = False
    # It reports the caller starting and stopping to speak; otherwise the core learns of the
    # caller's voice only when the backend says the bot was interrupted.
    caller_speech_events: bool = False


# -- what was said ------------------------------------------------------------------------------


@dataclass(eq=False)
class Utterance:
    """One thing the bot says: its audio goes to the pacer tagged with this object, a barge-in
    records what the caller heard of it, and once stale none of it reaches the caller."""

    key: str  # the backend's own id for it
    purpose: str = "answer"  # answer, greeting, filler, farewell
    socket: int = 0  # the socket (generation) it came from
    received_bytes: int = 0  # μ-law audio received for it, 8 bytes a millisecond
    text: str = ""  # what the model says it said (the transcript), once known
    heard_ms: int | None = None  # set when a barge-in cut it
    stale: bool = False  # cut (or its response was): late audio of it is dropped
    done: bool = False  # the backend sent all of it

    @property
    def received_ms(self) -> int:
        return self.received_bytes // 8

    def heard_text(self) -> str:
        """The transcript as far as the caller heard it (all of it when never cut)."""
        if self.heard_ms is None or not self.text:
            return self.text
        fraction = self.heard_ms / self.received_ms if self.received_ms else 0.0
        words = self.text.split()
        return " ".join(words[: round(len(words) * max(0.0, min(1.0, fraction)))])


@dataclass
class Transcript:
    """Both sides of the conversation, in conversation order: for the summary, and to restore a
    new session when a socket is replaced."""

    max_turns: int = 200
    _turns: dict[object, list[Any]] = field(default_factory=dict)  # key -> [role, text or Utterance]

    def caller(self, key: str, text: str | None = None) -> None:
        """A caller turn: registered when it begins (to keep its place), its text once known."""
        turn = self._add(("user", key), "user")
        if text is not None:
            turn[1] = text.strip()

    def bot(self, utterance: Utterance) -> None:
        self._add(utterance, utterance)

    def text(self, role: str, text: str, key: str) -> None:
        """A turn that is not audio (keyed digits)."""
        self._add((role, key), role)[1] = text

    def _add(self, key: object, value: Any) -> list[Any]:
        turn = self._turns.get(key)
        if turn is None:
            role = "assistant" if isinstance(value, Utterance) else value
            turn = self._turns[key] = [role, value if isinstance(value, Utterance) else ""]
            while len(self._turns) > self.max_turns:
                del self._turns[next(iter(self._turns))]
        return turn

    def turns(self) -> list[tuple[str, str]]:
        out = []
        for role, value in self._turns.values():
            text = value.heard_text() if isinstance(value, Utterance) else value
            if text:
                out.append((role, text))
        return out

    def as_text(self) -> str:
        return "\n".join(f"{'Caller' if r == 'user' else 'Assistant'}: {t}" for r, t in self.turns())


@dataclass
class Usage:
    """What a call used, summed over every socket it had and the summary."""

    input_text: int = 0
    input_cached_text: int = 0
    input_audio: int = 0
    input_cached_audio: int = 0
    output_text: int = 0
    output_audio: int = 0
    billed_seconds: float = 0.0

    def add(self, other: Usage) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_variables(self) -> dict[str, str]:
        return {
            "TOTAL_INPUT_TEXT_TOKENS": str(self.input_text),
            "TOTAL_INPUT_CACHED_TEXT_TOKENS": str(self.input_cached_text),
            "TOTAL_INPUT_AUDIO_TOKENS": str(self.input_audio),
            "TOTAL_INPUT_CACHED_AUDIO_TOKENS": str(self.input_cached_audio),
            "TOTAL_OUTPUT_TEXT_TOKENS": str(self.output_text),
            "TOTAL_OUTPUT_AUDIO_TOKENS": str(self.output_audio),
            "TOTAL_BILLED_SECONDS": str(round(self.billed_seconds)),
        }


# -- events: backend -> core --------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The session is confirmed and takes audio and commands."""


@dataclass(frozen=True)
class UtteranceStarted:
    utterance: Utterance


@dataclass(frozen=True)
class BotAudio:
    utterance: Utterance
    audio: bytes  # μ-law 8 kHz


@dataclass(frozen=True)
class BotText:
    """The utterance's transcript is final."""

    utterance: Utterance


@dataclass(frozen=True)
class UtteranceDone:
    """The backend has sent all of the utterance's audio."""

    utterance: Utterance


@dataclass(frozen=True)
class FarewellDone:
    """The farewell has been generated: all its audio is with the core."""


@dataclass(frozen=True)
class CallerSpeechStarted:
    # Where the utterance began in the caller audio sent on this socket (bytes), when known.
    audio_offset: int | None = None


@dataclass(frozen=True)
class CallerSpeechStopped:
    pass


@dataclass(frozen=True)
class Interrupted:
    """The caller cut the bot off (the backend saw it without caller speech events)."""


@dataclass(frozen=True)
class CallerTurn:
    """A caller turn began (its text may follow)."""

    key: str
    text: str | None = None


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class ToolCancelled:
    """The model no longer wants these calls (Gemini's `toolCallCancellation`): their work
    stops and their results are not handed over."""

    call_ids: tuple[str, ...]


@dataclass(frozen=True)
class UsageReport:
    usage: Usage  # what this report adds to the call's totals


Event = (
    Ready
    | UtteranceStarted
    | BotAudio
    | BotText
    | UtteranceDone
    | FarewellDone
    | CallerSpeechStarted
    | CallerSpeechStopped
    | Interrupted
    | CallerTurn
    | ToolCall
    | ToolCancelled
    | UsageReport
)
EventSink = Callable[[Event], None]


class ModelFailed(Exception):
    """The model side cannot go on and no retry can cure it (a refused key, quota, a wrong
    format): the call ends at once with escalation. The text goes in the `disconnect` info."""


class SessionEnd(enum.Enum):
    """Why `ModelSession.run` returned."""

    DROPPED = "dropped"  # the socket went (or the service closed it)
    RECYCLED = "recycled"  # replaced at a quiet moment before a service limit


# -- what a session is given at start -----------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call, vendor-neutral: name, description, JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class CallSpec:
    """Everything about the call a backend needs to start a session, resolved once at `open`."""

    call: CallConfig
    instructions: str
    tools: tuple[ToolSpec, ...] = ()
    mcp_tools: tuple[dict[str, Any], ...] = ()  # remote MCP entries (OpenAI APIs only)


@dataclass(frozen=True)
class SessionStart:
    """What one socket starts with: the call, and (from the second socket on) the conversation
    so far or an opaque handle the backend gave for resuming."""

    spec: CallSpec
    socket: int  # 1 for the call's first socket
    history: tuple[tuple[str, str], ...] = ()  # (role, text), oldest first
    resume: object | None = None


class ModelSession(Protocol):
    """One socket to a model. Commands never block: they queue frames for the socket's writer."""

    capabilities: Capabilities

    def begin(self, start: SessionStart) -> None:
        """Send the session's configuration (and the conversation so far, on a replacement)."""

    def send_audio(self, pcmu: bytes) -> None:
        """Caller audio, μ-law 8 kHz, in order."""

    def say(self, purpose: str, instructions: str) -> None:
        """Make the model speak now: a greeting, a holding phrase, a limit's farewell."""

    def user_input(self, text: str) -> None:
        """Something the caller gave that is not speech (keyed digits); the model answers it."""

    def note(self, text: str) -> None:
        """Silent context (a tool result for a replaced socket); the model goes on from it."""

    def tool_result(self, call_id: str, output: str, *, respond: bool = True) -> None:
        """The result of a tool call; the model goes on (never over the caller) unless
        `respond` is False (the call is ending and nothing more is to be said)."""

    def farewell(self, instructions: str, call_id: str | None = None, output: str | None = None) -> None:
        """The call is ending: hand over the call-control result (if any), lock turns so the
        caller's voice neither cuts the farewell nor starts another answer, get it spoken."""

    def heard(self, cuts: list[Utterance]) -> None:
        """A barge-in cut these utterances: tell the model what the caller heard of each."""

    def cancel_answer(self) -> None:
        """The caller pressed a key over the bot: stop the answer running or about to."""

    def set_language(self, spec: CallSpec) -> None:
        """The call's language changed (an AudioHook `update`)."""

    def caller_paused(self) -> None:
        """Genesys paused the stream: no caller audio will come for a while."""

    def update_tools(self, spec: CallSpec) -> None:
        """Data Actions became ready after the session began."""

    def tick(self) -> None:
        """About once a second, for what a session watches over time."""

    def unfinished(self) -> bool:
        """After `run`: a response was running or wanted when the socket ended."""

    def last_error(self) -> str | None:
        """The last error the service gave before the socket proved healthy (for the log)."""

    @property
    def healthy(self) -> bool:
        """Confirmed and alive a few seconds, or a response completed: more than a handshake."""

    async def run(self, events: EventSink, quiet: Callable[[], bool]) -> SessionEnd:
        """Read the socket until it ends; raises ModelFailed for what no retry cures. `quiet`
        says whether this is a moment to replace the socket unnoticed."""

    def handover(self) -> object | None:
        """After `run`: what the next socket may resume from (None: restore from history)."""

    async def summary(self, transcript: str) -> tuple[str | None, Usage]:
        """The conversation summary (JSON text) and what making it used."""

    async def finish(self, timeout: float) -> None:
        """An orderly end after the farewell (final usage arrives as events meanwhile)."""

    async def close(self) -> None: ...


class ModelBackend(Protocol):
    """One call's way to a model: a vendor and API, its credentials and endpoint, the model."""

    vendor: str  # for the AI_VENDOR output variable
    model: str  # for AI_MODEL: the bare model or deployment name actually dialled
    capabilities: Capabilities

    label: str  # for log lines: "OpenAI", "Azure OpenAI", "Gemini"

    async def connect(self, timeout: float) -> ModelSession:
        """Open a socket (`begin` configures it). Raises ModelRefused when the service refused
        it for good, OSError/TimeoutError/InvalidHandshake when it may recover."""


class ModelRefused(ModelFailed):
    """The service refused the connection in a way a retry will not change (401, 403, 404)."""
