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
import json
import logging
import time
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
from config import ApprovalPolicy, CallConfig, Settings
from genesys_actions import DataActionTools, GenesysApi
from instructions import ToolNote, build_instructions
from metrics import Metrics
from openai_client import (
    RealtimeConfig,
    RealtimeConnection,
    ResponseGate,
    Transcript,
    Usage,
    append_audio,
    function_output,
    history_events,
    lock_turns,
    response_create,
    session_update,
    system_text,
    truncate,
    user_text,
)
from playout import Interruption
from utils import release_frames

log = logging.getLogger("bridge")

MAX_BUFFERED_CALLER_AUDIO = 10 * 8000  # caller audio kept while OpenAI is (re)connecting
MAX_APPEND_BYTES = 32_000  # buffered audio goes out in appends of at most this much
RECYCLE_MARGIN_SECONDS = 120.0  # replace the OpenAI session this long before it expires
ITEMS_TRACKED = 16
LIMIT_CHECK_SECONDS = 1.0
TOOLS_READY_WAIT = 3.0  # the first session.update waits this long for Data Action schemas
FILLER = "A lookup is taking a moment. Tell the caller in a few words that you are still checking."
FATAL_ERROR_CODES = frozenset({"beta_api_shape_disabled", "model_not_found", "invalid_api_key"})
HARMLESS_ERROR_CODES = frozenset({"response_cancel_not_active", "input_audio_buffer_commit_empty"})
OUT_OF_BAND = "summary"  # the purpose of the one response that runs outside the conversation


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
        self.caller_speaking = False
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
            transcription_language=None,
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
            return
        self._pending_audio += audio
        excess = len(self._pending_audio) - MAX_BUFFERED_CALLER_AUDIO
        if excess > 0:
            del self._pending_audio[:excess]
            if not self._dropped_warned:
                self._dropped_warned = True
                log.warning("OpenAI not ready for 10 s of caller audio; keeping only the latest 10 s")

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
        while True:
            deadline = self.link.now() + self.settings.openai_reconnect_seconds
            conn = await self._connect(deadline)
            if self.generation == 0 and self.data_tools is not None:
                # Schemas are fetched while OpenAI connects; a slow Genesys adds them later.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TOOLS_READY_WAIT):
                        await self._tools_ready.wait()
            self._attach(conn)
            outcome = await self._pump(conn)
            await self._detach()
            if outcome == "dropped":
                log.warning("OpenAI connection lost; reconnecting")
            else:
                log.info("replacing the OpenAI session before it expires")
            self.metrics.openai_reconnects.labels(outcome).inc()

    async def _connect(self, deadline: float) -> RealtimeConnection:
        delay = 0.25
        report = log.warning  # the first failure of an outage; the retries at DEBUG
        while True:
            remaining = deadline - self.link.now()
            if remaining <= 0:
                raise CallFailed("OpenAI unreachable")
            try:
                return await self.connector(
                    self.settings.openai_realtime_url,
                    self.realtime.model,
                    self.settings.openai_api_key,
                    min(remaining, 10.0),
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403, 404):
                    raise CallFailed(f"OpenAI refused the connection (HTTP {status})") from None
                report("OpenAI refused the connection (HTTP %d); retrying", status)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                report("cannot reach OpenAI (%s); retrying", type(exc).__name__)
            report = log.debug
            await asyncio.sleep(min(delay, max(0.0, deadline - self.link.now())))
            delay = min(delay * 2, 2.0)

    def _attach(self, conn: RealtimeConnection) -> None:
        restoring = self.generation > 0
        self.generation += 1
        self.conn = conn
        self.format_ok = False
        conn.send(session_update(self.realtime, event_id=f"session-update-{self.generation}"))
        if restoring:
            for event in history_events(self.transcript):
                conn.send(event)
            self._deliver_late_results()
        self.ready = True
        pending, self._pending_audio = bytes(self._pending_audio), bytearray()
        self._dropped_warned = False
        for start in range(0, len(pending), MAX_APPEND_BYTES):
            conn.send(append_audio(pending[start : start + MAX_APPEND_BYTES]))
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
            self._request(response_create())
        elif not restoring and self.call.greeting:
            self._request(
                response_create(
                    instructions=f"{self.realtime.instructions}\n\n"
                    f'Greet the caller now, saying: "{self.call.greeting}"',
                    purpose="greeting",
                )
            )

    async def _detach(self) -> None:
        self.ready = False
        conn, self.conn = self.conn, None
        self._resume = self.gate.reset() or self._resume
        self._stale.clear()
        self._out_of_band.clear()
        self._recycle_at = None
        self.caller_speaking = False
        if conn is not None:
            await conn.close()

    async def _prepare_tools(self) -> None:
        assert self.data_tools is not None
        try:
            await self.data_tools.prepare()
        finally:
            self._tools_ready.set()
        self.realtime = self._realtime_config()
        if self.conn is not None and self.data_tools.tools:
            log.info("data actions ready after the call started; updating the session")
            self._send(session_update(self.realtime, event_id=f"session-update-tools-{self.generation}"))

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
        return self.outcome is None and not (self.gate.busy or self.caller_speaking or self.link.audio_busy())

    def _go_on(self) -> None:
        """Let the model answer what was just added (a tool result, digits, an approval)."""
        if self.outcome is None:  # never another answer after the goodbye
            self._request(response_create())

    def _request(self, event: dict[str, Any]) -> None:
        if self.conn is None:
            self._resume = True  # asked for again once a new socket is attached
            return
        ready = self.gate.request(event)
        if ready is not None:
            self.conn.send(ready)

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
        expires_at = _at(event, "session", "expires_at")
        if isinstance(expires_at, int | float) and not isinstance(expires_at, bool) and expires_at > 0:
            lifetime = expires_at - time.time()
            margin = min(RECYCLE_MARGIN_SECONDS, max(lifetime, 0.0) / 4)
            self._recycle_at = self.link.now() + lifetime - margin

    def on_session_updated(self, event: dict[str, Any]) -> None:
        output = _at(event, "session", "audio", "output", "format")
        kind = output.get("type") if isinstance(output, dict) else output
        if kind != "audio/pcmu":
            raise CallFailed(f"OpenAI output format is {kind!r}, not audio/pcmu")
        self.format_ok = True

    def on_speech_started(self, event: dict[str, Any]) -> None:
        self.caller_speaking = True
        self.limits.activity(self.link.now())
        if self.outcome is None:  # the farewell is never cut
            self._interrupt()

    def _interrupt(self, *, cancel: bool = False) -> None:
        """The caller cut in: stop the bot's audio and tell the model what was heard.

        On speech the server's VAD cancels the running response itself; for keypad input
        (`cancel`) it does not know, so the response is cancelled here.
        """
        if self.gate.active is not None:
            self._stale.add(self.gate.active)  # drop its late deltas
            if cancel:
                self._send({"type": "response.cancel"})
        cut = self.link.barge_in()
        if cut is None:
            return
        self._stale.add(cut.response_id)
        received_ms = self._item_bytes.get(cut.item_id, 0) // 8
        heard_ms = min(cut.heard_ms, received_ms)
        if self._item_generation.get(cut.item_id) == self.generation:
            self._send(truncate(cut.item_id, heard_ms))
        if received_ms:
            self._heard[cut.item_id] = heard_ms / received_ms
            self.transcript.cut(cut.item_id, heard_ms / received_ms)
        log.info(
            "barge-in: the caller heard %d of %d ms sent; %d ms queued dropped",
            heard_ms,
            cut.sent_ms,
            cut.dropped_bytes // 8,
        )

    def on_speech_stopped(self, event: dict[str, Any]) -> None:
        self.caller_speaking = False
        self._speech_ended_at = self.link.now()
        self.limits.activity(self._speech_ended_at)

    def on_item_added(self, event: dict[str, Any]) -> None:
        kind, item_id = _at(event, "item", "type"), _at(event, "item", "id")
        if kind == "message" and isinstance(item_id, str):
            self.transcript.add_item(item_id, _text(_at(event, "item", "role")))
        elif kind == "mcp_list_tools":
            self._mcp_items[str(item_id)] = str(_at(event, "item", "server_label"))

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
        heard = self.transcript.text(item_id)
        if heard:
            # For Genesys's historical reporting of bot turns: what the caller heard.
            self.link.send_event(bot_turn_entity("match", heard[:1000]))
        log.debug("assistant: %s", text)

    def on_response_created(self, event: dict[str, Any]) -> None:
        response_id = _text(_at(event, "response", "id"))
        purpose = _at(event, "response", "metadata", "purpose")
        if purpose == OUT_OF_BAND:
            self._out_of_band.add(response_id)
            return
        fmt = _at(event, "response", "audio", "output", "format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "audio/pcmu"):
            raise CallFailed(f"OpenAI response format is {fmt.get('type')!r}, not audio/pcmu")
        if purpose == "farewell":
            self._farewell_id = response_id
        self.gate.created(response_id)

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
                    self._request(
                        response_create(
                            instructions=f"{self.realtime.instructions}\n\n{FILLER}", purpose="filler"
                        )
                    )
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
                system_text(f"The tool {name}, called before a reconnection, returned: {output}")
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
            "id": f"mcpr_{self.generation}_{item.get('id')}",
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
        if response.get("status") == "failed":
            error = _at(response, "status_details", "error")
            log.warning("OpenAI response failed: %s", _at(error, "code") or _at(error, "type") or "-")
        self._stale.discard(response_id)
        self._buffer_full_warned.discard(response_id)
        if response_id in self._out_of_band:
            self._out_of_band.discard(response_id)
            self._take_summary(response)
            return
        if response_id == self._farewell_id:
            self._farewell_done.set()
        queued = self.gate.done(response_id)
        if queued is not None:
            self._send(queued)

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
        if code == "conversation_already_has_active_response":
            self.gate.rejected()
        elif code in HARMLESS_ERROR_CODES or "already shorter than" in message:
            log.debug("OpenAI: %s", message[:200])
        elif code in FATAL_ERROR_CODES or event_id.startswith("session-update"):
            raise CallFailed(f"OpenAI refused the session ({code or 'error'})")
        else:
            kind = code or _text(_at(error, "type")) or "error"
            log.warning("OpenAI error %s: %s", kind, message[:200])
            self.metrics.errors.labels(f"openai_{kind}"[:64]).inc()

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
        self._request(
            response_create(
                instructions=f"{self.realtime.instructions}\n\n{self.outcome.farewell}", purpose="farewell"
            )
        )

    async def _end_call(self) -> None:
        self._ask_farewell()
        self._send(
            response_create(
                instructions=SUMMARY_INSTRUCTIONS, purpose=OUT_OF_BAND, out_of_band=True, text_only=True
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
            if self.link.audio_busy() or self.gate.busy or self.caller_speaking:
                self.limits.activity(now)
            reason = self.limits.due(now)
            if reason is not None:
                log.info("call limit: %s", reason)
                self.finish(limit_outcome(reason))
                return
            await asyncio.sleep(max(0.01, min(self.limits.next_check() - now, LIMIT_CHECK_SECONDS)))

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
        self._send(user_text(text))
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
        call = settings.call_config(session.connector_id, request.input_variables)
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
