"""The OpenAI GPT-Live backend (full-duplex voice, μ-law 8 kHz both ways), for OpenAI and Azure.

GPT-Live is not a Realtime model. The client opens the session with `session.start` and waits for
`session.started`; the model listens while it speaks, takes turns itself and stops by itself when
the caller talks over it (no event says so); its output is one continuous track at real time,
silence included; its session timeline only moves while input audio arrives; reasoning and tools
are delegated to a Responses backend whose function calls come back nested in `response.event`.

`LiveSession` turns that into the call core's typed events (`model_backend`): utterances cut out
of the output track by silence (with a short pre-roll, so that a barge-in still finds something
to stop on the Genesys side), a barge-in inferred from the caller's voice confirmed by the track
falling silent, caller turns grouped from timeline-stamped transcript fragments, and an input
clock that keeps the timeline moving while Genesys sends nothing. What a call *does* is the core's
(`call_bridge.py`). Protocol facts: the project's GPT-Live specification (`openai-live.md`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from websockets.exceptions import ConnectionClosed, InvalidStatus

from call_control import SUMMARY_INSTRUCTIONS, summary_json
from config import ApprovalPolicy
from instructions import END_ESCALATION, END_SUCCESS
from metrics import Metrics
from model_backend import (
    BotAudio,
    BotText,
    CallerTurn,
    CallSpec,
    Capabilities,
    EventSink,
    FarewellDone,
    Interrupted,
    ModelFailed,
    ModelRefused,
    Ready,
    SessionEnd,
    SessionStart,
    ToolCall,
    Usage,
    UsageReport,
    Utterance,
    UtteranceDone,
    UtteranceStarted,
)
from model_backend import peer_count as _count
from model_backend import peer_field as _field
from model_backend import peer_number as _number
from model_backend import peer_text as _text
from model_socket import ModelSocket
from text_api import TextApi, TextApiError
from utils import ULAW_SILENCE, cancel_and_wait, ulaw_rms

log = logging.getLogger("openai-live")

PCMU_8K = {"type": "audio/pcmu", "rate": 8000}
BYTES_PER_MS = 8  # μ-law, 8 kHz

# -- the input clock: the session's timeline moves only with input audio
CLOCK_TICK = 0.05
CLOCK_GAP = 0.1  # input this far behind real time is topped up with silence
CLOCK_FRAME_MS = 100
MAX_SILENCE_BURST_MS = 1000  # after a stall, never more silence than this at once
MAX_EARLY_AUDIO = 10 * 8000  # caller audio kept until `session.started`
# Commands kept until `session.started` (nothing but `session.start` may go before it). A session
# not started within START_TIMEOUT is given up, so this bound only stops a flood: past it the
# oldest command gives way, with one warning.
MAX_EARLY_COMMANDS = 32
MAX_APPEND_BYTES = 32_000

# -- the output track
SILENCE_RMS = 60  # an output frame this quiet (16-bit RMS) is silence
END_SILENCE_MS = 800  # this much silence ends an utterance (and the bot's turn at Genesys)
STALE_END_SILENCE_MS = 200  # a cut utterance ends sooner: none of it is wanted any more
# An utterance's first audio is held this long before it goes to the pacer: the track comes at
# real time, so without it the caller would hear each frame as it arrives, with no lead to cover
# the model's jitter, and a barge-in detected a moment later would find nothing left to stop.
PREROLL_MS = 500

# -- barge-in (no event exists: spec §8)
CALLER_SPEECH_RMS = 600  # caller audio this loud is voice (the level the simulators use)
WINDOW_BYTES = 20 * BYTES_PER_MS
TALK_OVER_MS = 300  # this much caller voice over the bot's utterance makes a barge-in likely
TALK_OVER_RESET = 0.5  # s of caller quiet that starts the count over
TALK_OVER_UNTIL_SILENCE_MS = 400  # voice over the utterance counts until its silence is this long
CONFIRM_SILENCE_MS = 200  # the bot's output went quiet this long: it stopped for the caller
CONFIRM_WITHIN = 0.7  # s after the caller's voice was noticed

TURN_GAP_MS = 500  # a gap this long between caller transcript fragments starts a new turn
FAREWELL_START_SECONDS = 5.0  # a farewell asked for and not begun by then is not waited for
FAREWELL_AFTER_CARRIER = 1.0  # s after the utterance in progress when the farewell was due
# A backend answer is spoken a moment after its response completes: the socket is not quiet
# until it begins, or until this long has passed without it.
ANSWER_START_SECONDS = 5.0

# An append holds at most 500 tokens (spec §12); JSON and digits run 2-3 characters a token, other
# scripts about one: each part is kept within 1,000 ASCII characters, a non-ASCII one counting two.
MAX_APPEND_COST = 1000
MAX_APPEND_PARTS = 8  # a longer text is cut: it would only flood the model's small context
MAX_HISTORY_TEXT = 1800  # characters of one startup message (the whole input has its own limit)
MAX_HISTORY_MESSAGES = 128
MAX_HISTORY_CHARS = 30_000  # the startup input holds about 8,192 rendered tokens
HEALTHY_AFTER_SECONDS = 3.0
START_TIMEOUT = 10.0  # no session.started by then: the socket is given up
RECYCLE_MARGIN_SECONDS = 120.0
RECYCLE_RETRY_SECONDS = 1.0
# The core cannot tell when a GPT-Live caller speaks: caller voice this recent is no quiet moment.
RECYCLE_AFTER_VOICE = 2.0
RECYCLE_CLOSE_WAIT = 2.0
ENDED_WAIT_SECONDS = 10.0
SUMMARY_TIMEOUT = 10.0
SUMMARY_MAX_TOKENS = 800
OWN_ID = "lv"  # the prefix of every event id we create
FATAL_ERROR_CODES = frozenset(
    {
        "invalid_api_key",
        "insufficient_quota",
        "model_not_found",
        "credit_balance_exhausted",
        "account_deactivated",
        "billing_hard_limit_reached",
    }
)

SPEAK_FIRST = "Do not wait for the caller to speak first. After that, pause and listen."
SAY_GOODBYE = "Say a short goodbye now."
FAREWELL_NOW = "Say it to the caller now, in one short sentence, and nothing else."

# The live model's part: persona and rules come from the call's instructions; this says how to
# behave on a full-duplex line and when to hand work to the backend.
LIVE_GUIDANCE = (
    "# Taking turns\n"
    "- You listen while you speak. Stop speaking as soon as the caller talks over you, and let "
    'them finish. Short acknowledgements ("mm-hmm", "I see") while the caller talks are fine.\n'
    "- Messages that tell you what to say now (a greeting, a short holding phrase, keys the caller "
    "pressed, a goodbye) come from the system: say it briefly, in your own words.\n"
    "# Delegating\n"
    "- Delegate to your backend whenever the caller wants something looked up, checked or "
    "changed: never guess what a lookup would return.\n"
    "- Delegate as well when the call should end: the caller's request is handled and they need "
    "nothing more, or they need a person. The backend ends the call and gives you the goodbye."
)
# The Responses backend's part: the business rules, then the call's own instructions.
BACKEND_RULES = (
    "You are the backend of a voice agent on a phone call. The voice agent says your answers to "
    "the caller, so answer in one to three short spoken sentences: no lists, markdown, emoji or "
    "links.\n"
    f"- When the caller's request is fully handled and they need nothing more, call {END_SUCCESS} "
    "with a one-sentence summary of what was done, then answer with one short goodbye sentence.\n"
    f"- When the caller asks for a person, is upset, or cannot be helped, call {END_ESCALATION} "
    "with the reason, then answer with one sentence telling the caller they are being transferred.\n"
    "- Use the Data Action tools (genesys_data_action_*) to look up or change the caller's data; "
    "use only what they return, and when one reports an error, say so plainly.\n"
    "- Never invent account details, prices, dates or policies."
)


# -- client events ---------------------------------------------------------------------------


def function_tools(spec: CallSpec) -> list[dict[str, Any]]:
    return [
        {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
        for t in spec.tools
    ]


def live_mcp_entry(entry: dict[str, Any], approval: ApprovalPolicy) -> dict[str, Any] | None:
    """An MCP entry GPT-Live can use. How an approval request would reach us is not documented,
    so every tool that stays callable runs without one: a tool that needs approval stays only if
    the approval policy approves it; an entry left with none is dropped."""
    setting = entry.get("require_approval", "always")
    if setting == "never":
        return entry
    label = str(entry.get("server_label"))
    exempt = set(_names(setting.get("never"))) if isinstance(setting, dict) else set()
    listed = _names(entry.get("allowed_tools"))
    if not listed:
        bare = [t for t in approval.approved_tools if ":" not in t]
        scoped = [t.split(":", 1)[1] for t in approval.approved_tools if t.startswith(f"{label}:")]
        listed = sorted({*bare, *scoped, *exempt})
    allowed = [t for t in listed if t in exempt or approval.approves(label, t)]
    if not allowed:
        log.warning(
            "MCP server %s needs approvals, which GPT-Live cannot ask for, and the approval policy "
            "approves none of its tools; dropped",
            label,
        )
        return None
    tools: Any = allowed
    if isinstance(entry.get("allowed_tools"), dict):  # a filter keeps its other terms (read_only)
        tools = {**entry["allowed_tools"], "tool_names": allowed}
    return {**entry, "allowed_tools": tools, "require_approval": "never"}


def _names(value: Any) -> list[str]:
    """The tool names of an `allowed_tools` list or of a tool filter."""
    names = value.get("tool_names") if isinstance(value, dict) else value
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def backend_tools(spec: CallSpec, approval: ApprovalPolicy) -> list[dict[str, Any]]:
    mcp = [live_mcp_entry(entry, approval) for entry in spec.mcp_tools]
    return [*function_tools(spec), *(entry for entry in mcp if entry is not None)]


def initial_input(history: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """The newest messages of the conversation, within the startup input's limits, oldest first."""
    items: list[dict[str, Any]] = []
    budget = MAX_HISTORY_CHARS
    for role, text in reversed(history):
        text = text.strip()[:MAX_HISTORY_TEXT]
        if not text or role not in ("user", "assistant"):
            continue
        budget -= len(text)
        if budget < 0 or len(items) == MAX_HISTORY_MESSAGES:
            break
        kind = "input_text" if role == "user" else "output_text"
        items.append({"role": role, "content": [{"type": kind, "text": text}]})
    return items[::-1]


