"""The call core: one call, the AudioHook session on one side and a model backend on the other.

The core knows no model API. It pumps caller audio to the backend's session and bot audio to the
session's pacer, cuts the bot off on the Genesys side when the caller barges in, runs tools and
holds the caller's hand while they run, collects keypad digits, watches the call's limits, ends
the call with a farewell played to the end and a summary, and fills the output variables. It
replaces the model's socket when it drops or nears a service limit, within one reconnect budget
per outage, and restores the conversation on the new one. Where backends differ it reads their
`Capabilities` (`model_backend.py`); the backends themselves are `openai_client.py` (Realtime),
`openai_live_client.py` (GPT-Live) and `gemini_client.py` (Gemini Live).

Every task of a call (the model conversation, the limits watch, keypad digits, the ending,
tools, bot-turn reports) lives in one TaskGroup, so all of them end with the call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from websockets.exceptions import InvalidHandshake, InvalidStatus

from audiohook_protocol import bot_turn_entity
from call_control import (
    CALL_CONTROL_NAMES,
    CALL_CONTROL_TOOLS,
    CallLimits,
    DtmfCollector,
    Outcome,
    dtmf_message,
    limit_outcome,
    outcome_from_tool,
    output_variables,
    parse_arguments,
)
from config import CallConfig, Settings
from genesys_actions import DataActionTools, GenesysApi
from instructions import ToolNote, build_instructions
from metrics import Metrics
from model_backend import (
    BotAudio,
    BotText,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerTurn,
    CallSpec,
    Event,
    FarewellDone,
    Interrupted,
    ModelBackend,
    ModelFailed,
    ModelSession,
    Ready,
    SessionEnd,
    SessionStart,
    ToolCall,
    ToolCancelled,
    Transcript,
    Usage,
    UsageReport,
    Utterance,
    UtteranceStarted,
)
from playout import Interruption
from utils import cancel_and_wait, release_frames, ulaw_rms

log = logging.getLogger("bridge")

MAX_BUFFERED_CALLER_AUDIO = 10 * 8000  # caller audio kept while the model is (re)connecting
MAX_APPEND_BYTES = 32_000  # buffered audio goes out in pieces of at most this much
LIMIT_CHECK_SECONDS = 1.0
TOOLS_READY_WAIT = 3.0  # the first session waits this long for Data Action schemas
FINISH_WAIT_SECONDS = 3.0  # an orderly end of the model session (final usage) before `disconnect`
REPLAY_SECONDS = 5.0  # caller audio kept to replay an utterance a dropped socket cut
START_LIMIT_SECONDS = 10.0  # a socket that has not confirmed its session by then is a failed attempt
# Caller audio this loud counts as speech for the idle timer, for backends that do not say when
# the caller speaks (16-bit RMS; the model simulators' voice detection uses the same level).
SPEECH_RMS = 600
FILLER = "A lookup is taking a moment. Tell the caller in a few words that you are still checking."


class CallFailed(Exception):
    """The call cannot go on; the text goes in the `disconnect` info."""


class CallLink(Protocol):
    """What the core needs from the Genesys side (an `AudioHookSession`)."""

    def now(self) -> float: ...
    def play(self, utterance: Utterance, audio: bytes) -> bool: ...
    def barge_in(self) -> Interruption | None: ...
    def audio_busy(self) -> bool: ...
    def send_event(self, entity: dict[str, Any]) -> None: ...
    async def wait_played(self) -> None: ...
    async def wait_item_played(self, utterance: Utterance) -> None: ...
    async def disconnect(
        self, reason: str, info: str | None = None, output_variables: dict[str, str] | None = None
    ) -> None: ...


class ReconnectBudget:
    """One budget of `OPENAI_RECONNECT_SECONDS` per outage, with backoff across all attempts.

    An outage starts at the first failure (a refused or unreachable connection, or a socket that
    closed or stalled before it proved healthy), or at a planned move to a new socket, and ends
    only when a socket proves healthy: accepting a connection is not recovering from the outage.
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

    def start(self) -> None:
        """A planned move to a new socket: the budget runs from now until one proves healthy."""
        if self.deadline is None:
            self.deadline = self.clock() + self.seconds

    def failed(self) -> float | None:
        """One more failed attempt: the delay before the next, or None when the budget is spent."""
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


