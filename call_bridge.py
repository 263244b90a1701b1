"""One call: the AudioHook session on one side, an OpenAI Realtime session on the other.

The bridge pumps caller audio to OpenAI and bot audio to the session's pacer, decides what each
server event means for the call (barge-in, truncation, usage, transcripts, tool calls, errors)
in plain methods that tests drive with dicts, and replaces the OpenAI socket when it drops or
nears its time limit, restoring the conversation so the caller can go on. It ends the call when
the model asks to (call-control tools) or a limit is reached: a farewell played to the end, a
summary made in parallel, then `disconnect` with the output variables.

Every task of a call (the OpenAI conversation, the limits watch, keypad digits, the ending,
tools) lives in one TaskGroup, so all of them end with the call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from audiohook_protocol import bot_turn_entity
from call_control import (
    CALL_CONTROL_NAMES,
    CALL_CONTROL_TOOLS,
    SUMMARY_INSTRUCTIONS,
    CallLimits,
    DtmfCollector,
    Outcome,
    dtmf_message,
    limit_outcome,
    outcome_from_tool,
    output_variables,
    parse_arguments,
    summary_json,
)
from config import ApprovalPolicy, CallConfig, Settings, iso_639_1
from genesys_actions import DataActionTools, GenesysApi
from instructions import ToolNote, build_instructions
from metrics import Metrics
from openai_client import (
    RealtimeConfig,
    RealtimeConnection,
    Request,
    ResponseGate,
    Transcript,
    Usage,
    append_audio,
    function_output,
    history_events,
    lock_turns,
    response_cancel,
    response_create,
    session_update,
    system_text,
    truncate,
    user_text,
)
from playout import Cut, Interruption
from utils import ULAW_SILENCE, release_frames

log = logging.getLogger("bridge")

MAX_BUFFERED_CALLER_AUDIO = 10 * 8000  # caller audio kept while OpenAI is (re)connecting
MAX_APPEND_BYTES = 32_000  # buffered audio goes out in appends of at most this much
RECYCLE_MARGIN_SECONDS = 120.0  # replace the OpenAI session this long before it expires
ITEMS_TRACKED = 16
LIMIT_CHECK_SECONDS = 1.0
TOOLS_READY_WAIT = 3.0  # the first session.update waits this long for Data Action schemas
FILLER = "A lookup is taking a moment. Tell the caller in a few words that you are still checking."
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
OUT_OF_BAND = "summary"  # the purpose of the one response that runs outside the conversation
SESSION_LIFETIME = 3600.0  # OpenAI's documented session limit, when the session does not say
HEALTHY_AFTER_SECONDS = 3.0  # a confirmed socket alive this long has proved the outage over
OWN_ID = "cx"  # the prefix of every item id we create (at most 32 characters in all)
REPLAY_SECONDS = 5.0  # caller audio kept to replay an utterance a dropped socket cut
PAUSE_SILENCE_BYTES = 6400  # 0.8 s: enough for turn detection to hear the caller stop


class ReconnectBudget:
    """One budget of `OPENAI_RECONNECT_SECONDS` per outage, with backoff across all attempts.

    An outage starts at the first failure (a refused or unreachable connection, or a socket that
    closed before it proved healthy) and ends only when a socket proves healthy: accepting a
    connection is not recovering from the outage.
    """

    BASE = 0.2
    CAP = 2.0

    def __init__(self, seconds: float, clock: Callable[[], float], rng: random.Random | None = None) -> None:
        self.seconds = seconds
        self.clock = clock
        self.rng = rng or random.Random()
        self.deadline: float | None = None
        self.attempts = 0

    @property
    def in_outage(self) -> bool:
        return self.deadline is not None

    def remaining(self) -> float:
        return self.seconds if self.deadline is None else self.deadline - self.clock()

    def failed(self) -> float | None:
        """One more failed attempt: the delay before the next one, or None when the budget is spent."""
        if self.deadline is None:
            self.deadline = self.clock() + self.seconds
        self.attempts += 1
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            return None
        backoff = min(self.CAP, self.BASE * 2 ** (self.attempts - 1)) * self.rng.uniform(0.5, 1.0)
        return min(backoff, remaining)

    def healthy(self) -> int:
        """The outage is over; the number of failed attempts it took."""
        attempts, self.deadline, self.attempts = self.attempts, None, 0
        return attempts


def _at(value: Any, *path: str) -> Any:
    """A field deep in an event, or None when any step is missing or not an object.

    Events come from a peer: a field of the wrong type reads as absent, never as a crash.
    """
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


class CallFailed(Exception):
    """The call cannot go on; the text goes in the `disconnect` info."""


class CallLink(Protocol):
    """What the bridge needs from the Genesys side (an `AudioHookSession`)."""

    def now(self) -> float: ...
    def play(self, response_id: str, item_id: str, audio: bytes) -> bool: ...
    def barge_in(self) -> Interruption | None: ...
    def audio_busy(self) -> bool: ...
    def send_event(self, entity: dict[str, Any]) -> None: ...
    async def wait_played(self) -> None: ...
    async def wait_item_played(self, response_id: str, item_id: str) -> None: ...
    async def disconnect(
        self, reason: str, info: str | None = None, output_variables: dict[str, str] | None = None
    ) -> None: ...


Connector = Callable[[str, str, str, float], Awaitable[RealtimeConnection]]


class CallBridge:
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
        "response.output_audio.delta": "on_audio_delta",
        "response.output_audio_transcript.done": "on_bot_transcript",
        "response.function_call_arguments.done": "on_function_call",
        "response.output_item.added": "on_output_item",
        "response.output_item.done": "on_output_item_done",
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
        link: CallLink,
        call: CallConfig,
        settings: Settings,
        *,
        connector: Connector = RealtimeConnection.open,
        data_tools: DataActionTools | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.link = link
        self.metrics = metrics or Metrics()
        self.call = call
        self.settings = settings
        self.connector = connector
        self.data_tools = data_tools
        self.approval: ApprovalPolicy = settings.mcp.approval
        self.usage = Usage()
        self.transcript = Transcript()
        self.gate = ResponseGate()
        self.conn: RealtimeConnection | None = None
        self.ready = False  # caller audio may go straight to OpenAI
        self.format_ok = False  # OpenAI confirmed audio/pcmu output on this socket
        self.generation = 0  # OpenAI sockets used so far
        self.rate_limits: list[dict[str, Any]] = []
        self.started = link.now()
        self.limits = CallLimits(
            self.started, settings.max_call_duration_seconds, settings.idle_timeout_seconds
        )
        self.dtmf = DtmfCollector()
        self.outcome: Outcome | None = None
        self.summary: str | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._dtmf_wake = asyncio.Event()
        self._farewell_id: str | None = None
        self._farewell_done = asyncio.Event()
        self._pending_audio = bytearray()
        self._dropped_warned = False
        self._stale: set[str] = set()  # responses whose audio must not reach the caller
        self._out_of_band: set[str] = set()
        self._item_bytes: OrderedDict[str, int] = OrderedDict()  # audio received per item
        self._item_generation: dict[str, int] = {}
        self._heard: dict[str, float] = {}  # item id -> fraction heard, for cut turns
        self._recycle_at: float | None = None
        self._resume = False
        self._digit_turns = 0
        self._buffer_full_warned: set[str] = set()
        self._tools_ready = asyncio.Event()
        self._tools_running = 0
        self._late_results: list[dict[str, Any]] = []  # tool results for a replaced socket
        self._mcp_items: dict[str, str] = {}  # MCP item id -> "label" or "label/tool", for logs
        self._speech_ended_at: float | None = None  # for the time to first bot audio
        self.paused = False
        self._limits_wake = asyncio.Event()
        self._ids = itertools.count(1)
        self._confirmed_at: float | None = None  # session.updated on this socket
        self._completed = False  # a response completed on this socket
        self._held_errors: list[str] = []  # errors of a socket that has not proved healthy yet
        self._truncated: set[str] = set()  # items told what the caller heard
        self._recent = bytearray()  # the latest caller audio sent on this socket, for a replay
        self._socket_bytes = 0  # caller audio sent on this socket
        self._speech_start_byte: int | None = None  # where the caller's current utterance began
        self._replay = b""  # caller audio of an utterance the last socket cut short
        self.realtime = self._realtime_config()

    def _realtime_config(self) -> RealtimeConfig:
        call = self.call
        data = self.data_tools if self.data_tools is not None and self._tools_ready.is_set() else None
        mcp_notes = [ToolNote(e["server_label"], e.get("server_description", "")) for e in call.mcp_tools]
        return RealtimeConfig(
            model=call.model,
            voice=call.voice,
            instructions=build_instructions(
                call, data_tools=data.notes if data else (), mcp_servers=mcp_notes
            ),
            turn_detection=call.turn_detection,
            vad_threshold=call.vad_threshold,
            vad_silence_ms=call.vad_silence_ms,
            vad_prefix_padding_ms=call.vad_prefix_padding_ms,
            vad_eagerness=call.vad_eagerness,
            transcription_model=call.transcription_model,
            transcription_language=iso_639_1(call.language),
            noise_reduction=call.noise_reduction,
            max_output_tokens=call.max_output_tokens,
            tools=(*CALL_CONTROL_TOOLS, *(data.definitions if data else ()), *call.mcp_tools),
        )

    # -- CallHandler -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._watch_limits(), name="limits")
                tg.create_task(self._watch_dtmf(), name="dtmf")
                if self.data_tools is not None:
                    tg.create_task(self._prepare_tools(), name="data-actions")
                await self._converse()
        except* CallFailed as failed:
            release_frames(failed)
            reason = str(failed.exceptions[0])
            log.warning("call failed: %s", reason)
            await self.link.disconnect("error", reason, self.output_variables(reason))
        finally:
            self._tg = None
            await self._detach()

    def on_audio(self, audio: bytes) -> None:
        if self.ready and self.conn is not None:
            self.conn.send(append_audio(audio))
            self._keep_recent(audio)
            return
        self._pending_audio += audio
        excess = len(self._pending_audio) - MAX_BUFFERED_CALLER_AUDIO
        if excess > 0:
            del self._pending_audio[:excess]
            if not self._dropped_warned:
                self._dropped_warned = True
                log.warning("OpenAI not ready for 10 s of caller audio; keeping only the latest 10 s")

    def _keep_recent(self, audio: bytes) -> None:
        self._socket_bytes += len(audio)
        self._recent += audio
        excess = len(self._recent) - int(REPLAY_SECONDS * 8000)
        if excess > 0:
            del self._recent[:excess]

    def on_dtmf(self, digit: str) -> None:
        if self.outcome is not None:
            return
        now = self.link.now()
        self.limits.activity(now)
        if not self.dtmf.digits:
            self._interrupt(cancel=True)  # keys over the bot's voice stop it, like speech does
        digits = self.dtmf.press(digit, now)
        if digits is not None:
            self._hand_over_digits(digits)
        else:
            self._dtmf_wake.set()

    def on_pause(self) -> None:
        """Genesys paused the stream: the idle timer stands still, limits wait for `resumed`, and
        the caller's turn is closed with a little silence, so that no one waits on the end of an
        utterance that will not come."""
        self.paused = True
        if self.gate.caller_speaking and self.ready and self.conn is not None:
            self.conn.send(append_audio(ULAW_SILENCE * PAUSE_SILENCE_BYTES))

    def on_resume(self) -> None:
        self.paused = False
        self.limits.activity(self.link.now())  # the idle timer starts over
        self._limits_wake.set()

    def on_language(self, language: str) -> None:
        """An `update` switched the call's language: instructions and transcription follow."""
        if language == self.call.language:
            return
        self.call = dataclasses.replace(self.call, language=language)
        self.realtime = self._realtime_config()
        if self.outcome is None:
            self._send(session_update(self.realtime, event_id=self._new_id("l")))

    def output_variables(self, failure: str | None = None) -> dict[str, str]:
        return output_variables(
            usage=self.usage,
            duration=self.link.now() - self.started,
            outcome=self.outcome,
            summary=self.summary,
            failure=failure,
        )

    # -- connection life cycle ---------------------------------------------------------------

    async def _converse(self) -> None:
        budget = ReconnectBudget(self.settings.openai_reconnect_seconds, self.link.now)
        while True:
            conn = await self._connect(budget)
            try:
                if self.generation == 0 and self.data_tools is not None:
                    # Schemas are fetched while OpenAI connects; a slow Genesys adds them later.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(TOOLS_READY_WAIT):
                            await self._tools_ready.wait()
            except BaseException:
                await conn.close()  # hung up meanwhile: the socket is not attached yet
                raise
            self._attach(conn)
            outcome = await self._pump(conn)
            healthy = self._proved_healthy()
            await self._detach()
            self.metrics.openai_reconnects.labels(outcome).inc()
            if healthy and budget.in_outage:
                log.info("OpenAI session restored after %d failed attempts", budget.healthy())
            if outcome == "recycled":
                log.info("replacing the OpenAI session before it expires")
                continue
            if not healthy:
                self.metrics.openai_attempts.labels("failed_early").inc()
            last = self._held_errors[-1].split(":", 1)[0] if self._held_errors else "no error given"
            what = f"OpenAI closed the session ({last})"
            await self._back_off(budget, "OpenAI connection lost" if healthy else what)

    def _log_held_errors(self) -> None:
        if self._held_errors and self._proved_healthy():
            for error in self._held_errors:
                log.warning("OpenAI error %s", error)
            self._held_errors = []

    def _proved_healthy(self) -> bool:
        """Confirmed and alive a few seconds, or a response completed: more than a handshake."""
        if self._confirmed_at is None:
            return False
        return self._completed or self.link.now() - self._confirmed_at >= HEALTHY_AFTER_SECONDS

    async def _back_off(self, budget: ReconnectBudget, what: str) -> None:
        """Wait before the next attempt of this outage; CallFailed once its budget is spent."""
        first = not budget.in_outage
        delay = budget.failed()
        if delay is None:
            raise CallFailed("OpenAI unreachable")
        if first:  # one line per outage; the attempts that follow at DEBUG
            log.warning("%s; reconnecting for up to %g s", what, self.settings.openai_reconnect_seconds)
        else:
            log.debug("%s (attempt %d); retrying in %.2f s", what, budget.attempts, delay)
        await asyncio.sleep(delay)

    async def _connect(self, budget: ReconnectBudget) -> RealtimeConnection:
        while True:
            remaining = budget.remaining()
            try:
                conn = await self.connector(
                    self.settings.openai_realtime_url,
                    self.realtime.model,
                    self.settings.openai_api_key,
                    max(0.5, min(remaining, 10.0)),
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                self.metrics.openai_attempts.labels("refused").inc()
                if status in (401, 403, 404):
                    raise CallFailed(f"OpenAI refused the connection (HTTP {status})") from None
                what = f"OpenAI refused the connection (HTTP {status})"
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.metrics.openai_attempts.labels("unreachable").inc()
                what = f"cannot reach OpenAI ({type(exc).__name__})"
            else:
                self.metrics.openai_attempts.labels("connected").inc()
                return conn
            await self._back_off(budget, what)

    def _attach(self, conn: RealtimeConnection) -> None:
        restoring = self.generation > 0
        self.generation += 1
        self.conn = conn
        self.format_ok = False
        self._confirmed_at = None
        self._completed = False
        self._held_errors = []
        self._recent.clear()
        self._socket_bytes = 0
        self._speech_start_byte = None
        self.gate.turns_locked = self.outcome is not None
        conn.send(session_update(self.realtime, event_id=f"session-update-{self.generation}"))
        if restoring:
            for event in history_events(self.transcript, lambda: self._new_id("h")):
                conn.send(event)
            self._deliver_late_results()
        self.ready = True
        # The utterance the old socket cut short first (the caller was speaking), then what
        # arrived while reconnecting: in order, as the caller said it.
        pending = self._replay + bytes(self._pending_audio)
        self._replay, self._pending_audio = b"", bytearray()
        self._dropped_warned = False
        for start in range(0, len(pending), MAX_APPEND_BYTES):
            chunk = pending[start : start + MAX_APPEND_BYTES]
            conn.send(append_audio(chunk))
            self._keep_recent(chunk)
        log.info(
            "OpenAI session %s (model %s, voice %s)",
            "restored" if restoring else "started",
            self.realtime.model,
            self.realtime.voice,
        )
        resume, self._resume = self._resume, False
        if self.outcome is not None:
            if not self._farewell_done.is_set():
                self._ask_farewell()
        elif restoring and resume:
            self._request()
        elif not restoring and self.call.greeting:
            self._request(
                "greeting",
                f'{self.realtime.instructions}\n\nGreet the caller now, saying: "{self.call.greeting}"',
            )

    async def _detach(self) -> None:
        self.ready = False
        conn, self.conn = self.conn, None
        if self.gate.caller_speaking and self._speech_start_byte is not None:
            spoken = self._socket_bytes - self._speech_start_byte
            self._replay = bytes(self._recent[-spoken:]) if spoken > 0 else b""
        self._resume = self.gate.reset() or self._resume
        self._stale.clear()
        self._out_of_band.clear()
        self._recycle_at = None
        if conn is not None:
            await conn.close()

    async def _prepare_tools(self) -> None:
        assert self.data_tools is not None
        try:
            await self.data_tools.prepare()
        finally:
            self._tools_ready.set()
        self.realtime = self._realtime_config()
        if self.outcome is not None:
            return  # ending: no tool is wanted any more, and turns stay locked
        if self.conn is not None and self.data_tools.tools:
            log.info("data actions ready after the call started; updating the session")
            self._send(session_update(self.realtime, event_id=f"tools-update-{self.generation}"))

    async def _pump(self, conn: RealtimeConnection) -> str:
        while True:
            try:
                # One timer for many events (one per event costs CPU): re-entered when the
                # session's expiry becomes known, or when it was not a quiet moment to recycle.
                async with asyncio.timeout(self._recycle_wait()) as timer:
                    while timer.when() is not None or self._recycle_at is None:
                        self.handle(await conn.recv())
            except TimeoutError:
                if self._quiet():
                    return "recycled"
            except ConnectionClosed:
                return "dropped"

    def _recycle_wait(self) -> float | None:
        if self._recycle_at is None:
            return None
        return max(0.5, self._recycle_at - self.link.now())

    def _quiet(self) -> bool:
        """A moment to replace the OpenAI session without anyone noticing."""
        return self.outcome is None and not (
            self.gate.busy or self.gate.caller_speaking or self.link.audio_busy()
        )

    def _new_id(self, kind: str) -> str:
        """An id for something we create: short (the service takes at most 32 characters) and
        recognisable (its echoes are ours)."""
        return f"{OWN_ID}{self.generation}{kind}{next(self._ids)}"

    def _go_on(self) -> None:
        """Let the model answer what was just added (a tool result, digits, an approval)."""
        if self.outcome is None:  # never another answer after the goodbye
            self._request()

    def _request(self, purpose: str = "answer", instructions: str | None = None) -> None:
        if self.conn is None:
            self._resume = True  # asked for again once a new socket is attached
            return
        request_id = self._new_id("r")
        event = response_create(request_id, purpose, instructions=instructions)
        self._send_request(self.gate.request(Request(request_id, purpose, event), self.link.now()))

    def _send_request(self, request: Request | None) -> None:
        if request is not None and self.conn is not None:
            self.conn.send(request.event)

    def _send(self, event: dict[str, Any]) -> None:
        if self.conn is not None:
            self.conn.send(event)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        if self._tg is not None:
            self._tg.create_task(coro, name=name)
        else:
            coro.close()  # the call is over

    # -- server events -----------------------------------------------------------------------

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
        self._recycle_at = self.link.now() + lifetime - margin

    def on_session_updated(self, event: dict[str, Any]) -> None:
        output = _at(event, "session", "audio", "output", "format")
        kind = output.get("type") if isinstance(output, dict) else output
        if kind != "audio/pcmu":
            raise CallFailed(f"OpenAI output format is {kind!r}, not audio/pcmu")
        self.format_ok = True
        if self._confirmed_at is None:
            self._confirmed_at = self.link.now()

    def on_speech_started(self, event: dict[str, Any]) -> None:
        self.gate.speech_started()
        start_ms = event.get("audio_start_ms")
        self._speech_start_byte = start_ms * 8 if _number(start_ms) else self._socket_bytes
        self.limits.activity(self.link.now())
        if self.outcome is None:  # the farewell is never cut
            self._interrupt()

    def _interrupt(self, *, cancel: bool = False) -> None:
        """The caller cut in: stop the bot's audio and tell the model what was heard.

        On speech the server's VAD cancels the running response itself; for keypad input
        (`cancel`) it does not know, so the response is cancelled here, and so is one that was
        asked for and has not started yet.
        """
        if self.gate.active is not None:
            self._stale.add(self.gate.active)  # drop its late deltas
            if cancel:
                self._send(response_cancel())
        if cancel:
            if self.gate.in_flight is not None:
                self.gate.in_flight.cancel = True
            self.gate.discard("answer")
        interruption = self.link.barge_in()
        if interruption is None:
            return
        for cut in interruption.cuts:
            self._cut(cut)
        first = interruption.cuts[0]
        log.info(
            "barge-in: the caller heard %d of %d ms sent; %d item(s) cut, %d ms queued dropped",
            first.heard_ms,
            first.sent_ms,
            len(interruption.cuts),
            interruption.dropped_bytes // 8,
        )

    def _cut(self, cut: Cut) -> None:
        """Tell OpenAI what the caller heard of one item (0 ms when nothing), and keep the
        transcript saying the same."""
        self._stale.add(cut.response_id)
        received_ms = self._item_bytes.get(cut.item_id, 0) // 8
        heard_ms = min(cut.heard_ms, received_ms)
        if self._item_generation.get(cut.item_id) == self.generation:
            self._send(truncate(cut.item_id, heard_ms))
            self._truncated.add(cut.item_id)
        fraction = heard_ms / received_ms if received_ms else 0.0
        self._heard[cut.item_id] = fraction
        self.transcript.cut(cut.item_id, fraction)

    def on_speech_stopped(self, event: dict[str, Any]) -> None:
        self._speech_ended_at = self.link.now()
        self._speech_start_byte = None
        self.limits.activity(self._speech_ended_at)
        self._send_request(self.gate.speech_stopped(self._speech_ended_at))

    def on_item_added(self, event: dict[str, Any]) -> None:
        kind, item_id = _at(event, "item", "type"), _at(event, "item", "id")
        if not isinstance(item_id, str) or item_id.startswith(OWN_ID):
            return  # an echo of an item of ours (restored history, digits): already known
        if kind == "message":
            self.transcript.add_item(item_id, _text(_at(event, "item", "role")))
        elif kind == "mcp_list_tools":
            self._mcp_items[item_id] = str(_at(event, "item", "server_label"))

    def on_caller_transcript(self, event: dict[str, Any]) -> None:
        text = _text(event.get("transcript"))
        self.transcript.set_text(_text(event.get("item_id")), "user", text)
        log.debug("caller: %s", text)

    def on_bot_transcript(self, event: dict[str, Any]) -> None:
        item_id = _text(event.get("item_id"))
        text = _text(event.get("transcript"))
        self.transcript.set_text(item_id, "assistant", text)
        if item_id in self._heard:
            self.transcript.cut(item_id, self._heard[item_id])
        log.debug("assistant: %s", text)
        response_id = _text(event.get("response_id"))
        if response_id not in self._out_of_band:
            self._spawn(self._report_turn(response_id, item_id), "bot-turn")

    async def _report_turn(self, response_id: str, item_id: str) -> None:
        """Once the turn has played (or was cut), tell Genesys what the caller heard of it, for
        its historical reporting of bot turns."""
        await self.link.wait_item_played(response_id, item_id)
        heard = self.transcript.text(item_id)
        if heard:
            self.link.send_event(bot_turn_entity("match", heard[:1000]))

    def on_response_created(self, event: dict[str, Any]) -> None:
        response_id = _text(_at(event, "response", "id"))
        purpose = _at(event, "response", "metadata", "purpose")
        if purpose == OUT_OF_BAND:
            self._out_of_band.add(response_id)
            return
        fmt = _at(event, "response", "audio", "output", "format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "audio/pcmu"):
            raise CallFailed(f"OpenAI response format is {fmt.get('type')!r}, not audio/pcmu")
        request_id = _at(event, "response", "metadata", "request")
        started = self.gate.created(response_id, request_id if isinstance(request_id, str) else None)
        if started is not None and started.cancel:
            # A key was pressed after we asked for this one: it must not be heard.
            self._stale.add(response_id)
            self._send(response_cancel(response_id))
        if purpose == "farewell" and started is not None:
            self._farewell_id = response_id

    def on_audio_delta(self, event: dict[str, Any]) -> None:
        response_id = _text(event.get("response_id"))
        if response_id in self._stale or response_id in self._out_of_band:
            return
        if not self.format_ok:
            raise CallFailed("OpenAI sent audio before confirming audio/pcmu output")
        item_id = _text(event.get("item_id"))
        try:
            audio = base64.b64decode(_text(event.get("delta")), validate=True)
        except ValueError:
            log.warning("OpenAI sent an audio delta that is not base64; ignored")
            return
        self._count_item_audio(item_id, len(audio))
        if self._speech_ended_at is not None:
            self.metrics.first_bot_audio.observe(self.link.now() - self._speech_ended_at)
            self._speech_ended_at = None
        if not self.link.play(response_id, item_id, audio) and response_id not in self._buffer_full_warned:
            self._buffer_full_warned.add(response_id)
            log.warning("bot audio not queued (call ending or the per-call buffer is full)")

    def _count_item_audio(self, item_id: str, size: int) -> None:
        if item_id not in self._item_bytes:
            self._item_generation[item_id] = self.generation
            while len(self._item_bytes) >= ITEMS_TRACKED:
                old, _ = self._item_bytes.popitem(last=False)
                self._item_generation.pop(old, None)
                self._heard.pop(old, None)
        self._item_bytes[item_id] = self._item_bytes.get(item_id, 0) + size

    def on_function_call(self, event: dict[str, Any]) -> None:
        name = _text(event.get("name"))
        call_id = _text(event.get("call_id"))
        raw_arguments = _text(event.get("arguments"))
        arguments = parse_arguments(raw_arguments)
        if name in CALL_CONTROL_NAMES:
            self.metrics.tool_calls.labels(name, "ok").inc()
            if self.outcome is not None:
                note = {"ok": True, "note": "the call is already ending"}
                self._send(function_output(call_id, json.dumps(note)))
                return
            self._send(function_output(call_id, json.dumps({"ok": True})))
            self.finish(outcome_from_tool(name, arguments))
            return
        if self.data_tools is not None and self.data_tools.handles(name):
            self._spawn(self._run_tool(call_id, name, raw_arguments), f"tool-{name}")
            return
        log.warning("the model called an unknown tool %r", name[:64])
        self.metrics.tool_calls.labels("unknown", "error").inc()
        self._send(function_output(call_id, json.dumps({"error": f"there is no tool named {name}"})))
        self._go_on()

    async def _run_tool(self, call_id: str, name: str, arguments: str) -> None:
        """A Data Action, off the reader; a holding phrase if it is slow; then the model goes on."""
        assert self.data_tools is not None
        self._tools_running += 1
        started = self.link.now()
        generation = self.generation
        work = asyncio.ensure_future(self.data_tools.run(name, arguments))
        try:
            filler_after = self.settings.tool_filler_after_ms / 1000
            if filler_after > 0:
                done, _ = await asyncio.wait({work}, timeout=filler_after)
                if not done and self.outcome is None:
                    self._request("filler", f"{self.realtime.instructions}\n\n{FILLER}")
            output, ok = await work
        finally:
            work.cancel()
            self._tools_running -= 1
        self.metrics.tool_calls.labels(name, "ok" if ok else "error").inc()
        self.metrics.tool_latency.labels(name).observe(self.link.now() - started)
        if self.conn is not None and self.generation == generation:
            self._send(function_output(call_id, output))
        else:
            # The OpenAI session that asked was replaced and never saw this call: tell the
            # current one (or the next) what the tool returned.
            self._late_results.append(
                system_text(
                    f"The tool {name}, called before a reconnection, returned: {output}", self._new_id("t")
                )
            )
            self._deliver_late_results()
        self.gate.discard("filler")
        if self._tools_running == 0:
            self._go_on()

    def _deliver_late_results(self) -> None:
        if self.conn is None:
            self._resume = True
            return
        while self._late_results:
            self._send(self._late_results.pop(0))

    def on_output_item(self, event: dict[str, Any]) -> None:
        item = _at(event, "item")
        if _at(item, "type") == "mcp_call":
            self._mcp_items[str(item.get("id"))] = f"{item.get('server_label')}/{item.get('name')}"

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
            "id": self._new_id("a"),
            "approval_request_id": item.get("id"),
            "approve": approve,
        }
        if not approve:
            response["reason"] = "not approved for phone calls"
        self._send({"type": "conversation.item.create", "item": response})
        self._go_on()

    def on_mcp_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        self.metrics.mcp_events.labels(kind).inc()
        item_id = str(event.get("item_id"))
        what = self._mcp_items.get(item_id, item_id)
        if kind.endswith("failed"):
            log.warning("MCP %s failed: %s", "tool listing" if kind.startswith("mcp_list") else "call", what)
        else:
            log.info("MCP %s completed: %s", "tool listing" if kind.startswith("mcp_list") else "call", what)

    def on_response_done(self, event: dict[str, Any]) -> None:
        response = _at(event, "response")
        if not isinstance(response, dict):
            return
        response_id = _text(response.get("id"))
        self.usage.add(response.get("usage"))
        status = response.get("status")
        if status == "failed":
            error = _at(response, "status_details", "error")
            log.warning("OpenAI response failed: %s", _at(error, "code") or _at(error, "type") or "-")
        elif status == "completed":
            self._completed = True
            self._log_held_errors()
        if response_id in self._stale:
            self._stale.discard(response_id)
            self._truncate_unheard(response)
        self._buffer_full_warned.discard(response_id)
        if response_id in self._out_of_band:
            self._out_of_band.discard(response_id)
            self._take_summary(response)
            return
        if response_id == self._farewell_id:
            self._farewell_done.set()
        self._send_request(self.gate.done(response_id, self.link.now()))

    def _truncate_unheard(self, response: dict[str, Any]) -> None:
        """Items of a cut response that the caller never heard a byte of (their audio came after
        the barge-in, or only their start was ever queued) are truncated to nothing."""
        output = response.get("output")
        for item in output if isinstance(output, list) else []:
            item_id = _at(item, "id")
            if _at(item, "role") != "assistant" or not isinstance(item_id, str) or item_id in self._truncated:
                continue
            if self._item_generation.get(item_id, self.generation) == self.generation:
                self._send(truncate(item_id, 0))
                self._truncated.add(item_id)
            self._heard[item_id] = 0.0
            self.transcript.cut(item_id, 0.0)

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
            self._send_request(self.gate.refused(event_id, code, self.link.now()))
            return
        if code in HARMLESS_ERROR_CODES or "already shorter than" in message:
            log.debug("OpenAI: %s", message[:200])
        elif code in FATAL_ERROR_CODES or event_id == f"session-update-{self.generation}":
            raise CallFailed(f"OpenAI refused the session ({code or 'error'})")
        elif event_id.startswith("tools-update"):
            log.warning("OpenAI refused the Data Action tools (%s); going on without them", code or "error")
        else:
            kind = code or _text(_at(error, "type")) or "error"
            self.metrics.errors.labels(f"openai_{kind}"[:64]).inc()
            if self._proved_healthy():
                log.warning("OpenAI error %s: %s", kind, message[:200])
            else:
                # A socket that fails before it proved healthy is one more attempt of an outage,
                # whose one WARNING names its last error; one that goes on logs it then.
                self._held_errors = [*self._held_errors[-4:], f"{kind}: {message[:200]}"]
                log.debug("OpenAI error %s: %s", kind, message[:200])

    # -- ending the call ---------------------------------------------------------------------

    def finish(self, outcome: Outcome) -> None:
        """End the call: farewell, summary, `disconnect completed`. A second request is ignored."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        if outcome.escalate:
            log.info("ending the call with escalation: %s", outcome.reason)
        else:
            log.info("ending the call: %s", outcome.summary or "-")
        self._spawn(self._end_call(), "ending")

    def _ask_farewell(self) -> None:
        assert self.outcome is not None
        # The caller's voice must neither cut the farewell nor start another answer.
        self._send(lock_turns(self.realtime, event_id=f"lock-turns-{self.generation}"))
        self.gate.turns_locked = True
        self._request("farewell", f"{self.realtime.instructions}\n\n{self.outcome.farewell}")

    async def _end_call(self) -> None:
        self._ask_farewell()
        self._send(
            response_create(
                self._new_id("s"),
                OUT_OF_BAND,
                instructions=SUMMARY_INSTRUCTIONS,
                out_of_band=True,
                text_only=True,
            )
        )
        timeout = self.settings.farewell_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await self._farewell_done.wait()
                await self.link.wait_played()
        except TimeoutError:
            log.warning("the farewell did not finish within %g s; hanging up", timeout)
        if self.summary is None:
            log.info("no conversation summary before the farewell ended")
        await self.link.disconnect("completed", None, self.output_variables())

    def _take_summary(self, response: dict[str, Any]) -> None:
        output = response.get("output")
        texts = [
            _text(_at(part, "text")) or _text(_at(part, "transcript"))
            for item in (output if isinstance(output, list) else [])
            for part in (_at(item, "content") if isinstance(_at(item, "content"), list) else [])
        ]
        text = "".join(texts).strip()
        if response.get("status") == "completed" and text:
            self.summary = summary_json(text)
            log.debug("conversation summary: %s", self.summary)
        else:
            log.warning("the conversation summary failed (%s)", response.get("status"))

    async def _watch_limits(self) -> None:
        while self.outcome is None:
            now = self.link.now()
            if self.paused or self.link.audio_busy() or self.gate.busy or self.gate.caller_speaking:
                self.limits.activity(now)  # paused: the idle timer stands still
            reason = self.limits.due(now)
            if reason is not None and not self.paused:  # a farewell into a paused stream is lost
                log.info("call limit: %s", reason)
                self.finish(limit_outcome(reason))
                return
            self._log_held_errors()
            expired = self.gate.expire(now)
            if expired is not None:
                log.warning("OpenAI never answered a response.create; going on without it")
                self._send_request(expired)
            self._limits_wake.clear()
            wait = max(0.01, min(self.limits.next_check() - now, LIMIT_CHECK_SECONDS))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._limits_wake.wait()

    # -- keypad ------------------------------------------------------------------------------

    async def _watch_dtmf(self) -> None:
        while True:
            await self._dtmf_wake.wait()
            self._dtmf_wake.clear()
            while self.dtmf.digits:
                await asyncio.sleep(max(0.0, self.dtmf.last_at + self.dtmf.pause - self.link.now()))
                digits = self.dtmf.due(self.link.now())
                if digits is not None:
                    self._hand_over_digits(digits)

    def _hand_over_digits(self, digits: str) -> None:
        if self.outcome is not None:
            return  # the call is ending
        text = dtmf_message(digits)
        log.debug("caller keyed %s", digits)
        self._digit_turns += 1
        self.transcript.add_text("user", text, key=f"keypad-{self._digit_turns}")
        if self.conn is None:
            self._resume = True  # the restored history carries the digits
            return
        self._send(user_text(text, self._new_id("k")))
        self._go_on()


def make_bridge_factory(
    settings: Settings,
    *,
    connector: Connector = RealtimeConnection.open,
    genesys_api: GenesysApi | None = None,
    metrics: Metrics | None = None,
):
    """The `HandlerFactory` the server uses: one bridge per (non-probe) call."""

    def factory(session, request) -> CallBridge:
        call = settings.call_config(session.connector_id, request.input_variables, request.language)
        data_tools = None
        if call.data_action_ids:
            if genesys_api is None:
                log.warning("DATA_ACTION_IDS given but ENABLE_GENESYS_DATA_ACTIONS is off; no data actions")
            else:
                data_tools = DataActionTools(genesys_api, call.data_action_ids, call.data_action_descriptions)
        return CallBridge(
            session, call, settings, connector=connector, data_tools=data_tools, metrics=metrics
        )

    return factory
