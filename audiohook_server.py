"""The Genesys side of a call: one AudioHook session per WebSocket connection.

The session reads the socket, keeps the protocol core (`audiohook_protocol`) fed, and owns one
writer task that drains a bounded control queue and paces bot audio out of a `Playout`, so server
`seq` numbers leave in order and JSON never interleaves with audio. What the call *does* lives in
a `CallHandler` (the OpenAI bridge), which takes caller audio from the session and gives it bot
audio and control through the methods in the "bot side" section below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

import metrics as m
from audiohook_protocol import (
    ClientMessage,
    OpenRequest,
    ProtocolError,
    ServerProtocol,
    State,
    barge_in_entity,
    parse_duration,
)
from call_control import empty_output_variables
from log_setup import conversation_id_var
from metrics import Metrics
from model_backend import Utterance
from playout import Interruption, Playout
from utils import cancel_and_wait, release_frames, send_within

log = logging.getLogger("audiohook")

SEND_TIMEOUT = 5.0  # a send blocked this long means Genesys stopped reading
CLOSE_WAIT = 5.0  # how long a `disconnect` waits for the client's `close`
SOCKET_GRACE = 2.0  # after `closed`, how long the client has to close the socket
READ_IDLE_TIMEOUT = 60.0  # nothing at all from Genesys (not even a ping) for this long: gone
HANDLER_STOP_TIMEOUT = 5.0
MAX_CONTROL_QUEUE = 256
DEFAULT_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 30.0  # a longer `retryAfter` would silence the bot for most of a call
SHUTDOWN_INFO = "server shutting down"

Sent = Callable[[float], None]  # called with the loop time once a message is on the wire


class CallHandler(Protocol):
    """The bot behind a session. The session calls these from its reader: they must not block."""

    async def run(self) -> None:
        """The call's own work; cancelled when the call ends."""

    def on_audio(self, audio: bytes) -> None:
        """Caller audio (PCMU, external channel), in order."""

    def on_dtmf(self, digit: str) -> None: ...

    def on_pause(self) -> None:
        """Genesys paused the stream: no caller audio comes, no bot audio is played."""

    def on_resume(self) -> None: ...

    def on_language(self, language: str) -> None:
        """An `update` switched the call's language."""

    def output_variables(self, failure: str | None = None) -> dict[str, str]:
        """Output variables for a `disconnect` the session sends on its own (errors, shutdown)."""


HandlerFactory = Callable[["AudioHookSession", OpenRequest], CallHandler]