class CallBridge:
    def __init__(
        self,
        link: CallLink,
        call: CallConfig,
        settings: Settings,
        *,
        backend: ModelBackend,
        data_tools: DataActionTools | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.link = link
        self.metrics = metrics or Metrics()
        self.call = call
        self.settings = settings
        self.backend = backend
        self.capabilities = backend.capabilities
        self.label = getattr(backend, "label", backend.vendor)
        self.data_tools = data_tools
        self.usage = Usage()
        self.transcript = Transcript()
        self.session: ModelSession | None = None
        self.socket = 0  # model sockets used so far
        self.started = link.now()
        self.limits = CallLimits(
            self.started, settings.max_call_duration_seconds, settings.idle_timeout_seconds
        )
        self.dtmf = DtmfCollector()
        self.outcome: Outcome | None = None
        self.summary: str | None = None
        self.caller_speaking = False
        self.paused = False
        self._tg: asyncio.TaskGroup | None = None
        self._dtmf_wake = asyncio.Event()
        self._limits_wake = asyncio.Event()
        self._farewell_done = asyncio.Event()
        self._pending_audio = bytearray()  # caller audio while no socket takes it
        self._dropped_warned = False
        self._recent = bytearray()  # the latest caller audio sent on this socket, for a replay
        self._socket_bytes = 0  # caller audio sent on this socket
        self._speech_start_byte: int | None = None  # where the caller's current utterance began
        self._replay = b""  # caller audio of an utterance the last socket cut short
        self._handover: object | None = None  # what the next socket may resume from
        self._resume = False  # work was lost with a socket: the next one is asked to go on
        self._late_notes: list[str] = []  # tool results for a replaced socket
        self._late_inputs: list[str] = []  # keyed digits while no socket took them
        self._farewell_asked_on = 0  # the socket already asked for the farewell
        self._tools_ready = asyncio.Event()
        self._tools_by_socket: collections.Counter[int] = collections.Counter()  # running, per asking socket
        self._tool_tasks: dict[str, tuple[asyncio.Task[None], str]] = {}  # call id -> (Data Action, name)
        self._digit_turns = 0
        self._speech_ended_at: float | None = None  # for the time to first bot audio
        self._buffer_full_warned = False
        self._greeted = False
        self.spec = self._spec()

    def _spec(self) -> CallSpec:
        call = self.call
        data = self.data_tools if self.data_tools is not None and self._tools_ready.is_set() else None
        mcp_notes = [ToolNote(e["server_label"], e.get("server_description", "")) for e in call.mcp_tools]
        return CallSpec(
            call=call,
            instructions=build_instructions(
                call, data_tools=data.notes if data else (), mcp_servers=mcp_notes
            ),
            tools=(*CALL_CONTROL_TOOLS, *(data.specs if data else ())),
            mcp_tools=call.mcp_tools,
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
        except* (CallFailed, ModelFailed) as failed:
            release_frames(failed)
            reason = str(failed.exceptions[0])
            log.warning("call failed: %s", reason)
            # No caller audio to the failed socket while Genesys closes; its close does not
            # hold up the disconnect.
            failed_session, self.session = self.session, None
            async with asyncio.TaskGroup() as ending:
                if failed_session is not None:
                    ending.create_task(failed_session.close(), name="close-failed")
                ending.create_task(self.link.disconnect("error", reason, self.output_variables(reason)))
        finally:
            self._tg = None
            await self._detach()

    def on_audio(self, audio: bytes) -> None:
        if not self.capabilities.caller_speech_events and ulaw_rms(audio) > SPEECH_RMS:
            self.limits.activity(self.link.now())  # the backend will not say when the caller speaks
        if self.session is not None:
            self.session.send_audio(audio)
            self._keep_recent(audio)
            return
        self._pending_audio += audio
        excess = len(self._pending_audio) - MAX_BUFFERED_CALLER_AUDIO
        if excess > 0:
            del self._pending_audio[:excess]
            if not self._dropped_warned:
                self._dropped_warned = True
                log.warning("%s not ready for 10 s of caller audio; keeping only the latest 10 s", self.label)

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
        """Genesys paused the stream: the idle timer stands still, limits wait for `resumed`."""
        self.paused = True
        if self.session is not None:
            self.session.caller_paused()

    def on_resume(self) -> None:
        self.paused = False
        self.limits.activity(self.link.now())  # the idle timer starts over
        self._limits_wake.set()

    def on_language(self, language: str) -> None:
        """An `update` switched the call's language: instructions and transcription follow."""
        if language == self.call.language:
            return
        self.call = dataclasses.replace(self.call, language=language)
        self.spec = self._spec()
        if self.session is not None and self.outcome is None:
            self.session.set_language(self.spec)

    def output_variables(self, failure: str | None = None) -> dict[str, str]:
        return output_variables(
            usage=self.usage,
            duration=self.link.now() - self.started,
            outcome=self.outcome,
            summary=self.summary,
            failure=failure,
            vendor=self.backend.vendor,
            model=self.backend.model,
        )

    # -- the model's sockets -----------------------------------------------------------------

    async def _converse(self) -> None:
        budget = ReconnectBudget(self.settings.openai_reconnect_seconds, self.link.now)
        while True:
            session = await self._connect(budget)
            try:
                if self.socket == 0 and self.data_tools is not None:
                    # Schemas are fetched while the model connects; a slow Genesys adds them later.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(TOOLS_READY_WAIT):
                            await self._tools_ready.wait()
                    self.spec = self._spec()
            except BaseException:
                await session.close()  # hung up meanwhile: the socket is not attached yet
                raise
            session.begin(
                SessionStart(
                    spec=self.spec,
                    socket=self.socket + 1,
                    history=tuple(self.transcript.turns()) if self.socket else (),
                    resume=self._handover,
                )
            )
            self._attach(session)
            end = await self._run_session(session, budget)
            healthy = session.healthy
            last_error = session.last_error()
            self._handover = session.handover()
            await self._detach()
            self.metrics.openai_reconnects.labels((end or SessionEnd.DROPPED).value).inc()
            if healthy and budget.in_outage:
                failed = budget.healthy()
                if failed:
                    log.info("%s session restored after %d failed attempts", self.label, failed)
            if end is SessionEnd.RECYCLED:
                log.info("moving to a new %s session at a quiet moment", self.label)
                budget.start()  # the move has the one budget, counted from now, not from a failure
                continue
            if self.outcome is not None and self._farewell_done.is_set():
                return  # the goodbye is said: the ending needs no new socket
            if not healthy:
                self.metrics.openai_attempts.labels("failed_early").inc()
            if end is None:
                what = f"{self.label} did not confirm the session within the start limit"
            else:
                what = f"{self.label} closed the session ({last_error or 'no error given'})"
            await self._back_off(budget, f"{self.label} connection lost" if healthy else what)

    async def _run_session(self, session: ModelSession, budget: ReconnectBudget) -> SessionEnd | None:
        """Run the session to its end; None when it did not confirm (`Ready`) within the start
        limit or what is left of the outage's budget: an accepted socket that stalls is a failed
        attempt, never a call held in silence."""
        deadline = asyncio.timeout(min(START_LIMIT_SECONDS, max(0.5, budget.remaining())))

        def on_event(event: Event) -> None:
            if isinstance(event, Ready):
                deadline.reschedule(None)
            self.on_event(event)

        try:
            async with deadline:
                return await session.run(on_event, self._quiet)
        except TimeoutError:
            if not deadline.expired():
                raise
        return None

    async def _back_off(self, budget: ReconnectBudget, what: str) -> None:
        """Wait before the next attempt of this outage; CallFailed once its budget is spent."""
        first = not budget.in_outage
        delay = budget.failed()
        if delay is None:
            raise CallFailed(f"{self.label} unreachable")
        if first:  # one line per outage; the attempts that follow at DEBUG
            log.warning("%s; reconnecting for up to %g s", what, self.settings.openai_reconnect_seconds)
        else:
            log.debug("%s (attempt %d); retrying in %.2f s", what, budget.attempts, delay)
        await asyncio.sleep(delay)

    async def _connect(self, budget: ReconnectBudget) -> ModelSession:
        while True:
            try:
                session = await self.backend.connect(max(0.5, min(budget.remaining(), 10.0)))
            except InvalidStatus as exc:
                self.metrics.openai_attempts.labels("refused").inc()
                what = f"{self.label} refused the connection (HTTP {exc.response.status_code})"
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.metrics.openai_attempts.labels("unreachable").inc()
                what = f"cannot reach {self.label} ({type(exc).__name__})"
            else:
                self.metrics.openai_attempts.labels("connected").inc()
                return session
            await self._back_off(budget, what)

    def _attach(self, session: ModelSession) -> None:
        self.socket += 1
        self.session = session
        self._recent.clear()
        self._socket_bytes = 0
        self._speech_start_byte = None
        # The utterance the old socket cut short first (the caller was speaking), then what
        # arrived while reconnecting: in order, as the caller said it.
        pending = self._replay + bytes(self._pending_audio)
        self._replay, self._pending_audio = b"", bytearray()
        self._dropped_warned = False
        for start in range(0, len(pending), MAX_APPEND_BYTES):
            chunk = pending[start : start + MAX_APPEND_BYTES]
            session.send_audio(chunk)
            self._keep_recent(chunk)
        log.info(
            "%s session %s (model %s)",
            self.label,
            "restored" if self.socket > 1 else "started",
            self.backend.model,
        )

    def _on_ready(self) -> None:
        """The session is confirmed: say what has to be said on it."""
        session = self.session
        assert session is not None
        resume, self._resume = self._resume, False
        notes, self._late_notes = self._late_notes, []
        inputs, self._late_inputs = self._late_inputs, []
        if self.outcome is not None:
            if not self._farewell_done.is_set() and self._farewell_asked_on != self.socket:
                self._farewell_asked_on = self.socket
                session.farewell(self.outcome.farewell)
            return
        for note in notes:
            session.note(note)
        for text in inputs:
            self._send_input(text)
        if not self._greeted and self.call.greeting:
            session.say("greeting", f'Greet the caller now, saying: "{self.call.greeting}"')
        elif resume and not notes and not inputs:
            # What the old socket was doing (an answer, a tool call the service ran) is lost.
            session.note(
                "The connection was restored; whatever was in progress was lost. Go on from where "
                "the conversation was, and redo a request that did not finish."
            )
        self._greeted = True

    async def _detach(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        if self.caller_speaking and self._speech_start_byte is not None:
            spoken = self._socket_bytes - self._speech_start_byte
            self._replay = bytes(self._recent[-spoken:]) if spoken > 0 else b""
        self._resume = session.unfinished() or self._resume
        self.caller_speaking = False
        await session.close()

    async def _prepare_tools(self) -> None:
        assert self.data_tools is not None
        try:
            await self.data_tools.prepare()
        finally:
            self._tools_ready.set()
        self.spec = self._spec()
        if self.session is not None and self.socket > 0 and self.data_tools.tools and self.outcome is None:
            log.info("data actions ready after the call started; updating the session")
            self.session.update_tools(self.spec)

    def _quiet(self) -> bool:
        """A moment to replace the model's socket without anyone noticing."""
        return (
            self.outcome is None
            and not self.caller_speaking
            and not self.link.audio_busy()
            and self._tools_running == 0
        )

    @property
    def _tools_running(self) -> int:
        return sum(self._tools_by_socket.values())

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None] | None:
        if self._tg is not None:
            return self._tg.create_task(coro, name=name)
        coro.close()  # the call is over
        return None

    # -- events from the backend -------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        match event:
            case BotAudio(utterance=utterance, audio=audio):
                self._on_bot_audio(utterance, audio)
            case UtteranceStarted(utterance=utterance):
                self.transcript.bot(utterance)
            case BotText(utterance=utterance):
                log.debug("assistant: %s", utterance.text)
                self._spawn(self._report_turn(utterance), "bot-turn")
            case CallerSpeechStarted(audio_offset=offset):
                self._on_caller_speech(offset)
            case CallerSpeechStopped():
                self.caller_speaking = False
                self._speech_start_byte = None
                self._speech_ended_at = self.link.now()
                self.limits.activity(self._speech_ended_at)
            case Interrupted():
                if self.outcome is None:  # the farewell is never cut
                    self._interrupt()
            case CallerTurn(key=key, text=text):
                self.transcript.caller(key, text)
                if text:
                    log.debug("caller: %s", text)
            case ToolCall():
                self._on_tool_call(event)
            case ToolCancelled(call_ids=call_ids):
                self._cancel_tools(call_ids)
            case UsageReport(usage=usage):
                self.usage.add(usage)
            case FarewellDone():
                self._farewell_done.set()
            case Ready():
                self._on_ready()

    def _on_bot_audio(self, utterance: Utterance, audio: bytes) -> None:
        if utterance.stale:
            return
        if self._speech_ended_at is not None:
            self.metrics.first_bot_audio.observe(self.link.now() - self._speech_ended_at)
            self._speech_ended_at = None
        if not self.link.play(utterance, audio) and not self._buffer_full_warned:
            self._buffer_full_warned = True
            log.warning("bot audio not queued (call ending or the per-call buffer is full)")

    def _on_caller_speech(self, offset: int | None) -> None:
        self.caller_speaking = True
        self._speech_start_byte = offset if offset is not None else self._socket_bytes
        self.limits.activity(self.link.now())
        if self.outcome is None:  # the farewell is never cut
            self._interrupt()

    def _interrupt(self, *, cancel: bool = False) -> None:
        """The caller cut in: stop the bot's audio on the Genesys side, and tell the model what
        was heard where it can be told. Keys (`cancel`) also stop the answer the model is
        making, which its turn detection does not know about."""
        if cancel and self.session is not None:
            self.session.cancel_answer()
        interruption = self.link.barge_in()
        if interruption is None:
            return
        cut = []
        for piece in interruption.cuts:
            utterance = piece.utterance
            utterance.stale = True
            utterance.heard_ms = min(piece.heard_ms, utterance.received_ms)
            cut.append(utterance)
        if self.capabilities.truncation and self.session is not None:
            self.session.heard(cut)
        first = interruption.cuts[0]
        log.info(
            "barge-in: the caller heard %d of %d ms sent; %d utterance(s) cut, %d ms queued dropped",
            first.heard_ms,
            first.sent_ms,
            len(cut),
            interruption.dropped_bytes // 8,
        )

    async def _report_turn(self, utterance: Utterance) -> None:
        """Once the turn has played (or was cut), tell Genesys what the caller heard of it, for
        its historical reporting of bot turns."""
        await self.link.wait_item_played(utterance)
        heard = utterance.heard_text()
        if heard:
            self.link.send_event(bot_turn_entity("match", heard[:1000]))

    # -- tools -------------------------------------------------------------------------------

    def _on_tool_call(self, call: ToolCall) -> None:
        session = self.session
        assert session is not None
        if call.name in CALL_CONTROL_NAMES:
            self.metrics.tool_calls.labels(call.name, "ok").inc()
            if self.outcome is not None:
                note = json.dumps({"ok": True, "note": "the call is already ending"})
                session.tool_result(call.call_id, note, respond=False)
                return
            self.finish(outcome_from_tool(call.name, parse_arguments(call.arguments)), call.call_id)
            return
        if self.data_tools is not None and self.data_tools.handles(call.name):
            task = self._spawn(self._run_tool(call), f"tool-{call.name}")
            if task is not None:
                self._tool_tasks[call.call_id] = (task, call.name)
            return
        log.warning("the model called an unknown tool %r", call.name[:64])
        self.metrics.tool_calls.labels("unknown", "error").inc()
        result = json.dumps({"error": f"there is no tool named {call.name}"})
        session.tool_result(call.call_id, result, respond=self._may_respond(self.socket))

    def _may_respond(self, socket: int) -> bool:
        """The model goes on once the last tool its socket is running has answered (one answer
        for a batch, seeing every result), and never once the call is ending: the goodbye is
        the last thing said."""
        return self._tools_by_socket[socket] == 0 and self.outcome is None

    async def _run_tool(self, call: ToolCall) -> None:
        """A Data Action, off the reader; a holding phrase if it is slow; then the model goes on."""
        assert self.data_tools is not None
        started = self.link.now()
        socket = self.socket
        self._tools_by_socket[socket] += 1
        work = asyncio.create_task(self.data_tools.run(call.name, call.arguments), name=f"run-{call.name}")
        try:
            filler_after = self.settings.tool_filler_after_ms / 1000
            if filler_after > 0:
                done, _ = await asyncio.wait({work}, timeout=filler_after)
                if not done and self.outcome is None and self.session is not None:
                    self.session.say("filler", FILLER)
            output, ok = await work
        finally:
            await cancel_and_wait(work)
            self._tools_by_socket[socket] -= 1
            self._tool_tasks.pop(call.call_id, None)
        self.metrics.tool_calls.labels(call.name, "ok" if ok else "error").inc()
        self.metrics.tool_latency.labels(call.name).observe(self.link.now() - started)
        if self.session is not None and self.socket == socket:
            self.session.tool_result(call.call_id, output, respond=self._may_respond(socket))
            return
        if self.outcome is not None:
            return  # the replaced socket's result would only make the model speak after its goodbye
        # The socket that asked was replaced and never saw this result: tell the current one (or
        # the next) what the tool returned.
        note = f"The tool {call.name}, called before a reconnection, returned: {output}"
        if self.session is not None:
            self.session.note(note)
        else:
            self._late_notes.append(note)

    def _cancel_tools(self, call_ids: tuple[str, ...]) -> None:
        """The model withdrew these calls (the caller cut in): no holding phrase, no result."""
        cancelled = [running for call_id in call_ids if (running := self._tool_tasks.pop(call_id, None))]
        for task, name in cancelled:
            task.cancel()  # its `finally` keeps the counts right; the group absorbs the cancellation
            self.metrics.tool_calls.labels(name, "cancelled").inc()
        if cancelled:
            log.info("the model cancelled %d running tool call(s)", len(cancelled))

    # -- ending the call ---------------------------------------------------------------------

    def finish(self, outcome: Outcome, call_id: str | None = None) -> None:
        """End the call: farewell, summary, `disconnect completed`. A second request is ignored."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        # The reason and summary are the model's words about the caller: customer data.
        text = outcome.reason if outcome.escalate else outcome.summary
        kind = "with escalation" if outcome.escalate else "completed"
        log.info("ending the call (%s; %d characters of text)", kind, len(text or ""))
        log.debug("ending text: %s", text or "-")
        if self.session is not None:
            self._farewell_asked_on = self.socket
            self.session.farewell(outcome.farewell, call_id, json.dumps({"ok": True}))
        self._spawn(self._end_call(), "ending")

    async def _end_call(self) -> None:
        summary = self._spawn(self._make_summary(), "summary")
        timeout = self.settings.farewell_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await self._farewell_done.wait()
                await self.link.wait_played()
        except TimeoutError:
            log.warning("the farewell did not finish within %g s; hanging up", timeout)
        if self.session is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FINISH_WAIT_SECONDS):
                    await self.session.finish(FINISH_WAIT_SECONDS)
        if summary is not None and not summary.done():
            log.info("no conversation summary before the farewell ended")
            summary.cancel()
        await self.link.disconnect("completed", None, self.output_variables())

    async def _make_summary(self) -> None:
        if self.session is None:
            return
        text, usage = await self.session.summary(self.transcript.as_text())
        self.usage.add(usage)
        if text is not None:
            self.summary = text
            log.debug("conversation summary: %s", text)

    async def _watch_limits(self) -> None:
        while self.outcome is None:
            now = self.link.now()
            if self.paused or self.link.audio_busy() or self.caller_speaking or self._tools_running:
                self.limits.activity(now)  # paused: the idle timer stands still
            reason = self.limits.due(now)
            if reason is not None and not self.paused:  # a farewell into a paused stream is lost
                log.info("call limit: %s", reason)
                self.finish(limit_outcome(reason))
                return
            if self.session is not None:
                self.session.tick()
            self._limits_wake.clear()
            # Paused, a limit already due waits for `resumed` (which wakes this loop), not in a spin.
            due_in = LIMIT_CHECK_SECONDS if self.paused else self.limits.next_check() - now
            wait = max(0.01, min(due_in, LIMIT_CHECK_SECONDS))
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
        if self.session is None:
            # Given to the next socket once it is ready: a resumed session gets no history.
            self._late_inputs.append(text)
            return
        self._send_input(text)

    def _send_input(self, text: str) -> None:
        assert self.session is not None
        self._digit_turns += 1
        self.transcript.text("user", text, key=f"keypad-{self._digit_turns}")
        self.session.user_input(text)


BackendFor = Callable[[CallConfig], ModelBackend]


def make_bridge_factory(
    settings: Settings,
    backend_for: BackendFor,
    *,
    genesys_api: GenesysApi | None = None,
    metrics: Metrics | None = None,
):
    """The `HandlerFactory` the server uses: one bridge per (non-probe) call, with the backend
    `backend_for` chooses for the call's resolved settings."""

    def factory(session, request) -> CallBridge:
        call = settings.call_config(session.connector_id, request.input_variables, request.language)
        data_tools = None
        if call.data_action_ids:
            if genesys_api is None:
                log.warning("DATA_ACTION_IDS given but ENABLE_GENESYS_DATA_ACTIONS is off; no data actions")
            else:
                data_tools = DataActionTools(genesys_api, call.data_action_ids, call.data_action_descriptions)
        backend = backend_for(call)
        return CallBridge(session, call, settings, backend=backend, data_tools=data_tools, metrics=metrics)

    return factory