def session_start(
    start: SessionStart, *, model: str, backend_model: str, approval: ApprovalPolicy, event_id: str
) -> dict[str, Any]:
    spec = start.spec
    session: dict[str, Any] = {
        "model": model,
        "instructions": f"{spec.instructions}\n\n{LIVE_GUIDANCE}",
        "audio": {"format": PCMU_8K, "output": {"voice": spec.call.voice}},
        "delegation": {
            "type": "responses",
            "responses": {
                "model": backend_model,
                "instructions": f"{BACKEND_RULES}\n\n# The call\n{spec.instructions}",
                "tools": backend_tools(spec, approval),
            },
        },
    }
    if start.history:
        session["input"] = initial_input(start.history)
    return {"type": "session.start", "event_id": event_id, "session": session}


def append_audio(pcmu: bytes) -> str:
    """`session.input_audio.append`, serialized directly: this runs for every caller frame."""
    return '{"type":"session.input_audio.append","audio":"' + base64.b64encode(pcmu).decode() + '"}'


def context_append(kind: str, content: str, event_id: str) -> dict[str, Any]:
    """A commentary, thinking or instructions append (`delegation_id` is a required key)."""
    return {"type": f"session.{kind}.append", "event_id": event_id, "delegation_id": None, "content": content}


def append_parts(content: str) -> list[str]:
    """`content` in pieces an append takes, in order; joined, they are the whole (up to
    MAX_APPEND_PARTS). A piece ends after a space where one is near, not inside a word."""
    parts: list[str] = []
    rest = content
    while rest and len(parts) < MAX_APPEND_PARTS:
        end = _fitting(rest)
        if end < len(rest):
            space = rest.rfind(" ", end // 2, end)
            end = space + 1 if space > 0 else end
        parts.append(rest[:end])
        rest = rest[end:]
    if rest:
        parts[-1] = parts[-1][:-2] + "…"
    return parts or [content]


def _fitting(text: str) -> int:
    """How many leading characters of `text` stay within one append's cost."""
    cost = 0
    for at, char in enumerate(text):
        cost += 1 if char.isascii() else 2
        if cost > MAX_APPEND_COST:
            return at
    return len(text)


def function_output(call_id: str, output: str) -> dict[str, Any]:
    return {
        "type": "response.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def farewell_output(output: str | None, instructions: str) -> str:
    """The call-control tool's result, telling the backend to say the goodbye now."""
    try:
        result = json.loads(output or "{}")
    except ValueError:
        result = None
    if not isinstance(result, dict):
        result = {"result": output}
    return json.dumps({**result, "next": f"{instructions} {FAREWELL_NOW}"})


def responses_usage(usage: Any) -> Usage:
    """A Responses `usage` object as the call's text-token counts (anything missing counts 0)."""
    return Usage(
        input_text=_count(_field(usage, "input_tokens")),
        input_cached_text=_count(_field(usage, "input_tokens_details", "cached_tokens")),
        output_text=_count(_field(usage, "output_tokens")),
    )


def response_text(response: Any) -> str:
    """The text of a Response's `output_text` parts."""
    output = _field(response, "output")
    return "".join(
        _text(_field(part, "text"))
        for item in (output if isinstance(output, list) else [])
        for part in (_field(item, "content") or [])
        if _field(part, "type") == "output_text"
    ).strip()


def _silent(frame: bytes) -> bool:
    return ulaw_rms(frame) <= SILENCE_RMS


# -- the session -----------------------------------------------------------------------------


class LiveSession:
    """One GPT-Live socket: its server events as the core's typed events, the core's commands as
    client events. Everything here lives and dies with the socket."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        truncation=False,
        caller_speech_events=False,
    )
    # Server event type -> method name. Names, not bound methods: a table of bound methods on the
    # instance would be a reference cycle keeping every finished call until a full collection.
    _HANDLERS: ClassVar[dict[str, str]] = {
        "session.started": "on_session_started",
        "session.updated": "on_session_updated",
        "session.output_audio.delta": "on_output_audio",
        "session.output_transcript.delta": "on_output_transcript",
        "session.input_transcript.delta": "on_input_transcript",
        "session.commentary.appended": "on_appended",
        "session.delegation.created": "on_delegation",
        "response.event": "on_response_event",
        "session.usage.updated": "on_usage",
        "session.closed": "on_session_closed",
        "info": "on_info",
        "error": "on_error",
    }

    def __init__(
        self,
        socket: ModelSocket,
        *,
        label: str,
        model: str,
        backend_model: str,
        approval: ApprovalPolicy,
        metrics: Metrics,
        clock: Callable[[], float],
        text_api: TextApi,
        api_base_url: str,
        headers: dict[str, str],
        summary_model: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.socket = socket
        self.label = label
        self.model = model
        self.backend_model = backend_model
        self.approval = approval
        self.metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock  # for the session's own epoch `expires_at`
        self.text_api = text_api
        self.api_base_url = api_base_url
        self.headers = headers
        self.summary_model = summary_model
        self.number = 0  # the call's socket number, from `begin`
        self.started_at: float | None = None  # `session.started`
        self.completed = False  # a delegated response completed on this socket
        self._wake_at: float | None = None  # the reader looks up from the socket then
        self.held_errors: list[str] = []  # errors before the socket proved healthy
        self._events: EventSink = lambda event: None
        self._ids = itertools.count(1)
        # Input.
        self._early = bytearray()  # caller audio before `session.started`
        self._early_warned = False
        self._early_commands: list[dict[str, Any]] = []  # commands before `session.started`
        self._early_commands_warned = False
        self._start_event = ""  # the event id of our `session.start`
        self._covered_until = 0.0  # the clock time the input sent so far reaches
        self._input_bytes = 0  # appended on this session: its input timeline, 8 bytes a ms
        self._carry = b""  # caller audio short of a whole voice window
        self._last_voiced = float("-inf")
        self._talk_over_ms = 0  # caller voice over the current utterance
        self._suspected_at: float | None = None  # when that voice made a barge-in likely
        # Output.
        self._utterances = 0
        self._current: Utterance | None = None
        self._held: bytearray | None = None  # the current utterance's pre-roll, not yet forwarded
        self._gap = bytearray()  # silence after the current utterance's last speech
        self._began_ms = 0  # the input timeline when the current utterance began
        self._spoken_to: Utterance | None = None  # where output transcript text goes
        self._spoken = ""
        self._pending_purpose: str | None = None  # asked for (greeting, filler), not begun yet
        self._bad_audio_warned = False
        # Caller turns from transcript fragments.
        self._turns = 0
        self._turn_text = ""
        self._turn_end_ms: int | None = None
        # Delegated function calls: the open batch, answered or not.
        self._open: dict[str, bool] = {}  # call id -> answered
        self._wants_answer = False  # an output of the batch asks the model to go on
        self._running: set[str] = set()  # nested responses in progress
        self._create_event: str | None = None  # a response.create no response has answered yet
        self._answer_due_at: float | None = None  # a backend answer completed, not yet begun
        self._response_of: dict[str | None, str] = {}  # delegation id -> its running response
        self._calls_of: dict[str, list[str]] = {}  # running response -> the calls it announced
        # The ending.
        self._ending = False
        self._farewell_event: str | None = None  # the farewell commentary's event id
        self._farewell_create_sent = False  # the farewell call's result went with a response.create
        self._farewell_armed = False  # the model is on its way to say the farewell
        self._farewell_asked_at: float | None = None
        self._farewell: Utterance | None = None
        self._farewell_carrier: Utterance | None = None  # in progress when the farewell was due
        self._carrier_ended_at: float | None = None
        self._farewell_done = False
        self._closing = False  # we sent session.close
        self._recycling = False
        self._closed = asyncio.Event()  # session.closed arrived (or the socket is gone)
        self._billed = 0.0  # the session's cumulative billed seconds reported so far
        self._tools_event = ""

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def new_id(self, kind: str) -> str:
        return f"{OWN_ID}{self.number}{kind}{next(self._ids)}"

    def begin(self, start: SessionStart) -> None:
        """The first frame: `session.start` (nothing else goes before `session.started`)."""
        self.number = start.socket
        self._tools_event = f"{OWN_ID}{self.number}tools"
        self._start_event = self.new_id("start")
        self.socket.send(
            session_start(
                start,
                model=self.model,
                backend_model=self.backend_model,
                approval=self.approval,
                event_id=self._start_event,
            )
        )

    def _send(self, event: dict[str, Any]) -> None:
        """A command: to the socket once the session has started, kept until then (the core
        may act at once: keys, a language, Data Actions ready, a limit's farewell)."""
        if self.started:
            self.socket.send(event)
            return
        if len(self._early_commands) >= MAX_EARLY_COMMANDS:
            del self._early_commands[0]
            if not self._early_commands_warned:
                self._early_commands_warned = True
                log.warning("%s session not started; dropping the oldest commands kept for it", self.label)
        self._early_commands.append(event)

    # -- commands

    def send_audio(self, pcmu: bytes) -> None:
        if not pcmu:
            return
        self._hear_caller(pcmu)
        if not self.started:
            self._early += pcmu
            excess = len(self._early) - MAX_EARLY_AUDIO
            if excess > 0:
                del self._early[:excess]
                if not self._early_warned:
                    self._early_warned = True
                    log.warning("%s session not started for 10 s; keeping the latest 10 s", self.label)
            return
        self._append(pcmu)
        self._covered_until = max(self._covered_until, self.clock()) + len(pcmu) / 8000

    def _append(self, pcmu: bytes) -> None:
        if self._closed.is_set():
            return  # the session is over: nothing more reaches it
        self.socket.send(append_audio(pcmu))
        self._input_bytes += len(pcmu)

    def say(self, purpose: str, instructions: str) -> None:
        if self._ending:
            return  # after the farewell nothing more is said
        self._pending_purpose = purpose
        self._commentary(f"{instructions} {SPEAK_FIRST}" if purpose == "greeting" else instructions)

    def user_input(self, text: str) -> None:
        if not self._ending:
            self._commentary(text)

    def note(self, text: str) -> None:
        if not self._ending:
            self._commentary(text)

    def _commentary(self, content: str, event_id: str | None = None) -> None:
        self._context("commentary", content, event_id or self.new_id("c"))

    def _context(self, kind: str, content: str, event_id: str) -> None:
        """An append, in as many parts as its limit needs, `event_id` on the last. A commentary's
        leading parts go as silent context: the model speaks once, with the whole text placed."""
        parts = append_parts(content)
        lead = "thinking" if kind == "commentary" else kind
        for part in parts[:-1]:
            self._send(context_append(lead, part, self.new_id("p")))
        self._send(context_append(kind, parts[-1], event_id))

    def tool_result(self, call_id: str, output: str, *, respond: bool = True) -> None:
        """Every call gets its output; the model goes on (`response.create`) once the whole batch
        has one, unless every output of it said not to (the call is ending)."""
        if self._open.get(call_id) is not False:
            log.debug("%s has no open call %s; result not sent", self.label, call_id[:40])
            return
        self._send(function_output(call_id, output))
        self._open[call_id] = True
        self._wants_answer = self._wants_answer or respond
        self._create_when_complete()

    def farewell(self, instructions: str, call_id: str | None = None, output: str | None = None) -> None:
        """The call-control result goes back with a `response.create`: the backend's spoken
        continuation is the farewell. Without one (a limit), a commentary asks for it. The
        caller's voice no longer counts as a barge-in from here on."""
        if self._ending:
            return
        self._ending = True
        self._pending_purpose = None
        self._suspected_at = None
        if call_id is not None and self._open.get(call_id) is False:
            # The wait for the farewell starts with the response.create, which other calls of
            # the batch may hold back for a while (`_create_when_complete`).
            self._send(function_output(call_id, farewell_output(output, instructions)))
            self._open[call_id] = True
            self._wants_answer = True
            self._create_when_complete()
            return
        self._farewell_event = self.new_id("bye")
        self._commentary(f"{instructions} {SAY_GOODBYE}", self._farewell_event)
        if self.started:  # else from `session.started`, when the commentary goes
            self._farewell_asked_at = self.clock()

    def heard(self, cuts: list[Utterance]) -> None:
        """Nothing to send: GPT-Live has no truncate. The service paced its own output and knows
        what was played, up to our small lead."""

    def cancel_answer(self) -> None:
        """Nothing to send: no client event cancels GPT-Live's speech. The core's barge-in stops
        the audio on the Genesys side, and the cut utterance's late audio is dropped here."""

    def set_language(self, spec: CallSpec) -> None:
        """The instructions are immutable after start: the change is appended to them."""
        language = spec.call.language
        if self._ending or not language:
            return
        text = f"From now on, speak {language} with the caller, unless they clearly prefer another language."
        self._context("instructions", text, self.new_id("lang"))

    def caller_paused(self) -> None:
        """Nothing special: the input clock fills the pause with silence at real time."""

    def update_tools(self, spec: CallSpec) -> None:
        """Data Actions became ready after the session started: the backend's tools are updated
        (the delegation type stays `responses`)."""
        if self._ending:
            return
        delegation = {"type": "responses", "responses": {"tools": backend_tools(spec, self.approval)}}
        self._send(
            {"type": "session.update", "event_id": self._tools_event, "session": {"delegation": delegation}}
        )

    def _create_when_complete(self) -> None:
        """One `response.create` once every open call has its output and no backend response is
        still announcing calls: a partial batch is refused, and an unanswered call holds every
        later one."""
        if not self._open or not all(self._open.values()) or self._running:
            return
        self._open.clear()
        wanted, self._wants_answer = self._wants_answer, False
        if not wanted:
            return
        self._create_event = self.new_id("r")
        self._send({"type": "response.create", "event_id": self._create_event})
        if self._ending and self._farewell_event is None and not self._farewell_create_sent:
            self._farewell_create_sent = True
            self._farewell_asked_at = self.clock()

    # -- life cycle

    @property
    def healthy(self) -> bool:
        if self.started_at is None:
            return False
        return self.completed or self.clock() - self.started_at >= HEALTHY_AFTER_SECONDS

    async def run(self, events: EventSink, quiet: Callable[[], bool]) -> SessionEnd:
        self._events = events
        clock = asyncio.create_task(self._input_clock(), name="live-input-clock")
        try:
            end = await self._read(quiet)
            await cancel_and_wait(clock)
            if self._closing and not self._recycling:
                # Our own session.close: the core is ending the call and stops this session
                # itself; returning now would only have it dial a session nobody would use.
                await asyncio.sleep(ENDED_WAIT_SECONDS)
            return end
        finally:
            await cancel_and_wait(clock)
            self._events = lambda event: None
            self._closed.set()

    async def _read(self, quiet: Callable[[], bool]) -> SessionEnd:
        self._wake_at = self.clock() + START_TIMEOUT
        while True:
            try:
                # One timer for many events, re-armed when the time to look up changes: the
                # start deadline, then the session's replacement before it expires.
                async with asyncio.timeout(self._wait()):
                    armed = self._wake_at
                    while self._wake_at == armed:
                        end = self.handle(await self.socket.recv())
                        if end is not None:
                            return end
            except TimeoutError:
                if not self.started:
                    log.warning("no session.started from %s within %g s", self.label, START_TIMEOUT)
                    return SessionEnd.DROPPED
                if quiet() and self._quiet():
                    return await self._recycle()
                self._wake_at = self.clock() + RECYCLE_RETRY_SECONDS
            except ConnectionClosed:
                return SessionEnd.DROPPED

    def _quiet(self) -> bool:
        """Nothing under way on this socket, and the caller has not spoken for a while."""
        recent_voice = self.clock() - self._last_voiced < RECYCLE_AFTER_VOICE
        return not (self.unfinished() or self._ending or recent_voice)

    def _wait(self) -> float | None:
        return None if self._wake_at is None else max(0.05, self._wake_at - self.clock())

    async def _recycle(self) -> SessionEnd:
        """Close the session before it expires, at a quiet moment, so that its final usage is
        counted; the core starts the next one with the conversation so far."""
        self._recycling = True
        self._send_close()
        try:
            async with asyncio.timeout(RECYCLE_CLOSE_WAIT):
                while self.handle(await self.socket.recv()) is None:
                    pass
        except (TimeoutError, ConnectionClosed):
            pass
        return SessionEnd.RECYCLED

    async def _input_clock(self) -> None:
        """Keep the session's timeline moving at real time: whenever the caller's audio falls
        behind (a Genesys pause, late frames), append silence; never a burst after a stall."""
        while True:
            # Asleep until the input could fall behind: while caller frames keep coming this
            # wakes once a frame or less, not every tick (a timer a tick per call costs CPU).
            due = self._covered_until + CLOCK_GAP - self.clock() if self.started else 0.0
            await asyncio.sleep(max(CLOCK_TICK, due))
            if not self.started:
                continue
            now = self.clock()
            behind = now - self._covered_until
            if behind <= CLOCK_GAP:
                continue
            frames = int(behind * 1000) // CLOCK_FRAME_MS
            if frames * CLOCK_FRAME_MS > MAX_SILENCE_BURST_MS:
                frames = MAX_SILENCE_BURST_MS // CLOCK_FRAME_MS
                self._covered_until = now
            else:
                self._covered_until += frames * CLOCK_FRAME_MS / 1000
            self._append(ULAW_SILENCE * (frames * CLOCK_FRAME_MS * BYTES_PER_MS))

    def tick(self) -> None:
        """Once a second from the core: errors held back, a farewell that never began."""
        self._log_held_errors()
        self._farewell_overdue()

    def unfinished(self) -> bool:
        """Work under way that the socket's end would lose: a call unanswered, a backend
        response running or asked for, its answer not yet begun, an utterance in progress."""
        due = self._answer_due_at
        answer_due = due is not None and self.clock() - due < ANSWER_START_SECONDS
        return (
            bool(self._open or self._running)
            or self._create_event is not None
            or answer_due
            or self._current is not None
        )

    def last_error(self) -> str | None:
        return self.held_errors[-1].split(":", 1)[0] if self.held_errors else None

    def handover(self) -> object | None:
        return None  # a new GPT-Live session starts from the conversation so far (`input`)

    async def summary(self, transcript: str) -> tuple[str | None, Usage]:
        """A Responses API text call, outside the voice session."""
        body = {
            "model": self.summary_model,
            "instructions": SUMMARY_INSTRUCTIONS,
            "input": transcript,
            "max_output_tokens": SUMMARY_MAX_TOKENS,
        }
        url = self.api_base_url.rstrip("/") + "/responses"
        try:
            answer = await self.text_api.post_json(url, self.headers, body, SUMMARY_TIMEOUT)
        except TextApiError as exc:
            log.warning("the conversation summary failed (%s)", exc)
            return None, Usage()
        usage = responses_usage(_field(answer, "usage"))
        text = response_text(answer)
        if not text:
            log.warning(
                "the conversation summary came back empty (%s)", _text(_field(answer, "status")) or "-"
            )
            return None, usage
        return summary_json(text), usage

    async def finish(self, timeout: float) -> None:
        """`session.close`, then `session.closed` (with the final usage) within `timeout`."""
        if self._closed.is_set():
            return
        self._send_close()
        try:
            async with asyncio.timeout(timeout):
                await self._closed.wait()
        except TimeoutError:
            log.info("no session.closed from %s within %g s", self.label, timeout)

    def _send_close(self) -> None:
        if not self._closing:
            self._closing = True
            self._early_commands.clear()  # a session ending before it started wants none of them
            self._send({"type": "session.close", "event_id": self.new_id("close")})

    async def close(self) -> None:
        await self.socket.close()

    # -- server events

    def handle(self, event: dict[str, Any]) -> SessionEnd | None:
        name = self._HANDLERS.get(_text(event.get("type")))
        return getattr(self, name)(event) if name is not None else None

    def on_session_started(self, event: dict[str, Any]) -> None:
        fmt = _field(event, "session", "audio", "format")
        if not isinstance(fmt, dict) or fmt.get("type") != "audio/pcmu" or fmt.get("rate") != 8000:
            kind = (
                f"{_field(fmt, 'type')} at {_field(fmt, 'rate')} Hz" if isinstance(fmt, dict) else repr(fmt)
            )
            raise ModelFailed(f"{self.label} audio format is {kind}, not audio/pcmu at 8000 Hz")
        self.started_at = now = self.clock()
        self._wake_at = None  # until the expiry is known, nothing to look up for
        expires = _field(event, "session", "expires_at")
        if _number(expires) and expires > self.wall_clock():
            left = expires - self.wall_clock()
            self._wake_at = now + left - min(RECYCLE_MARGIN_SECONDS, left / 4)
        early, self._early = bytes(self._early), bytearray()
        for start in range(0, len(early), MAX_APPEND_BYTES):
            self._append(early[start : start + MAX_APPEND_BYTES])
        self._covered_until = now  # that audio was the past, not the next seconds
        commands, self._early_commands = self._early_commands, []
        for command in commands:
            self.socket.send(command)
        if self._farewell_event is not None and self._farewell_asked_at is None:
            self._farewell_asked_at = now  # the farewell commentary went only now
        log.debug("%s session %s started", self.label, _text(_field(event, "session", "id")))
        self._events(Ready())

    def on_session_updated(self, event: dict[str, Any]) -> None:
        log.debug("%s session updated", self.label)

    def on_info(self, event: dict[str, Any]) -> None:
        log.info("%s info %s: %s", self.label, _text(event.get("code")), _text(event.get("message"))[:200])

    def on_delegation(self, event: dict[str, Any]) -> None:
        target = _text(_field(event, "delegation", "target"))
        log.debug("%s delegated to %s", self.label, target or "-")

    def on_appended(self, event: dict[str, Any]) -> None:
        if self._farewell_event is not None and event.get("client_event_id") == self._farewell_event:
            self._arm_farewell()

    # output: utterances cut out of the continuous track

    def on_output_audio(self, event: dict[str, Any]) -> None:
        if not self.started:
            return  # nothing plays before the format is confirmed
        try:
            frame = base64.b64decode(_text(event.get("delta")), validate=True)
        except (binascii.Error, ValueError):
            if not self._bad_audio_warned:
                self._bad_audio_warned = True
                log.warning("%s sent an audio delta that is not base64; ignored", self.label)
            return
        if frame:
            self._track(frame)
        self._farewell_overdue()

    def _track(self, frame: bytes) -> None:
        utterance = self._current
        if _silent(frame):
            if utterance is None:
                return
            self._gap += frame
            end_ms = STALE_END_SILENCE_MS if utterance.stale else END_SILENCE_MS
            if len(self._gap) >= end_ms * BYTES_PER_MS:
                self._end_utterance()
            else:
                self._confirm_barge_in(self.clock())
            return
        if utterance is None:
            utterance = self._begin_utterance()
        # An in-speech pause is kept: its silence goes out with the speech that follows it.
        audio, self._gap = bytes(self._gap) + frame, bytearray()
        if utterance.stale:
            return
        if self._held is None:
            self._forward(utterance, audio)
            return
        self._held += audio
        if len(self._held) >= PREROLL_MS * BYTES_PER_MS:
            self._release(utterance)

    def _begin_utterance(self) -> Utterance:
        self._utterances += 1
        purpose = self._pending_purpose or "answer"
        if self._farewell_armed and self._farewell is None:
            purpose = "farewell"
        self._pending_purpose = None
        utterance = Utterance(f"live{self.number}-bot{self._utterances}", purpose, self.number)
        if purpose == "farewell":
            self._farewell = utterance
        self._current, self._held, self._gap = utterance, bytearray(), bytearray()
        self._spoken_to, self._spoken = utterance, ""
        self._answer_due_at = None
        self._began_ms = self._input_bytes // BYTES_PER_MS
        self._talk_over_ms, self._suspected_at = 0, None
        log.debug("%s utterance %s begins (%s)", self.label, utterance.key, purpose)
        self._events(UtteranceStarted(utterance))
        return utterance

    def _release(self, utterance: Utterance) -> None:
        held, self._held = self._held, None
        if held:
            self._forward(utterance, bytes(held))

    def _forward(self, utterance: Utterance, audio: bytes) -> None:
        utterance.received_bytes += len(audio)
        self._events(BotAudio(utterance, audio))

    def _end_utterance(self) -> None:
        """The utterance's silence is long enough: it is over, its silent tail withheld."""
        utterance = self._current
        assert utterance is not None
        if not utterance.stale:
            self._release(utterance)
        self._current, self._held, self._gap = None, None, bytearray()
        self._suspected_at = None
        utterance.done = True
        self._events(UtteranceDone(utterance))
        self._events(BotText(utterance))
        if utterance is self._farewell_carrier:
            self._carrier_ended_at = self.clock()
        if utterance is self._farewell and not self._farewell_done:
            self._farewell_done = True
            log.debug("%s farewell spoken", self.label)
            self._events(FarewellDone())

    def on_output_transcript(self, event: dict[str, Any]) -> None:
        utterance = self._spoken_to
        if utterance is None:
            return
        self._spoken += _text(event.get("delta"))
        utterance.text = self._spoken.strip()

    # the ending

    def _arm_farewell(self) -> None:
        """The model is about to say the farewell: the next utterance to begin. One in progress
        now may run straight into it, with no silence between them: if nothing begins soon after
        that one ends, it held the farewell."""
        if self._farewell_armed:
            return
        self._farewell_armed = True
        current = self._current
        if current is not None and current.stale:
            self._end_utterance()  # a cut utterance must not swallow the farewell that follows
        elif current is not None:
            self._farewell_carrier = current

    def _farewell_overdue(self) -> None:
        """A farewell that does not come is not waited for: the core's own timeout is the last
        resort, not the rule."""
        asked = self._farewell_asked_at
        if self._farewell_done or self._farewell is not None or asked is None or self._current is not None:
            return
        now = self.clock()
        if self._carrier_ended_at is not None:
            if now - self._carrier_ended_at < FAREWELL_AFTER_CARRIER:
                return
        elif now - asked < FAREWELL_START_SECONDS:
            return
        else:
            log.info(
                "%s began no farewell within %g s; not waiting for it", self.label, FAREWELL_START_SECONDS
            )
        self._farewell_done = True
        self._events(FarewellDone())

    # barge-in: the caller's voice over the bot's utterance, confirmed by the model stopping

    def _hear_caller(self, pcmu: bytes) -> None:
        data = self._carry + pcmu
        whole = len(data) - len(data) % WINDOW_BYTES
        self._carry = data[whole:]
        voiced = sum(
            1
            for at in range(0, whole, WINDOW_BYTES)
            if ulaw_rms(data[at : at + WINDOW_BYTES]) > CALLER_SPEECH_RMS
        )
        if not voiced:
            return
        now = self.clock()
        if now - self._last_voiced > TALK_OVER_RESET:
            self._talk_over_ms, self._suspected_at = 0, None
        self._last_voiced = now
        utterance = self._current
        if (
            utterance is None
            or utterance.stale
            or self._ending
            or len(self._gap) >= TALK_OVER_UNTIL_SILENCE_MS * BYTES_PER_MS
        ):
            return
        self._talk_over_ms += voiced * WINDOW_BYTES // BYTES_PER_MS
        if self._suspected_at is None and self._talk_over_ms >= TALK_OVER_MS:
            self._suspected_at = now
            self._confirm_barge_in(now)

    def _confirm_barge_in(self, now: float, transcript_start_ms: int | None = None) -> None:
        """The model stopped for the caller: its output fell silent soon after the caller's voice
        was noticed, or it heard the caller speak inside this utterance while they still talk.
        A backchannel leaves the model talking and is let be."""
        suspected, utterance = self._suspected_at, self._current
        if suspected is None or utterance is None or utterance.stale or self._ending:
            return
        fell_silent = (
            len(self._gap) >= CONFIRM_SILENCE_MS * BYTES_PER_MS and now - suspected <= CONFIRM_WITHIN
        )
        heard_over = (
            transcript_start_ms is not None
            and transcript_start_ms >= self._began_ms
            and now - self._last_voiced <= TALK_OVER_RESET
        )
        if not fell_silent and not heard_over:
            return
        self._suspected_at = None
        utterance.stale = True
        self._held = None
        log.debug(
            "%s barge-in (%s)", self.label, "the bot fell silent" if fell_silent else "heard over the bot"
        )
        self._events(Interrupted())
        if utterance.heard_ms is None:  # not cut at Genesys: all that reached it will be heard
            utterance.heard_ms = utterance.received_ms

    # caller turns

    def on_input_transcript(self, event: dict[str, Any]) -> None:
        delta = _text(event.get("delta"))
        start, end = event.get("start_ms"), event.get("end_ms")
        start_ms = int(start) if _number(start) else None
        if self._turn_end_ms is None or (
            start_ms is not None and start_ms - self._turn_end_ms >= TURN_GAP_MS
        ):
            self._turns += 1
            self._turn_text = ""
            self._events(CallerTurn(self._turn_key()))
        self._turn_text += delta
        if _number(end):
            self._turn_end_ms = int(end)
        elif self._turn_end_ms is None:
            self._turn_end_ms = start_ms or 0
        self._events(CallerTurn(self._turn_key(), self._turn_text.strip()))
        if start_ms is not None:
            self._confirm_barge_in(self.clock(), start_ms)

    def _turn_key(self) -> str:
        return f"live{self.number}-caller{self._turns}"

    # delegated work

    def on_response_event(self, event: dict[str, Any]) -> None:
        nested = event.get("event")
        if not isinstance(nested, dict):
            return
        kind = _text(nested.get("type"))
        delegation = event.get("delegation_id")
        delegation = delegation if isinstance(delegation, str) else None
        if kind in ("response.created", "response.in_progress"):
            self._create_event = None
            response_id = _text(_field(nested, "response", "id"))
            self._running.add(response_id)
            self._response_of[delegation] = response_id
            self._calls_of.setdefault(response_id, [])
            if self._farewell_create_sent:
                self._arm_farewell()
        elif kind == "response.output_item.done":
            self._on_item_done(nested.get("item"), delegation)
        elif kind in ("response.completed", "response.failed", "response.incomplete"):
            self._on_response_done(nested, kind.removeprefix("response."), delegation)
        elif kind == "error":
            log.warning("%s backend error %s", self.label, _text(nested.get("code")) or "-")

    def _on_item_done(self, item: Any, delegation: str | None) -> None:
        kind = _field(item, "type")
        if kind == "function_call":
            call_id, name = _text(item.get("call_id")), _text(item.get("name"))
            if not call_id or not name:
                log.warning("%s announced a function call without an id or a name; ignored", self.label)
                return
            self._open[call_id] = False
            response_id = self._response_of.get(delegation)
            if response_id in self._calls_of:
                self._calls_of[response_id].append(call_id)
            log.debug("%s backend calls %s", self.label, name[:64])
            self._events(ToolCall(call_id, name, _text(item.get("arguments"))))
        elif kind == "mcp_call":
            failed = item.get("error") is not None
            self.metrics.mcp_events.labels("response.mcp_call." + ("failed" if failed else "completed")).inc()
            what = f"{item.get('server_label')}/{item.get('name')}"
            if failed:
                log.warning("MCP call failed: %s", what)
            else:
                log.info("MCP call completed: %s", what)
        elif kind == "mcp_approval_request":
            log.warning(
                "MCP approval request for %s/%s left unanswered", item.get("server_label"), item.get("name")
            )

    def _on_response_done(self, nested: dict[str, Any], status: str, delegation: str | None) -> None:
        response = nested.get("response")
        response_id = _text(_field(response, "id"))
        self._create_event = None
        self._events(UsageReport(responses_usage(_field(response, "usage"))))
        self._running.discard(response_id)
        if self._response_of.get(delegation) == response_id:
            del self._response_of[delegation]
        calls = self._calls_of.pop(response_id, [])
        if status == "completed":
            self.completed = True
            if not calls:  # an answer, not a request for tools: the live model says it next
                self._answer_due_at = self.clock()
            self._log_held_errors()
        else:
            # Its calls can no longer be answered (the service refuses outputs for them).
            log.warning("%s backend response %s", self.label, status)
            for call_id in calls:
                self._open.pop(call_id, None)
        self._create_when_complete()

    # usage and the end of the session

    def on_usage(self, event: dict[str, Any]) -> None:
        self._bill(_field(event, "usage", "seconds"))

    def _bill(self, seconds: Any) -> None:
        """The session's billed seconds are cumulative: report what is new, so that the core's
        sum over the call's sockets is the sum of each socket's final figure."""
        if _number(seconds) and seconds > self._billed:
            self._events(UsageReport(Usage(billed_seconds=seconds - self._billed)))
            self._billed = float(seconds)

    def on_session_closed(self, event: dict[str, Any]) -> SessionEnd:
        self._bill(_field(event, "usage", "seconds"))
        reason = _text(event.get("reason")) or "-"
        self._closed.set()
        if self._closing:
            log.debug("%s session closed (%s, %g s billed)", self.label, reason, self._billed)
        elif reason in ("expired", "connection_lost"):
            log.info("%s closed the session (%s)", self.label, reason)
        else:
            log.warning("%s closed the session (%s)", self.label, reason)
        return SessionEnd.DROPPED

    def on_error(self, event: dict[str, Any]) -> None:
        error = _field(event, "error")
        code = _text(_field(error, "code")) or None
        message = _text(_field(error, "message"))
        answering = _text(event.get("client_event_id")) or _text(_field(error, "client_event_id"))
        # Before `session.started` an error refuses the session when it answers our
        # `session.start` (or nothing in particular); one answering another event does not.
        refused = not self.started and answering in ("", self._start_event)
        if refused or code in FATAL_ERROR_CODES:
            raise ModelFailed(f"{self.label} refused the session ({code or 'error'})")
        if answering and answering == self._create_event:
            self._create_event = None  # refused: no response will answer it
        kind = code or _text(_field(error, "type")) or "error"
        self.metrics.errors.labels(f"live_{kind}"[:64]).inc()
        if answering == self._tools_event:
            log.warning("%s refused the Data Action tools (%s); going on without them", self.label, kind)
        elif self.healthy:
            log.warning("%s error %s: %s", self.label, kind, message[:200])
        else:
            # A socket that fails before it proved healthy is one more attempt of an outage,
            # whose one WARNING names its last error; one that goes on logs it then.
            self.held_errors = [*self.held_errors[-4:], f"{kind}: {message[:200]}"]
            log.debug("%s error %s: %s", self.label, kind, message[:200])

    def _log_held_errors(self) -> None:
        if self.held_errors and self.healthy:
            for error in self.held_errors:
                log.warning("%s error %s", self.label, error)
            self.held_errors = []


# -- the backend -----------------------------------------------------------------------------


@dataclass
class LiveBackend:
    """GPT-Live for one call: OpenAI itself (bearer key) or Azure OpenAI (`api-key`)."""

    vendor: str
    label: str
    model: str
    url: str
    headers: dict[str, str]
    backend_model: str
    api_base_url: str
    summary_model: str
    text_api: TextApi
    approval: ApprovalPolicy
    metrics: Metrics
    clock: Callable[[], float]
    capabilities: ClassVar[Capabilities] = LiveSession.capabilities

    async def connect(self, timeout: float) -> LiveSession:
        try:
            socket = await ModelSocket.open(self.url, self.headers, timeout, vendor=self.label)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403, 404):
                raise ModelRefused(f"{self.label} refused the connection (HTTP {status})") from None
            raise
        return LiveSession(
            socket,
            label=self.label,
            model=self.model,
            backend_model=self.backend_model,
            approval=self.approval,
            metrics=self.metrics,
            clock=self.clock,
            text_api=self.text_api,
            api_base_url=self.api_base_url,
            headers=self.headers,
            summary_model=self.summary_model,
        )