class AudioHookSession:
    def __init__(
        self,
        ws: ServerConnection,
        *,
        session_id: str,
        organization_id: str,
        connector_id: str | None,
        handler_factory: HandlerFactory,
        metrics: Metrics,
        default_outputs: Callable[[str | None], dict[str, str]] = empty_output_variables,
        supported_languages: tuple[str, ...] = (),
    ) -> None:
        self.ws = ws
        self.supported_languages = supported_languages
        self.session_id = session_id
        self.organization_id = organization_id.lower()
        self.connector_id = connector_id
        self.metrics = metrics
        self.protocol = ServerProtocol(session_id)
        self.playout = Playout()
        self.open_request: OpenRequest | None = None
        self.handler: CallHandler | None = None
        self.end_reason: str | None = None
        self.outcome: str | None = None  # for connector_calls_total
        self._handler_factory = handler_factory
        self._default_outputs = default_outputs
        self._loop = asyncio.get_running_loop()
        self._control: deque[tuple[str, Sent | None]] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # the control queue is empty and its last message was sent
        self._finished = asyncio.Event()
        self._close_deadline: float | None = None
        self._handler_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._read_timer: asyncio.Timeout | None = None
        self._playback_seen = False
        self._playback_idle = asyncio.Event()
        self._playback_idle.set()
        self.started = self._loop.time()

    # -- life cycle --------------------------------------------------------------------------

    async def run(self) -> None:
        self._writer_task = asyncio.create_task(self._writer(), name=f"writer-{self.session_id}")
        try:
            await self._read_loop()
        finally:
            await self._release()

    async def _read_loop(self) -> None:
        try:
            async with asyncio.timeout(self._read_timeout()) as timer:
                self._read_timer = timer
                while True:
                    message = await self.ws.recv()
                    if isinstance(message, str):
                        self._on_text(message)
                    else:
                        self._on_binary(message)
                    self._extend(timer)
        except TimeoutError:
            self._on_read_timeout()
        except ConnectionClosed as exc:
            if self.protocol.state is not State.CLOSED:
                self.end_reason = self.end_reason or "genesys dropped the connection"
                self.outcome = self.outcome or m.GENESYS_DROPPED
                log.warning("connection dropped without a close (code %s)", exc.rcvd and exc.rcvd.code)
        finally:
            self._read_timer = None

    def _extend(self, timer: asyncio.Timeout) -> None:
        """Move the read deadline after a message or a state change, lazily: a timer re-armed for
        every audio frame costs more CPU than anything else in the session. It moves when it must
        come sooner (the call is ending) or is more than a tenth of the wait (at most a second)
        too early."""
        wait = self._read_timeout()
        deadline, when = self._loop.time() + wait, timer.when()
        if when is None or deadline < when or deadline - when > min(1.0, wait / 10):
            timer.reschedule(deadline)

    def _read_timeout(self) -> float:
        if self.protocol.state is State.CLOSED:
            return SOCKET_GRACE
        if self.protocol.state is State.DISCONNECTING and self._close_deadline is not None:
            return max(0.0, self._close_deadline - self._loop.time())
        return READ_IDLE_TIMEOUT

    def _on_read_timeout(self) -> None:
        state = self.protocol.state
        if state is State.DISCONNECTING:
            self.end_reason = self.end_reason or "no close after disconnect"
            log.warning("no close from Genesys within %ss of our disconnect", CLOSE_WAIT)
        elif state is not State.CLOSED:
            self.end_reason = "genesys silent"
            self.outcome = self.outcome or "error_genesys_silent"
            log.warning("nothing received from Genesys for %ss; ending the session", READ_IDLE_TIMEOUT)

    async def _release(self) -> None:
        self._finished.set()
        try:
            await self._stop_handler()
            # Let the writer put out what is queued (closed, disconnect) before the socket goes.
            if self._control and self._writer_task is not None and not self._writer_task.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._drained.wait()
        finally:
            # Even when this session's own task is being cancelled: nothing may outlive it.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SOCKET_GRACE):
                    await self.ws.close()
            # A finished task keeps its cancellation, whose traceback holds this session: drop
            # the task so that the call is freed at once rather than by a full garbage collection.
            writer, self._writer_task = self._writer_task, None
            if writer is not None:
                await cancel_and_wait(writer)
            self._control.clear()  # what was never sent holds callbacks into this session
            self.metrics.calls.labels(self.outcome or "unknown").inc()
            log.info(
                "session ended: %s (caller audio %d bytes)",
                self.end_reason or "closed",
                self.protocol.audio_bytes_in,
            )
            self.handler = None  # the handler links back to this session: free both now

    async def _stop_handler(self) -> None:
        task, self._handler_task = self._handler_task, None
        if task is not None and not task.done():
            await cancel_and_wait(task, HANDLER_STOP_TIMEOUT)

    async def shutdown(self) -> None:
        """The server is going away: end this call properly, with the output variables."""
        if self.protocol.state in (State.AWAITING_OPEN, State.OPEN):
            await self.disconnect("error", SHUTDOWN_INFO, kind="shutdown")

    # -- from Genesys ------------------------------------------------------------------------

    def _on_text(self, text: str) -> None:
        try:
            msg = self.protocol.receive_text(text)
        except ProtocolError as exc:
            self._violation(exc.info)
            return
        handler = getattr(self, f"_on_{msg.type}", None)
        if handler is not None:
            handler(msg)

    def _on_binary(self, data: bytes) -> None:
        self.metrics.frames_in.inc()
        self.metrics.bytes_in.inc(len(data))
        try:
            audio = self.protocol.receive_audio(data)
        except ProtocolError as exc:
            self._violation(exc.info)
            return
        if audio and self.handler is not None:
            self.handler.on_audio(audio)

    def _violation(self, info: str) -> None:
        log.warning("protocol violation: %s", info)
        self.metrics.errors.labels("protocol").inc()
        self.protocol.mark_violation()
        if self.protocol.state in (State.DISCONNECTING, State.CLOSED):
            return
        self.end_reason = f"protocol error: {info}"
        self.outcome = "error_protocol"
        self._send_disconnect("error", info, self._outputs(f"protocol error: {info}"))
        self._cancel_handler()

    def _on_open(self, msg: ClientMessage) -> None:
        request = msg.open
        assert request is not None
        if request.organization_id != self.organization_id:
            log.warning("organization id in open does not match the upgrade request")
            self.end_reason = "organization mismatch"
            self.outcome = m.UNAUTHORIZED
            outputs = self._outputs("organization mismatch")
            self._send_disconnect("unauthorized", "organization mismatch", outputs)
            return
        self.open_request = request
        conversation_id_var.set(request.conversation_id)
        received = self._loop.time()
        languages = self.supported_languages if request.wants_languages else None
        self._queue(
            self.protocol.opened(languages), lambda sent: self.metrics.time_to_opened.observe(sent - received)
        )
        if request.probe:
            log.info("connection probe answered")
            self.end_reason = "probe"
            self.outcome = m.PROBE
            return
        log.info(
            "call opened: connector=%s media=%s input variables=%d",
            self.connector_id or "-",
            "stereo" if request.media.channels == 2 else "mono",
            len(request.input_variables),
        )
        self.handler = self._handler_factory(self, request)
        self._handler_task = asyncio.create_task(self._run_handler(), name=f"call-{self.session_id}")

    def _on_close(self, msg: ClientMessage) -> None:
        if self.protocol.state is State.CLOSED:
            return
        if self.protocol.state is not State.DISCONNECTING:
            self.end_reason = self.end_reason or "caller hung up"
            self.outcome = self.outcome or m.CALLER_HANGUP
        self._queue(self.protocol.closed())
        self._cancel_handler()
        self._finished.set()
        log.info("close answered (reason %s)", msg.parameters.get("reason", "-"))

    def _on_ping(self, msg: ClientMessage) -> None:
        received = self._loop.time()
        self._queue(
            self.protocol.pong(msg.seq), lambda sent: self.metrics.pong_latency.observe(sent - received)
        )

    def _on_update(self, msg: ClientMessage) -> None:
        self._queue(self.protocol.updated())
        language = msg.parameters.get("language")
        if language and self.handler is not None:
            log.info("Genesys switched the language to %s", language[:35])
            self.handler.on_language(language[:35])

    def _on_error(self, msg: ClientMessage) -> None:
        code = msg.parameters["code"]
        log.warning("Genesys reported error %s: %s", code, str(msg.parameters.get("message", ""))[:200])
        self.metrics.errors.labels(f"genesys_{code}").inc()
        if code == 429:
            retry = msg.parameters.get("retryAfter")
            seconds = parse_duration(retry) if retry is not None else DEFAULT_RETRY_AFTER
            if seconds > MAX_RETRY_AFTER:
                log.warning("retryAfter of %g s clamped to %g s", seconds, MAX_RETRY_AFTER)
                seconds = MAX_RETRY_AFTER
            self.playout.hold(self._loop.time() + seconds)

    def _on_dtmf(self, msg: ClientMessage) -> None:
        if self.handler is not None:
            self.handler.on_dtmf(msg.parameters["digit"])

    def _on_paused(self, msg: ClientMessage) -> None:
        log.info("Genesys paused the audio")
        self.playout.paused = True
        if self.handler is not None:
            self.handler.on_pause()

    def _on_resumed(self, msg: ClientMessage) -> None:
        log.info("Genesys resumed the audio")
        self.playout.paused = False
        self._wake.set()
        if self.handler is not None:
            self.handler.on_resume()

    def _on_playback_started(self, msg: ClientMessage) -> None:
        self._playback_seen = True
        self._playback_idle.clear()

    def _on_playback_completed(self, msg: ClientMessage) -> None:
        self._playback_seen = True
        self._playback_idle.set()

    # -- to Genesys --------------------------------------------------------------------------

    def _queue(self, text: str, on_sent: Sent | None = None) -> None:
        if len(self._control) >= MAX_CONTROL_QUEUE:
            self._give_up("control queue full")
            return
        self._control.append((text, on_sent))
        self._drained.clear()
        self._wake.set()

    def _send_disconnect(self, reason: str, info: str | None, outputs: dict[str, str]) -> None:
        self._queue(self.protocol.disconnect(reason, info, outputs))
        self._close_deadline = self._loop.time() + CLOSE_WAIT
        timer = self._read_timer  # the reader may be waiting with the idle deadline
        if timer is not None and not timer.expired():
            self._extend(timer)

    async def _writer(self) -> None:
        while True:
            if self._control:
                text, on_sent = self._control.popleft()
                if not await self._send(text):
                    return
                if on_sent is not None:
                    on_sent(self._loop.time())
                continue
            self._drained.set()
            now = self._loop.time()
            frame = self.playout.take(now)
            if frame is not None:
                if not await self._send(frame):
                    return
                self.metrics.frames_out.inc()
                self.metrics.bytes_out.inc(len(frame))
                continue
            wake_at = self.playout.next_send_at(now)
            self._wake.clear()
            if wake_at is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(wake_at):
                        await self._wake.wait()

    async def _send(self, data: str | bytes) -> bool:
        try:
            await send_within(self.ws, data, SEND_TIMEOUT)
        except TimeoutError:
            self._give_up(f"Genesys stopped reading (send blocked {SEND_TIMEOUT}s)")
            return False
        except ConnectionClosed:
            return False
        return True

    def _give_up(self, why: str) -> None:
        """The client is not reading: end the call without waiting on it."""
        log.warning("ending the session: %s", why)
        self.metrics.errors.labels("backpressure").inc()
        self.end_reason = f"back-pressure: {why}"
        self.outcome = "error_backpressure"
        self._control.clear()
        self.ws.transport.abort()

    def _outputs(self, failure: str | None = None) -> dict[str, str]:
        if self.handler is not None:
            try:
                return self.handler.output_variables(failure)
            except Exception:
                log.exception("output variables failed")
        return self._default_outputs(failure)

    def _cancel_handler(self) -> None:
        if self._handler_task is not None and self._handler_task is not asyncio.current_task():
            self._handler_task.cancel()

    async def _run_handler(self) -> None:
        assert self.handler is not None
        try:
            await self.handler.run()
        except asyncio.CancelledError as cancelled:
            release_frames(cancelled)
            raise
        except Exception as exc:
            log.exception("call handler failed")
            release_frames(exc)
            self.end_reason = "internal error"
            await self.disconnect("error", "internal error", kind="internal")

    # -- bot side ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.protocol.state is State.OPEN

    def now(self) -> float:
        return self._loop.time()

    def play(self, utterance: Utterance, audio: bytes) -> bool:
        """Queue bot audio for paced sending. False when it cannot be queued (call ending, full)."""
        if not self.is_open:
            return False
        if not self.playout.add(utterance, audio, self._loop.time()):
            return False
        self._wake.set()
        return True

    def audio_busy(self) -> bool:
        """Bot audio queued or still playing at Genesys."""
        return self.playout.busy(self._loop.time())

    def barge_in(self) -> Interruption | None:
        """The caller spoke over the bot: tell Genesys to flush, drop our queue, say what was heard."""
        now = self._loop.time()
        if not self.is_open or not self.playout.busy(now):
            return None
        self._queue(self.protocol.event([barge_in_entity()]))
        self.metrics.barge_ins.inc()
        return self.playout.interrupt(now)

    def send_event(self, entity: dict) -> None:
        if self.is_open:
            self._queue(self.protocol.event([entity]))

    async def wait_item_played(self, utterance: Utterance) -> None:
        """Until the caller has heard all of this utterance, or it was cut."""
        while True:
            now = self._loop.time()
            end = self.playout.item_end(utterance)
            if end is not None and end <= now:
                return
            await asyncio.sleep(0.1 if end is None else max(0.02, end - now))

    async def wait_played(self) -> None:
        """Until every queued byte was sent and played out (and Genesys said so, if it does)."""
        while self.playout.busy(self._loop.time()):
            end = self.playout.playout_end
            await asyncio.sleep(max(0.02, min(0.2, end - self._loop.time())))
        if self._playback_seen:
            await self._playback_idle.wait()

    async def disconnect(
        self,
        reason: str,
        info: str | None = None,
        output_variables: dict[str, str] | None = None,
        *,
        kind: str = "openai",
    ) -> None:
        """Run the close transaction: `disconnect`, then the client's `close`, then `closed`.

        `kind` names the error for the call's outcome when the reason is `error`.
        """
        if self.protocol.state in (State.DISCONNECTING, State.CLOSED):
            return
        self.end_reason = self.end_reason or f"disconnect {reason}" + (f": {info}" if info else "")
        failure = info if reason != "completed" else None
        outputs = output_variables if output_variables is not None else self._outputs(failure)
        if reason == "completed":
            self.outcome = m.ESCALATED if outputs.get("ESCALATION_REQUIRED") == "true" else m.COMPLETED
        else:
            self.outcome = m.UNAUTHORIZED if reason == "unauthorized" else f"error_{kind}"
        log.info("disconnecting: %s%s", reason, f" ({info})" if info else "")
        self._send_disconnect(reason, info, outputs)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT + 1):
                await self._finished.wait()
